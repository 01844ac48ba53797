"""The pure half of starting a VM: an :class:`Instance` becomes a :class:`KVMRuntime`.

``generate_runtime`` follows the order of Ganeti's ``_GenerateKVMRuntime``
(identity, memory and CPUs, pidfile, daemon flags, machine, boot media, kernel,
control sockets, display, clock, confinement, CPU model, extras) and asks the
:class:`QemuCapabilities` for every spelling that depends on the QEMU version.

It is pure: no file is read or written, no clock, no randomness, no environment.
The paths it puts in the argv come from the :class:`StateLayout` it is given and
are stable for the instance. NICs are not expanded: they are kept as data and
turned into arguments at start time by :func:`kvmlab.runtime.plan.plan_execution`.

Virtio disks are written by :func:`disk_args`, one disk at a time at its PCI slot
(``runtime.DISK_SLOTS``; on q35 behind that slot's PCIe root port, which generation
adds right after ``-machine``: :mod:`kvmlab.runtime.ports`); disk hotplug
(:mod:`kvmlab.lifecycle.hotplug.disk`) calls the same function, so a hotplugged disk's
saved args are exactly what generation writes.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from functools import lru_cache

from kvmlab.errors import InstanceError
from kvmlab.runtime.ports import device_placement, root_port_args, uses_root_ports
from kvmlab.runtime.saved import DISK_SLOTS, KVMRuntime
from kvmlab.spec.capabilities import QemuCapabilities
from kvmlab.spec.instance import (
    INSTANCE_UUID_NAMESPACE,
    Accel,
    BootOrder,
    Disk,
    HvParams,
    Instance,
    KvmFlag,
)
from kvmlab.spec.layout import DEFAULT_STATE_DIR, StateLayout

__all__ = ["disk_args", "disk_ids", "generate_runtime", "has_disk_slots", "qemu_opt"]

_DEFAULT_LAYOUT = StateLayout(DEFAULT_STATE_DIR)
_VNC_BASE_PORT = 5900
_ANY_ADDRESS = "0.0.0.0"
# Enum members bound to module names: a class attribute lookup on an Enum is slow,
# and generation runs for every start.
_KVM_ENABLED = KvmFlag.ENABLED
_KVM_DISABLED = KvmFlag.DISABLED
_BOOT_DISK = BootOrder.DISK
_BOOT_FLAGS = {BootOrder.NETWORK: "n", BootOrder.CDROM: "d", BootOrder.FLOPPY: "a"}


def qemu_opt(value: str) -> str:
    """Escape a value for QEMU's ``key=value,...`` syntax: a comma is written twice."""
    return value.replace(",", ",,")


def _switches(caps: QemuCapabilities) -> str:
    """``server=on,wait=off`` on QEMU >= 6.0, the short form before."""
    return "server=on,wait=off" if caps.uses_long_booleans else "server,nowait"


def _accel(hv: HvParams, accel: Accel | None) -> Accel | None:
    kvm_flag = hv.kvm_flag
    if kvm_flag is _KVM_ENABLED:
        return "kvm"
    if kvm_flag is _KVM_DISABLED:
        return "tcg"
    return accel


