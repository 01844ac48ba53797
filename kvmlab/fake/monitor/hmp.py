"""The human monitor (``-monitor``, ``-mon mode=readline``, ``human-monitor-command``).

kvmlab and its tests use a handful of HMP commands; each is one function in
:data:`COMMANDS` (and ``info`` subcommands in :data:`INFO`), shared by the
monitor socket and QMP's ``human-monitor-command``. Output uses ``\\r\\n``
line ends and the ``(qemu)`` prompt, as QEMU's readline monitor does.
"""

from __future__ import annotations

import os

from kvmlab.fake.chardevs import Frontend

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from kvmlab.fake.chardevs import Chardev
    from kvmlab.fake.machine_view import MachineView

__all__ = ["COMMANDS", "INFO", "HumanMonitor", "cont_refusal", "run_command"]

_HMP_STATUS = {
    "running": "running",
    "prelaunch": "paused (prelaunch)",
    "paused": "paused",
    "shutdown": "paused (shutdown)",
}
_HELP = (
    "cont|c  -- resume emulation\r\ninfo [subcommand] -- show various information\r\n"
    "quit|q  -- quit the emulator\r\nstop|s  -- stop emulation\r\n"
    "system_powerdown  -- send system power down event\r\n"
    "system_reset  -- reset the system\r\n"
)


class HumanMonitor(Frontend):
    """The readline monitor on one chardev: banner, echo, one command per line.

    :param machine: the VM the commands act on.
    :param dev: the chardev it answers on.
    """

    def __init__(self, machine: MachineView, dev: Chardev) -> None:
        self.machine = machine
        self.dev = dev
        self.inbuf = b""

    def connected(self) -> None:
        self.inbuf = b""
        version = self.machine.profile.version_string
        banner = f"QEMU {version} monitor - type 'help' for more information\r\n(qemu) "
        self.dev.send(banner.encode())

    def received(self, data: bytes) -> None:
        self.inbuf += data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        while b"\n" in self.inbuf:
            raw, self.inbuf = self.inbuf.split(b"\n", 1)
            line = raw.decode("utf-8", "replace").strip()
            self.machine.log("hmp", command=line)
            self.dev.send((line + "\r\n").encode())
            if line in ("quit", "q"):
                self.machine.host_quit()
            output = run_command(self.machine, line)
            self.dev.send((output + "(qemu) ").encode())


def run_command(m: MachineView, line: str) -> str:
    """Run a human monitor command; its output, ``\\r\\n``-terminated lines."""
    words = line.split()
    if not words:
        return ""
    handler = COMMANDS.get(words[0])
    output = handler(m, words[1:]) if handler is not None else None
    return f"unknown command: '{line}'\r\n" if output is None else output


# Each command gets the words after its name; ``None`` means "unknown command".


def _quit(m: MachineView, args: list[str]) -> str | None:
    m.loop.after(0.0, m.host_quit)  # after human-monitor-command's reply
    return ""


def _info(m: MachineView, args: list[str]) -> str | None:
    show = INFO.get(args[0]) if args else None
    return show(m) if show is not None else None


def _stop(m: MachineView, args: list[str]) -> str | None:
    m.stop()
    return ""


def cont_refusal(m: MachineView) -> str | None:
    """Why QEMU refuses ``cont`` now, for both monitors (``None``: it does not): 7.2 says
    a migration ``completed`` before its thread ends, in run state ``finish-migrate``."""
    if m.status == "finish-migrate":
        return "Migration is not finalized yet"
    return None


def _cont(m: MachineView, args: list[str]) -> str | None:
    refusal = cont_refusal(m)
    if refusal is not None:
        return f"Error: {refusal}\r\n"
    m.resume()
    if m.pending_unplug:  # the guest runs again and ejects what device_del asked for
        from kvmlab.fake.hotplug import devices  # noqa: PLC0415 - only after a device_del

        devices.device_deleted(m)
    return ""


def _system_powerdown(m: MachineView, args: list[str]) -> str | None:
    m.powerdown()
    return ""


def _system_reset(m: MachineView, args: list[str]) -> str | None:
    m.loop.after(0.0, m.reset)
    return ""


def _help(m: MachineView, args: list[str]) -> str | None:
    return _HELP


def _info_status(m: MachineView) -> str:
    # QEMU: "paused (STATE)" for every state but running and paused (inmigrate, postmigrate...)
    return f"VM status: {_HMP_STATUS.get(m.status, f'paused ({m.status})')}\r\n"


def _info_name(m: MachineView) -> str:
    return f"{m.cfg.name}\r\n" if m.cfg.name else ""


def _info_version(m: MachineView) -> str:
    return f"{m.profile.version_string} (kvmlab-fake)\r\n"


def _info_kvm(m: MachineView) -> str:
    return f"kvm support: {'enabled' if m.cfg.accel == 'kvm' else 'disabled'}\r\n"


def _info_cpus(m: MachineView) -> str:
    pid = os.getpid()
    marks = ("*", " ")
    return "".join(f"{marks[min(i, 1)]} CPU #{i}: thread_id={pid}\r\n" for i in range(m.cfg.cpus))


COMMANDS: dict[str, Callable[[MachineView, list[str]], str | None]] = {
    "quit": _quit,
    "q": _quit,
    "info": _info,
    "stop": _stop,
    "s": _stop,
    "cont": _cont,
    "c": _cont,
    "system_powerdown": _system_powerdown,
    "system_reset": _system_reset,
    "help": _help,
    "?": _help,
}

INFO: dict[str, Callable[[MachineView], str]] = {
    "status": _info_status,
    "name": _info_name,
    "version": _info_version,
    "kvm": _info_kvm,
    "cpus": _info_cpus,
}
