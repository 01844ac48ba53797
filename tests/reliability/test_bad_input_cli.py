"""Bad instance files through ``kvmlab --state-dir D --backend fake start FILE``.

Every case must end with exit code 2 and exactly one ``kvmlab: error:`` line on stderr
naming the field (and, where there is one, the value), and must write nothing: a state
directory that did not exist is not created, an existing one is byte-for-byte unchanged.

The whole matrix runs in-process through :func:`kvmlab.cli.app.main` (the same code as the
console script, milliseconds per case), for a missing and for an existing state
directory; a sample runs as real subprocesses, where a traceback would show.
The model-level rules themselves are tested in ``tests/models/``; this is the CLI contract.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from helpers_reliability import (
    MAC1,
    instance_data,
    one_line_error,
    run_kvmlab,
    snapshot,
)

from kvmlab.cli.app import main
from kvmlab.host.store import save_runtime
from kvmlab.runtime.generator import generate_runtime
from kvmlab.spec.instance import Instance
from kvmlab.spec.layout import StateLayout


def hv(**params: Any) -> dict[str, Any]:
    return {"hvparams": {"kernel_path": "", "vnc_bind_address": "", **params}}


def nic(**fields: Any) -> dict[str, Any]:
    return {"nics": [{"mac": MAC1, "mode": "user", **fields}]}


# (id, filename, content: dict (JSON-encoded) | str | bytes, substrings the line must hold)
CASES: list[tuple[str, str, Any, tuple[str, ...]]] = [
    # instance names: they become file names and reach scripts
    ("name-slash", "vm.json", {"name": "web/1"}, ("name", "web/1")),
    ("name-dotdot", "vm.json", {"name": ".."}, ("name", "'..'")),
    ("name-dotdot-path", "vm.json", {"name": "../../etc/x"}, ("name", "../../etc/x")),
    ("name-space", "vm.json", {"name": "vm 1"}, ("name", "vm 1")),
    ("name-semicolon", "vm.json", {"name": "vm1;touch x"}, ("name", "vm1;touch x")),
    ("name-subshell", "vm.json", {"name": "$(id)"}, ("name", "$(id)")),
    ("name-backtick", "vm.json", {"name": "`id`"}, ("name", "`id`")),
    ("name-pipe", "vm.json", {"name": "a|b"}, ("name", "a|b")),
    ("name-nul", "vm.json", {"name": "vm1\x00x"}, ("name", "vm1\\x00x")),
    ("name-newline", "vm.json", {"name": "vm1\nx"}, ("name", "vm1\\nx")),
    ("name-64-chars", "vm.json", {"name": "a" * 64}, ("name", "a" * 64)),
    ("name-4k-chars", "vm.json", {"name": "b" * 4096}, ("name", "bbbb")),
    ("name-empty", "vm.json", {"name": ""}, ("name", "''")),
    ("name-uppercase", "vm.json", {"name": "VM1"}, ("name", "VM1")),
    ("name-leading-dash", "vm.json", {"name": "-vm"}, ("name", "-vm")),
    ("name-missing", "vm.json", '{"memory": 128}', ("name", "Field required")),
    ("name-int", "vm.json", {"name": 123}, ("name", "123")),
    # MACs
    ("mac-multicast", "vm.json", nic(mac="53:54:00:00:00:01"), ("nics.0.mac", "53:54:00:00:00:01")),
    ("mac-broadcast", "vm.json", nic(mac="ff:ff:ff:ff:ff:ff"), ("nics.0.mac", "ff:ff:ff:ff:ff:ff")),
    ("mac-short", "vm.json", nic(mac="52:54:00:00:00"), ("nics.0.mac", "52:54:00:00:00")),
    ("mac-not-hex", "vm.json", nic(mac="52:54:00:zz:00:01"), ("nics.0.mac", "52:54:00:zz:00:01")),
    ("mac-dashes", "vm.json", nic(mac="52-54-00-00-00-01"), ("nics.0.mac", "52-54-00-00-00-01")),
    ("mac-int", "vm.json", nic(mac=525400), ("nics.0.mac", "525400")),
    (
        "mac-duplicate",
        "vm.json",
        {"nics": [{"mac": MAC1, "mode": "user"}, {"mac": MAC1.upper(), "mode": "user"}]},
        ("nics.1.mac", MAC1),
    ),
    # NIC links reach the up-script
    ("link-space", "vm.json", nic(mode="bridged", link="br0 br1"), ("nics.0.link", "br0 br1")),
    (
        "link-semicolon",
        "vm.json",
        nic(mode="bridged", link="br0; touch /tmp/x"),
        ("nics.0.link", "br0; touch /tmp/x"),
    ),
    ("link-subshell", "vm.json", nic(mode="routed", link="$(id)"), ("nics.0.link", "$(id)")),
    ("link-17-chars", "vm.json", nic(mode="bridged", link="b" * 17), ("nics.0.link", "b" * 17)),
    ("link-missing", "vm.json", nic(mode="bridged"), ("nics.0.link", "bridge")),
    ("nic-mode-unknown", "vm.json", nic(mode="macvtap"), ("nics.0.mode", "macvtap")),
    # memory and vcpus
    ("memory-zero", "vm.json", {"memory": 0}, ("memory", "0")),
    ("memory-15", "vm.json", {"memory": 15}, ("memory", "15")),
    ("memory-negative", "vm.json", {"memory": -512}, ("memory", "-512")),
    ("memory-4TiB-plus-1", "vm.json", {"memory": 4 * 1024 * 1024 + 1}, ("memory", "4194305")),
    ("memory-2**64", "vm.json", {"memory": 2**64}, ("memory", str(2**64))),
    ("vcpus-zero", "vm.json", {"vcpus": 0}, ("vcpus", "0")),
    ("vcpus-256", "vm.json", {"vcpus": 256}, ("vcpus", "256")),
    ("vcpus-negative", "vm.json", {"vcpus": -1}, ("vcpus", "-1")),
    # wrong types
    ("memory-string", "vm.json", {"memory": "512"}, ("memory", "512")),
    ("memory-float", "vm.json", {"memory": 512.5}, ("memory", "512.5")),
    ("memory-nan", "vm.json", '{"name": "vm1", "memory": NaN}', ("memory", "nan")),
    ("memory-inf", "vm.json", '{"name": "vm1", "memory": 1e400}', ("memory", "inf")),
    ("vcpus-bool", "vm.json", {"vcpus": True}, ("vcpus", "True")),
    ("nics-string", "vm.json", {"nics": "eth0"}, ("nics", "eth0")),
    ("hvparams-list", "vm.json", {"hvparams": []}, ("hvparams",)),
    ("acpi-word", "vm.json", hv(acpi="maybe"), ("hvparams.acpi", "maybe")),
    ("network-port-80", "vm.json", {"network_port": 80}, ("network_port", "80")),
    ("uuid-garbage", "vm.json", {"uuid": "not-a-uuid"}, ("uuid", "not-a-uuid")),
    # relative paths
    ("kernel-relative", "vm.json", hv(kernel_path="vmlinuz"), ("hvparams.kernel_path", "vmlinuz")),
    ("initrd-dot", "vm.json", hv(initrd_path="./initrd.img"), ("hvparams.initrd_path", "./initrd")),
    ("cdrom-dotdot", "vm.json", hv(cdrom_image_path="../x.iso"), ("cdrom_image_path", "../x.iso")),
    ("kvm-path-bare", "vm.json", hv(kvm_path="kvm"), ("hvparams.kvm_path", "'kvm'")),
    ("disk-relative", "vm.json", {"disks": [{"path": "disk.img"}]}, ("disks.0.path", "disk.img")),
    (
        "disk-mode",
        "vm.json",
        {"disks": [{"path": "/d.img", "mode": "rwx"}]},
        ("disks.0.mode", "rwx"),
    ),
    # kernel arguments and other one-line values
    (
        "kernel-args-newline",
        "vm.json",
        hv(kernel_args="ro\ninit=/bin/sh"),
        ("kernel_args", "ro\\n"),
    ),
    ("kernel-args-cr", "vm.json", hv(kernel_args="ro\rx"), ("hvparams.kernel_args", "ro\\rx")),
    ("kernel-args-nul", "vm.json", hv(kernel_args="ro\x00x"), ("hvparams.kernel_args", "ro\\x00")),
    ("root-path-newline", "vm.json", hv(root_path="/dev/vda1\nx"), ("hvparams.root_path", "vda1")),
    ("cpu-type-shell", "vm.json", hv(cpu_type="host;id"), ("hvparams.cpu_type", "host;id")),
    ("vnc-bind-shell", "vm.json", hv(vnc_bind_address="0.0.0.0;id"), ("vnc_bind_address", ";id")),
    ("usb-devices-space", "vm.json", hv(usb_devices="a b"), ("hvparams.usb_devices", "a b")),
    # kvm_extra: split like a shell, never run by one, no option kvmlab manages
    ("kvm-extra-netdev", "vm.json", hv(kvm_extra="-netdev user,id=x"), ("kvm_extra", "-netdev")),
    ("kvm-extra-pidfile", "vm.json", hv(kvm_extra="--pidfile /tmp/p"), ("kvm_extra", "-pidfile")),
    ("kvm-extra-quote", "vm.json", hv(kvm_extra="-usb '"), ("hvparams.kvm_extra", "-usb '")),
    ("kvm-extra-newline", "vm.json", hv(kvm_extra="-usb\n-S"), ("hvparams.kvm_extra", "-usb\\n")),
    # unknown hvparams and fields
    ("hvparam-unknown", "vm.json", hv(no_such_param=1), ("hvparams.no_such_param", "unknown")),
    ("field-unknown", "vm.json", {"colour": "red"}, ("colour", "unknown field")),
    ("nic-field-unknown", "vm.json", nic(bridge="br0"), ("nics.0.bridge", "unknown field")),
    # Ganeti's cross-parameter rules
    ("cdrom-boot-no-image", "vm.json", hv(boot_order="cdrom"), ("cdrom_image_path", "cdrom")),
    ("aio-native-no-cache", "vm.json", hv(disk_aio="native"), ("hvparams.disk_aio", "native")),
    # files
    ("empty-json", "vm.json", "", ("vm.json", "empty")),
    ("empty-yaml", "vm.yaml", "  \n\n", ("vm.yaml", "empty")),
    ("empty-toml", "vm.toml", "\t\n", ("vm.toml", "empty")),
    ("huge-json", "vm.json", '{"name": "vm1"' + " " * (1024 * 1024) + "}", ("larger than",)),
    ("not-utf8", "vm.json", b'{"name": "vm1\xff"}', ("vm.json", "UTF-8")),
    ("unknown-suffix", "vm.txt", "name = 'vm1'", ("vm.txt", "unknown file type")),
    ("no-suffix", "vm", "name = 'vm1'", ("unknown file type",)),
    ("top-level-list", "vm.json", "[1, 2]", ("vm.json", "mapping")),
    ("top-level-scalar-yaml", "vm.yaml", "vm1\n", ("vm.yaml", "mapping")),
    ("json-syntax", "vm.json", '{"name": "vm1",}', ("vm.json", "invalid JSON")),
    ("json-truncated", "vm.json", '{"name": "vm1", "nics": [{"mac"', ("invalid JSON",)),
    ("json-trailing", "vm.json", '{"name": "vm1"} {"name": "vm2"}', ("invalid JSON", "Extra")),
    ("json-nesting", "vm.json", "[" * 100_000 + "]" * 100_000, ("vm.json", "invalid JSON")),
    ("toml-syntax", "vm.toml", "name = = 'vm1'", ("vm.toml", "invalid TOML")),
    ("toml-unclosed", "vm.toml", 'name = "vm1\nmemory = 3', ("vm.toml", "invalid TOML")),
    ("toml-duplicate-key", "vm.toml", 'name = "a"\nname = "b"\n', ("vm.toml", "invalid TOML")),
    ("yaml-syntax", "vm.yaml", "name: [vm1\nmemory: 3", ("vm.yaml", "invalid YAML")),
    ("yaml-two-documents", "vm.yml", "name: a\n---\nname: b\n", ("vm.yml", "invalid YAML")),
    (
        "yaml-python-tag",
        "vm.yaml",
        "name: !!python/object/apply:os.system ['touch /tmp/kvmlab-never']\n",
        ("vm.yaml", "invalid YAML"),
    ),
    ("yaml-local-tag", "vm.yaml", "name: !custom vm1\n", ("vm.yaml", "invalid YAML")),
    (
        "yaml-alias-bomb",
        "vm.yaml",
        "a: &a ['x','x','x','x','x','x','x','x','x']\n"
        + "".join(
            f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]\n"
            for i in range(8)
        ),
        ("vm.yaml", "alias"),
    ),
    ("yaml-anchor-merge", "vm.yaml", "base: &b {memory: 64}\nname: vm1\n<<: *b\n", ("alias",)),
    ("yaml-int-key", "vm.yaml", "name: vm1\n1: 2\n", ("vm.yaml", "Keys should be strings")),
]


def write_case(directory: Path, filename: str, content: Any) -> Path:
    path = directory / filename
    if isinstance(content, dict):
        path.write_text(json.dumps({**instance_data(), **content}), encoding="utf-8")
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def existing_state(state_dir: Path) -> None:
    """A state directory holding a saved runtime for vm1 (as after a start and stop)."""
    layout = StateLayout(state_dir)
    for directory in layout.directories():
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    save_runtime(
        layout.runtime_file("vm1"),
        generate_runtime(Instance.model_validate(instance_data()), layout=layout),
    )
    layout.log_file("vm1").write_text("--- earlier start\n")


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = main(list(args))
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("existing", [False, True], ids=["no-state-dir", "existing-state-dir"])
@pytest.mark.parametrize("case", [pytest.param(case, id=case[0]) for case in CASES])
def test_bad_instance_file_is_exit_2_one_line_naming_the_field_and_writes_nothing(
    state_dir: Path,
    capsys: pytest.CaptureFixture[str],
    case: tuple[str, str, Any, tuple[str, ...]],
    existing: bool,
) -> None:
    _, filename, content, expected = case
    if existing:
        existing_state(state_dir)
    before = snapshot(state_dir)
    path = write_case(state_dir.parent, filename, content)
    code, out, err = run_main(
        capsys, "--state-dir", str(state_dir), "--backend", "fake", "start", str(path)
    )
    assert code == 2, (code, out, err)
    line = one_line_error(err)
    for text in expected:
        assert text in line, f"{text!r} not in {line!r}"
    assert out == ""
    assert state_dir.exists() is existing
    assert snapshot(state_dir) == before


SUBPROCESS_SAMPLE = [
    "name-slash",
    "name-nul",
    "mac-duplicate",
    "link-semicolon",
    "memory-string",
    "kernel-args-newline",
    "hvparam-unknown",
    "yaml-alias-bomb",
    "toml-syntax",
    "not-utf8",
]


@pytest.mark.parametrize(
    ("filename", "content", "expected"),
    [pytest.param(f, c, e, id=i) for i, f, c, e in CASES if i in SUBPROCESS_SAMPLE],
)
def test_bad_instance_file_through_the_console_script(
    workdir: Path, state_dir: Path, filename: str, content: Any, expected: tuple[str, ...]
) -> None:
    path = write_case(workdir, filename, content)
    result = run_kvmlab(state_dir, "start", str(path))
    assert result.returncode == 2, result
    line = one_line_error(result.stderr)
    for text in expected:
        assert text in line, f"{text!r} not in {line!r}"
    assert result.stdout == ""
    assert not state_dir.exists()


def test_generate_refuses_the_same_input_with_exit_2(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``generate`` reads files the same way (no state directory involved)."""
    path = write_case(workdir, "vm.json", nic(mode="bridged", link="br0; touch /tmp/x"))
    code, out, err = run_main(capsys, "--backend", "fake", "generate", str(path))
    assert code == 2 and out == ""
    assert "nics.0.link" in one_line_error(err)


