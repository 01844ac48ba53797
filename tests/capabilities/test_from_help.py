"""``QemuCapabilities.from_help`` and ``probe``: versions and features read from ``-help``."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

from kvmlab.errors import CapabilityError, ProbeError
from kvmlab.spec.capabilities import OPTION_FLAGS, QemuCapabilities

GANETI_HELP_FILES = [
    "kvm_0.9.1_help.txt",
    "kvm_0.9.1_help_boot_test.txt",
    "kvm_0.12.5_help.txt",
    "kvm_0.15.90_help.txt",
    "kvm_1.0_help.txt",
    "kvm_1.1.2_help.txt",
    "kvm_5.2.0_help.txt",
]


def help_with_first_line(first: str) -> str:
    return f"{first}\nusage: qemu [options] [disk_image]\n\n-m megs         set memory\n"


def line_starts_with(text: str, option: str) -> bool:
    """Whether a line of ``text`` starts with ``-option`` followed by a blank, ``[`` or EOL."""
    return re.search(rf"^-{re.escape(option)}(?:[ \t\[]|$)", text, re.MULTILINE) is not None


# --- version lines ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first_line", "version", "extra"),
    [
        (
            "QEMU PC emulator version 0.9.1 (kvm-72), Copyright (c) 2003-2008 Fabrice Bellard",
            (0, 9, 1),
            "kvm-72",
        ),
        (
            "QEMU emulator version 1.0 (qemu-kvm-1.0 Debian 1.0+dfsg-2), Copyright (c) 2003-2008",
            (1, 0, 0),
            "qemu-kvm-1.0 Debian 1.0+dfsg-2",
        ),
        (
            "QEMU emulator version 5.2.0 (Debian 1:5.2+dfsg-11+deb11u1)",
            (5, 2, 0),
            "Debian 1:5.2+dfsg-11+deb11u1",
        ),
        (
            "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)",
            (7, 2, 22),
            "Debian 1:7.2+dfsg-7+deb12u18+b3",
        ),
        (
            "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)",
            (10, 0, 2),
            "Debian 1:10.0.2+ds-2+deb13u1~bpo12+1",
        ),
        ("QEMU emulator version 0.15.90, Copyright (c) 2003-2008 Fabrice Bellard", (0, 15, 90), ""),
        ("QEMU emulator version 8.2.2", (8, 2, 2), ""),
    ],
)
def test_version_from_first_line(
    first_line: str, version: tuple[int, int, int], extra: str
) -> None:
    caps = QemuCapabilities.from_help(help_with_first_line(first_line))
    assert caps.version == version
    assert caps.version_extra == extra
    assert caps.version_string == ".".join(map(str, version))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\n\n",
        "usage: qemu [options] [disk_image]\n-m megs\n",
        "qemu-system-x86_64: invalid option -- 'help'\n",
        "QEMU emulator, no number here\n",
    ],
)
def test_no_version_is_a_capability_error(text: str) -> None:
    with pytest.raises(CapabilityError) as info:
        QemuCapabilities.from_help(text)
    assert "\n" not in str(info.value)


def test_version_is_only_looked_for_at_the_top() -> None:
    text = "usage: qemu\n\n\n\n-m megs\n-version   display version (e.g. version 9.9.9)\n"
    with pytest.raises(CapabilityError):
        QemuCapabilities.from_help(text)


def test_long_booleans_start_with_qemu_6() -> None:
    old = QemuCapabilities.from_help(help_with_first_line("QEMU emulator version 5.2.0"))
    new = QemuCapabilities.from_help(help_with_first_line("QEMU emulator version 6.0.0"))
    assert (old.uses_long_booleans, new.uses_long_booleans) == (False, True)


# --- Ganeti's recorded help outputs (raw texts, read in place when present) ---------------
#
# Only these tests read Ganeti's texts: they check the parser against real old QEMUs.
# What the rest of the suite needs from them (the parsed fields) is committed as the
# facts profiles fixtures/profiles/ganeti-*; tests/capabilities/test_facts_profiles.py
# checks those always, and against these texts when present.


def option_description(text: str, option: str) -> str:
    """Every ``-option ...`` line with its continuation lines (up to the next '-' line)."""
    pattern = rf"^-{re.escape(option)}(?:[ \t\[]|$).*?(?=^-|\Z)"
    return "".join(re.findall(pattern, text, re.MULTILINE | re.DOTALL))


def expected_from_text(text: str) -> dict[str, object]:
    """What a reader of the help text finds, by regular expressions independent of the parser."""
    first = re.search(r"version (\d+)\.(\d+)(?:\.(\d+))?", text.splitlines()[0])
    assert first is not None
    drive = option_description(text, "drive")
    net = option_description(text, "netdev") + option_description(text, "net")
    return {
        "version": tuple(int(part or 0) for part in first.groups()),
        **{field: line_starts_with(text, option) for field, option in OPTION_FLAGS.items()},
        "has_vhost": "vhost=on" in net,
        "has_drive_boot": "boot=on" in drive,
        "has_drive_readonly": "readonly" in drive,
        "has_drive_aio": "aio=" in drive,
        "has_chardev_logfile": "logfile=" in option_description(text, "chardev"),
    }


@pytest.mark.parametrize("filename", GANETI_HELP_FILES)
def test_ganeti_help_text_parses_as_a_reader_sees_it(ganeti_fixtures: Path, filename: str) -> None:
    """Version, every option flag (``OPTION_FLAGS``) and the sub-option flags at once."""
    text = (ganeti_fixtures / filename).read_text()
    caps = QemuCapabilities.from_help(text)
    expected = expected_from_text(text)
    assert {key: getattr(caps, key) for key in expected} == expected
    assert caps.version_string in filename or caps.version_string == "1.0.0"


def test_drive_boot_only_counts_inside_the_drive_description(ganeti_fixtures: Path) -> None:
    # Ganeti's boot test file puts a -fakeopt line between -drive and its boot=on|off.
    plain = (ganeti_fixtures / "kvm_0.9.1_help.txt").read_text()
    split = (ganeti_fixtures / "kvm_0.9.1_help_boot_test.txt").read_text()
    assert QemuCapabilities.from_help(plain).has_drive_boot is True
    assert QemuCapabilities.from_help(split).has_drive_boot is False


def test_drive_boot_only_counts_inside_the_drive_description_synthetic() -> None:
    """The same rule on a text of our own, so it is checked on every machine."""
    head = "QEMU PC emulator version 0.9.1 (kvm-72)\nusage: qemu [options] [disk_image]\n\n"
    drive = "-drive [file=file][,if=type][,boot=on|off]\n                use 'file' as a drive\n"
    plain = head + drive + "-m megs         set memory\n"
    split = head + "-drive [file=file][,if=type]\n-fakeopt x\n            [,boot=on|off]\n"
    assert QemuCapabilities.from_help(plain).has_drive_boot is True
    assert QemuCapabilities.from_help(split).has_drive_boot is False


def test_default_machine_from_machine_help(ganeti_fixtures: Path) -> None:
    machine_text = (ganeti_fixtures / "kvm_6.0.0_machine.txt").read_text()
    caps = QemuCapabilities.from_help(
        (ganeti_fixtures / "kvm_5.2.0_help.txt").read_text(), machine_text
    )
    default_lines = [line for line in machine_text.splitlines() if "(default)" in line]
    assert len(default_lines) == 1
    assert caps.default_machine == default_lines[0].split()[0] == "pc-i440fx-impish"
    assert "pc" in caps.machines
    assert "microvm" in caps.machines
    assert "Supported" not in caps.machines


def test_no_machine_help_means_no_default_machine() -> None:
    caps = QemuCapabilities.from_help(help_with_first_line("QEMU emulator version 1.0"))
    assert caps.default_machine is None
    assert caps.machines == ()


def test_device_help_gives_the_device_list() -> None:
    device_help = (
        'Network devices:\nname "e1000", bus PCI, desc "Intel Gigabit Ethernet"\n'
        'name "virtio-net-pci", bus PCI, alias "virtio-net"\n'
    )
    caps = QemuCapabilities.from_help(
        help_with_first_line("QEMU emulator version 7.2.0"), device_help=device_help
    )
    assert caps.devices == ("e1000", "virtio-net-pci", "virtio-net")  # aliases count
    assert caps.supports_device("e1000")
    assert not caps.supports_device("rtl8139")
    assert caps.supports_device("virtio-net")
    assert QemuCapabilities().supports_device("anything"), "unknown list: assume present"


# --- probe --------------------------------------------------------------------------------

FAKE_HELP = """\
QEMU emulator version 9.1.3 (fake)
usage: qemu-system-x86_64 [options] [disk_image]

-machine [type=]name[,prop[=value][,...]]
-netdev user,id=str
-device driver[,prop[=value][,...]]
-run-with [async-teardown=on|off][,chroot=dir][user=username|uid:gid]
"""
FAKE_MACHINES = """\
Supported machines are:
pc                   Standard PC (alias of pc-i440fx-9.1)
pc-i440fx-9.1        Standard PC (i440FX + PIIX, 1996) (default)
"""


def fake_qemu(directory: Path, *, exit_code: int = 0, help_text: str = FAKE_HELP) -> Path:
    """A shell script answering -help / -machine help / -device help; counts its runs."""
    (directory / "help.txt").write_text(help_text)
    (directory / "machine.txt").write_text(FAKE_MACHINES)
    (directory / "device.txt").write_text('name "virtio-net-pci", bus PCI\n')
    script = directory / "qemu-fake"
    script.write_text(
        f"""#!/bin/sh
echo run >> '{directory}/runs'
if [ {exit_code} -ne 0 ]; then echo "qemu-fake: cannot start" >&2; exit {exit_code}; fi
case "$1" in
  -help) cat '{directory}/help.txt' ;;
  -machine) cat '{directory}/machine.txt' ;;
  -device) cat '{directory}/device.txt' ;;
  *) echo "unexpected: $*" >&2; exit 3 ;;
