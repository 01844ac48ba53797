"""What the test guest runs: its ``/init`` script and the files of its initramfs.

The guest's whole behaviour is this text: mount, load the modules, start ``acpid`` for the
power button and the command loop on ttyS1, print the guest facts on ttyS0, offer a shell
(the guest facts protocol, docs/guest.md). The image name hashes it, so editing it here makes the
next build write a new image rather than reuse the old one.
"""

from __future__ import annotations

import re
import stat
from collections.abc import Sequence

from kvmlab.errors import GuestBuildError
from kvmlab.guest.cpio import CpioEntry

__all__ = ["POWER_HANDLER", "initramfs_entries", "render_init_script"]

_INIT_TEMPLATE = r"""#!/bin/busybox sh
# kvmlab test guest /init, written by kvmlab.guest.build (the image name hashes this text).
# Prints the guest facts protocol on the serial console, powers off on the ACPI power
# button (QMP system_powerdown) and offers a shell on the console.
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root
# Kernel messages from here on would interleave with the facts on the same serial line.
echo 1 > /proc/sys/kernel/printk
for m in @MODULES@; do
    insmod /lib/modules/$m.ko || echo "kvmlab-init: insmod $m failed" >&2
done
ip link set lo up
# The power button: acpid runs /etc/acpi/PWRF/00000080 (poweroff -f). Started before the
# facts so that a host which powers down right after KVMLAB-FACTS-END is heard.
acpid -c /etc/acpi -l /tmp/acpid.log
# The command channel on ttyS1 (kvmlab.channels.guest_channel, docs/guest.md): each request line
# "<nonce> <seconds> <command line>" runs under sh -c, stdin /dev/null, killed after
# <seconds>; the reply is its output (stdout and stderr), a newline, then
# "KVMLAB-EXIT <nonce> <status>". The tty is raw: no echo, no CR/LF rewriting; the
# output goes through a pipe, so commands see no tty (ls prints one name a line).
# Without a second serial port the open fails; stderr stays off the console.
(
    set -o pipefail
    while true; do
        {
            stty raw -echo 115200
            while IFS= read -r req; do
                nonce=${req%% *}
                rest=${req#* }
                secs=${rest%% *}
                cmd=${rest#* }
                timeout -s KILL "$secs" sh -c "$cmd" </dev/null 2>&1 | cat
                printf '\nKVMLAB-EXIT %s %s\n' "$nonce" "$?"
            done
        } </dev/ttyS1 >/dev/ttyS1
        sleep 1
    done
) 2>/dev/null &
out=/dev/console
[ -c /dev/ttyS0 ] && out=/dev/ttyS0
facts="KVMLAB-BOOT-OK
MEM $(sed -n 's/^MemTotal: *\([0-9]*\) kB$/\1/p' /proc/meminfo)
CPUS $(nproc)"
for n in $(ls /sys/class/net | sed -n 's/^eth\([0-9][0-9]*\)$/\1/p' | sort -n); do
    facts="$facts
NIC eth$n $(cat /sys/class/net/eth$n/address)"
done
# One write, so nothing can land in the middle of the block.
printf '%s\nKVMLAB-FACTS-END\n' "$facts" > $out
while true; do
    setsid cttyhack sh -l
    sleep 1
done
"""

#: The script busybox ``acpid`` runs on the ACPI power button; part of the image hash.
POWER_HANDLER = """#!/bin/sh
# Run by busybox acpid on the ACPI power button (QMP system_powerdown).
echo KVMLAB-POWEROFF > /dev/console
poweroff -f
"""


def render_init_script(modules: Sequence[str]) -> str:
    """Return the ``/init`` text that loads ``modules`` in the given order.

    The script is part of the image's cache key, so any change to it builds a new image.

    :param modules: module names, dependencies first (each is ``/lib/modules/<name>.ko``).
    """
    for name in modules:
        if not re.fullmatch(r"[A-Za-z0-9_]+", name):
            raise GuestBuildError(f"unexpected module name {name!r}")
    return _INIT_TEMPLATE.replace("@MODULES@", " ".join(modules) or "")


def initramfs_entries(
    busybox: bytes, init: str, modules: Sequence[tuple[str, bytes]]
) -> list[CpioEntry]:
    """The files of the initramfs: directories, busybox, ``/init``, the power handler, modules."""
    dirs = [
        "bin",
        "dev",
        "etc",
        "etc/acpi",
        "etc/acpi/PWRF",
        "lib",
        "lib/modules",
        "proc",
        "root",
        "run",
        "sbin",
        "sys",
        "tmp",
        "usr",
        "usr/bin",
        "usr/sbin",
        "var",
        "var/log",
    ]
    entries = [CpioEntry(d, stat.S_IFDIR | 0o755) for d in dirs]
    # The kernel opens /dev/console for init's stdio before /init mounts devtmpfs.
    entries.append(CpioEntry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)))
    entries.append(CpioEntry("bin/busybox", stat.S_IFREG | 0o755, busybox))
    entries.append(CpioEntry("bin/sh", stat.S_IFLNK | 0o777, b"busybox"))
    entries.append(CpioEntry("init", stat.S_IFREG | 0o755, init.encode()))
    entries.append(
        CpioEntry("etc/acpi/PWRF/00000080", stat.S_IFREG | 0o755, POWER_HANDLER.encode())
    )
    entries.extend(
        CpioEntry(f"lib/modules/{name}.ko", stat.S_IFREG | 0o644, blob) for name, blob in modules
    )
    return entries
