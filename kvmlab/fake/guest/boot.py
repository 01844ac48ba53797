"""The simulated guest: its boot on the serial console and how it answers the buttons.

kvmlab's real test guest prints the guest facts (``KVMLAB-BOOT-OK``, ``MEM``,
``CPUS``, one ``NIC eth<N> <mac>`` per NIC, ``KVMLAB-FACTS-END``) on ttyS0 and
powers off on ACPI power-button events; this module is the fake's version of
that guest, kept apart from the machine (run state, QMP events, sockets) the
way a guest is apart from QEMU. It reads the NICs from the machine's device
list, so a NIC hotplugged before a reset shows up in the next boot's facts.
"""

from __future__ import annotations

import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from kvmlab.fake.guest.shell import GuestShell
    from kvmlab.fake.machine_view import MachineView

__all__ = ["Guest", "facts"]


def _panic_timeout(append: str) -> int:
    """The kernel's ``panic=`` argument (the last one wins; 0 when absent or not a number)."""
    timeout = 0
    for word in append.split():
        if word.startswith("panic="):
            value = word.removeprefix("panic=")
            timeout = int(value) if value.lstrip("-").isdigit() else 0
    return timeout


def facts(mem_kb: int, cpus: int, macs: list[str]) -> list[str]:
    """The guest facts lines, as kvmlab's test guest prints them."""
    lines = ["KVMLAB-BOOT-OK", f"MEM {mem_kb}", f"CPUS {cpus}"]
    lines += [f"NIC eth{index} {mac}" for index, mac in enumerate(macs)]
    lines.append("KVMLAB-FACTS-END")
    return lines