def generate_runtime(
    instance: Instance,
    caps: QemuCapabilities | None = None,
    *,
    layout: StateLayout | None = None,
    accel: Accel | None = None,
    binary: str | None = None,
) -> KVMRuntime:
    """Generate the runtime that starts ``instance`` on a QEMU with ``caps``.

    :param instance: the VM; it is captured, later changes to it change nothing.
    :param caps: the binary's capabilities; QEMU 7.2's when omitted.
    :param layout: where pidfile, sockets and logs live; ``/var/lib/kvmlab`` when omitted.
    :param accel: the accelerator to use when ``kvm_flag`` is unset (the lifecycle
        probes it); ``None`` leaves QEMU's default.
    :param binary: the program for ``argv[0]``; ``hvparams.kvm_path`` when omitted.
    :return: a frozen runtime; NICs kept as data, not in the argv.
    :raise InstanceError: a combination this QEMU cannot express.
    :raise LayoutError: a socket path is too long for the layout's directory.
    """
    caps = caps or QemuCapabilities.default()
    hv = instance.hvparams
    name = instance.name
    switches = _switches(caps)
    paths = (layout or _DEFAULT_LAYOUT).instance_paths(name)

    smp = str(instance.vcpus)
    if hv.cpu_cores:
        smp += f",cores={hv.cpu_cores}"
    if hv.cpu_threads:
        smp += f",threads={hv.cpu_threads}"
    if hv.cpu_sockets:
        smp += f",sockets={hv.cpu_sockets}"
    argv: list[str] = [
        binary or hv.kvm_path,
        "-name",
        name,
        "-m",
        str(instance.memory),
        "-smp",
        smp,
        "-pidfile",
        paths.pidfile,
    ]

    # Old QEMU (0.12) has -device but no "virtio-balloon" alias: use -balloon there.
    if caps.has_balloon_option:
        argv += ("-balloon", "virtio")
    elif caps.has_device:
        argv += ("-device", "virtio-balloon")
    argv.append("-daemonize")

    machine_opts: list[str] = []
    if not hv.acpi:
        if caps.has_no_acpi:
            argv.append("-no-acpi")
        elif caps.has_machine:
            machine_opts.append("acpi=off")
        else:
            raise InstanceError(
                f"acpi=False cannot be expressed on QEMU {caps.version_string}",
                field="hvparams.acpi",
                value=False,
            )
    if hv.reboot_behavior == "exit":
        argv.append("-no-reboot")
    argv += _machine_args(hv, caps, _accel(hv, accel), machine_opts)
    root_ports = uses_root_ports(hv, caps)
    if root_ports:  # q35: a root port per reserved slot (kvmlab.runtime.ports)
        argv += root_port_args()

    disk_slots = _add_boot_args(argv, instance, caps, root_ports)
    kernel_path = hv.kernel_path
    if kernel_path:
        argv += ("-kernel", kernel_path)
        if hv.initrd_path:
            argv += ("-initrd", hv.initrd_path)
        append = f"root={hv.root_path}"
        if hv.kernel_args:
            append += f" {hv.kernel_args}"
        if hv.serial_console:
            append += f" console=ttyS0,{hv.serial_speed}"
        argv += ("-append", append)
    if hv.mem_path:
        argv += ("-mem-path", hv.mem_path)
        if caps.has_mem_prealloc:
            argv.append("-mem-prealloc")

    argv += ("-monitor", f"unix:{paths.monitor},{switches}")
    # ttyS0 is the console; ttyS1, right after it, the guest command channel
    # (kvmlab.channels.guest_channel). The channel only comes with a console: after "-serial none"
    # the next -serial would become ttyS0.
    if not hv.serial_console:
        argv += ("-serial", "none")
    elif caps.has_chardev and caps.has_chardev_logfile:
        argv += (
            "-chardev",
            f"socket,id=serial0,path={paths.serial},{switches},"
            f"logfile={paths.serial_log},logappend=off",
            "-serial",
            "chardev:serial0",
            "-chardev",
            f"socket,id=cmd0,path={paths.cmd},{switches}",
            "-serial",
            "chardev:cmd0",
        )
    else:
        argv += ("-serial", f"unix:{paths.serial},{switches}")
        argv += ("-serial", f"unix:{paths.cmd},{switches}")

    argv += _display_args(instance, caps)
    if hv.use_localtime:
        argv += ("-rtc", "base=localtime") if caps.has_rtc else ("-localtime",)
    argv += _confinement_args(instance, caps, paths.chroot)
    if hv.keymap:
        argv += ("-k", hv.keymap)
    if hv.cpu_type:
        argv += ("-cpu", hv.cpu_type)
    if hv.vga:
        argv += ("-vga", hv.vga)
    if hv.soundhw:
        if caps.has_soundhw:
            argv += ("-soundhw", hv.soundhw)
        else:
            for device in _SOUND_DEVICES.get(hv.soundhw.lower(), (hv.soundhw,)):
                argv += ("-device", device)
    if hv.usb_devices:
        if "-usb" not in argv:  # a USB device needs the bus
            argv.append("-usb")
        for device in filter(None, hv.usb_devices.split(",")):
            argv += _usb_device(device.strip(), caps)
    if caps.has_uuid:
        argv += ("-uuid", _uuid_text(instance))
    if hv.kvm_extra:
        argv += hv.kvm_extra_args

    # Every part is already validated (the instance by its model, the argv built
    # from it here), so skip a second validation pass: generation is a hot path.
    return KVMRuntime.from_validated(
        name, tuple(argv), instance.nics, hv, instance.disks, disk_slots=disk_slots
    )


