"""``load_instance``: the same instance from JSON, TOML and YAML, and one-line errors."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from kvmlab.errors import InstanceError
from kvmlab.spec.files import load_instance
from kvmlab.spec.instance import Instance

JSON_TEXT = json.dumps(
    {
        "name": "web1",
        "memory": 1024,
        "vcpus": 2,
        "nics": [
            {"mac": "02:00:00:00:00:01", "mode": "bridged", "link": "br0"},
            {"mac": "02:00:00:00:00:02", "mode": "user"},
        ],
        "disks": [{"path": "/dev/vg/web1", "mode": "rw"}, {"path": "/srv/iso/a.img", "mode": "ro"}],
        "hvparams": {"kernel_path": "", "serial_speed": 115200, "acpi": False},
        "network_port": 5901,
    }
)

TOML_TEXT = """\
name = "web1"
memory = 1024
vcpus = 2
network_port = 5901

[[nics]]
mac = "02:00:00:00:00:01"
mode = "bridged"
link = "br0"

[[nics]]
mac = "02:00:00:00:00:02"
mode = "user"

[[disks]]
path = "/dev/vg/web1"
mode = "rw"

[[disks]]
path = "/srv/iso/a.img"
mode = "ro"

[hvparams]
kernel_path = ""
serial_speed = 115200
acpi = false
"""

YAML_TEXT = """\
name: web1
memory: 1024
vcpus: 2
network_port: 5901
nics:
  - {mac: "02:00:00:00:00:01", mode: bridged, link: br0}
  - mac: "02:00:00:00:00:02"
    mode: user
disks:
  - path: /dev/vg/web1
    mode: rw
  - path: /srv/iso/a.img
    mode: ro
hvparams:
  kernel_path: ""
  serial_speed: 115200
  acpi: false
"""


def write(directory: Path, name: str, content: str | bytes) -> Path:
    path = directory / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def load_error(path: Path) -> str:
    """Load ``path`` expecting an InstanceError; return its one-line message."""
    with pytest.raises(InstanceError) as info:
        load_instance(path)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message, message
    return message


@pytest.fixture
def from_json(tmp_path: Path) -> Instance:
    return load_instance(write(tmp_path, "web1.json", JSON_TEXT))


@pytest.mark.parametrize(
    ("filename", "text"),
    [
        ("web1.toml", TOML_TEXT),
        ("web1.yaml", YAML_TEXT),
        ("web1.yml", YAML_TEXT),
        ("WEB1.JSON", JSON_TEXT),
    ],
)
def test_the_same_instance_from_every_format(
    tmp_path: Path, from_json: Instance, filename: str, text: str
) -> None:
    assert load_instance(write(tmp_path, filename, text)) == from_json


def test_loaded_values(from_json: Instance) -> None:
    assert from_json.name == "web1"
    assert from_json.memory == 1024
    assert [nic.mac for nic in from_json.nics] == ["02:00:00:00:00:01", "02:00:00:00:00:02"]
    assert [(d.path, d.mode) for d in from_json.disks] == [
        ("/dev/vg/web1", "rw"),
        ("/srv/iso/a.img", "ro"),
    ]
    assert from_json.hvparams.acpi is False
    assert from_json.hvparams.serial_speed == 115200


def test_load_accepts_a_string_path(tmp_path: Path) -> None:
    path = write(tmp_path, "vm.json", '{"name": "vm1"}')
    assert load_instance(str(path)).name == "vm1"


@pytest.mark.parametrize("filename", ["vm.json", "vm.toml", "vm.yaml"])
@pytest.mark.parametrize("content", ["", "   \n\t\n"])
def test_empty_file(tmp_path: Path, filename: str, content: str) -> None:
    path = write(tmp_path, filename, content)
    message = load_error(path)
    assert str(path) in message
    assert "empty" in message


def test_file_over_one_mib(tmp_path: Path) -> None:
    padding = " " * (1024 * 1024)
    path = write(tmp_path, "big.json", '{"name": "vm1"' + padding + "}")
    message = load_error(path)
    assert str(path) in message
    assert "1048576" in message or "MiB" in message


def test_file_of_exactly_one_mib_is_read(tmp_path: Path) -> None:
    head = '{"name": "vm1"}'
    path = write(tmp_path, "edge.json", head + " " * (1024 * 1024 - len(head)))
    assert path.stat().st_size == 1024 * 1024
    assert load_instance(path).name == "vm1"


@pytest.mark.parametrize("filename", ["vm.json", "vm.toml", "vm.yaml"])
def test_binary_garbage_is_not_utf8(tmp_path: Path, filename: str) -> None:
    path = write(tmp_path, filename, b"\xff\xfe\x00\x81garbage\xc3\x28")
    message = load_error(path)
    assert str(path) in message
    assert "UTF-8" in message


@pytest.mark.parametrize(
    ("filename", "text", "kind"),
    [
        ("vm.json", '{"name": "vm1",}', "JSON"),
        ("vm.json", '{"name": "vm1"', "JSON"),
        ("vm.json", "name: vm1", "JSON"),
        ("vm.toml", 'name = "vm1\nmemory = 3', "TOML"),
        ("vm.toml", "name = = vm1", "TOML"),
        ("vm.yaml", "name: [vm1\nmemory: 3", "YAML"),
        ("vm.yaml", "name: vm1\n  memory: 3\n bad", "YAML"),
        ("vm.yml", "{name: vm1", "YAML"),
    ],
)
def test_syntax_errors_name_the_file_and_the_format(
    tmp_path: Path, filename: str, text: str, kind: str
) -> None:
    path = write(tmp_path, filename, text)
    message = load_error(path)
    assert str(path) in message
    assert f"invalid {kind}" in message


def test_json_nesting_bomb_is_a_clean_error(tmp_path: Path) -> None:
    path = write(tmp_path, "deep.json", "[" * 200_000 + "]" * 200_000)
    message = load_error(path)
    assert str(path) in message


@pytest.mark.parametrize(
    "text",
    [
        "name: !!python/object/apply:os.system ['touch {marker}']\n",
        "!!python/object/apply:os.system ['touch {marker}']\n",
        "name: !!python/name:os.system\n",
        "name: !custom vm1\n",
    ],
)
def test_yaml_tags_are_refused(tmp_path: Path, text: str) -> None:
    marker = tmp_path / "pwned"
    path = write(tmp_path, "evil.yaml", text.format(marker=marker))
    message = load_error(path)
    assert str(path) in message
    assert not marker.exists()


BILLION_LAUGHS = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
name: vm1
"""


