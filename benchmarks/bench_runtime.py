"""Median cost per call of generating and (de)serialising a runtime.

The instance has 2 NICs and 2 disks, as in the foundation issue's target
(generate + to_json under 25 us, from_json under 25 us on a 2-core machine).
Each figure is the median over ``--rounds`` rounds of ``--number`` calls; p10 and
p90 of the rounds and the load average show how noisy the machine was.

``to_json (warm)`` writes a runtime whose hvparams object already knows its JSON,
as every runtime generated from the same instance does (``generate + to_json``
measures that case too); ``to_json (cold)`` writes runtimes fresh from
``from_json``, whose objects have never been serialised.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

from kvmlab.runtime.generator import generate_runtime
from kvmlab.runtime.saved import KVMRuntime
from kvmlab.spec.instance import Disk, HvParams, Instance, Nic

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


def rounds_us(func: Callable[[], object], number: int, rounds: int) -> list[float]:
    """Microseconds per call of each round (after one warm-up round)."""
    results = []
    for index in range(rounds + 1):
        start = time.perf_counter()
        for _ in range(number):
            func()
        if index:  # round 0 warms caches and the interpreter's specialisation
            results.append((time.perf_counter() - start) / number * 1e6)
    return results


def cold_to_json_us(text: str, number: int, rounds: int) -> list[float]:
    """``to_json`` of runtimes just loaded: nothing of theirs serialised before."""
    results = []
    for _ in range(rounds):
        fresh = [KVMRuntime.from_json(text) for _ in range(number)]
        start = time.perf_counter()
        for runtime in fresh:
            runtime.to_json()
        results.append((time.perf_counter() - start) / number * 1e6)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--number", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    number, rounds = args.number, args.rounds
    text = generate_runtime(INSTANCE).to_json()
    runtime = KVMRuntime.from_json(text)
    load_before = os.getloadavg()
    results = {
        "generate + to_json": rounds_us(
            lambda: generate_runtime(INSTANCE).to_json(), number, rounds
        ),
        "generate": rounds_us(lambda: generate_runtime(INSTANCE), number, rounds),
        "to_json (warm)": rounds_us(runtime.to_json, number, rounds),
        "to_json (cold)": cold_to_json_us(text, number, rounds),
        "from_json": rounds_us(lambda: KVMRuntime.from_json(text), number, rounds),
    }
    load_after = os.getloadavg()
    for name, values in results.items():
        deciles = statistics.quantiles(values, n=10)
        print(
            f"{name:<22} {statistics.median(values):8.2f} us/call (median of {rounds} x {number};"
            f" p10 {deciles[0]:.2f}, p90 {deciles[-1]:.2f})"
        )
    print(
        "load average (1, 5, 15 min): "
        f"{' '.join(f'{v:.2f}' for v in load_before)} before,"
        f" {' '.join(f'{v:.2f}' for v in load_after)} after ({os.cpu_count()} CPUs)"
    )


if __name__ == "__main__":
    main()
