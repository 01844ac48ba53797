"""A fake ``qemu-system-x86_64``: kvmlab's life cycle without QEMU, KVM or root.

kvmlab's tests, CI and laptops need a process that takes the command line
kvmlab generates, daemonizes like QEMU, writes its pidfile, serves the QMP,
monitor and serial sockets, and "boots" a guest that prints the guest facts
(``KVMLAB-BOOT-OK``, ``MEM``, ``CPUS``, ``NIC`` lines, ``KVMLAB-FACTS-END``) on
its serial console, and that can be told to fail in the ways a real one fails.
This package is that program. It imports nothing but the standard library and
gets ready faster than QEMU itself, so a test suite can start hundreds of
"VMs". ``docs/fake-kvm.md`` describes every behaviour and message.

Usage::

    kvmlab-fake-kvm [--fake-profile NAME|PATH] QEMU-OPTIONS...
    python -m kvmlab.fake [--fake-profile NAME|PATH] QEMU-OPTIONS...

The profile (first argument ``--fake-profile``, else ``$KVMLAB_FAKE_PROFILE``,
else ``qemu-7.2``) is a recorded QEMU (``fixtures/profiles/NAME/help.txt``...),
a folder holding such files, or a bare ``-help`` text file (Ganeti's old
recordings). An option the profile's help text does not list is rejected as
``-foo: invalid option``, exactly as that QEMU would, so ``-no-acpi`` fails
under ``qemu-10.0``. ``-help``, ``-version``, ``-machine help`` and
``-device help`` print the recorded texts, so ``QemuCapabilities.probe()``
works on the fake.

Environment (read once at start; a fault sticks to the process it was given to):

``KVMLAB_FAKE_PROFILE=NAME|PATH``
    the profile when ``--fake-profile`` is not given.
``KVMLAB_FAKE_LOG=PATH``
    append one JSON object per line for each event (``start``, ``ready``,
    ``boot``, ``qmp``, ``hmp``, ``script``, ``powerdown``, ``signal``, ``crash``,
    ``fail``, ``exit``), each with ``time``, ``pid`` and ``event``.
``KVMLAB_FAKE_FAIL_START=MESSAGE``
    print ``<prog>: MESSAGE`` and exit 1 before daemonizing.
``KVMLAB_FAKE_CRASH_AFTER=SECONDS``
    the VM process dies of ``SIGABRT`` that long after it became ready,
    leaving its sockets and pidfile behind like a crashed QEMU.
``KVMLAB_FAKE_IGNORE_POWERDOWN=1``
    ``system_powerdown`` emits ``POWERDOWN`` but the guest never shuts down.
``KVMLAB_FAKE_SLOW_START=SECONDS``
    wait that long before creating sockets and becoming ready.
``KVMLAB_FAKE_HANG_START=1``
    never become ready: the pidfile is written, no socket is created and a
    ``-daemonize`` parent waits forever. The VM process exits when that parent
    is killed (a real QEMU would linger) or on ``SIGTERM``.
``KVMLAB_FAKE_TAP=run``
    as root, create a tap device (``tapN``; a made-up name where
    ``/dev/net/tun`` is unusable) and run each tap NIC's up-script with its
    name, failing like QEMU when it exits non-zero. Otherwise the script is
    only checked (it must be an executable file) and ``would run SCRIPT
    TAPNAME`` is logged.
``KVMLAB_FAKE_BOOT_DELAY=SECONDS``
    delay between start (or ``cont``) and the guest's boot output (default 0).
``KVMLAB_FAKE_PANIC_AFTER=SECONDS``
    the guest's first boot panics that long after it began (``0``: before its
    facts), printing Linux's ``Kernel panic - not syncing`` report; the kernel's
    ``panic=`` argument decides whether it then hangs or resets.
``KVMLAB_FAKE_POWERDOWN_DELAY=SECONDS``
    how long an ACPI guest takes to power off after ``system_powerdown``
    (default 0.1).
``KVMLAB_FAKE_MIGRATE_STALL=1``
    (migration source) the migration never converges: ``active`` until cancelled.
``KVMLAB_FAKE_MIGRATE_DIE=1``
    the process dies of ``SIGKILL`` once a migration's transfer began (source or
    target), leaving its files behind.
``KVMLAB_FAKE_MIGRATE_TIME=SECONDS``
    (migration source) how long the ``active`` phase of a migration lasts.
``KVMLAB_FAKE_FINALIZE_DELAY=SECONDS``
    (migration source) the run state stays ``finish-migrate`` that long after
    ``completed``, refusing ``cont``, as QEMU 7.2 does on a loaded machine.

Modules and sub-packages, in the order a start goes through them
(``docs/fake-kvm.md`` has the map):

- :mod:`~kvmlab.fake.program`: :func:`main`, ``--fake-profile``, ``-daemonize``;
- :mod:`~kvmlab.fake.profiles`: the imitated QEMU (:class:`Profile`);
- :mod:`~kvmlab.fake.cmdline`: argv into a :class:`Config` (``parser``, with the
  ``chardev``, ``net`` and ``disk`` handlers, ``qemuopts``, ``pci``; the result
  in ``cmdline.config``);
- :mod:`~kvmlab.fake.faults`: ``KVMLAB_FAKE_*`` and the event log;
- :mod:`~kvmlab.fake.machine`: the VM process (:class:`Machine`, loaded only
  to run one), using :mod:`~kvmlab.fake.host`, :mod:`~kvmlab.fake.loop` and
  :mod:`~kvmlab.fake.chardevs`, typed by its components as
  :mod:`~kvmlab.fake.machine_view`;
- :mod:`~kvmlab.fake.monitor`: QMP (``qmp``, ``qmp_commands``) and HMP (``hmp``);
- :mod:`~kvmlab.fake.guest`: the guest's boot, its command channel and shell;
- :mod:`~kvmlab.fake.hotplug` and :mod:`~kvmlab.fake.migration`: QMP features
  loaded only when used (``device_add``..., ``migrate``..., ``-incoming``);
- :mod:`~kvmlab.fake.errors`, :mod:`~kvmlab.fake.lazy`: shared by all.

Start time is most of what a fake is for, so imports are chosen by their cost:
``_socket``, ``_signal`` and ``select.epoll`` instead of ``socket``, ``signal``
and ``selectors`` (their enums and ``collections`` cost ~15 ms), ``json`` only
once a QMP command or a log line needs it (:mod:`~kvmlab.fake.lazy`), plain
``__slots__`` classes instead of dataclasses, ``typing`` only for mypy, one
thread and no asyncio, and nothing from kvmlab outside this package (not even
``kvmlab.capabilities``: ``dataclasses``, ``pathlib``, ``subprocess``, ``re``).
``tests/fake/test_fake_stdlib_only.py`` keeps it that way. The option set read
from the help text is what ``QemuCapabilities``' ``has_*`` booleans are
computed from; a test keeps the two in agreement.
"""