def test_yaml_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    path = write(tmp_path, "bomb.yaml", BILLION_LAUGHS)
    started = time.perf_counter()
    message = load_error(path)
    assert time.perf_counter() - started < 2.0
    assert str(path) in message
    assert "alias" in message.lower()


@pytest.mark.parametrize(
    ("filename", "text"),
    [
        ("list.json", '[{"name": "vm1"}]'),
        ("list.yaml", "- name: vm1\n"),
        ("scalar.yaml", "vm1\n"),
        ("null.json", "null"),
        ("number.json", "42"),
    ],
)
def test_top_level_must_be_a_mapping(tmp_path: Path, filename: str, text: str) -> None:
    path = write(tmp_path, filename, text)
    message = load_error(path)
    assert str(path) in message
    assert "mapping" in message


@pytest.mark.parametrize("filename", ["vm.ini", "vm.cfg", "vm", "vm.json.bak"])
def test_unknown_suffix(tmp_path: Path, filename: str) -> None:
    path = write(tmp_path, filename, '{"name": "vm1"}')
    message = load_error(path)
    assert str(path) in message
    assert ".json" in message


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "vm.json"
    message = load_error(path)
    assert str(path) in message
    assert "No such file" in message


def test_directory_instead_of_file(tmp_path: Path) -> None:
    path = tmp_path / "dir.json"
    path.mkdir()
    assert str(path) in load_error(path)


@pytest.mark.parametrize(
    ("filename", "text", "field"),
    [
        ("vm.json", '{"name": "Web/1"}', "name"),
        ("vm.toml", 'name = "vm1"\nmemory = 1\n', "memory"),
        ("vm.yaml", "name: vm1\nnics:\n  - mac: 01:00:00:00:00:01\n    link: br0\n", "nics.0.mac"),
        ("vm.yaml", 'name: vm1\nhvparams:\n  kernel_args: "ro\\nquiet"\n', "hvparams.kernel_args"),
        ("vm.json", '{"name": "vm1", "extra": true}', "extra"),
    ],
)
def test_validation_errors_name_the_file_and_the_field(
    tmp_path: Path, filename: str, text: str, field: str
) -> None:
    path = write(tmp_path, filename, text)
    with pytest.raises(InstanceError) as info:
        load_instance(path)
    assert info.value.field == field
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: {field}")


def test_unquoted_yaml_mac_read_as_base_60_integer_is_refused(tmp_path: Path) -> None:
    # YAML 1.1 reads an unquoted 12:34:56:00:00:01 as a base-60 integer; it must be
    # refused as a MAC, not turned into some other value.
    text = "name: vm1\nnics:\n  - mac: 12:34:56:00:00:01\n    link: br0\n"
    with pytest.raises(InstanceError) as info:
        load_instance(write(tmp_path, "vm.yaml", text))
    assert info.value.field == "nics.0.mac"