# -- bugs --------------------------------------------------------------------------------


def test_lone_surrogate_in_kvm_extra_is_exit_2(workdir: Path, state_dir: Path) -> None:
    path = write_case(
        workdir,
        "vm.json",
        '{"name": "vm1", "hvparams": {"kernel_path": "", "kvm_extra": "-usb \\ud800"}}',
    )
    result = run_kvmlab(state_dir, "start", str(path))
    assert result.returncode == 2, result
    assert "hvparams.kvm_extra" in one_line_error(result.stderr)
    assert not state_dir.exists()


def test_unknown_field_with_a_newline_is_named_on_the_one_line(
    workdir: Path, state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_case(workdir, "vm.json", '{"name": "vm1", "a\\nb": 1}')
    code, _, err = run_main(
        capsys, "--state-dir", str(state_dir), "--backend", "fake", "start", str(path)
    )
    assert code == 2
    line = one_line_error(err)
    assert "unknown field" in line and "b" in line.split("vm.json", 1)[1]


def test_yaml_nesting_bomb_is_refused_quickly(workdir: Path, state_dir: Path) -> None:
    path = write_case(workdir, "vm.yaml", "[" * 3000 + "]" * 3000)
    try:
        result = run_kvmlab(state_dir, "start", str(path), timeout=3)
    except subprocess.TimeoutExpired:
        pytest.fail("kvmlab start was still parsing a 6 KB YAML file after 3 s")
    assert result.returncode == 2
    one_line_error(result.stderr)


def test_case_ids_are_unique() -> None:
    ids = [case[0] for case in CASES]
    assert len(ids) == len(set(ids))
    assert set(SUBPROCESS_SAMPLE) <= set(ids)
