"""Time of a NIC and of a disk attach as seen from the guest (docs/hotplug.md).

From the ``attach_nic`` call to the new MAC in the guest's ``/sys/class/net``
(polled through the command channel), and for the detach from the call to the
MAC gone; the same for ``attach_disk``/``detach_disk`` and the new ``vdX`` in the
guest's ``/sys/block`` (a 1 MiB raw image); medians of ``--runs``. ``--backend qemu``
boots the test guest under the QEMU kvmlab runs (``KVMLAB_QEMU`` selects it)::

    python benchmarks/bench_hotplug.py --backend fake
    KVMLAB_QEMU=/opt/kvmlab/qemu-10.0/bin/qemu-system-x86_64 python benchmarks/bench_hotplug.py
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

from kvmlab.guest.build import build_guest
from kvmlab.lifecycle.hypervisor import Hypervisor
from kvmlab.spec.instance import Disk, HvParams, Instance, Nic


def macs(lab: Hypervisor) -> list[str]:
    return lab.guest("bench").run("cat /sys/class/net/*/address", ready_timeout=120).stdout.split()


def block_devices(lab: Hypervisor) -> list[str]:
    return lab.guest("bench").run(["ls", "/sys/block"], ready_timeout=120).stdout.split()


def report(what: str, times: list[float]) -> None:
    print(
        f"{what}: median {statistics.median(times) * 1000:.0f} ms"
        f" (min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f}, n={len(times)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", default="qemu", choices=["fake", "qemu"])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    kernel = initrd = ""
    if args.backend == "qemu":
        guest = build_guest()
        kernel, initrd = str(guest.kernel), str(guest.initrd)
    instance = Instance(
        name="bench",
        memory=192,
        nics=(Nic(mac="52:54:00:6b:0b:00", mode="user"),),
        hvparams=HvParams(
            kernel_path=kernel,
            initrd_path=initrd,
            kernel_args="panic=-1",
            serial_speed=115200,
            vnc_bind_address="",
            machine_version="pc",
        ),
    )
    root = tempfile.mkdtemp(prefix="kbh-")
    lab = Hypervisor(root, backend=args.backend)
    attach: list[float] = []
    detach: list[float] = []
    try:
        lab.start(instance)
        macs(lab)
        for run in range(args.runs):
            mac = f"52:54:00:6b:0b:{run + 1:02x}"
            began = time.monotonic()
            lab.attach_nic("bench", Nic(mac=mac, mode="user"))
            while mac not in macs(lab):
                pass
            attach.append(time.monotonic() - began)
            began = time.monotonic()
            lab.detach_nic("bench", mac)
            while mac in macs(lab):
                pass
            detach.append(time.monotonic() - began)
        image = os.path.join(root, "bench-disk.img")
        with open(image, "wb") as file:
            file.truncate(1 << 20)
        disk_attach: list[float] = []
        disk_detach: list[float] = []
        before = block_devices(lab)
        for _ in range(args.runs):
            began = time.monotonic()
            lab.attach_disk("bench", Disk(path=image))
            while block_devices(lab) == before:
                pass
            disk_attach.append(time.monotonic() - began)
            began = time.monotonic()
            lab.detach_disk("bench", image)
            while block_devices(lab) != before:
                pass
            disk_detach.append(time.monotonic() - began)
        print(f"backend: {lab.backend.describe()}")
        report("NIC attach -> MAC in guest ", attach)
        report("NIC detach -> MAC gone     ", detach)
        report("disk attach -> vdX in guest", disk_attach)
        report("disk detach -> vdX gone    ", disk_detach)
    finally:
        lab.stop("bench", force=True)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