class Guest:
    """What runs inside a fake VM: boots when the vCPUs first run, powers off on ACPI.

    :param machine: the VM it runs in.
    :ivar needs_boot: the guest boots (prints its facts) at the next run: at
        start, after a reset while paused.
    :ivar boots: counts resets, so a power-off scheduled before one does not
        hit the next boot.
    :ivar pending_powerdown: the power button was pressed while paused.
    :ivar booted: the ``boots`` count of the last boot that printed its facts (``-1``
        before the first), so ``booted == boots`` means the current boot is up.
    """

    def __init__(self, machine: MachineView) -> None:
        self.machine = machine
        self.booted_at: float | None = None
        self.needs_boot = True
        self.boots = 0
        self.booted = -1
        self.pending_powerdown = False
        #: The command channel's shell state (files, boot id) and the boot it belongs to.
        self._shell: GuestShell | None = None
        self._shell_boot = -1

    def shell(self) -> GuestShell:
        """The shell state of the current boot (a reset starts a new one)."""
        if self._shell is None or self._shell_boot != self.boots:
            from kvmlab.fake.guest.shell import GuestShell  # noqa: PLC0415 - first use only

            self._shell = GuestShell(self.machine)
            self._shell_boot = self.boots
        return self._shell

    def current_shell(self) -> GuestShell | None:
        """The current boot's shell state if a command made one (none is made here)."""
        return self._shell if self._shell_boot == self.boots else None

    def vcpus_started(self) -> None:
        """The vCPUs run (start, ``cont``): boot the first time, deliver a pending ACPI event."""
        if self.needs_boot:
            self.needs_boot = False
            self.machine.loop.after(self.machine.faults.boot_delay, self.boot)
        if self.pending_powerdown:
            self.pending_powerdown = False
            self._schedule_poweroff()

    def boot(self) -> None:
        """Print a boot and the guest facts, as kvmlab's test guest does."""
        m = self.machine
        cfg = m.cfg
        nics = m.nics
        self.booted_at = time.monotonic()
        self.booted = self.boots
        lines = [
            "SeaBIOS (version 1.16.2-debian-1.16.2-1)",
            "Booting from ROM.." if cfg.kernel else "Booting from Hard Disk...",
            "[    0.000000] Linux version 6.1.0-kvmlab-fake (kvmlab@fake) #1 SMP",
        ]
        if cfg.append is not None:
            lines.append(f"[    0.000000] Command line: {cfg.append}")
        lines += [
            f"[    0.010000] Memory: {cfg.guest_mem_kb}K available",
            f"[    0.100000] smp: Brought up 1 node, {cfg.cpus} CPUs",
            "[    0.500000] Run /init as init process",
        ]
        panic_after = m.faults.panic_after if self.boots == 0 else None
        if panic_after == 0:
            # The kernel panics before /init prints anything: no facts, no command loop.
            m.console("".join(line + "\r\n" for line in lines))
            self.panic("VFS: Unable to mount root fs on unknown-block(0,0)")
            return
        lines += facts(cfg.guest_mem_kb, cfg.cpus, [nic.mac for nic in nics])
        m.console("".join(line + "\r\n" for line in lines))
        m.log("boot", nics=[nic.mac for nic in nics], cpus=cfg.cpus, mem_kb=cfg.guest_mem_kb)
        if panic_after is not None:
            boots = self.boots
            m.loop.after(panic_after, lambda: self._panic_in(boots))

    def _panic_in(self, boots: int) -> None:
        if boots == self.boots:
            self.panic("Attempted to kill init! exitcode=0x0000000b")

    def panic(self, reason: str) -> None:
        """``KVMLAB_FAKE_PANIC_AFTER``: Linux's ``panic()``, as it prints it on the console.

        The guest stops answering (its command loop is gone). The kernel's ``panic=N``
        argument decides what follows, as in Linux: ``0`` (the default) hangs, ``N > 0``
        announces ``Rebooting in N seconds..`` and resets then, ``N < 0`` resets at once;
        a guest reset under ``-no-reboot`` ends QEMU (``SHUTDOWN``, ``guest-reset``).
        """
        m = self.machine
        self.booted = -2  # not this boot: the command channel answers nothing more
        timeout = _panic_timeout(m.cfg.append or "")
        stamp = self._uptime()
        lines = [
            f"{stamp} Kernel panic - not syncing: {reason}",
            f"{stamp} CPU: 0 PID: 1 Comm: init Not tainted 6.1.0-kvmlab-fake #1",
            f"{stamp} Kernel Offset: disabled",
        ]
        if timeout > 0:
            lines.append(f"{stamp} Rebooting in {timeout} seconds..")
        lines.append(f"{stamp} ---[ end Kernel panic - not syncing: {reason} ]---")
        m.console("".join(line + "\r\n" for line in lines))
        m.log("panic", reason=reason, timeout=timeout)
        if timeout != 0:
            boots = self.boots
            m.loop.after(max(timeout, 0), lambda: self._guest_reset(boots))

    def _guest_reset(self, boots: int) -> None:
        """The guest resets the machine (after a panic): QEMU reboots it, or ends."""
        if boots != self.boots:
            return
        m = self.machine
        if m.cfg.no_reboot:
            m.shutdown(guest=True, reason="guest-reset")
            return
        m.event("RESET", {"guest": True, "reason": "guest-reset"})
        self.reset()

    def power_button(self) -> None:
        """The ACPI power button: a guest with ACPI powers off soon after."""
        m = self.machine
        acpi = m.cfg.acpi
        ignored = m.faults.ignore_powerdown
        m.log("powerdown", acpi=acpi, ignored=ignored, status=m.status)
        if not acpi or ignored:
            return
        if m.status == "running":
            self._schedule_poweroff()
        else:
            self.pending_powerdown = True

    def reset(self) -> None:
        """A system reset: reboot now if running, else at the next ``cont``."""
        self.boots += 1
        self.pending_powerdown = False
        if self.machine.status == "running":
            self.machine.loop.after(self.machine.faults.boot_delay, self.boot)
        else:
            self.needs_boot = True

    def _uptime(self) -> str:
        elapsed = time.monotonic() - self.booted_at if self.booted_at is not None else 0.0
        return f"[{elapsed + 0.6:12.6f}]"

    def _schedule_poweroff(self) -> None:
        boots = self.boots
        self.machine.loop.after(self.machine.faults.powerdown_delay, lambda: self._poweroff(boots))

    def _poweroff(self, boots: int) -> None:
        if boots != self.boots:
            return  # reset since the button was pressed
        m = self.machine
        if m.status != "running":
            self.pending_powerdown = True
            return
        m.console(f"{self._uptime()} reboot: Power down\r\n")
        m.shutdown(guest=True, reason="guest-shutdown")