def _uuid_text(instance: Instance) -> str:
    return str(instance.uuid) if instance.uuid else _derived_uuid(instance.name)


@lru_cache(maxsize=4096)
def _derived_uuid(name: str) -> str:
    return str(uuid.uuid5(INSTANCE_UUID_NAMESPACE, name))


def _machine_args(
    hv: HvParams, caps: QemuCapabilities, accel: Accel | None, opts: list[str]
) -> list[str]:
    machine = hv.machine_version or caps.default_machine
    if caps.has_machine:
        if accel:
            opts = [f"accel={accel}", *opts]
        if not machine and not opts:
            return []
        head = [machine] if machine else []
        return ["-machine", ",".join(head + opts)]
    args = ["-M", machine] if machine else []
    if accel == "kvm" and caps.has_enable_kvm:
        args.append("-enable-kvm")
    elif accel == "tcg" and caps.has_no_kvm:
        args.append("-no-kvm")
    return args


#: What ``-soundhw NAME`` meant, for QEMU >= 7.1 where only ``-device`` is left.
_SOUND_DEVICES: dict[str, tuple[str, ...]] = {
    "hda": ("intel-hda", "hda-duplex"),
    "ac97": ("AC97",),
    "es1370": ("ES1370",),
}
#: Interfaces an x86 PC has no bus for.
_NO_BUS_ON_PC = frozenset({"sd", "mtd"})
#: Two IDE buses with two units each on i440fx and q35's legacy IDE.
_IDE_UNITS = 4


def _interface(disk_type: str) -> str:
    if disk_type == "paravirtual":
        return "virtio"
    return "ide" if disk_type in {"ioemu", ""} else disk_type


def has_disk_slots(hv: HvParams, caps: QemuCapabilities) -> bool:
    """Whether this VM's disks are ``-device virtio-blk-pci`` at slots of their own.

    Virtio disks on a QEMU with ``-device``; not the QEMUs whose ``-drive`` still
    has ``boot=on`` (before 1.x: the boot disk needed ``if=virtio``). IDE and SCSI
    disks sit on their controller's bus, not on a PCI slot.
    """
    return _interface(hv.disk_type) == "virtio" and caps.has_device and not caps.has_drive_boot


def disk_ids(slot: int) -> tuple[str, str]:
    """``(drive id, device id)`` of the virtio disk at PCI slot ``slot``.

    Named after the slot, like the NICs' ids: the same whether the disk was started
    with the VM or hotplugged, so a detach finds it from the runtime alone.
    """
    return f"drive-s{slot:02x}", f"disk-s{slot:02x}"


def _drive_tail(hv: HvParams, caps: QemuCapabilities, interface: str) -> str:
    """What every drive line ends with, but readonly and boot: the same for all disks."""
    tail = f",format=raw,if={interface}"
    if hv.disk_cache != "default":
        tail += f",cache={hv.disk_cache}"
    if hv.disk_aio != "threads" and caps.has_drive_aio:
        tail += f",aio={hv.disk_aio}"
    return tail


def _readonly(disk: Disk, index: int, caps: QemuCapabilities) -> str:
    if disk.mode != "ro":
        return ""
    if not caps.has_drive_readonly:
        raise InstanceError(
            f"disk {index} ({disk.path}) is read-only, which QEMU"
            f" {caps.version_string} cannot express (no -drive readonly)",
            field=f"disks.{index}.mode",
            value="ro",
        )
    return ",readonly=on"


