"""Damaged saved runtimes: ``kvmlab info``/``reboot``/``stop`` fail with exit 2 and one line
naming the file, the file keeps its bytes, and a running VM is not touched.

The parser itself (``KVMRuntime.from_json``) is tested case by case in
``tests/runtime/test_runtime_format.py`` and fuzzed in ``test_fuzzing.py``; here the
damaged file sits in a state directory and the commands a user would type meet it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers_reliability import (
    instance_data,
    one_line_error,
    run_kvmlab,
    vm_processes,
    write_instance,
)

from kvmlab.cli.app import main
from kvmlab.host.process import is_alive
from kvmlab.host.store import save_runtime
from kvmlab.lifecycle.hypervisor import Hypervisor
from kvmlab.runtime.generator import generate_runtime
from kvmlab.runtime.saved import FORMAT_VERSION, KVMRuntime
from kvmlab.spec.instance import Instance
from kvmlab.spec.layout import StateLayout

ROOT = Path("/srv/kvmlab-reliability")
GOOD = generate_runtime(Instance.model_validate(instance_data()), layout=StateLayout(ROOT))
GOOD_TEXT = GOOD.to_json()
GOOD_DATA = json.loads(GOOD_TEXT)
LEGACY_ARGV = ["/usr/bin/kvm", "-name", "vm1", "-m", 128]


def with_(**changes: object) -> str:
    return json.dumps({**GOOD_DATA, **changes})


def legacy(*parts: object) -> str:
    return json.dumps(list(parts))


# id -> the bytes of conf/vm1.runtime
DAMAGED: dict[str, bytes | str] = {
    "empty": "",
    "whitespace": " \n\t",
    "truncated-1": GOOD_TEXT[:1],
    "truncated-third": GOOD_TEXT[: len(GOOD_TEXT) // 3],
    "truncated-half": GOOD_TEXT[: len(GOOD_TEXT) // 2],
    "truncated-last-brace": GOOD_TEXT[:-1],
    "zero-filled": b"\0" * 4096,  # what a crash without fsync can leave
    "not-utf8": b'{"format": 1, "name": "vm1\xff"}',
    "utf16": GOOD_TEXT.encode("utf-16"),
    "malformed-keys": "{format: 1, name: vm1}",
    "double-comma": GOOD_TEXT.replace(",", ",,", 1),
    "trailing-garbage": GOOD_TEXT + "}",
    "null": "null",
    "number": "42",
    "string": '"vm1"',
    "nesting-bomb": "[" * 100_000 + "]" * 100_000,
    "argv-string": with_(argv="kvm -name vm1"),
    "argv-empty": with_(argv=[]),
    "argv-ints": with_(argv=["/usr/bin/kvm", 1, 2]),
    "argv-null-item": with_(argv=["/usr/bin/kvm", None]),
    "nics-object": with_(nics={"mac": "52:54:00:00:00:01"}),
    "nic-bad-mac": with_(nics=[{"mac": "ff:ff:ff:ff:ff:ff", "mode": "user", "link": ""}]),
    "hvparams-list": with_(hvparams=[]),
    "hvparams-unknown": with_(hvparams={**GOOD_DATA["hvparams"], "spice_bind": "x"}),
    "hvparams-bad-type": with_(hvparams={**GOOD_DATA["hvparams"], "acpi": "sometimes"}),
    "name-int": with_(name=1),
    "name-path": with_(name="../vm1"),
    "extra-field": with_(colour="red"),
    "format-missing-name": json.dumps({"format": 1, "argv": ["/usr/bin/kvm"]}),
    "format-future": with_(format=FORMAT_VERSION + 1),
    "format-future-new-fields": with_(format=99, payload={"x": 1}),
    "format-string": with_(format="1"),
    "format-bool": with_(format=True),
    "format-float": with_(format=1.5),
    "format-zero": with_(format=0),
    "format-negative": with_(format=-1),
    "legacy-one-element": legacy(LEGACY_ARGV),
    "legacy-five-elements": legacy(LEGACY_ARGV, [], {}, [], []),
    "legacy-cmd-string": legacy("kvm -name vm1", []),
    "legacy-nics-object": legacy(LEGACY_ARGV, {}),
    "legacy-hvparams-list": legacy(LEGACY_ARGV, [], []),
    "legacy-disks-object": legacy(LEGACY_ARGV, [], {}, {}),
    "legacy-argv-object-item": legacy([*LEGACY_ARGV, {"a": 1}], []),
    "legacy-argv-bool-item": legacy([*LEGACY_ARGV, True], []),
    "legacy-argv-empty": legacy([], []),
    "legacy-no-name": legacy(["/usr/bin/kvm", "-m", 128], []),
    "legacy-bad-name": legacy(["/usr/bin/kvm", "-name", "vm 1;id"], []),
    "legacy-nic-string": legacy(LEGACY_ARGV, ["52:54:00:00:00:01"]),
    "legacy-nic-bad-mac": legacy(LEGACY_ARGV, [{"mac": "01:00:00:00:00:00"}]),
    "legacy-nic-no-mac": legacy(LEGACY_ARGV, [{"nicparams": {"mode": "user"}}]),
    "legacy-nicparams-list": legacy(LEGACY_ARGV, [{"mac": "52:54:00:00:00:01", "nicparams": []}]),
    "legacy-hvparams-unknown": legacy(LEGACY_ARGV, [], {"no_such_param": 1}),
    "legacy-hvparams-relative-kernel": legacy(LEGACY_ARGV, [], {"kernel_path": "vmlinuz"}),
    "legacy-disk-short": legacy(LEGACY_ARGV, [], {}, [[{"mode": "rw"}]]),
    "legacy-disk-relative": legacy(LEGACY_ARGV, [], {}, [[{"mode": "rw"}, "disk.img"]]),
}


@pytest.fixture
def damaged_lab(state_dir: Path) -> Hypervisor:
    lab = Hypervisor(state_dir, backend="fake")
    for directory in lab.layout.directories():
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    return lab


def run_main(capsys: pytest.CaptureFixture[str], state_dir: Path, *args: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["--state-dir", str(state_dir), "--backend", "fake", *args])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("content", DAMAGED.values(), ids=DAMAGED.keys())
def test_damaged_runtime_is_exit_2_in_one_line_and_left_as_it_was(
    damaged_lab: Hypervisor, capsys: pytest.CaptureFixture[str], content: bytes | str
) -> None:
    raw = content.encode("utf-8") if isinstance(content, str) else content
    path = damaged_lab.layout.runtime_file("vm1")
    path.write_bytes(raw)
    root = damaged_lab.layout.root
    for command in (["info", "vm1"], ["info", "vm1", "--json"], ["reboot", "vm1"], ["stop", "vm1"]):
        code, err = run_main(capsys, root, *command)
        assert code == 2, (command, err)
        line = one_line_error(err)
        assert str(path) in line, line
        assert path.read_bytes() == raw
    # `list` does not validate: it shows the instance and exits 0.
    code, err = run_main(capsys, root, "list", "--json")
    assert code == 0 and err == ""
    assert path.read_bytes() == raw
    assert not damaged_lab.layout.pidfile("vm1").exists()


def test_damaged_runtime_through_the_console_script(damaged_lab: Hypervisor) -> None:
    path = damaged_lab.layout.runtime_file("vm1")
    raw = GOOD_TEXT[: len(GOOD_TEXT) // 2].encode()
    path.write_bytes(raw)
    for command in (["info", "vm1"], ["reboot", "vm1"]):
        result = run_kvmlab(damaged_lab.layout.root, *command)
        assert result.returncode == 2, result
        assert "not valid JSON" in one_line_error(result.stderr)
    assert path.read_bytes() == raw


def test_reboot_of_a_running_instance_with_a_damaged_runtime_leaves_it_running(
    workdir: Path, state_dir: Path, private_tmp: Path
) -> None:
    """The runtime is loaded before anything is stopped: the guest keeps running."""
    vm = write_instance(workdir / "vm1.json")
    assert run_kvmlab(state_dir, "start", str(vm), tmpdir=private_tmp).returncode == 0
    lab = Hypervisor(state_dir, backend="fake")
    pid = lab.info("vm1", query_guest=False).pid
    path = lab.layout.runtime_file("vm1")
    raw = path.read_bytes().replace(f'"format":{FORMAT_VERSION}'.encode(), b'"format":7')
    path.write_bytes(raw)

    result = run_kvmlab(state_dir, "reboot", "vm1", tmpdir=private_tmp)
    assert result.returncode == 2
    assert "newer than this kvmlab" in one_line_error(result.stderr)
    assert path.read_bytes() == raw
    assert is_alive(pid) and vm_processes(lab.layout.pidfile("vm1")) == [pid]
    assert list(private_tmp.iterdir()) == []


def test_stop_force_works_on_a_running_instance_with_a_damaged_runtime(
    workdir: Path, state_dir: Path, private_tmp: Path
) -> None:
    vm = write_instance(workdir / "vm1.json")
    assert run_kvmlab(state_dir, "start", str(vm), tmpdir=private_tmp).returncode == 0
    lab = Hypervisor(state_dir, backend="fake")
    pid = lab.info("vm1", query_guest=False).pid
    path = lab.layout.runtime_file("vm1")
    path.write_bytes(b'{"format": 1, "name": "vm1"')
    result = run_kvmlab(state_dir, "stop", "vm1", "--force", tmpdir=private_tmp)
    assert result.returncode == 0, result.stderr
    assert not is_alive(pid)
    assert path.read_bytes() == b'{"format": 1, "name": "vm1"'


def test_legacy_runtime_with_a_lone_surrogate_is_refused_in_one_line(
    damaged_lab: Hypervisor,
) -> None:
    path = damaged_lab.layout.runtime_file("vm1")
    raw = b'[["/usr/bin/kvm", "-name", "vm1", "-append", "x\\ud800"], []]'
    path.write_bytes(raw)
    result = run_kvmlab(damaged_lab.layout.root, "info", "vm1")
    assert result.returncode == 2, result
    one_line_error(result.stderr)
    assert path.read_bytes() == raw


def test_runtime_of_another_instance_is_refused(
    workdir: Path, state_dir: Path, private_tmp: Path
) -> None:
    vm = write_instance(workdir / "vm1.json")
    assert run_kvmlab(state_dir, "start", str(vm), tmpdir=private_tmp).returncode == 0
    lab = Hypervisor(state_dir, backend="fake")
    pid = lab.info("vm1", query_guest=False).pid
    other = generate_runtime(Instance.model_validate(instance_data("vm2")), layout=lab.layout)
    save_runtime(lab.layout.runtime_file("vm1"), other)
    raw = lab.layout.runtime_file("vm1").read_bytes()
    result = run_kvmlab(state_dir, "reboot", "vm1", tmpdir=private_tmp)
    assert result.returncode == 2, result
    assert "vm2" in one_line_error(result.stderr)
    assert lab.layout.runtime_file("vm1").read_bytes() == raw
    assert is_alive(pid) and vm_processes(lab.layout.pidfile("vm2")) == []


def test_runtime_with_a_nul_in_the_argv_is_refused_before_stopping(
    workdir: Path, state_dir: Path, private_tmp: Path
) -> None:
    vm = write_instance(workdir / "vm1.json")
    assert run_kvmlab(state_dir, "start", str(vm), tmpdir=private_tmp).returncode == 0
    lab = Hypervisor(state_dir, backend="fake")
    pid = lab.info("vm1", query_guest=False).pid
    path = lab.layout.runtime_file("vm1")
    data = json.loads(path.read_bytes())
    data["argv"].insert(3, "-usb\u0000")
    path.write_text(json.dumps(data))
    raw = path.read_bytes()
    result = run_kvmlab(state_dir, "reboot", "vm1", tmpdir=private_tmp)
    assert result.returncode == 2, result
    one_line_error(result.stderr)
    assert path.read_bytes() == raw
    assert is_alive(pid)


def test_damaged_cases_really_are_damaged() -> None:
    """Guard: the table holds no input that happens to load."""
    from kvmlab.errors import RuntimeFormatError  # noqa: PLC0415

    for key, content in DAMAGED.items():
        with pytest.raises(RuntimeFormatError):
            KVMRuntime.from_json(content)
            pytest.fail(f"{key} loaded")
