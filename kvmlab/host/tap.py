"""Tap devices kvmlab opens itself, for a NIC hotplug (docs/hotplug.md, "Tap NICs").

At start QEMU creates a NIC's tap and runs kvmlab's up-script with its name. A
hotplugged NIC has no QEMU start to do that, so kvmlab does it as Ganeti does:

1. :func:`open_tap`: ``/dev/net/tun`` with ``TUNSETIFF`` (``IFF_TAP | IFF_NO_PI``,
   and ``IFF_VNET_HDR`` for a virtio NIC when ``vnet_hdr`` is set), named by the
   kernel (``tap%d``, the name QEMU's own taps get), the name checked;
2. :func:`configure_tap`: the *same* up-script a start writes
   (:func:`kvmlab.runtime.plan.tap_up_script`), run with the tap's name as ``$1``: it brings
   the tap up, attaches it to the bridge (bridged) and records the tap under
   ``nic_dir`` so that stop deletes it;
3. the caller passes the descriptor to QEMU (``getfd``) and closes its own copy;
4. :func:`delete_tap` undoes it (a failed hotplug, a detach).
"""

from __future__ import annotations

import fcntl
import os
import re
import struct
import subprocess
from pathlib import Path

from kvmlab.errors import TapError
from kvmlab.runtime.plan import tap_up_script
from kvmlab.spec.instance import Nic

__all__ = ["TapError", "configure_tap", "delete_tap", "open_tap", "tap_record", "valid_tap_name"]

_TUN = "/dev/net/tun"
_TUNSETIFF = 0x400454CA
_IFF_TAP = 0x0002
_IFF_NO_PI = 0x1000
_IFF_VNET_HDR = 0x4000
#: The kernel's ``tap%d`` names, under IFNAMSIZ (16 with the NUL).
_TAP_NAME = re.compile(r"tap[0-9]{1,12}")
_SYS_NET = Path("/sys/class/net")
SCRIPT_TIMEOUT = 10.0


def valid_tap_name(name: str) -> bool:
    """Whether ``name`` is a tap name kvmlab creates (``tapN``), safe as an argument."""
    return _TAP_NAME.fullmatch(name) is not None


def tap_record(slot: int) -> str:
    """The ``nic_dir`` record of a tap hotplugged at ``slot`` (a start's records are ``0``..)."""
    return f"s{slot:02x}"


def open_tap(vnet_hdr: bool) -> tuple[int, str]:
    """Create a tap device; its descriptor (close-on-exec) and the kernel's name for it.

    :raise TapError: no ``/dev/net/tun``, no ``CAP_NET_ADMIN``, or an unexpected name.
    """
    flags = _IFF_TAP | _IFF_NO_PI | (_IFF_VNET_HDR if vnet_hdr else 0)
    try:
        fd = os.open(_TUN, os.O_RDWR | os.O_CLOEXEC)
    except OSError as err:
        raise TapError(f"cannot open {_TUN}: {err.strerror}") from err
    try:
        result = fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH22x", b"tap%d", flags))
    except OSError as err:
        os.close(fd)
        raise TapError(f"cannot create a tap device (TUNSETIFF): {err.strerror}") from err
    name = result[:16].rstrip(b"\0").decode("ascii", errors="replace")
    if not valid_tap_name(name):
        os.close(fd)
        raise TapError(f"the kernel named the new tap {name!r}, not tapN")
    return fd, name


def configure_tap(instance: str, nic: Nic, nic_dir: Path, record: str, tap: str) -> None:
    """Run the start-time up-script for ``nic`` on ``tap``, recording it as ``nic_dir/record``.

    :raise TapError: the script failed (its last line of output is in the message).
    """
    if not valid_tap_name(tap):
        raise TapError(f"refusing to configure {tap!r}: not a tap name kvmlab creates")
    script = tap_up_script(instance, 0, nic, str(nic_dir), record=record)
    try:
        done = subprocess.run(
            ["/bin/sh", "-c", script, "kvmlab-tap-up", tap],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=SCRIPT_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise TapError(f"the up-script for {tap} did not run: {err}") from err
    if done.returncode != 0:
        lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        last = lines[-1] if lines else "no output"
        raise TapError(f"the up-script for {tap} failed (exit {done.returncode}): {last}")


def delete_tap(tap: str, record: Path | None = None) -> None:
    """Delete ``tap`` if it is still there, and its record; never raises for a gone tap."""
    if valid_tap_name(tap) and (_SYS_NET / tap).exists():
        subprocess.run(
            ["ip", "link", "delete", tap],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=False,
            timeout=SCRIPT_TIMEOUT,
        )
    if record is not None:
        record.unlink(missing_ok=True)
