"""A property over every command that acts on a running VM, with random bad input.

Hypothesis picks a command (``exec``, ``console``, ``stop``, ``reboot``, ``attach-nic``,
``detach-nic``, ``attach-disk``, ``detach-disk``, ``migrate``, ``recover``) and its
option values, names and paths, mostly from the edges that once went wrong (``nan``,
``inf``, ``-1``, ``1e308``, an empty path, the lab's own directory spelled through
``..``, a symlink, a relative path or a trailing slash, a regular file, the all-zero
MAC) and partly at random. After each run of the ``kvmlab`` console script:

- the exit code is 0, 1 or 2, and there is no traceback;
- every stderr line is kvmlab's (``kvmlab...``), never a library's log record;
- a refusal (exit 2) is one error line, the VM's process is the same and alive, its
  saved runtime is byte for byte the same, and no file appeared or went anywhere in the
  working folder (both labs, the working directory);
- a failure (exit 1) of anything but ``stop`` and ``reboot`` lost no VM: the same
  process still runs.

A run that changed the lab (a valid stop, migration, hotplug) is followed by a fresh
start, so each example begins with vm1 running in ``sd``. On the fake it runs in CI;
``test_bad_input_property_on_qemu`` is a short version on real QEMU.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers_reliability import KVMLAB, MAC1, kill_all_under, snapshot, write_instance
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmlab.guest.build import boot_hvparams

#: Random text for a name: anything an argv can carry (no NUL, no surrogate).
_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)
#: Random text for a path, relative and without ``..``: a valid one (a migration, say)
#: must stay inside the test's folder (the working directory), whatever it is.
_RELATIVE = _TEXT.filter(lambda text: ".." not in text and not text.startswith(("/", "~")))
#: The lab directories a valid migration to the folder itself would create there.
_LAB_DIRS = ("conf", "ctrl", "lock", "log", "nic", "pid")
#: Durations: the edges first; the valid ones are short, so a valid wait stays quick.
DURATIONS = st.sampled_from(
    [
        "-1",
        "0",
        "-0",
        "nan",
        "NaN",
        "inf",
        "-inf",
        "1e308",
        "3000000",
        "604801",
        "1e-400",
        "abc",
        "",
        " ",
        "0x10",
        "1_0",
        "0.5",
        "2",
    ]
) | st.floats(allow_nan=True, allow_infinity=True).filter(lambda x: not 2 < x <= 604800).map(repr)
NAMES = st.sampled_from(["vm1", "nosuch", "", "VM1", "../vm1", "vm1/", "a" * 64, "-x"]) | _TEXT
MACS = (
    st.sampled_from(
        [
            "00:00:00:00:00:00",
            "ff:ff:ff:ff:ff:ff",
            "01:00:5e:00:00:01",
            MAC1,
            MAC1.upper(),
            "52:54:00:6b:09:77",
            "52:54:00:6b:09",
            "zz:54:00:6b:09:01",
            "",
        ]
    )
    | _TEXT
)
#: Paths, as markers resolved against the world (``{sd}``: the lab, ``{w}``: the folder).
LAB_PATHS = (
    st.sampled_from(
        [
            "",
            ".",
            "{w}/tg/..",
            "sd",
            "{sd}",
            "{sd}/",
            "{sd}/.",
            "{w}/tg/../sd",
            "{w}/link",
            "{w}/afile",
            "{w}/afile/lab",
            "/dev/null",
            "{w}/tg",
            "{w}/tg/",
            "tg",
        ]
    )
    | _RELATIVE
)
DISK_PATHS = (
    st.sampled_from(
        [
            "",
            ".",
            "/",
            "{w}/missing.img",
            "{w}/disk.img",
            "{w}/disk.img/",
            "{w}/tg/../disk.img",
            "{w}/disklink",
            "/dev/null",
            "{w}",
            "disk.img",
        ]
    )
    | _RELATIVE
)


@st.composite
def commands(draw: st.DrawFn) -> list[str]:
    """One command line (after ``kvmlab --state-dir sd --backend B``), with markers."""
    kind = draw(
        st.sampled_from(
            [
                "exec",
                "console",
                "stop",
                "reboot",
                "attach-nic",
                "detach-nic",
                "attach-disk",
                "detach-disk",
                "migrate",
                "recover",
            ]
        )
    )
    name = draw(NAMES)

    def duration(option: str) -> list[str]:
        return [f"{option}={draw(DURATIONS)}"] if draw(st.booleans()) else []

    if kind == "exec":
        words = draw(st.sampled_from([["true"], ["false"], ["echo", "hi"], []]))
        return [
            kind,
            name,
            *duration("--timeout"),
            f"--ready-timeout={draw(DURATIONS)}",
            "--",
            *words,
        ]
    if kind == "console":
        expect = draw(st.sampled_from([[], ["--expect", "("], ["--expect", "NEVER-SEEN"]]))
        return [kind, name, *expect, *duration("--timeout")]
    if kind == "stop":
        return [kind, name, *(["--force"] if draw(st.booleans()) else []), *duration("--timeout")]
    if kind == "attach-nic":
        mode = draw(st.sampled_from([[], ["--mode", "bridged"], ["--mode", "x"]]))
        return [kind, name, "--mac", draw(MACS), *mode]
    if kind == "detach-nic":
        return [kind, name, draw(MACS)]
    if kind == "attach-disk":
        return [kind, name, draw(DISK_PATHS), *draw(st.sampled_from([[], ["--mode", "ro"]]))]
    if kind == "detach-disk":
        return [kind, name, draw(DISK_PATHS)]
    if kind == "migrate":
        offline = ["--offline"] if draw(st.booleans()) else []
        return [kind, name, "--to", draw(LAB_PATHS), *duration("--timeout"), *offline]
    return [kind, name]  # reboot, recover


@dataclass
class World:
    """A working folder with vm1 running in ``sd``, and what a refusal must leave alone."""

    root: Path
    backend: str
    instance: Path
    pid: int = 0
    before: dict[str, tuple[int, bytes | None]] = field(default_factory=dict)

    @property
    def sd(self) -> Path:
        return self.root / "sd"

    def run(self, args: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        words = [arg.replace("{sd}", str(self.sd)).replace("{w}", str(self.root)) for arg in args]
        return subprocess.run(
            [KVMLAB, "--state-dir", str(self.sd), "--backend", self.backend, *words],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.root,
            check=False,
        )

    def fresh_start(self) -> None:
        """Kill what runs, forget both labs, start vm1 again."""
        kill_all_under(self.root)
        for lab in ("sd", "tg", *_LAB_DIRS):
            shutil.rmtree(self.root / lab, ignore_errors=True)
        started = self.run(["start", str(self.instance)])
        assert started.returncode == 0, started.stderr
        self.remember()

    def remember(self) -> None:
        self.pid = int((self.sd / "pid" / "vm1").read_text())
        self.before = self.files()

    def files(self) -> dict[str, tuple[int, bytes | None]]:
        """Everything under the folder but what changes while a VM runs (its logs, the
        sockets' inodes), with the saved runtime's bytes."""
        found = snapshot(self.root)
        return {path: value for path, value in found.items() if not path.startswith("sd/log/")}

    def unchanged(self) -> bool:
        return running(self.pid) and self.files() == self.before


def running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
    return stat[0] not in ("Z", "X")


def make_world(root: Path, backend: str, hvparams: dict[str, object]) -> World:
    (root / "afile").write_text("not a directory\n")
    (root / "link").symlink_to(root / "sd")
    (root / "disk.img").write_bytes(b"\0" * 1024 * 1024)
    (root / "disklink").symlink_to(root / "disk.img")
    instance = write_instance(root / "vm1.json", memory=192, hvparams=hvparams)
    world = World(root, backend, instance)
    world.fresh_start()
    return world


def check(world: World, args: list[str]) -> None:
    """Run one command and hold it to the contract of the module's docstring."""
    result = world.run(args)
    shown = f"kvmlab {' '.join(args)!r}: exit {result.returncode}\n{result.stderr}"
    assert result.returncode in (0, 1, 2), shown
    assert "Traceback" not in result.stderr, shown
    lines = result.stderr.splitlines()
    assert all(line.startswith("kvmlab") for line in lines), shown
    if result.returncode == 2:
        assert len(lines) == 1 and "error: " in lines[0], shown
        assert running(world.pid), f"the VM is gone: {shown}"
        assert world.files() == world.before, f"files changed: {shown}"
        return
    if result.returncode == 1 and args[0] not in ("stop", "reboot"):
        assert running(world.pid), f"the VM is gone: {shown}"
    if not world.unchanged():
        world.fresh_start()


def _property(world_factory: Callable[[], World], examples: int) -> Callable[[], None]:
    state: dict[str, World] = {}

    @settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(args=commands())
    def prop(args: list[str]) -> None:
        if "world" not in state:
            state["world"] = world_factory()
        check(state["world"], args)

    return prop


@pytest.mark.usefixtures("host_taps")  # as root, a bridged attach-nic makes a tap
def test_bad_input_property_on_the_fake(workdir: Path) -> None:
    _property(lambda: make_world(workdir, "fake", boot_hvparams()), examples=60)()


@pytest.mark.qemu
@pytest.mark.usefixtures("host_taps")  # as root, a bridged attach-nic makes a tap
def test_bad_input_property_on_qemu(workdir: Path, request: pytest.FixtureRequest) -> None:
    from kvmlab.testing.plugin import require_qemu  # noqa: PLC0415

    require_qemu()
    guest = request.getfixturevalue("test_guest")
    _property(lambda: make_world(workdir, "qemu", boot_hvparams(guest)), examples=8)()


def test_the_strategies_reach_every_command() -> None:
    """The property draws every command it promises to (a guard on the strategy)."""
    seen: set[str] = set()

    @settings(max_examples=300, database=None)
    @given(args=commands())
    def collect(args: list[str]) -> None:
        seen.add(args[0])

    collect()
    assert seen == {
        "exec",
        "console",
        "stop",
        "reboot",
        "attach-nic",
        "detach-nic",
        "attach-disk",
        "detach-disk",
        "migrate",
        "recover",
    }
