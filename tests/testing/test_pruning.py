"""Pruning the template cache (kvmlab.testing.pruning): what no one used for a while, or the
least recently used beyond a budget, is removed when a template is built; a template a
process holds is never removed, and a removal is never seen half done.

Most templates here are made by hand (a directory of the right name, a last-use mark of
a chosen age): pruning looks at nothing else. The ones that are loaded are real, built
on the fake kvm.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmlab.errors import OptionValueError
from kvmlab.lifecycle.hypervisor import Hypervisor
from kvmlab.lifecycle.snapshots.record import verify_state
from kvmlab.spec.instance import Instance
from kvmlab.testing import pruning
from kvmlab.testing.pruning import (
    BUDGET_ENV,
    MAX_AGE_ENV,
    configured_limits,
    flock,
    lock_of,
    prune,
)
from kvmlab.testing.templates import boot_copy, default_instance, template_lease

pytest_plugins = ["pytester"]

FAKE_ONLY = pytest.mark.parametrize("kvmlab_backend", ["fake"], indirect=True)
DAY = 86400.0
MIB = 1 << 20


@pytest.fixture
def root() -> Iterator[Path]:
    """A templates directory of the test's own (short: its labs hold unix sockets)."""
    path = Path(tempfile.mkdtemp(prefix="kt-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def _default_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MAX_AGE_ENV, raising=False)
    monkeypatch.delenv(BUDGET_ENV, raising=False)


def made_template(root: Path, key: str, *, age_days: float, size: int = 1024) -> Path:
    """A template directory as a build leaves it, last used ``age_days`` ago."""
    directory = root / (key * 24)[:24]
    (directory / "lab").mkdir(parents=True)
    (directory / "lab" / "template.state").write_bytes(b"\x01" * size)
    (directory / "template.json").write_text("{}\n")
    (directory / "last-used").touch()
    used = time.time() - age_days * DAY
    for name in ("template.json", "last-used"):
        os.utime(directory / name, (used, used))
    lock_of(directory).touch()
    return directory


def entries(root: Path) -> list[str]:
    return sorted(path.name for path in root.iterdir())


HOLDER = textwrap.dedent(
    """
    import fcntl, os, sys
    fd = os.open(sys.argv[1], os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX if sys.argv[2] == "exclusive" else fcntl.LOCK_SH)
    print("held", flush=True)
    sys.stdin.readline()
    """
)


class Holder:
    """Another process holding a template's lock, as one loading (shared) or building
    (exclusive) it does."""

    def __init__(self, lock: Path, mode: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(lock), mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        assert self.process.stdout.readline() == "held\n"

    def release(self) -> None:
        self.process.communicate("go\n", timeout=30)
        assert self.process.returncode == 0


@FAKE_ONLY
def test_old_unused_templates_are_pruned_when_a_template_is_built(lab, root) -> None:
    old = made_template(root, "a", age_days=8)
    recent = made_template(root, "b", age_days=6)
    with template_lease(default_instance(None), lab.backend, root) as (template, built):
        assert built
    assert not old.exists() and not lock_of(old).exists()
    assert recent.exists() and lock_of(recent).exists()
    names = [recent.name, template.directory.name]
    assert entries(root) == sorted(names + [f"{name}.lock" for name in names]), (
        "nothing left of the old one, not even hidden"
    )
    # A use marks the template: it is the most recently used one.
    assert pruning.last_used(template.directory) > pruning.last_used(recent)


@FAKE_ONLY
def test_a_load_prunes_nothing_and_an_age_limit_of_0_keeps_all(
    lab, root, monkeypatch: pytest.MonkeyPatch
) -> None:
    with template_lease(default_instance(None), lab.backend, root) as (_template, built):
        assert built
    old = made_template(root, "a", age_days=30)
    with template_lease(default_instance(None), lab.backend, root) as (_template, built):
        assert not built
    assert old.exists(), "only a build prunes"
    monkeypatch.setenv(MAX_AGE_ENV, "0")
    other = default_instance(None).model_copy(update={"memory": 256})
    with template_lease(other, lab.backend, root) as (_template, built):
        assert built
    assert old.exists()


@pytest.mark.parametrize("mode", ["shared", "exclusive"])
def test_a_template_another_process_holds_is_kept(root, mode: str) -> None:
    busy = made_template(root, "a", age_days=30)
    idle = made_template(root, "b", age_days=30)
    holder = Holder(lock_of(busy), mode)
    try:
        report = prune(max_age=0, budget=None, root=root)
    finally:
        holder.release()
    assert report.removed == (idle,) and report.busy == (busy,) and report.kept == 1
    assert (busy / "lab" / "template.state").stat().st_size == 1024, "all of it kept"
    assert prune(max_age=0, budget=None, root=root).removed == (busy,)
    assert entries(root) == []


def test_the_budget_removes_the_least_recently_used_first(root) -> None:
    # Made in another order than their use, so the order of use is the only one.
    second = made_template(root, "a", age_days=3, size=MIB)
    newest = made_template(root, "b", age_days=1, size=MIB)
    oldest = made_template(root, "c", age_days=4, size=MIB)
    third = made_template(root, "d", age_days=2, size=MIB)
    (third / "last-used").unlink()  # older kvmlab marked no use: its marker's time counts
    report = prune(max_age=None, budget=2 * MIB + MIB // 2, root=root)
    assert report.removed == (oldest, second)
    assert report.freed >= 2 * MIB and report.kept == 2
    assert third.exists() and newest.exists()
    # Under budget: nothing more goes.
    assert prune(max_age=None, budget=3 * MIB, root=root).removed == ()


def test_the_template_just_built_is_kept_over_budget(root) -> None:
    built = made_template(root, "a", age_days=0, size=MIB)
    other = made_template(root, "b", age_days=1, size=MIB)
    report = prune(max_age=None, budget=0, root=root, keep=[built])
    assert report.removed == (other,) and built.exists()


@FAKE_ONLY
def test_a_half_removed_template_is_never_loaded(
    lab: Hypervisor, root, monkeypatch: pytest.MonkeyPatch
) -> None:
    instance: Instance = default_instance(None)
    first = boot_copy(lab, instance, root)
    lab.stop(first.name, force=True)
    lab.cleanup(first.name)
    template = first.template

    def killed_mid_way(path: Path, ignore_errors: bool = False) -> None:
        # A pruner killed while deleting: the state went, the rest stayed.
        for state in Path(path).glob("lab/snap/*/*.state"):
            state.unlink()

    with monkeypatch.context() as patch:
        patch.setattr(shutil, "rmtree", killed_mid_way)
        assert prune(max_age=0, budget=None, root=root).removed == (template.directory,)
    left = [path for path in root.iterdir() if path.name.startswith(".")]
    assert len(left) == 1 and (left[0] / "template.json").exists(), "half removed, hidden"
    assert not template.directory.exists()
    again = boot_copy(lab, instance, root)
    assert again.built, "built anew, not loaded from what was left"
    assert lab.guest(again.name).run(["true"]).exit_code == 0
    assert template.complete()
    # The next prune deletes what the killed one left.
    prune(max_age=None, budget=None, root=root)
    assert not any(path.name.startswith(".") for path in root.iterdir())


def opened(path: Path) -> bool:
    """This process has ``path`` open."""
    for fd in Path("/proc/self/fd").iterdir():
        try:
            if os.readlink(fd) == str(path):
                return True
        except OSError:
            continue
    return False


def test_a_lock_removed_while_waiting_for_it_is_taken_again(root) -> None:
    """A pruner removes the lock file of the template it removes: a process that was
    waiting for that lock must not hold the removed file while another takes the new one."""
    lock = root / ("a" * 24 + ".lock")
    lock.touch()
    holder = Holder(lock, "exclusive")
    taken = threading.Event()
    done = threading.Event()

    def waiter() -> None:
        with flock(lock, exclusive=True):
            taken.set()
            done.wait(30)

    thread = threading.Thread(target=waiter)
    thread.start()
    try:
        while not opened(lock):  # the waiter has the file open: it waits for that one
            assert thread.is_alive()
            time.sleep(0.01)
        lock.unlink()  # as the pruner does, holding it
        holder.release()
        assert taken.wait(30)
        assert lock.exists(), "the waiter holds a lock file at the path again"
        assert pruning._try_exclusive(lock) is None, "so no one else can take it"
    finally:
        done.set()
        thread.join(30)


@FAKE_ONLY
@pytest.mark.parametrize(
    ("variable", "value"),
    [(MAX_AGE_ENV, "-1"), (MAX_AGE_ENV, "nan"), (MAX_AGE_ENV, "week"), (BUDGET_ENV, "1.5G")],
)
def test_a_bad_limit_is_refused_before_a_build(
    lab, root, monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    old = made_template(root, "a", age_days=30)
    monkeypatch.setenv(variable, value)
    with (
        pytest.raises(OptionValueError, match=rf"{variable}={value!r}"),
        template_lease(default_instance(None), lab.backend, root),
    ):
        pass
    directories = [path for path in root.iterdir() if path.is_dir()]
    assert directories == [old], "nothing built or pruned"
    # The lock the lease took stays behind: the next prune removes it, as any of no template.
    prune(max_age=None, budget=None, root=root)
    assert entries(root) == sorted([old.name, f"{old.name}.lock"])


def test_the_limits_of_the_environment() -> None:
    assert configured_limits({}) == (7 * DAY, 2048 * MIB)
    assert configured_limits({MAX_AGE_ENV: "0.5", BUDGET_ENV: "100"}) == (DAY / 2, 100 * MIB)
    assert configured_limits({MAX_AGE_ENV: "0", BUDGET_ENV: "0"}) == (None, None)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(OptionValueError, match="max_age"):
            prune(max_age=bad, budget=None)
    with pytest.raises(OptionValueError, match="budget"):
        prune(max_age=None, budget=-1)


PRUNER = textwrap.dedent(
    """
    import sys, threading
    from pathlib import Path
    from kvmlab.testing.pruning import prune

    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
    rounds = 0
    while not stop.is_set():
        rounds += len(prune(max_age=0, budget=None, root=Path(sys.argv[1])).removed)
    print(rounds)
    """
)


@FAKE_ONLY
def test_a_pruner_racing_the_leases_never_hands_out_half_a_template(lab, root) -> None:
    """Another process prunes all it can, over and over, while this one takes leases:
    each lease holds a whole template (its state matches its record).

    After each lease the test waits until the pruner has taken the template away, so
    every lease after the first races a build against a pruner that just removed one
    (without the wait, a loaded machine may never give the pruner a turn between two
    leases, and the race this test is about would not happen)."""
    instance = default_instance(None)
    pruner = subprocess.Popen(
        [sys.executable, "-c", PRUNER, str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(5):
            with template_lease(instance, lab.backend, root) as (template, _built):
                record = template.record()
                verify_state(template.state_path, record, "the leased template")
                assert (template.directory / "boot-console.log").exists()
            deadline = time.monotonic() + 60
            while template.directory.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert not template.directory.exists(), "the pruner never removed a free template"
    finally:
        output, _ = pruner.communicate("stop\n", timeout=60)
    assert pruner.returncode == 0
    assert int(output) >= 5, "the pruner removed the template after each lease"


def test_pytest_clear_templates_removes_the_unused_ones(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(pruning, "fallback_root", lambda: tmp_path / "short")
    cache = pruning.templates_root()
    cache.mkdir(parents=True)
    unused = made_template(cache, "a", age_days=0, size=2 * MIB)
    busy = made_template(cache, "b", age_days=30)
    pytester.makepyfile("def test_nothing():\n    pass\n")
    holder = Holder(lock_of(busy), "shared")
    try:
        result = pytester.runpytest("-p", "no:cacheprovider", "--kvmlab-clear-templates")
    finally:
        holder.release()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["kvmlab: cleared 1 templates (2 MiB), 1 in use kept"])
    assert not unused.exists() and busy.exists()
