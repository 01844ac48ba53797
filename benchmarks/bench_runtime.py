"""Median cost per call of generating and (de)serialising a runtime.

The instance has 2 NICs and 2 disks, as in the foundation issue's target
(generate + to_json under 25 us, from_json under 25 us on a 2-core machine).
Each figure is the median over ``--rounds`` rounds of ``--number`` calls.
"""

from __future__ import annotations

import argparse
import statistics
import timeit

from kvmlab.generator import generate_runtime
from kvmlab.models import Disk, HvParams, Instance, Nic
from kvmlab.runtime import KVMRuntime

INSTANCE = Instance(
    name="bench-vm",
    memory=1024,
    vcpus=2,
    nics=(
        Nic(mac="52:54:00:00:00:01", mode="bridged", link="br0"),
        Nic(mac="52:54:00:00:00:02", mode="user"),
    ),
    disks=(Disk(path="/srv/kvmlab/disk0.img"), Disk(path="/srv/kvmlab/disk1.img", mode="ro")),
    hvparams=HvParams(kernel_path="/boot/vmlinuz", initrd_path="/boot/initrd.img"),
)


def median_us(func: object, number: int, rounds: int) -> float:
    timer = timeit.Timer(func)  # type: ignore[arg-type]
    timer.timeit(number)  # warm caches and the JIT-less interpreter's specialisation
    return statistics.median(timer.repeat(repeat=rounds, number=number)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--number", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    text = generate_runtime(INSTANCE).to_json()
    results = {
        "generate + to_json": median_us(
            lambda: generate_runtime(INSTANCE).to_json(), args.number, args.rounds
        ),
        "generate": median_us(lambda: generate_runtime(INSTANCE), args.number, args.rounds),
        "from_json": median_us(lambda: KVMRuntime.from_json(text), args.number, args.rounds),
    }
    for name, value in results.items():
        print(f"{name:<22} {value:8.2f} us/call (median of {args.rounds} x {args.number})")


if __name__ == "__main__":
    main()