def disk_args(
    disk: Disk,
    slot: int,
    hv: HvParams,
    caps: QemuCapabilities,
    index: int = 0,
    *,
    root_ports: bool = False,
) -> tuple[str, ...]:
    """The ``-drive`` and ``-device`` of one virtio disk at PCI slot ``slot``.

    ``-drive file=...,format=raw,if=none,id=drive-sSS[,cache][,aio][,readonly=on]
    -device virtio-blk-pci,drive=drive-sSS,id=disk-sSS,addr=0xSS`` (on q35,
    ``bus=port-sSS,addr=0x0``: behind the slot's root port). Generation and disk
    hotplug both write a disk's args with this function (see the module doc).

    :param index: the disk's position, for the error message only.
    :param root_ports: the VM has root ports (:mod:`kvmlab.runtime.ports`).
    :raise InstanceError: a read-only disk on a QEMU without ``readonly``.
    """
    drive_id, device_id = disk_ids(slot)
    drive = f"file={qemu_opt(disk.path)}{_drive_tail(hv, caps, 'none')},id={drive_id}"
    drive += _readonly(disk, index, caps)
    place = ",".join(f"{key}={value}" for key, value in device_placement(slot, root_ports).items())
    device = f"virtio-blk-pci,drive={drive_id},id={device_id},{place}"
    return ("-drive", drive, "-device", device)


def _add_boot_args(
    argv: list[str], instance: Instance, caps: QemuCapabilities, root_ports: bool
) -> tuple[int, ...]:
    """Append the boot order, the disks and the removable media to ``argv``.

    :return: the disks' PCI slots (empty when they have none, see ``has_disk_slots``).
    """
    hv = instance.hvparams
    order = None if hv.kernel_path else hv.boot_order
    if order in _BOOT_FLAGS:
        argv += ("-boot", _BOOT_FLAGS[order])
    interface = _interface(hv.disk_type)
    cdrom_interface = _interface(hv.cdrom_disk_type or "ide")
    cdroms = [image for image in (hv.cdrom_image_path, hv.cdrom2_image_path) if image]
    _check_buses(instance, interface, cdrom_interface, len(cdroms))
    slots: tuple[int, ...] = ()
    if instance.disks and has_disk_slots(hv, caps):
        if len(instance.disks) > len(DISK_SLOTS):
            raise InstanceError(
                f"{len(instance.disks)} virtio disks, but only {len(DISK_SLOTS)} PCI slots"
                " are reserved for disks",
                field="disks",
                value=len(instance.disks),
            )
        slots = tuple(DISK_SLOTS[: len(instance.disks)])
        for index, (disk, slot) in enumerate(zip(instance.disks, slots, strict=True)):
            argv += disk_args(disk, slot, hv, caps, index, root_ports=root_ports)
    elif instance.disks:
        # Modern QEMU has no if=scsi on x86 PCs: a virtio-scsi controller and scsi-hd devices.
        scsi_devices = interface == "scsi" and caps.has_device and caps.version >= (2, 0, 0)
        if scsi_devices:
            argv += ("-device", "virtio-scsi-pci,id=scsi0")
        tail = _drive_tail(hv, caps, "none" if scsi_devices else interface)
        boot_first = order is _BOOT_DISK and caps.has_drive_boot and interface == "virtio"
        for index, disk in enumerate(instance.disks):
            drive = f"file={qemu_opt(disk.path)}{tail}" + _readonly(disk, index, caps)
            if index == 0 and boot_first:
                drive += ",boot=on"
            if scsi_devices:
                drive += f",id=disk{index}"
                argv += ("-drive", drive, "-device", f"scsi-hd,drive=disk{index},bus=scsi0.0")
            else:
                argv += ("-drive", drive)
    for image in cdroms:
        argv += (
            "-drive",
            f"file={qemu_opt(image)},format=raw,media=cdrom,if={cdrom_interface}",
        )
    if hv.floppy_image_path:
        argv += ("-drive", f"file={qemu_opt(hv.floppy_image_path)},format=raw,if=floppy")
    return slots