esac
"""
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def runs(directory: Path) -> int:
    log = directory / "runs"
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_probe_reads_the_binary(tmp_path: Path) -> None:
    caps = QemuCapabilities.probe(fake_qemu(tmp_path))
    assert caps.version == (9, 1, 3)
    assert caps.has_run_with and caps.has_netdev and caps.has_machine
    assert not caps.has_no_acpi
    assert caps.default_machine == "pc-i440fx-9.1"
    assert caps.devices == ("virtio-net-pci",)


def test_probe_is_cached(tmp_path: Path) -> None:
    binary = fake_qemu(tmp_path)
    first = QemuCapabilities.probe(binary)
    after_first = runs(tmp_path)
    assert after_first > 0
    assert QemuCapabilities.probe(binary) == first
    assert QemuCapabilities.probe(str(binary)) == first
    assert runs(tmp_path) == after_first


def test_probe_through_a_symlink_uses_the_same_cache(tmp_path: Path) -> None:
    binary = fake_qemu(tmp_path)
    link = tmp_path / "kvm"
    link.symlink_to(binary)
    QemuCapabilities.probe(binary)
    before = runs(tmp_path)
    assert QemuCapabilities.probe(link).version == (9, 1, 3)
    assert runs(tmp_path) == before


def test_probe_runs_again_when_the_binary_changes(tmp_path: Path) -> None:
    binary = fake_qemu(tmp_path)
    QemuCapabilities.probe(binary)
    before = runs(tmp_path)
    (tmp_path / "help.txt").write_text(FAKE_HELP.replace("9.1.3", "9.2.0"))
    mtime = binary.stat().st_mtime_ns
    os.utime(binary, ns=(mtime + 5_000_000_000, mtime + 5_000_000_000))
    caps = QemuCapabilities.probe(binary)
    assert runs(tmp_path) > before
    assert caps.version == (9, 2, 0)


def test_probe_of_a_missing_binary(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-qemu"
    with pytest.raises(ProbeError) as info:
        QemuCapabilities.probe(missing)
    assert str(missing) in str(info.value)


def test_probe_of_a_failing_binary(tmp_path: Path) -> None:
    binary = fake_qemu(tmp_path, exit_code=1)
    with pytest.raises(ProbeError) as info:
        QemuCapabilities.probe(binary)
    message = str(info.value)
    assert str(binary) in message
    assert "cannot start" in message


def test_failed_probe_is_not_cached(tmp_path: Path) -> None:
    binary = fake_qemu(tmp_path, exit_code=1)
    for _ in range(2):
        with pytest.raises(ProbeError):
            QemuCapabilities.probe(binary)
    assert runs(tmp_path) == 2


def test_probe_of_a_non_executable_file(tmp_path: Path) -> None:
    binary = fake_qemu(tmp_path)
    binary.chmod(0o644)
    with pytest.raises(ProbeError):
        QemuCapabilities.probe(binary)


def test_probe_of_a_binary_without_version(tmp_path: Path) -> None:
    binary = fake_qemu(tmp_path, help_text="usage: qemu\n-m megs\n")
    with pytest.raises(CapabilityError):
        QemuCapabilities.probe(binary)


@pytest.mark.qemu
def test_probe_of_the_real_qemu(qemu_binary: str) -> None:
    """Debian 12's QEMU (conftest skips without it, or fails under CI=true)."""
    caps = QemuCapabilities.probe(qemu_binary)
    assert caps.version[:2] == (7, 2)
    assert caps.has_netdev and caps.has_device and caps.has_machine
    assert caps.default_machine is not None
    assert caps.default_machine.startswith("pc-i440fx-7.2")
    assert "virtio-net-pci" in caps.devices
