"""The ``kvmlab`` command line: exit codes, one-line errors, JSON output, console, env vars.

Most tests run the installed ``kvmlab`` script as a subprocess on the fake backend
with a short state directory; a few call :func:`kvmlab.cli.app.main` in-process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kvmlab.cli.app import main
from kvmlab.host.process import is_alive
from kvmlab.lifecycle.hypervisor import Hypervisor
from kvmlab.testing.plugin import stop_all

KVMLAB = str(Path(sys.executable).with_name("kvmlab"))
NIC_OPTIONS = {"-net", "-netdev", "-nic"}

Run = Callable[..., subprocess.CompletedProcess[str]]


def instance_data(name: str = "vm1", **overrides: object) -> dict[str, object]:
    data: dict[str, object] = {
        "name": name,
        "memory": 128,
        "vcpus": 2,
        "nics": [{"mac": "52:54:00:6b:02:01", "mode": "user"}],
        "hvparams": {"kernel_path": "", "vnc_bind_address": ""},
    }
    data.update(overrides)
    return data


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A short folder: instance files here, the state directory at ``sd`` (not created)."""
    path = Path(tempfile.mkdtemp(prefix="kc-"))
    try:
        yield path
    finally:
        if (path / "sd").is_dir():
            stop_all(Hypervisor(path / "sd", backend="fake"))
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def state_dir(workdir: Path) -> Path:
    return workdir / "sd"


@pytest.fixture
def write_instance(workdir: Path) -> Callable[..., Path]:
    def write(filename: str = "vm1.json", **data: object) -> Path:
        path = workdir / filename
        path.write_text(json.dumps(instance_data(**data)))  # type: ignore[arg-type]
        return path

    return write