def _check_buses(instance: Instance, interface: str, cdrom_interface: str, cdroms: int) -> None:
    """Refuse drive layouts an x86 PC cannot hold (QEMU would refuse them at start)."""
    hv = instance.hvparams
    if instance.disks and interface in _NO_BUS_ON_PC:
        raise InstanceError(
            f"disk_type {hv.disk_type!r} needs an {interface.upper()} bus, which x86 PC"
            " machines do not have",
            field="hvparams.disk_type",
            value=hv.disk_type,
        )
    if cdroms and cdrom_interface in _NO_BUS_ON_PC:
        raise InstanceError(
            f"cdrom_disk_type {hv.cdrom_disk_type!r} needs a bus x86 PC machines do not have",
            field="hvparams.cdrom_disk_type",
            value=hv.cdrom_disk_type,
        )
    ide = (len(instance.disks) if interface == "ide" else 0) + (
        cdroms if cdrom_interface == "ide" else 0
    )
    if ide > _IDE_UNITS:
        raise InstanceError(
            f"{ide} IDE drives (disks and cdroms) but an x86 PC has {_IDE_UNITS} IDE units",
            field="disks",
            value=ide,
        )


def _usb_device(device: str, caps: QemuCapabilities) -> list[str]:
    if caps.has_device:
        return ["-device", f"usb-{device}"]
    return ["-usbdevice", device]


def _display_args(instance: Instance, caps: QemuCapabilities) -> list[str]:
    hv = instance.hvparams
    args: list[str] = []
    if hv.usb_mouse:
        args += ["-usb", *_usb_device(hv.usb_mouse, caps)]
    elif hv.vnc_bind_address:
        args += ["-usb", *_usb_device("tablet", caps)]
    if not hv.vnc_bind_address:
        return [*args, *(["-display", "none"] if caps.has_display else ["-nographic"])]
    if hv.vnc_bind_address.startswith("/"):
        vnc = f"unix:{qemu_opt(hv.vnc_bind_address)}/{instance.name}.vnc"
    elif instance.network_port is not None and instance.network_port > _VNC_BASE_PORT:
        display = instance.network_port - _VNC_BASE_PORT
        address = "" if hv.vnc_bind_address == _ANY_ADDRESS else hv.vnc_bind_address
        vnc = f"{address}:{display}"
    else:
        # Ganeti's behaviour without a usable port: VNC off, but the option stays.
        return [*args, "-vnc", "none"]
    on = "=on" if caps.uses_long_booleans else ""
    if hv.vnc_tls and caps.has_object:
        # QEMU >= 2.5: TLS credentials are an object; -vnc's tls/x509 options are gone.
        if hv.vnc_x509_path:
            verify = "on" if hv.vnc_x509_verify else "off"
            creds = f"tls-creds-x509,id=vnctls0,dir={qemu_opt(hv.vnc_x509_path)}"
            creds += f",endpoint=server,verify-peer={verify}"
        else:
            creds = "tls-creds-anon,id=vnctls0,endpoint=server"
        args += ["-object", creds]
        vnc += ",tls-creds=vnctls0"
    elif hv.vnc_tls:
        vnc += f",tls{on}"
        if hv.vnc_x509_verify:
            vnc += f",x509verify={qemu_opt(hv.vnc_x509_path)}"
        elif hv.vnc_x509_path:
            vnc += f",x509={qemu_opt(hv.vnc_x509_path)}"
    if hv.vnc_password_file:
        vnc += f",password{on}"
    return [*args, "-vnc", vnc]


def _confinement_args(instance: Instance, caps: QemuCapabilities, chroot_dir: str) -> Sequence[str]:
    hv = instance.hvparams
    if hv.security_model == "pool":
        raise InstanceError(
            "security_model 'pool' needs a uid pool, which kvmlab does not manage",
            field="hvparams.security_model",
            value="pool",
        )
    chroot = chroot_dir if hv.use_chroot else ""
    user = hv.security_domain if hv.security_model == "user" else ""
    if not chroot and not user:
        return []
    if caps.has_run_with:
        opts = ([f"chroot={qemu_opt(chroot)}"] if chroot else []) + (
            [f"user={user}"] if user else []
        )
        return ["-run-with", ",".join(opts)]
    args: list[str] = []
    for value, option, present in (
        (chroot, "-chroot", caps.has_chroot),
        (user, "-runas", caps.has_runas),
    ):
        if not value:
            continue
        if not present:
            raise InstanceError(
                f"{option} is not available on QEMU {caps.version_string}",
                field="hvparams.use_chroot" if option == "-chroot" else "hvparams.security_model",
                value=value,
            )
        args += [option, value]
    return args
