"""Migration total time and downtime of the test guest (docs/migration.md).

For each QEMU pair (source -> target), the test guest (192 MiB, 2 vCPUs, TCG) boots in
lab A and is migrated A -> B -> A ... ``--runs`` times; each migration's figures are
QEMU's own (``query-migrate``: ``total-time``, ``downtime``) plus kvmlab's whole
operation (target start, transfer, source quit: ``elapsed``). Medians, with the range.

**Baseline**: what a user would otherwise run: two QEMUs started by hand with the same
guest (the source booted, the target with ``-incoming unix:...``), then a bare
``migrate`` over QMP with QEMU's default parameters, polled until ``completed``. kvmlab
sets ``max-bandwidth`` to 1 GiB/s (both ends are on this machine); QEMU's default is
32 MiB/s on 7.2 and 128 MiB/s on 10.0, which is what the baseline shows::

    python benchmarks/bench_migration.py                 # 7.2->7.2, 10.0->10.0, 7.2->10.0
    python benchmarks/bench_migration.py --backend fake  # the fake kvm's profiles
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from kvmlab.channels.qmp import QmpSession
from kvmlab.guest.build import boot_hvparams, build_guest
from kvmlab.host.backends import Backend, FakeBackend, QemuBackend
from kvmlab.lifecycle.hypervisor import Hypervisor
from kvmlab.spec.instance import HvParams, Instance, Nic

BINARIES = {
    "7.2": "/usr/bin/qemu-system-x86_64",
    "10.0": "/opt/kvmlab/qemu-10.0/bin/qemu-system-x86_64",
}
PAIRS = ("7.2:7.2", "10.0:10.0", "7.2:10.0")


def backend(kind: str, version: str) -> Backend:
    return (
        FakeBackend(profile=f"qemu-{version}") if kind == "fake" else QemuBackend(BINARIES[version])
    )


def median(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.0f} ms ({min(values):.0f}-{max(values):.0f})"


def kvmlab_runs(kind: str, old: str, new: str, runs: int) -> dict[str, list[float]]:
    guest = build_guest() if kind == "qemu" else None
    instance = Instance(
        name="bench",
        memory=192,
        vcpus=2,
        nics=(Nic(mac="52:54:00:6b:0c:00", mode="user"),),
        hvparams=HvParams.model_validate(boot_hvparams(guest)),
    )
    roots = [tempfile.mkdtemp(prefix="kbm-") for _ in range(2)]
    labs = [Hypervisor(roots[0], backend(kind, old)), Hypervisor(roots[1], backend(kind, new))]
    figures: dict[str, list[float]] = {"total": [], "downtime": [], "elapsed": []}
    try:
        here = 0
        for _ in range(runs):
            if labs[here].list_instances() == []:  # cross-version: boot again in the old QEMU
                labs[here].start(instance)
            labs[here].guest("bench").run("true", ready_timeout=180)
            there = 1 - here
            result = labs[here].migrate("bench", labs[there], timeout=300)
            # None: QEMU did not report them (never seen, but the result allows it).
            if result.total_time_ms is not None and result.downtime_ms is not None:
                figures["total"].append(float(result.total_time_ms))
                figures["downtime"].append(float(result.downtime_ms))
            figures["elapsed"].append(float(result.elapsed_ms))
            labs[there].guest("bench").run("true", ready_timeout=60)
            if old == new:
                here = there  # back and forth
            else:  # 10.0 -> 7.2 is refused: stop it in the new QEMU
                labs[there].stop("bench", force=True)
                labs[there].cleanup("bench")
    finally:
        for lab in labs:
            for info in lab.list_instances():
                if info.pid is not None:
                    lab.stop(info.name, force=True)
        for root in roots:
            shutil.rmtree(root, ignore_errors=True)
    return figures


def _bare_qemu(binary: str, root: Path, tag: str, incoming: str | None, machine: str) -> Path:
    guest = build_guest()
    qmp = root / f"{tag}.qmp"
    argv = [
        binary, "-name", tag, "-m", "192", "-smp", "2", "-machine", f"{machine},accel=tcg",
        "-nodefaults", "-display", "none", "-kernel", str(guest.kernel),
        "-initrd", str(guest.initrd), "-append", "panic=-1 quiet console=ttyS0,115200",
        "-serial", f"file:{root / tag}.serial", "-daemonize",
        "-pidfile", str(root / f"{tag}.pid"), "-qmp", f"unix:{qmp},server=on,wait=off",
    ]  # fmt: skip
    if incoming:
        argv += ["-incoming", incoming]
    subprocess.run(argv, check=True)
    return qmp


def baseline_runs(old: str, new: str, runs: int) -> dict[str, list[float]]:
    figures: dict[str, list[float]] = {"total": [], "downtime": []}
    for run in range(runs):
        root = Path(tempfile.mkdtemp(prefix="kbm-"))
        try:
            # The alias q35 means pc-q35-10.0 on 10.0: a user pins the source's type too.
            machine = f"pc-q35-{old}"
            source = _bare_qemu(BINARIES[old], root, "src", None, machine)
            serial = root / "src.serial"
            deadline = time.monotonic() + 180
            while b"KVMLAB-BOOT-OK" not in serial.read_bytes() and time.monotonic() < deadline:
                time.sleep(0.1)
            uri = f"unix:{root}/mig{run}"
            target = _bare_qemu(BINARIES[new], root, "dst", uri, machine)
            with QmpSession(source) as qmp:
                qmp.execute("migrate", {"uri": uri})
                info = qmp.execute("query-migrate")
                while info["status"] != "completed" or not info.get("total-time"):
                    if info["status"] in ("failed", "cancelled"):
                        raise SystemExit(f"baseline migration {info['status']}")
                    time.sleep(0.05)
                    info = qmp.execute("query-migrate")
            figures["total"].append(float(info["total-time"]))
            figures["downtime"].append(float(info["downtime"]))
            for qmp_path in (source, target):
                with QmpSession(qmp_path) as qmp:
                    qmp.execute("quit")
        finally:
            for pidfile in root.glob("*.pid"):
                pid = int(pidfile.read_text())
                for _ in range(50):
                    if not Path(f"/proc/{pid}").exists():
                        break
                    time.sleep(0.1)
                else:
                    os.kill(pid, 9)
            shutil.rmtree(root, ignore_errors=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", default="qemu", choices=["fake", "qemu"])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--pairs", default=",".join(PAIRS), help="SRC:DST,... QEMU versions")
    parser.add_argument("--no-baseline", action="store_true")
    args = parser.parse_args()
    print(f"{'pair':<12} {'what':<9} {'total-time':<22} {'downtime':<22} kvmlab elapsed")
    for pair in args.pairs.split(","):
        old, new = pair.split(":")
        if args.backend == "qemu" and not all(os.access(BINARIES[v], os.X_OK) for v in (old, new)):
            print(f"{pair:<12} skipped: QEMU not installed")
            continue
        ours = kvmlab_runs(args.backend, old, new, args.runs)
        print(
            f"{old + '->' + new:<12} {'kvmlab':<9} {median(ours['total']):<22}"
            f" {median(ours['downtime']):<22} {median(ours['elapsed'])}"
        )
        if args.backend == "qemu" and not args.no_baseline:
            bare = baseline_runs(old, new, args.runs)
            print(
                f"{'':<12} {'baseline':<9} {median(bare['total']):<22}"
                f" {median(bare['downtime']):<22} -"
            )


if __name__ == "__main__":
    main()
