"""What each instance field means, and the QEMU option it becomes.

One entry per field of :class:`~kvmlab.spec.instance.Instance`, ``Nic``, ``Disk`` and
``HvParams``, keyed ``Model.field``: the description (with the cross-field rules and the
error each breaks with) and the QEMU option. The models attach them to their fields
(:func:`field_doc`), so the JSON Schema and the instance-file reference
(:mod:`kvmlab.spec.reference`, ``docs/instances.md``) are generated from the models; the
text lives here to keep ``instance`` a readable size. A field without an entry fails at
import, and ``tests/docs`` fails when a field is not given its entry.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ["FIELD_DOCS", "field_doc"]

#: ``Model.field`` -> (description, the QEMU option it becomes).
FIELD_DOCS: Final[dict[str, tuple[str, str]]] = {
    "Instance.name": (
        "The instance's name: a DNS label, 1-63 characters from a-z 0-9 and '-', not "
        "starting or ending with '-'; it names the state files.",
        "-name NAME",
    ),
    "Instance.memory": (
        "Guest RAM in MiB.",
        "-m MEMORY",
    ),
    "Instance.vcpus": (
        "Virtual CPUs. Rules with hvparams cpu_sockets, cpu_cores and cpu_threads (0 = "
        "unset): when all three are set their product must equal vcpus (error: vcpus: "
        "cpu_sockets*cpu_cores*cpu_threads = 8 must equal vcpus = 2); the ones set may not "
        "hold more than vcpus, and vcpus must be a multiple of their product.",
        "-smp VCPUS[,cores=N][,threads=N][,sockets=N]",
    ),
    "Instance.nics": (
        "The network interfaces, in PCI order (slots 0x10 up, at most 16). Each MAC once "
        "(error: nics.1.mac: MAC '52:54:00:12:34:56' of nics.1 is already used by nics.0).",
        "-netdev and -device per NIC at start time; -net none without NICs",
    ),
    "Instance.disks": (
        "The disks, in order: virtio disks at PCI slots 0x08 up (at most 8); IDE at most 4 "
        "with the CD-ROMs.",
        "-drive [-device virtio-blk-pci] per disk",
    ),
    "Instance.hvparams": (
        "Ganeti's KVM hypervisor parameters (the table below); each one left out keeps its "
        "default.",
        "see each parameter",
    ),
    "Instance.uuid": (
        "SMBIOS UUID; derived from the name when not given, so stable across generations.",
        "-uuid UUID",
    ),
    "Instance.network_port": (
        "TCP port of the VNC display (Ganeti's network_port, display = port - 5900); without "
        "it VNC is off (-vnc none).",
        "-vnc ADDRESS:DISPLAY",
    ),
    "Nic.mac": (
        "The NIC's MAC address, xx:xx:xx:xx:xx:xx, unicast (the first octet even); stored "
        "lowercase; unique within the instance.",
        "-device MODEL,mac=MAC (start time)",
    ),
    "Nic.mode": (
        "How the NIC reaches the host. The default, bridged, needs a link (the bridge) and "
        "root (error: nics.0.link: a bridged NIC needs a link ...); user is QEMU's user "
        "networking: no root, no link; routed is a tap with a routing table as link (root).",
        "-netdev user, or -netdev tap with an up-script (start time)",
    ),
    "Nic.link": (
        "The bridge (bridged: required), the routing table (routed); empty for user mode, "
        "which takes none (error: nics.0.link: a user-mode NIC takes no link). An interface "
        "name: up to 15 letters, digits, '_', '-', '.'.",
        "none: the tap's up-script joins the bridge",
    ),
    "Disk.path": (
        "The raw image or block device: an absolute path without newline or NUL.",
        "-drive file=PATH,format=raw (a comma written twice)",
    ),
    "Disk.mode": (
        "rw (read-write) or ro (read-only).",
        "-drive ...,readonly=on for ro",
    ),
    "HvParams.kernel_path": (
        "Direct kernel boot: the kernel file; empty boots from boot_order instead. Ganeti's "
        "default; use the test guest's (kvmlab guest build).",
        "-kernel PATH",
    ),
    "HvParams.initrd_path": (
        "The initramfs for direct kernel boot; empty for none.",
        "-initrd PATH",
    ),
    "HvParams.kernel_args": (
        "Kernel command line after root= (with kernel_path only).",
        "-append 'root=ROOT_PATH KERNEL_ARGS console=ttyS0,SPEED'",
    ),
    "HvParams.root_path": (
        "The root= kernel argument. Rule: a kernel_path needs a root_path (error: root_path: "
        "kernel_path '...' needs a root_path).",
        "-append root=ROOT_PATH",
    ),
    "HvParams.serial_console": (
        "The serial console on ttyS0 (logged) and the guest command channel on ttyS1; off "
        "gives no console and no channel.",
        "-chardev socket,... -serial chardev:serial0 (twice); -serial none when off",
    ),
    "HvParams.serial_speed": (
        "Baud rate of the console, added to the kernel command line.",
        "-append ... console=ttyS0,SPEED",
    ),
    "HvParams.acpi": (
        "ACPI for the guest: stop's power button and hotplug need it.",
        "-no-acpi, or -machine acpi=off, when false",
    ),
    "HvParams.boot_order": (
        "What to boot when there is no kernel_path. Rules: cdrom needs a cdrom_image_path, "
        "floppy a floppy_image_path (error: cdrom_image_path: boot_order 'cdrom' needs a "
        "cdrom_image_path).",
        "-boot d|a|n (disk: none)",
    ),
    "HvParams.cdrom_image_path": (
        "A CD-ROM image; empty for none. Required by boot_order cdrom.",
        "-drive file=PATH,format=raw,media=cdrom,if=ide",
    ),
    "HvParams.cdrom2_image_path": (
        "A second CD-ROM image; empty for none.",
        "-drive file=PATH,format=raw,media=cdrom,if=ide",
    ),
    "HvParams.cdrom_disk_type": (
        "The bus of the CD-ROMs; empty for ide. sd and mtd are refused at generation (no such"
        " bus on an x86 PC).",
        "-drive ...,media=cdrom,if=BUS",
    ),
    "HvParams.floppy_image_path": (
        "A floppy image; empty for none. Required by boot_order floppy.",
        "-drive file=PATH,format=raw,if=floppy",
    ),
    "HvParams.kvm_path": (
        "The QEMU binary Ganeti would run; kvmlab's backend picks the binary it runs "
        "(argv[0]), so this is kept as data.",
        "argv[0] when generated without a backend",
    ),
    "HvParams.kvm_flag": (
        "enabled forces KVM, disabled forces TCG, empty lets kvmlab probe (TCG unless KVM "
        "boots the test guest).",
        "-machine ...,accel=kvm|tcg",
    ),
    "HvParams.machine_version": (
        "The machine type (pc, q35, pc-q35-7.2, ...); empty for the QEMU's default.",
        "-machine TYPE",
    ),
    "HvParams.cpu_type": (
        "The CPU model (host, max, qemu64, ...); empty for QEMU's default.",
        "-cpu TYPE",
    ),
    "HvParams.cpu_cores": (
        "Cores per socket; 0 leaves it to QEMU. Rules with vcpus: see vcpus.",
        "-smp VCPUS,cores=N",
    ),
    "HvParams.cpu_threads": (
        "Threads per core; 0 leaves it to QEMU. Rules with vcpus: see vcpus.",
        "-smp VCPUS,threads=N",
    ),
    "HvParams.cpu_sockets": (
        "Sockets; 0 leaves it to QEMU. Rules with vcpus: see vcpus.",
        "-smp VCPUS,sockets=N",
    ),
    "HvParams.cpu_mask": (
        "Ganeti's CPU pinning; kept as data, kvmlab does not pin.",
        "none",
    ),
    "HvParams.nic_type": (
        "The NIC model of every NIC: paravirtual is virtio-net-pci (the test guest has no "
        "other NIC driver).",
        "-device MODEL,netdev=...,mac=...,addr=SLOT (start time)",
    ),
    "HvParams.disk_type": (
        "The bus of the disks: paravirtual (virtio-blk-pci at a reserved PCI slot), ide, scsi"
        " (virtio-scsi-pci + scsi-hd), ...; sd and mtd are refused at generation.",
        "-drive ...,if=none -device virtio-blk-pci,... | -drive ...,if=BUS",
    ),
    "HvParams.disk_cache": (
        "The disks' cache mode; default leaves QEMU's.",
        "-drive ...,cache=MODE",
    ),
    "HvParams.disk_aio": (
        "The disks' I/O mode. Rule: native needs disk_cache none (error: disk_aio: disk_aio "
        "'native' needs disk_cache 'none', got '...').",
        "-drive ...,aio=MODE (threads: none)",
    ),
    "HvParams.mem_path": (
        "Back guest RAM by files under this directory (hugetlbfs); empty for anonymous memory.",
        "-mem-path PATH -mem-prealloc",
    ),
    "HvParams.vnc_bind_address": (
        "VNC: an IPv4 address or an absolute directory (a unix socket NAME.vnc in it); empty "
        "for no display at all. VNC listens only with network_port. Needed by vnc_tls and "
        "vnc_x509_*.",
        "-vnc ADDRESS:DISPLAY | -vnc unix:DIR/NAME.vnc | -vnc none | -display none",
    ),
    "HvParams.vnc_tls": (
        "TLS on the VNC display. Rule: vnc_x509_path needs it (error: vnc_tls: vnc_x509_path "
        "needs vnc_tls).",
        "-object tls-creds-*,id=vnctls0 -vnc ...,tls-creds=vnctls0",
    ),
    "HvParams.vnc_x509_path": (
        "Directory of the VNC TLS certificates; needs vnc_tls.",
        "-object tls-creds-x509,dir=PATH,...",
    ),
    "HvParams.vnc_x509_verify": (
        "Verify VNC clients' certificates. Rule: needs a vnc_x509_path (error: vnc_x509_path:"
        " vnc_x509_verify needs a vnc_x509_path).",
        "-object tls-creds-x509,...,verify-peer=on",
    ),
    "HvParams.vnc_password_file": (
        "A file with the VNC password (set over the monitor); empty for none.",
        "-vnc ...,password=on",
    ),
    "HvParams.keymap": (
        "The VNC keyboard layout (en-us, de, ...); empty for QEMU's default.",
        "-k KEYMAP",
    ),
    "HvParams.use_localtime": (
        "The guest's RTC in local time instead of UTC.",
        "-rtc base=localtime",
    ),
    "HvParams.usb_mouse": (
        "A USB pointer; empty gives a tablet when VNC is on.",
        "-usb -device usb-mouse|usb-tablet",
    ),
    "HvParams.usb_devices": (
        "Comma-separated USB devices (Ganeti's legacy list).",
        "-usb -device usb-NAME per device",
    ),
    "HvParams.vga": (
        "The VGA card (std, cirrus, virtio, none...); empty for QEMU's default.",
        "-vga TYPE",
    ),
    "HvParams.soundhw": (
        "A sound card (hda, ac97, es1370, ...); empty for none.",
        "-soundhw NAME, or -device ... on QEMU >= 7.1",
    ),
    "HvParams.reboot_behavior": (
        "exit: a guest reboot stops QEMU instead.",
        "-no-reboot when exit",
    ),
    "HvParams.security_model": (
        "none, or user (run QEMU as security_domain). pool is refused at generation (kvmlab "
        "has no uid pool). Rule: user needs a security_domain, the others take none (error: "
        "security_domain: security_model 'user' needs a security_domain).",
        "-run-with user=DOMAIN | -runas DOMAIN",
    ),
    "HvParams.security_domain": (
        "The user QEMU runs as with security_model user; empty otherwise.",
        "-run-with user=DOMAIN | -runas DOMAIN",
    ),
    "HvParams.use_chroot": (
        "Run QEMU chrooted into the instance's chroot directory.",
        "-run-with chroot=DIR | -chroot DIR",
    ),
    "HvParams.vhost_net": (
        "vhost-net for tap NICs (bridged, routed).",
        "-netdev tap,...,vhost=on (start time)",
    ),
    "HvParams.vnet_hdr": (
        "IFF_VNET_HDR on the tap kvmlab opens to hotplug a paravirtual NIC (Ganeti's rule); "
        "QEMU's own taps at start probe it themselves.",
        "none: a flag of the hotplugged tap's descriptor",
    ),
    "HvParams.kvm_extra": (
        "Extra QEMU arguments, split like a shell (quotes allowed, never run by one); "
        "appended last. Rule: may not set an option kvmlab manages (-net, -netdev, -nic, "
        "-device, -qmp, -monitor, -serial, -chardev, -pidfile, -daemonize, -name, -m, -smp, "
        "-incoming, -S; error: kvm_extra: kvm_extra '...' sets -device, which kvmlab manages "
        "itself).",
        "the words, as given, at the end of the argv",
    ),
    "HvParams.migration_port": (
        "Ganeti's migration TCP port; kept as data (kvmlab migrates over a unix socket).",
        "none",
    ),
    "HvParams.migration_bandwidth": (
        "Ganeti's migration bandwidth (MiB/s); kept as data (kvmlab sets 1 GiB/s: both ends "
        "are on one host).",
        "none",
    ),
    "HvParams.migration_downtime": (
        "Ganeti's maximum migration downtime (ms); kept as data.",
        "none",
    ),
    "HvParams.migration_mode": (
        "Ganeti's migration mode; kept as data (kvmlab migrate --offline chooses).",
        "none",
    ),
}


def field_doc(key: str) -> dict[str, Any]:
    """``Field`` keywords for ``Model.field``: its description, and ``x-qemu`` in the schema.

    :raise KeyError: the field has no entry (a new field must be documented).
    """
    description, qemu = FIELD_DOCS[key]
    return {"description": description, "json_schema_extra": {"x-qemu": qemu}}