@pytest.fixture
def run(state_dir: Path) -> Run:
    """Run ``kvmlab --state-dir SD --backend fake ARGS...``."""

    def run_kvmlab(
        *args: str, env: dict[str, str] | None = None, globals_: bool = True
    ) -> subprocess.CompletedProcess[str]:
        head = ["--state-dir", str(state_dir), "--backend", "fake"] if globals_ else []
        return subprocess.run(
            [KVMLAB, *head, *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )

    return run_kvmlab


@pytest.fixture
def cli(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> Run:
    """Call :func:`kvmlab.cli.app.main` in-process with the same global options as ``run``."""

    def call(*args: str) -> subprocess.CompletedProcess[str]:
        capsys.readouterr()
        try:
            code = main(["--state-dir", str(state_dir), "--backend", "fake", *args])
        except SystemExit as exit_:  # argparse's usage errors
            code = int(exit_.code or 0)
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(["kvmlab", *args], code, out, err)

    return call


def one_line_error(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def assert_nothing_in(state_dir: Path) -> None:
    assert not state_dir.exists() or list(state_dir.rglob("*")) == [], list(state_dir.rglob("*"))


# -- exit codes ------------------------------------------------------------------------


def test_start_then_second_start_is_exit_1_already_running(
    run: Run, write_instance: Callable[..., Path], state_dir: Path
) -> None:
    file = write_instance()
    first = run("start", str(file))
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("started vm1 (pid ")
    saved = (state_dir / "conf" / "vm1.runtime").read_bytes()

    second = run("start", str(write_instance(memory=512)))
    assert second.returncode == 1
    assert "already running" in one_line_error(second.stderr)
    assert (state_dir / "conf" / "vm1.runtime").read_bytes() == saved


INVALID_FILES = [
    ("mem.json", json.dumps(instance_data(memory=5)), "memory", "5"),
    (
        "mac.json",
        json.dumps(instance_data(nics=[{"mac": "zz:00", "mode": "user"}])),
        "mac",
        "zz:00",
    ),
    ("name.json", json.dumps(instance_data(name="Web_1")), "name", "Web_1"),
    ("vcpus.toml", 'name = "vm1"\nvcpus = 999\n', "vcpus", "999"),
    (
        "mode.yaml",
        "name: vm1\nnics:\n- {mac: '52:54:00:00:00:01', mode: wifi}\n",
        "mode",
        "wifi",
    ),
    ("extra.yaml", "name: vm1\nmemroy: 256\n", "memroy", "unknown field"),
]


@pytest.mark.parametrize("case", INVALID_FILES, ids=[case[0] for case in INVALID_FILES])
def test_invalid_instance_file_is_exit_2_naming_field_and_value_and_writes_nothing(
    cli: Run, workdir: Path, state_dir: Path, case: tuple[str, str, str, str]
) -> None:
    filename, content, field, value = case
    file = workdir / filename
    file.write_text(content)
    result = cli("start", str(file))
    assert result.returncode == 2
    line = one_line_error(result.stderr)
    assert field in line and value in line, line
    assert result.stdout == ""
    assert_nothing_in(state_dir)


def test_missing_instance_file_is_exit_2(cli: Run, workdir: Path, state_dir: Path) -> None:
    result = cli("start", str(workdir / "absent.json"))
    assert result.returncode == 2
    assert "absent.json" in one_line_error(result.stderr)
    assert_nothing_in(state_dir)


@pytest.mark.parametrize("command", ["info", "stop", "reboot", "console", "cleanup"])
def test_unknown_instance_is_exit_2(cli: Run, command: str) -> None:
    result = cli(command, "nope")
    assert result.returncode == 2
    assert "nope" in one_line_error(result.stderr)


@pytest.mark.parametrize(
    "command",
    ["info", "stop", "reboot", "cleanup"],
)
def test_unknown_instance_writes_nothing(cli: Run, state_dir: Path, command: str) -> None:
    assert cli(command, "nope").returncode == 2
    assert_nothing_in(state_dir)


def test_stop_of_a_stopped_instance_is_exit_1(
    cli: Run, write_instance: Callable[..., Path]
) -> None:
    assert cli("start", str(write_instance())).returncode == 0
    assert cli("stop", "vm1", "--force").returncode == 0
    again = cli("stop", "vm1")
    assert again.returncode == 1
    assert "not running" in one_line_error(again.stderr)
    reboot = cli("reboot", "vm1")
    assert reboot.returncode == 1
    assert "not running" in one_line_error(reboot.stderr)


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["frobnicate"],
        ["stop"],
        ["info", "vm1", "--bogus"],
        ["console", "vm1", "--timeout", "soon"],
        ["--backend", "xen", "list"],
    ],
    ids=["no-command", "unknown-command", "missing-name", "unknown-flag", "bad-float", "backend"],
)
def test_usage_errors_are_exit_2_in_one_line(cli: Run, args: list[str]) -> None:
    result = cli(*args)
    assert result.returncode == 2
    assert "error" in one_line_error(result.stderr)


# -- info and list ---------------------------------------------------------------------


def test_info_json_running_then_stopped(
    cli: Run, write_instance: Callable[..., Path], state_dir: Path
) -> None:
    assert cli("start", str(write_instance())).returncode == 0
    saved = Hypervisor(state_dir, backend="fake").load_runtime("vm1").argv

    result = cli("info", "vm1", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["name"] == "vm1"
    assert data["state"] == "running"
    assert isinstance(data["pid"], int) and is_alive(data["pid"])
    assert tuple(data["argv"][: len(saved)]) == saved
    assert len(data["argv"]) > len(saved)  # NICs and QMP added at start
    assert "-qmp" in data["argv"][len(saved) :]
    cmdline = Path(f"/proc/{data['pid']}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    assert [os.fsencode(w) for w in data["argv"]] == cmdline[-len(data["argv"]) :]

    assert cli("stop", "vm1").returncode == 0
    stopped = json.loads(cli("info", "vm1", "--json").stdout)
    assert stopped["name"] == "vm1"
    assert stopped["state"] == "stopped"
    assert stopped["pid"] is None
    assert "argv" in stopped


def test_list_json_is_a_list_of_info_objects(cli: Run, write_instance: Callable[..., Path]) -> None:
    empty = cli("list", "--json")
    assert empty.returncode == 0 and json.loads(empty.stdout) == []
    assert cli("start", str(write_instance("b.json", name="vm-b"))).returncode == 0
    assert cli("start", str(write_instance("a.json", name="vm-a"))).returncode == 0
    assert cli("stop", "vm-b", "--force").returncode == 0

    result = cli("list", "--json")
    assert result.returncode == 0
    items = json.loads(result.stdout)
    assert isinstance(items, list)
    assert [item["name"] for item in items] == ["vm-a", "vm-b"]
    running, stopped = items
    assert running["state"] == "running" and isinstance(running["pid"], int)
    assert running["argv"] and running["argv"][0].endswith("kvmlab-fake-kvm")
    assert stopped["state"] == "stopped" and stopped["pid"] is None
    for item in items:
        assert {"name", "state", "pid", "argv"} <= item.keys()


# -- console ---------------------------------------------------------------------------


def test_console_expect_prints_the_boot_up_to_the_match(
    run: Run, write_instance: Callable[..., Path], state_dir: Path
) -> None:
    assert run("start", str(write_instance())).returncode == 0
    result = run("console", "vm1", "--expect", "KVMLAB-BOOT-OK", "--timeout", "10")
    assert result.returncode == 0, result.stderr
    serial = (state_dir / "log" / "vm1.serial.log").read_text()
    end = serial.index("KVMLAB-BOOT-OK") + len("KVMLAB-BOOT-OK")
    assert result.stdout == serial[:end] + "\n"  # from the boot's first byte to the match
    assert "Linux version" in result.stdout  # boot noise before the match is there
    assert "MEM " not in result.stdout  # nothing after it


def test_console_expect_timeout_is_exit_1_and_prints_what_it_saw(
    cli: Run, write_instance: Callable[..., Path], state_dir: Path
) -> None:
    assert cli("start", str(write_instance())).returncode == 0
    Hypervisor(state_dir, backend="fake").console("vm1").expect("KVMLAB-FACTS-END", 10)
    began = time.monotonic()
    result = cli("console", "vm1", "--expect", "NEVER", "--timeout", "0.5")
    assert time.monotonic() - began >= 0.5
    assert result.returncode == 1
    assert "KVMLAB-BOOT-OK" in result.stdout and "KVMLAB-FACTS-END" in result.stdout
    assert "NEVER" in one_line_error(result.stderr)


def test_console_expect_with_an_invalid_regex_is_exit_2(
    cli: Run, write_instance: Callable[..., Path]
) -> None:
    assert cli("start", str(write_instance())).returncode == 0
    result = cli("console", "vm1", "--expect", "(unclosed", "--timeout", "1")
    assert result.returncode == 2
    assert "(unclosed" in one_line_error(result.stderr)


# -- generate --------------------------------------------------------------------------


def test_generate_argv_is_one_argument_per_line_without_nics(
    write_instance: Callable[..., Path], state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = write_instance(
        nics=[
            {"mac": "52:54:00:6b:02:01", "mode": "user"},
            {"mac": "52:54:00:6b:02:02", "mode": "bridged", "link": "br0"},
        ],
    )
    assert main(["--state-dir", str(state_dir), "--backend", "fake", "generate", str(file),
                 "--argv"]) == 0  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    from kvmlab.spec.files import load_instance  # noqa: PLC0415

    expected = Hypervisor(state_dir, backend="fake").generate(load_instance(file)).argv
    assert tuple(lines) == expected
    assert not NIC_OPTIONS.intersection(lines)
    assert not any("52:54:00:6b:02" in line or "mac=" in line for line in lines)
    assert "-qmp" not in lines
    assert_nothing_in(state_dir)  # generate is pure: no state written


@pytest.mark.parametrize(("profile", "no_acpi"), [("qemu-10.0", False), ("qemu-7.2", True)])
def test_generate_profile_chooses_how_acpi_is_disabled(
    cli: Run, write_instance: Callable[..., Path], profile: str, no_acpi: bool
) -> None:
    file = write_instance(hvparams={"kernel_path": "", "vnc_bind_address": "", "acpi": False})
    result = cli("generate", str(file), "--profile", profile)
    assert result.returncode == 0, result.stderr
    argv = json.loads(result.stdout)["argv"]
    machine = argv[argv.index("-machine") + 1]
    assert ("-no-acpi" in argv) is no_acpi
    assert ("acpi=off" in machine.split(",")) is not no_acpi


def test_generate_on_a_ganeti_facts_profile(cli: Run, write_instance: Callable[..., Path]) -> None:
    """Ganeti's QEMU 0.9.1 is bundled as facts: no -machine option, so -no-acpi."""
    file = write_instance(hvparams={"kernel_path": "", "vnc_bind_address": "", "acpi": False})
    result = cli("generate", str(file), "--profile", "ganeti-0.9.1")
    assert result.returncode == 0, result.stderr
    argv = json.loads(result.stdout)["argv"]
    assert "-no-acpi" in argv and "-machine" not in argv
    unknown = cli("generate", str(file), "--profile", "ganeti-9.9")
    assert unknown.returncode == 2
    assert "ganeti-0.9.1" in unknown.stderr and "qemu-10.0" in unknown.stderr


# -- --debug, environment --------------------------------------------------------------


def test_debug_shows_a_traceback_and_the_default_does_not(run: Run) -> None:
    plain = run("info", "nope")
    assert plain.returncode == 2
    one_line_error(plain.stderr)
    debug = subprocess.run(
        [KVMLAB, "--state-dir", "/nonexistent-kvmlab", "--backend", "fake", "--debug",
         "info", "nope"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert debug.returncode != 0
    assert "Traceback (most recent call last)" in debug.stderr
    assert "UnknownInstanceError" in debug.stderr


def test_debug_keeps_the_exit_code(run: Run) -> None:
    result = run("--debug", "info", "nope")
    assert "Traceback" in result.stderr
    assert result.returncode == 2


def test_debug_in_process_adds_the_traceback_and_keeps_exit_2(
    state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--state-dir", str(state_dir), "--backend", "fake", "info", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kvmlab: error: ") and "Traceback" not in err
    args = ["--state-dir", str(state_dir), "--backend", "fake", "--debug", "info", "nope"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "UnknownInstanceError" in err


def test_environment_variables_choose_state_dir_and_backend(
    run: Run, write_instance: Callable[..., Path], state_dir: Path
) -> None:
    env = {**os.environ, "KVMLAB_STATE_DIR": str(state_dir), "KVMLAB_BACKEND": "fake"}
    started = run("start", str(write_instance()), env=env, globals_=False)
    assert started.returncode == 0, started.stderr
    assert (state_dir / "conf" / "vm1.runtime").is_file()
    info = json.loads(run("info", "vm1", "--json", env=env, globals_=False).stdout)
    assert info["state"] == "running"
    assert info["argv"][0].endswith("kvmlab-fake-kvm")  # the fake, not real QEMU
    # An explicit option wins over the environment.
    other = state_dir.parent / "other"
    listed = run("--state-dir", str(other), "list", "--json", env=env, globals_=False)
    assert json.loads(listed.stdout) == []


def test_environment_backend_in_process(
    monkeypatch: pytest.MonkeyPatch,
    write_instance: Callable[..., Path],
    state_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("KVMLAB_STATE_DIR", str(state_dir))
    monkeypatch.setenv("KVMLAB_BACKEND", "fake")
    assert main(["generate", str(write_instance()), "--argv"]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith("kvmlab-fake-kvm")


# -- demo ------------------------------------------------------------------------------


def test_demo_on_the_fake_passes_and_shows_the_replay(run: Run) -> None:
    result = run("demo")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "soft reboot" in result.stdout
    assert "the saved runtime was replayed" in result.stdout
    assert "demo passed" in result.stdout
    assert "backend: fake" in result.stdout


def test_demo_accepts_backend_after_the_subcommand(run: Run, state_dir: Path) -> None:
    result = run("demo", "--backend", "fake", "--state-dir", str(state_dir), globals_=False)
    assert result.returncode == 0, result.stderr
    assert "the saved runtime was replayed" in result.stdout


def test_diff_exit_codes(run: Run, tmp_path: Path) -> None:
    golden = Path(__file__).resolve().parents[2] / "fixtures" / "golden"
    same = run("diff", str(golden / "qemu-7.2"), str(golden / "qemu-7.2"), globals_=False)
    assert same.returncode == 0, same.stderr
    moved = run("diff", str(golden / "qemu-7.2"), str(golden / "qemu-10.0"), globals_=False)
    assert moved.returncode == 1
    assert "-no-acpi" in moved.stdout and "guest-visible" in moved.stdout
    missing = run("diff", str(tmp_path / "nope.json"), str(tmp_path / "nope.json"), globals_=False)
    assert missing.returncode == 2
    assert len(missing.stderr.strip().splitlines()) == 1


def _golden_pair(root: Path) -> tuple[Path, Path]:
    """Two small golden trees: one case each way, one changed, one refused then generated."""
    from kvmlab.golden.fileformat import render_args  # noqa: PLC0415

    old, new = root / "old" / "p", root / "new" / "p"
    argv = ["/usr/bin/kvm", "-m", "128", "-pidfile", "/a/pid", "-daemonize"]
    drive = ["-drive", "file=/d,if=virtio,cache=none"]
    start = ["-netdev", "tap,id=net0,script=/a/up", "-device", "e1000,netdev=net0,id=nic0"]
    files = {
        old / "same.args": render_args(argv, ()),
        new / "same.args": render_args(argv, ()),
        old / "gone.args": render_args(argv, ()),
        new / "fresh.args": render_args(argv, ()),
        old / "vm.args": render_args([*argv, *drive], start),
        new / "vm.args": render_args(
            ["/usr/bin/kvm", "-m", "256", "-pidfile", "/b/pid", "-drive", "file=/d,if=virtio"],
            [start[0], "tap,id=net0,script=/b/up", *start[2:]],
        ),
        old / "refused.error": "vm: refused <here>\n",
        new / "refused.args": render_args(argv, ()),
    }
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return old.parent, new.parent


def test_diff_prints_the_whole_report(cli: Run, tmp_path: Path) -> None:
    old, new = _golden_pair(tmp_path)
    trees = cli("diff", str(old), str(new))
    assert (trees.returncode, trees.stderr) == (1, "")
    assert trees.stdout == (
        f"--- {old}\n"
        f"+++ {new}\n"
        f"+ case p/fresh (only in {new})\n"
        f"- case p/gone (only in {old})\n"
        "~ case p/refused:\n"
        "    guest-visible (1):\n"
        "      ~ (outcome) (outcome): vm: refused <here> -> generated\n"
        "~ case p/vm:\n"
        "    guest-visible (2):\n"
        "      ~ -m: 128 -> 256\n"
        "      ~ -drive [disk#0]: file=/d,if=virtio,cache=none -> file=/d,if=virtio\n"
        "          -cache=none\n"
        "    host-only (3):\n"
        "      ~ -pidfile: /a/pid -> /b/pid\n"
        "      - -daemonize: (flag)\n"
        "      ~ (start) -netdev [id=net0]: tap,id=net0,script=/a/up -> tap,id=net0,script=/b/up\n"
        "          script=/a/up -> script=/b/up\n"
        "2 changed, 1 added, 1 removed, 1 unchanged; 3 guest-visible changes\n"
    )
    files = cli("diff", str(old / "p" / "vm.args"), str(old / "p" / "vm.args"))
    assert (files.returncode, files.stderr) == (0, "")
    assert files.stdout == f"--- {old}/p/vm.args\n+++ {old}/p/vm.args\nno differences\n"


def test_diff_of_two_instance_files_exits_1_when_they_differ(cli: Run) -> None:
    cases = Path(__file__).resolve().parents[2] / "fixtures" / "cases"
    same, other = str(cases / "acpi-off.json"), str(cases / "localtime-clock.json")
    equal = cli("diff", same, same)
    assert (equal.returncode, equal.stdout) == (0, f"--- {same}\n+++ {same}\nno differences\n")
    differ = cli("diff", same, other)
    assert (differ.returncode, differ.stderr) == (1, "")
    assert differ.stdout.startswith(f"--- {same}\n+++ {other}\nguest-visible (3):\n")


# -- exec: commands in the guest ---------------------------------------------------------


def test_exec_prints_the_output_and_exits_with_the_command_status(
    run: Run, write_instance: Callable[..., Path]
) -> None:
    assert run("start", str(write_instance())).returncode == 0
    result = run("exec", "vm1", "--", "cat", "/sys/class/net/eth0/address")
    assert (result.returncode, result.stdout, result.stderr) == (0, "52:54:00:6b:02:01\n", "")
    failed = run("exec", "vm1", "--", "sh", "-c", "echo -n partial; exit 3")
    assert (failed.returncode, failed.stdout) == (3, "partial")
    missing = run("exec", "vm1", "--", "nope")
    assert (missing.returncode, missing.stdout) == (127, "sh: nope: not found\n")


def test_exec_timeout_is_exit_1_in_one_line(cli: Run, write_instance: Callable[..., Path]) -> None:
    assert cli("start", str(write_instance())).returncode == 0
    result = cli("exec", "vm1", "--timeout", "0.5", "--", "sleep", "5")
    assert result.returncode == 1
    assert "did not finish within 0.5 s" in one_line_error(result.stderr)


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["exec", "nope", "--", "true"], 2),  # unknown instance
        (["exec", "vm1"], 2),  # no command
        (["exec", "vm1", "--", "echo", "a\nb"], 2),  # not one line
    ],
)
def test_exec_bad_input_is_exit_2(
    cli: Run, write_instance: Callable[..., Path], args: list[str], code: int
) -> None:
    assert cli("start", str(write_instance())).returncode == 0
    result = cli(*args)
    assert result.returncode == code
    one_line_error(result.stderr)


def test_exec_on_a_stopped_instance_is_exit_1(
    cli: Run, write_instance: Callable[..., Path]
) -> None:
    assert cli("start", str(write_instance())).returncode == 0
    assert cli("stop", "vm1", "--force").returncode == 0
    result = cli("exec", "vm1", "--", "true")
    assert result.returncode == 1
    assert "not running" in one_line_error(result.stderr)
