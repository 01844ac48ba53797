"""What is in a state directory, read without pydantic: for ``list`` and ``info``.

``kvmlab list`` must answer in well under a quarter of a second, and importing
pydantic with kvmlab's models alone costs more than that on a small machine. So
the inventory reads saved runtimes as plain JSON (name, argv, NICs) and the
process state from the pidfile and ``/proc``. It only *displays*: anything that
executes a runtime loads it through :class:`~kvmlab.runtime.saved.KVMRuntime`, with
full validation. A file the inventory cannot read is listed as ``invalid``;
``info`` on it reports the exact error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvmlab.host.process import owns_pidfile, read_cmdline, read_pidfile
from kvmlab.spec.argv import option_value
from kvmlab.spec.layout import StateLayout
from kvmlab.states import PENDING_STATES, InstanceState

__all__ = [
    "InstanceInfo",
    "InstanceState",
    "RuntimeSummary",
    "instance_names",
    "list_instances",
    "live_argv",
    "read_summary",
    "running_pid",
    "summarize",
]


@dataclass(frozen=True, slots=True)
class RuntimeSummary:
    """The parts of a saved runtime that listing needs."""

    name: str
    argv: tuple[str, ...]
    nics: tuple[dict[str, str], ...]

    @property
    def memory(self) -> int | None:
        return _int_prefix(option_value(self.argv, "-m"))

    @property
    def vcpus(self) -> int | None:
        return _int_prefix(option_value(self.argv, "-smp"))


@dataclass(frozen=True, slots=True)
class InstanceInfo:
    """What ``info`` reports. ``argv`` is the live command line while running.

    ``state`` is the process state only (running, stopped, invalid): the word scripts
    read from ``info --json``. An interrupted operation is in ``extra`` under the key
    of its pending state (``hotplug_pending``, ``migration_pending``: the record it
    left), and :attr:`pending` names those states as an enum.
    """

    name: str
    state: InstanceState
    pid: int | None
    argv: tuple[str, ...]
    memory: int | None
    vcpus: int | None
    nics: tuple[dict[str, str], ...] = ()
    saved_argv: tuple[str, ...] = ()
    runtime_file: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pending(self) -> tuple[InstanceState, ...]:
        """The pending states (an interrupted hotplug or migration), in enum order."""
        return tuple(
            state for state in InstanceState if state in PENDING_STATES and state in self.extra
        )

    def to_dict(self) -> dict[str, Any]:
        """The ``info --json`` object."""
        return {
            "name": self.name,
            "state": str(self.state),
            "pid": self.pid,
            "argv": list(self.argv),
            "memory": self.memory,
            "vcpus": self.vcpus,
            "nics": [dict(nic) for nic in self.nics],
            "saved_argv": list(self.saved_argv),
            "runtime_file": self.runtime_file,
            **self.extra,
        }


def _int_prefix(text: str | None) -> int | None:
    if text is None:
        return None
    head = text.split(",", 1)[0]
    return int(head) if head.isdigit() else None


def running_pid(layout: StateLayout, name: str) -> int | None:
    """The pid of the instance's live process, or ``None`` (stale pidfiles do not count)."""
    pidfile = layout.pidfile(name)
    pid = read_pidfile(pidfile)
    return pid if owns_pidfile(pid, pidfile) else None


def live_argv(pid: int, binary: str) -> tuple[str, ...] | None:
    """The process's command line; an interpreter running a script is dropped."""
    argv = read_cmdline(pid)
    if argv and len(argv) > 1 and argv[1] == binary and "python" in Path(argv[0]).name:
        return argv[1:]
    return argv


def read_summary(path: Path) -> RuntimeSummary | None:
    """Name, argv and NICs of a saved runtime, or ``None`` when it cannot be read."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    if isinstance(data, list) and data and isinstance(data[0], list):  # Ganeti's format
        argv = tuple(str(word) for word in data[0])
        name = option_value(argv, "-name") or path.name.removesuffix(".runtime")
        raw_nics = data[1] if len(data) > 1 and isinstance(data[1], list) else []
        nics = tuple(
            {
                "mac": str(nic.get("mac", "")),
                "mode": str((nic.get("nicparams") or {}).get("mode", "")),
                "link": str((nic.get("nicparams") or {}).get("link", "")),
            }
            for nic in raw_nics
            if isinstance(nic, dict)
        )
        return RuntimeSummary(name.split(",", 1)[0], argv, nics)
    if not isinstance(data, dict):
        return None
    argv_data, nics_data = data.get("argv"), data.get("nics", [])
    if not isinstance(argv_data, list) or not isinstance(nics_data, list):
        return None
    nics = tuple(
        {key: str(nic.get(key, "")) for key in ("mac", "mode", "link")}
        for nic in nics_data
        if isinstance(nic, dict)
    )
    return RuntimeSummary(str(data.get("name", "")), tuple(map(str, argv_data)), nics)


def summarize(layout: StateLayout, name: str, summary: RuntimeSummary | None) -> InstanceInfo:
    """An :class:`InstanceInfo` from a summary and the process state (no QMP)."""
    runtime_file = str(layout.runtime_file(name))
    if summary is None:
        return InstanceInfo(name, InstanceState.INVALID, None, (), None, None, (), (), runtime_file)
    pid = running_pid(layout, name)
    binary = summary.argv[0] if summary.argv else ""
    argv = (live_argv(pid, binary) or ()) if pid is not None else ()
    return InstanceInfo(
        name=name,
        state=InstanceState.RUNNING if pid is not None else InstanceState.STOPPED,
        pid=pid,
        argv=argv,
        memory=summary.memory,
        vcpus=summary.vcpus,
        nics=summary.nics,
        saved_argv=summary.argv,
        runtime_file=runtime_file,
    )


def instance_names(layout: StateLayout) -> list[str]:
    """Names with a saved runtime, sorted."""
    conf = layout.root / "conf"
    if not conf.is_dir():
        return []
    return sorted(path.name.removesuffix(".runtime") for path in conf.glob("*.runtime"))


def list_instances(layout: StateLayout) -> list[InstanceInfo]:
    """Every instance with a saved runtime, sorted by name."""
    return [
        summarize(layout, name, read_summary(layout.runtime_file(name)))
        for name in instance_names(layout)
    ]
