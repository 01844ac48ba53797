"""What does a ``booted_vm`` test wait for? A guest restored from a template against a boot.

A test that needs a running guest waits until the guest's command channel answers. Two
sides give it the default test guest (:func:`kvmlab.testing.templates.default_instance`:
192 MiB, 2 vCPUs, one user NIC, the fast boot options) in a fresh lab:

- **boot**: ``lab.start(instance)``, then ``lab.guest(name).run(["true"])`` until it answers
  (what the suite did before the fixtures);
- **booted_vm**: :func:`kvmlab.testing.templates.boot_copy` from a template built before the
  timed runs: the state is checked against its record (size; the SHA-256 at the first
  load in the process), loaded into a new QEMU (``-incoming defer``), resumed, and the
  guest's clock set through the channel.

Runs alternate between the sides so that a change in the machine's load hits both alike;
each run ends with the VM killed and its lab removed. Goal: booted_vm at most 0.2x boot
(medians) on QEMU 7.2 under TCG.

Then the suite's view: 8 "tests" that each get a guest, run ``echo`` in it and stop it,
booting each guest, against the same 8 with ``booted_vm`` starting from no template at all
(the template's boot and snapshot are paid inside the first test). Goal: at most 0.35x.

Usage: ``python benchmarks/bench_booted_vm.py [--runs 5] [--tests 8] [--binary PATH]``.
Never run it beside another QEMU boot on a 2-core machine: the figures would be the load's.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from kvmlab.guest.build import build_guest
from kvmlab.host.backends import QemuBackend, find_qemu
from kvmlab.host.process import become_subreaper
from kvmlab.lifecycle.hypervisor import Hypervisor
from kvmlab.spec.instance import Instance
from kvmlab.testing.plugin import stop_all
from kvmlab.testing.templates import boot_copy, default_instance

READY_TIMEOUT = 120.0


def _lab(backend: QemuBackend) -> Hypervisor:
    return Hypervisor(Path(tempfile.mkdtemp(prefix="kb-")), backend=backend, stop_timeout=20.0)


def _dispose(lab: Hypervisor) -> None:
    stop_all(lab)
    shutil.rmtree(lab.layout.root, ignore_errors=True)


def ready_by_boot(backend: QemuBackend, instance: Instance) -> float:
    """Seconds from ``start`` until the channel answers ``true``."""
    lab = _lab(backend)
    try:
        began = time.monotonic()
        lab.start(instance)
        result = lab.guest(instance.name).run(["true"], ready_timeout=READY_TIMEOUT)
        elapsed = time.monotonic() - began
        assert result.exit_code == 0, result
        return elapsed
    finally:
        _dispose(lab)


def ready_by_restore(backend: QemuBackend, instance: Instance, root: Path) -> float:
    """Seconds from the fixture's call until its copy is handed out (the channel answered)."""
    lab = _lab(backend)
    try:
        began = time.monotonic()
        boot_copy(lab, instance, root)
        return time.monotonic() - began
    finally:
        _dispose(lab)


def suite(tests: int, get_guest: Callable[[Hypervisor], None], backend: QemuBackend) -> float:
    """Seconds for ``tests`` tests that each get a guest, run a command and stop it."""
    began = time.monotonic()
    for _ in range(tests):
        lab = _lab(backend)
        try:
            get_guest(lab)
            assert lab.guest("vm1").run(["echo", "hello"]).stdout == "hello\n"
        finally:
            _dispose(lab)
    return time.monotonic() - began


def _show(label: str, values: list[float]) -> str:
    return (
        f"{label:<10} median {statistics.median(values):6.2f} s"
        f"  (min {min(values):.2f}, max {max(values):.2f}, n={len(values)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tests", type=int, default=8)
    parser.add_argument("--binary", default=find_qemu())
    args = parser.parse_args()
    if not args.binary:
        raise SystemExit("no qemu-system-x86_64: install it or pass --binary")
    become_subreaper()
    backend = QemuBackend(args.binary)
    instance = default_instance(build_guest())
    print(f"QEMU {backend.capabilities(args.binary).version_string} at {args.binary}")
    root = Path(tempfile.mkdtemp(prefix="kt-"))
    try:
        # Untimed: the template, the page cache, kvmlab's probe caches.
        ready_by_restore(backend, instance, root)
        ready_by_boot(backend, instance)
        boots: list[float] = []
        restores: list[float] = []
        for _ in range(args.runs):
            boots.append(ready_by_boot(backend, instance))
            restores.append(ready_by_restore(backend, instance, root))
        print("ready (the command channel answers):")
        print("  " + _show("boot", boots))
        print("  " + _show("booted_vm", restores))
        ratio = statistics.median(restores) / statistics.median(boots)
        print(f"  booted_vm / boot: {ratio:.2f}x (goal <= 0.2x)")
    finally:
        shutil.rmtree(root, ignore_errors=True)

    fresh = Path(tempfile.mkdtemp(prefix="kt-"))
    try:
        booting = suite(args.tests, lambda lab: _start(lab, instance), backend)
        restoring = suite(args.tests, lambda lab: _restore(lab, instance, fresh), backend)
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
    print(f"{args.tests} tests, each with a running guest:")
    print(f"  booting each guest:        {booting:6.2f} s")
    print(f"  booted_vm (template incl.): {restoring:6.2f} s")
    print(f"  ratio: {restoring / booting:.2f}x (goal <= 0.35x)")


def _start(lab: Hypervisor, instance: Instance) -> None:
    lab.start(instance)
    lab.guest(instance.name).run(["true"], ready_timeout=READY_TIMEOUT)


def _restore(lab: Hypervisor, instance: Instance, root: Path) -> None:
    boot_copy(lab, instance, root)


if __name__ == "__main__":
    main()
