"""kvmlab's pytest plugin (entry point ``pytest11``): lab fixtures for any test suite.

Fixtures, in tiers::

    kvmlab_backend  "fake" by default; parametrise with indirect=True
                    ("qemu" needs qemu-system-x86_64: skipped without it,
                    a failure under CI=true)
    lab             a Hypervisor on a fresh short state directory, on that backend;
                    every instance still running at teardown is killed, and when
                    the test failed its logs are copied to the test's tmp_path
    fake_lab        the same, always on the fake kvm
    test_guest      the built test guest (kernel + initramfs), session-scoped
    booted_vm       the default test guest (``vm1``) running in ``lab``, restored from
                    a template snapshot instead of booted: ``.lab``, ``.name``,
                    ``.facts`` (its boot's facts); the template is built on first use
    booted_vm_factory
                    ``booted_vm_factory(instance)``: the same for a test's own instance
                    (one template per key: QEMU binary, guest image, runtime)

Example::

    @pytest.mark.parametrize("kvmlab_backend", ["fake", "qemu"], indirect=True)
    def test_boots(lab, test_guest):
        ...

Importing this module has no side effects: nothing is probed, built or started
until a test asks for a fixture.

Under pytest-xdist (``pytest -n auto``) each worker is a process of its own, and the
fixtures stay correct without help:

- ``lab`` and ``fake_lab`` give every test a fresh state directory of its own
  (``/tmp/kl-*``: short, for unix socket paths), so instance names, pidfiles, sockets
  and logs never meet across workers;
- ``test_guest`` is session-scoped per worker, but the build is shared: the first
  worker builds (and downloads) it under an ``flock`` on the guest cache directory,
  the others wait for the lock and reuse the finished image;
- the accelerator probe of the qemu backend runs once per binary and host boot on the
  machine: its verdict is cached in ``accel.json``, written atomically under a lock
  (a worker that misses waits for a probe in progress instead of booting another);
- daemonized QEMU and fake kvm processes are reaped by the process that started them
  (it makes itself a child subreaper), so a worker does not collect zombies;
- ``booted_vm`` templates are built once per key under an ``flock`` in the cache
  directory (``.../kvmlab/templates/``) and loaded under a shared one: two workers asking
  for the same template build it once, and later runs reuse it
  (:mod:`kvmlab.testing.templates` says what a restored copy is);
- what is shared by the whole machine stays the test's to keep apart: a bridge or tap
  name, a TCP port (use a random suffix, or ``PYTEST_XDIST_WORKER``, ``gw0``...).

Templates no one used for a while are pruned when a template is built
(:mod:`kvmlab.testing.pruning`); ``pytest --kvmlab-clear-templates`` removes every template
no process is using before the session starts (once, in the main process).

When a test that uses ``lab`` or ``fake_lab`` fails, its report shows what each instance
of that lab went through, one section each (the last :data:`REPORT_LINES` lines, read
while the VMs still run), beside the path of the copied logs::

    ---- kvmlab vm1: serial console (last 30 lines) ----
    ---- kvmlab vm1: QEMU log (last 30 lines) ----          (log/vm1.log: QEMU's stderr)
    ---- kvmlab vm1: QMP traffic kvmlab saw (last 30 lines) ----

The QMP section is ``log/vm1.qmp.log``: the commands kvmlab sent, their error replies
and the events QEMU sent while a kvmlab session was connected. QEMU sends events only
to a connected client, and kvmlab connects only for its own commands, so it is not
every event of the VM (an event with no session connected is seen by no one).

A test waiting on ``lab.console(name).expect(...)`` or ``lab.guest(name).run(...)`` does
not wait out its timeout for a guest that panicked or whose QEMU exited: the wait
raises :class:`~kvmlab.errors.GuestDownError` at once, with the console's last lines.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from kvmlab.guest.build import GuestImage
    from kvmlab.lifecycle.hypervisor import Hypervisor
    from kvmlab.spec.instance import Instance
    from kvmlab.testing.templates import BootedVM

__all__ = ["REPORT_LINES", "in_ci", "require_qemu", "stop_all", "vm_processes"]

_FAILED = pytest.StashKey[bool]()
#: What ``--kvmlab-clear-templates`` removed, for the report header.
_CLEARED = pytest.StashKey[str]()
#: The labs a test's fixtures made, for its failure report.
_LABS = pytest.StashKey["list[Hypervisor]"]()
#: Lines of each log a failure report shows.
REPORT_LINES = 30
#: Bytes read from the end of a log for its last lines (a long line is cut, not a report).
_TAIL_BYTES = 64 * 1024


def in_ci() -> bool:
    """``CI=true``: a missing QEMU or guest is a failure, not a skip."""
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _skip_or_fail(reason: str) -> None:
    if in_ci():
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


def require_qemu() -> str:
    """The QEMU binary; skip (laptop) or fail (CI) without one."""
    from kvmlab.host.backends import find_qemu  # noqa: PLC0415

    binary = find_qemu()
    if binary is None:
        _skip_or_fail("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
    assert binary is not None
    return binary


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("kvmlab").addoption(
        "--kvmlab-clear-templates",
        action="store_true",
        default=False,
        help="remove the booted_vm templates no process is using before the session",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "qemu: needs a real qemu-system-x86_64 (skipped without one, fails under CI=true)",
    )
    # The main process only: an xdist worker starting late would remove what another built.
    if config.getoption("kvmlab_clear_templates") and not hasattr(config, "workerinput"):
        from kvmlab.testing.pruning import prune  # noqa: PLC0415

        report = prune(max_age=0, budget=None)
        busy = f", {len(report.busy)} in use kept" if report.busy else ""
        config.stash[_CLEARED] = (
            f"kvmlab: cleared {len(report.removed)} templates"
            f" ({report.freed / (1 << 20):.0f} MiB){busy}"
        )


def pytest_report_header(config: pytest.Config) -> str | None:
    return config.stash.get(_CLEARED, None)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call" and report.failed:
        item.stash[_FAILED] = True
    if report.failed and report.when in ("setup", "call"):
        for lab in item.stash.get(_LABS, []):
            report.sections.extend(guest_sections(lab))
    return report


def _tail(path: Path, lines: int = REPORT_LINES) -> str | None:
    """The last ``lines`` lines of ``path``; ``None`` when there is no such file."""
    try:
        with path.open("rb") as file:
            size = file.seek(0, os.SEEK_END)
            file.seek(max(0, size - _TAIL_BYTES))
            data = file.read()
    except OSError:
        return None
    text = data.decode("utf-8", errors="replace").replace("\r\n", "\n")
    return "\n".join(text.rstrip("\n").split("\n")[-lines:])


def guest_sections(lab: Hypervisor) -> list[tuple[str, str]]:
    """Report sections for each instance of ``lab``: the last lines of its serial console,
    its QEMU log and the QMP traffic kvmlab saw (``(title, text)``, as ``rep.sections``)."""
    layout = lab.layout
    names = sorted(
        path.name.removesuffix(".runtime") for path in layout.root.glob("conf/*.runtime")
    )
    sections = []
    for name in names:
        qmp = _tail(layout.qmp_log(name))
        if qmp is not None and qmp.count("\n") + 1 < REPORT_LINES:
            older = _tail(layout.qmp_log(name).with_name(f"{name}.qmp.log.1"))
            if older is not None:  # the log started over lately: its previous part first
                qmp = _tail_text(f"{older}\n{qmp}")
        for what, text in (
            ("serial console", _tail(layout.serial_log(name))),
            ("QEMU log", _tail(layout.log_file(name))),
            ("QMP traffic kvmlab saw", qmp),
        ):
            body = "(no such file)" if text is None else text or "(empty)"
            sections.append((f"kvmlab {name}: {what} (last {REPORT_LINES} lines)", body))
    return sections


def _tail_text(text: str) -> str:
    return "\n".join(text.split("\n")[-REPORT_LINES:])


@pytest.fixture
def kvmlab_backend(request: pytest.FixtureRequest) -> str:
    """The backend name: ``request.param`` when parametrised, else ``"fake"``."""
    name = str(getattr(request, "param", "fake"))
    if name == "qemu":
        require_qemu()
    return name


def stop_all(lab: Hypervisor) -> None:
    """Stop every VM a test left running in ``lab``, killing what will not stop: a
    teardown must not leave a daemon behind, whatever the test broke."""
    for info in lab.list_instances():
        if info.pid is not None:
            try:
                lab.stop(info.name, force=True)
            except Exception:
                os.kill(info.pid, 9)


def vm_processes(*labs: Hypervisor, name: str = "vm1") -> list[tuple[int, Hypervisor]]:
    """Every live process (not a zombie) started with the pidfile of ``name`` in one of
    ``labs``, with its lab: what "one VM per instance, never two" is checked against, as
    the pidfile alone cannot show a second VM that lost the race for it."""
    from kvmlab.host.process import read_cmdline  # noqa: PLC0415

    by_pidfile = {str(lab.layout.pidfile(name)): lab for lab in labs}
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        for option, value in itertools.pairwise(read_cmdline(int(entry)) or ()):
            if option == "-pidfile" and value in by_pidfile:
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                except OSError:  # it exited since
                    continue
                if stat[0] not in ("Z", "X"):
                    found.append((int(entry), by_pidfile[value]))
    return found


def _make_lab(request: pytest.FixtureRequest, backend: str) -> Iterator[Hypervisor]:
    from kvmlab.lifecycle.hypervisor import Hypervisor  # noqa: PLC0415

    # A short root: unix socket paths must stay under 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="kl-"))
    lab = Hypervisor(root, backend=backend, stop_timeout=20.0)
    labs = request.node.stash.setdefault(_LABS, [])
    labs.append(lab)
    try:
        yield lab
    finally:
        try:
            stop_all(lab)
            if request.node.stash.get(_FAILED, False) and (root / "log").is_dir():
                label = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)[:80]
                kept = Path(tempfile.mkdtemp(prefix=f"kvmlab-failed-{label}-"))
                shutil.copytree(root / "log", kept, dirs_exist_ok=True)
                request.node.add_report_section("teardown", "kvmlab", f"logs kept in {kept}")
        finally:
            labs.remove(lab)
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def lab(request: pytest.FixtureRequest, kvmlab_backend: str) -> Iterator[Hypervisor]:
    """A :class:`~kvmlab.lifecycle.hypervisor.Hypervisor` on a fresh state directory."""
    yield from _make_lab(request, kvmlab_backend)


@pytest.fixture
def fake_lab(request: pytest.FixtureRequest) -> Iterator[Hypervisor]:
    """A Hypervisor on the fake kvm, whatever the suite's backend."""
    yield from _make_lab(request, "fake")


