"""``kvmlab demo``: a whole lifecycle, step by step, with the soft-reboot proof.

It starts a small instance on the default backend (real QEMU with the test guest
when both are available, else the fake kvm), reads the guest's facts from the
serial console, changes the instance (more memory, one more NIC), soft-reboots
(the guest must see the *old* memory and NICs: the saved runtime was replayed),
hard-restarts (now the new ones), stops and cleans up. Exit code 0 when every
check held.
"""

from __future__ import annotations

import shlex
import shutil
import tempfile
import time
from collections.abc import Callable

from kvmlab.channels.console import GuestFacts
from kvmlab.errors import KvmlabError
from kvmlab.host.backends import Backend, FakeBackend, QemuBackend, resolve_backend
from kvmlab.lifecycle.hypervisor import Hypervisor
from kvmlab.spec.instance import HvParams, Instance, Nic

__all__ = ["demo_instance", "run_demo"]

BOOT_TIMEOUT = 60.0


def demo_instance(kernel: str = "", initrd: str = "") -> Instance:
    """256 MiB, 2 vCPUs, one user-mode NIC: runs without root. The test guest's boot
    options (:func:`kvmlab.guest.build.boot_hvparams`) on either backend."""
    from kvmlab.guest.build import boot_hvparams  # noqa: PLC0415

    params = boot_hvparams(kernel_path=kernel, initrd_path=initrd, kvm_path="/usr/bin/kvm")
    return Instance(
        name="demo",
        memory=256,
        vcpus=2,
        nics=(Nic(mac="52:54:00:6b:76:01", mode="user"),),
        hvparams=HvParams.model_validate(params),
    )


def _choose(backend: str | Backend, say: Callable[[str], None]) -> tuple[Backend, str, str]:
    chosen = resolve_backend(backend)
    if isinstance(chosen, QemuBackend):
        try:
            from kvmlab.guest.build import build_guest  # noqa: PLC0415

            guest = build_guest(progress=lambda message: say(f"   guest: {message}"))
            return chosen, str(guest.kernel), str(guest.initrd)
        except KvmlabError as err:
            if backend == "qemu":
                raise
            say(f"   no test guest ({err}); using the fake kvm instead")
            chosen = FakeBackend()
    return chosen, "", ""


def _facts_line(facts: GuestFacts) -> str:
    nics = ", ".join(f"{dev} {mac}" for dev, mac in facts.nics.items()) or "no NIC"
    return f"MEM {facts.mem_kb} kB, CPUS {facts.cpus}, {nics}"


def run_demo(
    state_dir: str | None = None,
    backend: str | Backend = "auto",
    say: Callable[[str], None] = print,
) -> int:
    """Run the demo; return 0 when every check held, 1 otherwise."""
    say("kvmlab demo: generate, start, soft reboot (replay), hard restart, stop")
    chosen, kernel, initrd = _choose(backend, say)
    scratch = None
    if state_dir is None:
        scratch = tempfile.mkdtemp(prefix="kvmlab-demo-")
        state_dir = scratch
    lab = Hypervisor(state_dir, backend=chosen, stop_timeout=15.0)
    instance = demo_instance(kernel, initrd)
    checks: list[tuple[str, bool]] = []
    try:
        runtime = lab.generate(instance)
        binary = runtime.binary
        caps = chosen.capabilities(binary)
        accel, why = chosen.accelerator(binary, instance.hvparams)
        say(
            f"backend: {chosen.describe()}, QEMU {caps.version_string}, accelerator {accel} ({why})"
        )
        say(f"state dir: {lab.layout.root}")

        clock = time.monotonic()
        info = lab.start(instance)
        say(f"1. start {instance.name}: {instance.memory} MiB, {instance.vcpus} vCPUs, 1 NIC"
            f" -> pid {info.pid} ({time.monotonic() - clock:.2f} s)")  # fmt: skip
        say(f"   argv: {shlex.join(info.argv)}")
        first = lab.console(instance.name).facts(BOOT_TIMEOUT)
        say(f"2. guest booted: {_facts_line(first)} ({time.monotonic() - clock:.2f} s)")
        checks.append(("guest sees the configured NIC", first.macs == [instance.nics[0].mac]))

        changed = instance.model_copy(
            update={
                "memory": 384,
                "nics": (*instance.nics, Nic(mac="52:54:00:6b:76:02", mode="user")),
            }
        )
        say("3. instance changed: 384 MiB and a second NIC (not applied to the running VM)")
        clock = time.monotonic()
        info = lab.reboot(instance.name)
        replayed = lab.console(instance.name).facts(BOOT_TIMEOUT)
        say(f"4. soft reboot -> pid {info.pid}: {_facts_line(replayed)}"
            f" ({time.monotonic() - clock:.2f} s)")  # fmt: skip
        old_m = info.argv[info.argv.index("-m") + 1]
        say(f"   /proc/{info.pid}/cmdline has -m {old_m}: the saved runtime was replayed")
        checks.append(("soft reboot keeps the old memory", old_m == str(instance.memory)))
        checks.append(("soft reboot keeps the old NICs", replayed.macs == first.macs))
        checks.append(("guest memory unchanged after soft reboot", replayed.mem_kb == first.mem_kb))

        clock = time.monotonic()
        info = lab.restart(changed)
        fresh = lab.console(instance.name).facts(BOOT_TIMEOUT)
        say(f"5. hard restart (stop + start) -> pid {info.pid}: {_facts_line(fresh)}"
            f" ({time.monotonic() - clock:.2f} s)")  # fmt: skip
        checks.append(
            ("hard restart applies the new NICs", fresh.macs == [n.mac for n in changed.nics])
        )
        checks.append(("hard restart applies the new memory", fresh.mem_kb > first.mem_kb))

        clock = time.monotonic()
        lab.stop(instance.name)
        state = lab.info(instance.name).state
        say(f"6. stop (ACPI powerdown): {state} ({time.monotonic() - clock:.2f} s)")
        checks.append(("stopped", str(state) == "stopped"))
        lab.cleanup(instance.name)
        say("7. cleanup: runtime and logs removed")
    except KvmlabError as err:
        say(f"demo failed: {err}")
        checks.append((str(err), False))
        for info in lab.list_instances():
            if info.pid is not None:
                lab.stop(info.name, force=True)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    failed = [name for name, ok in checks if not ok]
    for name, ok in checks:
        say(f"   [{'ok' if ok else 'FAILED'}] {name}")
    say("demo passed" if not failed else f"demo FAILED: {', '.join(failed)}")
    return 0 if not failed else 1
