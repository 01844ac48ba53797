"""PCI slots on the root bus, for the command line's ``-device`` and QMP's ``device_add``.

Both place a NIC or a disk at an ``addr=`` slot, or at the lowest free one, and
refuse a taken slot with QEMU's words; one copy of those rules serves both (QEMU's
command line and its monitor create devices with the same code).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

    from kvmlab.fake.cmdline.config import BlockDevice, Nic
    from kvmlab.fake.profiles import Profile

__all__ = ["ADDR_ERROR", "device_model", "first_free_slot", "parse_slot", "slot_taken"]

#: QEMU's message for an ``addr`` that is not a slot number.
ADDR_ERROR = "Parameter 'addr' expects an Slot/device [and function] number"
#: Slots 0-2 hold the host bridge, the PIIX and VGA on the i440fx machine.
_FIRST_AUTO_SLOT = 3
_SLOTS = 32


def device_model(profile: Profile, driver: str) -> str | None:
    """The real name of ``-device``/``device_add``'s ``driver`` (an alias resolved), or
    ``None`` when the profile's ``-device help`` does not list it (QEMU: ``'x' is not a
    valid device model name``). Any name is taken when the profile recorded no list."""
    devices = profile.devices()
    if not devices:
        return driver
    return devices.get(driver)


def parse_slot(text: str) -> int | None:
    """The slot of ``addr=SS[.F]`` (``0x08``, ``8``, ``08.0``), or ``None`` when malformed."""
    try:
        return int(text.split(".", maxsplit=1)[0], 0)
    except ValueError:
        return None


def slot_taken(slot: int, driver: str, devices: Iterable[Nic | BlockDevice]) -> str | None:
    """QEMU's refusal when a device already sits at ``slot``, else ``None``."""
    user = next((dev for dev in devices if dev.slot == slot), None)
    if user is None:
        return None
    return (
        f"PCI: slot {slot} function 0 not available for {driver},"
        f" in use by {user.model},id={user.ident or ''}"
    )


def first_free_slot(devices: Iterable[Nic | BlockDevice]) -> int:
    """The slot QEMU gives a device without ``addr``: the lowest free one."""
    taken = {dev.slot for dev in devices}
    return next(s for s in range(_FIRST_AUTO_SLOT, _SLOTS) if s not in taken)