@pytest.fixture(scope="session")
def test_guest() -> GuestImage:
    """The test guest (built once, cached by content hash); skip or fail when impossible."""
    from kvmlab.errors import KvmlabError  # noqa: PLC0415
    from kvmlab.guest.build import build_guest  # noqa: PLC0415

    try:
        return build_guest()
    except KvmlabError as err:
        _skip_or_fail(f"the test guest cannot be built: {err}")
        raise


@pytest.fixture
def booted_vm_factory(lab: Hypervisor) -> Callable[[Instance], BootedVM]:
    """``booted_vm_factory(instance)``: ``instance`` running in ``lab``, restored from its
    template (built on first use of its key) instead of booted; the guest's clock is set
    from the host. An instance with disks opens its own images, which must hold what the
    template booted from (their content is in the key)."""
    from kvmlab.testing.templates import boot_copy  # noqa: PLC0415

    return lambda instance: boot_copy(lab, instance)


@pytest.fixture
def booted_vm(
    request: pytest.FixtureRequest,
    kvmlab_backend: str,
    booted_vm_factory: Callable[[Instance], BootedVM],
) -> BootedVM:
    """The default test guest running in ``lab``, restored from its template:
    ``booted_vm.lab.guest(booted_vm.name).run(["uname", "-r"])``."""
    from kvmlab.testing.templates import default_instance  # noqa: PLC0415

    image = request.getfixturevalue("test_guest") if kvmlab_backend == "qemu" else None
    return booted_vm_factory(default_instance(image))
