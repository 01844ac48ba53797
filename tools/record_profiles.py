"""Record kvmlab's QEMU profiles (``fixtures/profiles/qemu-X.Y/``) from the real binaries.

What the fake kvm knows of a QEMU version it reads from these files, so the lists it
checks a command line against are what the binary itself reports, never hand-written:

- the texts QEMU prints: ``help.txt`` (``-help``), ``version.txt``, ``machine.txt``
  (``-machine help``), ``device.txt`` (``-device help``: each device and the bus it
  needs), ``netdev.txt``, ``chardev.txt``, ``cpu.txt`` (``-cpu help``), ``accel.txt``
  (``-accel help``);
- ``machine-cpus.txt``: each machine type (and alias) with its ``cpu-max``, from QMP
  ``query-machines``;
- ``drive.txt``: the ``-drive`` formats (``-drive format=help``) and, probed by starting
  the binary paused once per candidate value because QEMU lists them nowhere, the
  ``if=`` interfaces and ``cache=`` modes it accepts;
- ``usb.txt``: where a USB device finds a ``usb-bus``, probed the same way: the
  machine types with ``-usb``, and the USB controllers among the recorded devices.

``profile.json`` gives the provenance: binary, version, package, date, and the command
behind each file (the derived files also carry it in ``#`` header lines)::

    python tools/record_profiles.py                  # both recorded versions
    python tools/record_profiles.py --check          # exit 1 when a recording differs
    python tools/record_profiles.py qemu-10.0=/path/to/qemu-system-x86_64

Re-run it (and commit the result) when a QEMU package is upgraded.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ROOT / "fixtures" / "profiles"
TOOL = "tools/record_profiles.py"
DEFAULT_BINARIES = {
    "qemu-7.2": "/usr/bin/qemu-system-x86_64",
    "qemu-10.0": "/opt/kvmlab/qemu-10.0/bin/qemu-system-x86_64",
}
#: The texts QEMU prints, recorded verbatim (the fake prints them back).
TEXTS = {
    "help": ["-help"],
    "version": ["-version"],
    "machine": ["-machine", "help"],
    "device": ["-device", "help"],
    "netdev": ["-netdev", "help"],
    "chardev": ["-chardev", "help"],
    "cpu": ["-cpu", "help"],
    "accel": ["-accel", "help"],
}
#: Candidate ``-drive if=`` values (QEMU's ``if_name`` table over its versions).
INTERFACES = ("ide", "scsi", "floppy", "pflash", "mtd", "sd", "virtio", "none", "xen", "usb")
#: Candidate ``-drive cache=`` values (QEMU's documentation of ``bdrv_parse_cache_mode``).
CACHE_MODES = ("none", "off", "writeback", "writethrough", "directsync", "unsafe", "on")
#: The paused, display-less start every probe makes; TCG so it runs without /dev/kvm.
PROBE_BASE = ("-display", "none", "-S", "-nodefaults", "-machine", "accel=tcg", "-qmp", "stdio")
QUIT = b'{"execute": "qmp_capabilities"}\n{"execute": "quit"}\n'


def run(binary: str, args: list[str]) -> subprocess.CompletedProcess[bytes]:
    """``binary args`` with stdin closed; QEMU's modules' warnings go to stderr."""
    return subprocess.run(
        [binary, *args], capture_output=True, timeout=60, check=False, stdin=subprocess.DEVNULL
    )


def starts(binary: str, args: list[str]) -> bool:
    """Whether QEMU starts (paused, then quits over QMP) with ``args``."""
    result = subprocess.run(
        [binary, *PROBE_BASE, *args], input=QUIT, capture_output=True, timeout=60, check=False
    )
    return result.returncode == 0


def query_machines(binary: str) -> list[dict[str, object]]:
    """QMP ``query-machines`` of a paused QEMU."""
    request = (
        b'{"execute": "qmp_capabilities"}\n{"execute": "query-machines"}\n{"execute": "quit"}\n'
    )
    result = subprocess.run(
        [binary, *PROBE_BASE], input=request, capture_output=True, timeout=60, check=True
    )
    for line in result.stdout.splitlines():
        reply = json.loads(line)
        if isinstance(reply.get("return"), list):
            return list(reply["return"])
    raise RuntimeError(f"{binary}: no query-machines reply in {result.stdout!r}")


def _header(binary: str, version: str, command: str) -> str:
    return (
        f"# recorded by {TOOL} from {binary} (QEMU {version})\n"
        f"# command: {command}\n"
        f"# date: {datetime.date.today().isoformat()}\n"
    )


def _devices(device_text: str) -> dict[str, str]:
    """``{device: bus}`` from ``-device help``."""
    found = {}
    for line in device_text.splitlines():
        if line.startswith('name "') and ", bus " in line:
            name = line[6:].split('"', 1)[0]
            found[name] = line.split(", bus ", 1)[1].split(",", 1)[0].strip()
    return found


def record(name: str, binary: str) -> dict[str, str]:
    """``{file name: content}`` of one profile, recorded from ``binary``."""
    files: dict[str, str] = {}
    commands: dict[str, str] = {}
    for kind, args in TEXTS.items():
        result = run(binary, args)
        if result.returncode != 0:
            raise RuntimeError(f"{binary} {' '.join(args)} failed: {result.stderr!r}")
        files[f"{kind}.txt"] = result.stdout.decode("utf-8")
        commands[f"{kind}.txt"] = " ".join(["qemu-system-x86_64", *args])
    version = files["version.txt"].split("version ", 1)[1].split()[0]
    probe = "qemu-system-x86_64 " + " ".join(PROBE_BASE)

    machines = query_machines(binary)
    command = f"{probe} <<< query-machines"
    lines = [_header(binary, version, command), "# machine-type cpu-max\n"]
    for entry in sorted(machines, key=lambda e: str(e["name"])):
        lines.append(f"{entry['name']} {entry['cpu-max']}\n")
        if entry.get("alias"):
            lines.append(f"{entry['alias']} {entry['cpu-max']}\n")
    files["machine-cpus.txt"] = "".join(lines)
    commands["machine-cpus.txt"] = command

    formats = run(binary, ["-drive", "format=help"]).stdout.decode("utf-8")
    writable = next(line for line in formats.splitlines() if line.startswith("Supported formats:"))
    with tempfile.TemporaryDirectory() as tmp:
        image = os.path.join(tmp, "disk.raw")
        with open(image, "wb") as f:
            f.truncate(1 << 20)
        drive = f"file={image},format=raw"
        interfaces = [i for i in INTERFACES if starts(binary, ["-drive", f"{drive},if={i}"])]
        caches = [
            c for c in CACHE_MODES if starts(binary, ["-drive", f"{drive},if=none,cache={c}"])
        ]
    command = (
        f"qemu-system-x86_64 -drive format=help; {probe} -drive file=IMAGE,format=raw,"
        f"if=X (X in {' '.join(INTERFACES)}) and ...,if=none,cache=Y (Y in {' '.join(CACHE_MODES)})"
    )
    files["drive.txt"] = (
        _header(binary, version, command)
        + f"formats: {writable.split(':', 1)[1].strip()}\n"
        + f"if: {' '.join(interfaces)}\n"
        + f"cache: {' '.join(caches)}\n"
    )
    commands["drive.txt"] = command

    devices = _devices(files["device.txt"])
    pci = [d for d, bus in devices.items() if bus == "PCI"]
    usb_device = (
        "usb-tablet"
        if devices.get("usb-tablet") == "usb-bus"
        else next(d for d, bus in devices.items() if bus == "usb-bus")
    )
    names = sorted({str(e["name"]) for e in machines} - {"none"})
    plain = [m for m in names if starts(binary, ["-machine", m, "-device", usb_device])]
    with_usb = [
        m
        for m in names
        if m in plain or starts(binary, ["-machine", m, "-usb", "-device", usb_device])
    ]
    controllers = [
        d
        for d in pci
        if "usb" in d or "ohci" in d or "xhci" in d
        if starts(binary, ["-device", d, "-device", usb_device])
    ]
    command = (
        f"{probe} -machine M [-usb] -device {usb_device}; {probe} -device C -device {usb_device}"
        " (M every machine type but none, C the PCI devices named *usb*, *ohci*, *xhci*)"
    )
    files["usb.txt"] = (
        _header(binary, version, command)
        + "# machines with a usb-bus of their own, with -usb, and the controllers that add one\n"
        + f"machines: {' '.join(plain)}\n"
        + f"machines-with-usb-option: {' '.join(with_usb)}\n"
        + f"controllers: {' '.join(controllers)}\n"
    )
    commands["usb.txt"] = command

    package = (
        files["version.txt"].split("(", 1)[1].split(")", 1)[0]
        if "(" in files["version.txt"].splitlines()[0]
        else ""
    )
    meta = {
        "name": name,
        "binary": binary,
        "version": version,
        "package": package.removeprefix("Debian ").strip(),
        "recorded": datetime.date.today().isoformat(),
        "tool": TOOL,
        "commands": commands,
    }
    files["profile.json"] = json.dumps(meta, indent=2) + "\n"
    return files


def _comparable(file: str, text: str) -> str:
    """The content without the recording date (a re-recording on another day is equal)."""
    if file == "profile.json":
        data = json.loads(text)
        data.pop("recorded", None)
        return json.dumps(data, sort_keys=True)
    return "".join(line for line in text.splitlines(True) if not line.startswith("# date: "))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "targets",
        nargs="*",
        help="NAME=BINARY pairs (default: "
        + ", ".join(f"{k}={v}" for k, v in DEFAULT_BINARIES.items())
        + ")",
    )
    parser.add_argument("--profiles", type=Path, default=PROFILES)
    parser.add_argument("--check", action="store_true", help="compare; exit 1 on a difference")
    args = parser.parse_args(argv)
    targets = dict(t.split("=", 1) for t in args.targets) if args.targets else DEFAULT_BINARIES
    status = 0
    for name, binary in targets.items():
        if not os.access(binary, os.X_OK):
            print(f"{name}: no QEMU at {binary}", file=sys.stderr)
            status = 2
            continue
        folder = args.profiles / name
        for file, text in record(name, binary).items():
            path = folder / file
            old = path.read_text(encoding="utf-8") if path.is_file() else None
            same = old is not None and _comparable(file, old) == _comparable(file, text)
            if args.check:
                if not same:
                    print(f"{path}: differs from {binary}'s answer")
                    status = max(status, 1)
            elif not same:
                folder.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
                print(f"wrote {path}")
    return status


if __name__ == "__main__":
    sys.exit(main())