from __future__ import annotations

from kvmlab.fake.cmdline.config import ChardevSpec, Config, NetBackend, Nic
from kvmlab.fake.cmdline.parser import parse_argv
from kvmlab.fake.cmdline.qemuopts import parse_opts
from kvmlab.fake.errors import FakeError
from kvmlab.fake.faults import EventLog, Faults
from kvmlab.fake.profiles import DEFAULT_PROFILE, Profile, builtin_profile, load_profile
from kvmlab.fake.program import PROG, main

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from kvmlab.fake.machine import Machine

__all__ = [
    "DEFAULT_PROFILE",
    "PROG",
    "ChardevSpec",
    "Config",
    "EventLog",
    "FakeError",
    "Faults",
    "Machine",
    "NetBackend",
    "Nic",
    "Profile",
    "builtin_profile",
    "load_profile",
    "main",
    "parse_argv",
    "parse_opts",
]


def __getattr__(name: str) -> object:
    """Load ``Machine`` on first use.

    ``-version``, ``-help`` and command-line errors never need the VM side, and
    :func:`main` imports it only to run a VM; importing the package should not.
    """
    if name == "Machine":
        from kvmlab.fake.machine import Machine  # noqa: PLC0415 - see the docstring

        globals()["Machine"] = Machine
        return Machine
    raise AttributeError(f"module 'kvmlab.fake' has no attribute {name!r}")
