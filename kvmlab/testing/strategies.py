"""Hypothesis strategies that draw valid kvmlab inputs.

Every value drawn passes the models' validation, and every instance drawn can be
generated for every capability profile drawn (the strategies keep Ganeti's
cross-parameter rules and draw only feature sets that can express them), so a
property fails only when kvmlab breaks an invariant, not because the input was
impossible.
"""

from __future__ import annotations

import dataclasses
import functools
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from kvmlab.runtime.plan import NicPlan, NicPlanKind, StartFacts
from kvmlab.runtime.saved import KVMRuntime
from kvmlab.spec.capabilities import (
    QemuCapabilities,
    available_profiles,
    load_profile,
    profile_kind,
)
from kvmlab.spec.instance import Disk, HvParams, Instance, Nic, NicMode
from kvmlab.spec.layout import StateLayout

__all__ = [
    "capabilities",
    "disks",
    "expresses_every_instance",
    "hvparams",
    "instance_names",
    "instances",
    "layouts",
    "macs",
    "nics",
    "start_facts",
]

_LABEL_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"
_SAFE_DIRS = ("/srv/kvmlab", "/var/lib/images", "/dev/vg0", "/data/a,b")

# The strategies are built once, here, and drawn from in every example. Built inside the
# composite functions, each example made them anew and hypothesis validated each new one:
# that validation was a third of the time of a property over instances.


def _name_of(first: str, middle: str, last: str) -> str:
    return (first + middle + last)[:40] if middle else first


_NAME_EDGE = st.sampled_from(_LABEL_CHARS)
_NAMES = st.builds(_name_of, _NAME_EDGE, st.text(_LABEL_CHARS + "-", max_size=20), _NAME_EDGE)


def instance_names() -> st.SearchStrategy[str]:
    """DNS labels, short enough for every socket path in the layouts drawn."""
    return _NAMES


def _mac_of(octets: list[int]) -> str:
    return ":".join(f"{b:02x}" for b in [octets[0] & 0xFE, *octets[1:]])


_MACS = (
    st.lists(st.integers(0, 255), min_size=6, max_size=6)
    .map(_mac_of)
    .filter(lambda mac: mac != "00:00:00:00:00:00")
)


def macs() -> st.SearchStrategy[str]:
    """Unicast MAC addresses, lowercase, never the all-zero one (which QEMU replaces)."""
    return _MACS


_links = st.text("abcdefghijklmnopqrstuvwxyz0123456789_.-", min_size=1, max_size=15).filter(
    lambda s: s[0] not in ".-"
)
_NIC_MODES = st.sampled_from(list(NicMode))
_OPTIONAL_LINKS = st.one_of(st.just(""), _links)


def _mode_and_link(draw: st.DrawFn) -> tuple[NicMode, str]:
    mode = draw(_NIC_MODES)
    if mode is NicMode.USER:
        return mode, ""
    if mode is NicMode.BRIDGED:
        return mode, draw(_links)
    return mode, draw(_OPTIONAL_LINKS)


@st.composite
def nics(draw: st.DrawFn, mac: st.SearchStrategy[str] | None = None) -> Nic:
    """One NIC of any mode, with a link where the mode wants one."""
    mode, link = _mode_and_link(draw)
    return Nic(mac=draw(mac if mac is not None else _MACS), mode=mode, link=link)


_LEAVES = st.text("abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1, max_size=12).filter(
    lambda s: s not in {".", ".."}
)


@functools.cache
def _paths(prefix_dirs: tuple[str, ...] = _SAFE_DIRS) -> st.SearchStrategy[str]:
    return st.builds(lambda d, f: f"{d}/{f}", st.sampled_from(prefix_dirs), _LEAVES)


_DISKS = st.builds(Disk, path=_paths(), mode=st.sampled_from(["rw", "ro"]))


def disks() -> st.SearchStrategy[Disk]:
    return _DISKS


def _choice(*values: Any) -> st.SearchStrategy[Any]:
    return st.sampled_from(values)


_BOOLEANS = st.booleans()
#: ``disk_aio`` when ``disk_cache`` is ``none``: native AIO needs the page cache bypassed.
_UNCACHED_AIO = _choice("threads", "native")
#: The strategy of each hvparam drawn (hvparams() says in which order, and when).
_HV = {
    "boot_order": _choice("disk", "disk", "cdrom", "network", "floppy"),
    "cdrom_image_path": _paths(("/srv/iso",)),
    "floppy_image_path": _paths(("/srv/floppy",)),
    "kernel_path": _paths(("/boot", "/srv/kernels")),
    "initrd_path": st.one_of(st.just(""), _paths(("/boot",))),
    "kernel_args": _choice("ro", "", "quiet loglevel=3", "init=/bin/sh"),
    "root_path": _choice("/dev/vda1", "/dev/sda1", "LABEL=root"),
    "serial_speed": _choice(9600, 38400, 115200),
    "kvm_flag": _choice("", "enabled", "disabled"),
    "machine_version": _choice("", "pc", "q35", "pc-i440fx-7.2"),
    "cpu_type": _choice("", "qemu64", "host", "max"),
    "nic_type": _choice("paravirtual", "e1000", "rtl8139", "ne2k_pci"),
    "disk_type": _choice("paravirtual", "ide", "scsi"),
    "disk_cache": _choice("default", "none", "writethrough", "writeback"),
    "disk_aio": _choice("threads"),
    "vnc_bind_address": _choice("", "0.0.0.0", "127.0.0.1", "/run/kvmlab-vnc"),
    "vnc_password_file": _choice("", "/etc/kvmlab/vnc-pass"),
    "keymap": _choice("", "en-us", "de"),
    "usb_mouse": _choice("", "mouse", "tablet"),
    "reboot_behavior": _choice("reboot", "exit"),
    "security_model": _choice("none", "user"),
    "kvm_extra": _choice("", "-no-hpet", "-global kvm-pit.lost_tick_policy=delay"),
}


@st.composite
def hvparams(draw: st.DrawFn) -> HvParams:
    """Hypervisor parameters that respect Ganeti's cross-parameter rules."""
    values: dict[str, Any] = {}
    boot = draw(_HV["boot_order"])
    values["boot_order"] = boot
    if boot == "cdrom" or draw(_BOOLEANS):
        values["cdrom_image_path"] = draw(_HV["cdrom_image_path"])
    if boot == "floppy":
        values["floppy_image_path"] = draw(_HV["floppy_image_path"])
    if draw(_BOOLEANS):
        values["kernel_path"] = draw(_HV["kernel_path"])
        values["initrd_path"] = draw(_HV["initrd_path"])
    else:
        values["kernel_path"] = ""
    values["kernel_args"] = draw(_HV["kernel_args"])
    values["root_path"] = draw(_HV["root_path"])
    values["serial_console"] = draw(_BOOLEANS)
    values["serial_speed"] = draw(_HV["serial_speed"])
    values["acpi"] = draw(_BOOLEANS)
    for name in ("kvm_flag", "machine_version", "cpu_type", "nic_type", "disk_type"):
        values[name] = draw(_HV[name])
    cache = draw(_HV["disk_cache"])
    values["disk_cache"] = cache
    values["disk_aio"] = draw(_UNCACHED_AIO if cache == "none" else _HV["disk_aio"])
    vnc = draw(_HV["vnc_bind_address"])
    values["vnc_bind_address"] = vnc
    if vnc and draw(_BOOLEANS):
        values["vnc_tls"] = True
        if draw(_BOOLEANS):
            values["vnc_x509_path"] = "/etc/kvmlab/x509"
            values["vnc_x509_verify"] = draw(_BOOLEANS)
    values["vnc_password_file"] = draw(_HV["vnc_password_file"])
    values["keymap"] = draw(_HV["keymap"])
    values["use_localtime"] = draw(_BOOLEANS)
    values["usb_mouse"] = draw(_HV["usb_mouse"])
    values["reboot_behavior"] = draw(_HV["reboot_behavior"])
    security = draw(_HV["security_model"])
    values["security_model"] = security
    values["security_domain"] = "kvmlab" if security == "user" else ""
    values["use_chroot"] = draw(_BOOLEANS)
    values["vhost_net"] = draw(_BOOLEANS)
    values["kvm_extra"] = draw(_HV["kvm_extra"])
    return HvParams(**values)


_HVPARAMS = hvparams()
_VCPUS = st.integers(1, 16)
_MEMORY = st.integers(16, 65536)
_NETWORK_PORTS = st.one_of(st.none(), st.integers(5901, 5999))


@functools.cache
def _topology(vcpus: int) -> tuple[st.SearchStrategy[int], dict[int, st.SearchStrategy[int]]]:
    """The thread counts that divide ``vcpus``, and for each the core counts that fit."""
    threads = [d for d in (1, 2) if vcpus % d == 0]
    cores = {
        t: st.sampled_from([d for d in range(1, vcpus + 1) if (vcpus // t) % d == 0])
        for t in threads
    }
    return st.sampled_from(threads), cores


@functools.cache
def _mac_lists(max_nics: int) -> st.SearchStrategy[list[str]]:
    return st.lists(_MACS, max_size=max_nics, unique=True)


@functools.cache
def _disk_lists(max_disks: int) -> st.SearchStrategy[list[Disk]]:
    return st.lists(_DISKS, max_size=max_disks)


@st.composite
def instances(draw: st.DrawFn, max_nics: int = 4, max_disks: int = 3) -> Instance:
    """Valid instances: unique MACs, a CPU topology that fits the vCPUs."""
    vcpus = draw(_VCPUS)
    hv = draw(_HVPARAMS)
    if draw(_BOOLEANS):
        thread_counts, core_counts = _topology(vcpus)
        threads = draw(thread_counts)
        cores = draw(core_counts[threads])
        sockets = vcpus // threads // cores
        hv = hv.model_copy(
            update={"cpu_cores": cores, "cpu_threads": threads, "cpu_sockets": sockets}
        )
    mac_list = draw(_mac_lists(max_nics))
    nic_list = []
    for mac in mac_list:
        mode, link = _mode_and_link(draw)
        nic_list.append(Nic(mac=mac, mode=mode, link=link))
    return Instance(
        name=draw(_NAMES),
        memory=draw(_MEMORY),
        vcpus=vcpus,
        nics=tuple(nic_list),
        disks=tuple(draw(_disk_lists(max_disks))),
        hvparams=hv,
        network_port=draw(_NETWORK_PORTS),
    )


def expresses_every_instance(caps: QemuCapabilities) -> bool:
    """Whether every instance :func:`instances` draws can be generated for ``caps``.

    ACPI off needs ``-no-acpi`` or ``-machine``; confinement needs ``-run-with`` or both
    ``-chroot`` and ``-runas``; read-only disks need ``-drive readonly``. Of the bundled
    profiles, Ganeti's QEMU 0.9.1 and 0.12.5 lack some of these, and kvmlab refuses such
    instances there (tests/properties checks it refuses exactly those).
    """
    return (
        (caps.has_no_acpi or caps.has_machine)
        and (caps.has_run_with or (caps.has_chroot and caps.has_runas))
        and caps.has_drive_readonly
    )


@st.composite
def _random_capabilities(draw: st.DrawFn) -> QemuCapabilities:
    flags: dict[str, Any] = {
        name: draw(st.booleans())
        for name in QemuCapabilities.__dataclass_fields__
        if name.startswith("has_")
    }
    # Keep every instance expressible (see expresses_every_instance).
    if not (flags["has_no_acpi"] or flags["has_machine"]):
        flags["has_machine"] = True
    if not flags["has_run_with"]:
        flags["has_chroot"] = flags["has_runas"] = True
    flags["has_drive_readonly"] = True  # read-only disks are refused without it
    version = (draw(st.integers(0, 10)), draw(st.integers(0, 15)), draw(st.integers(0, 99)))
    machine = draw(st.sampled_from([None, "pc", "pc-i440fx-7.2", "pc-q35-10.0"]))
    return dataclasses.replace(QemuCapabilities(version=version, default_machine=machine), **flags)


@functools.cache  # it reads every bundled profile: once a process
def capabilities() -> st.SearchStrategy[QemuCapabilities]:
    """The bundled profiles that can express every instance drawn, the built-in
    default, and random feature sets.

    The bundled profiles are kvmlab's recorded QEMU 7.2 and 10.0, and Ganeti's QEMU
    versions (facts profiles ``ganeti-*``) but for those that cannot express every
    instance drawn (see :func:`expresses_every_instance`: 0.9.1 and 0.12.5). The
    recorded ones (with the default) and Ganeti's are separate branches, newest first:
    hypothesis favours the first elements of a ``sampled_from``, and the current QEMUs
    should stay the most drawn.
    """
    newest_first = list(reversed(available_profiles()))
    recorded = [load_profile(name) for name in newest_first if _recorded(name)]
    ganeti = [
        caps
        for name in newest_first
        if not _recorded(name) and expresses_every_instance(caps := load_profile(name))
    ]
    branches = [st.sampled_from([*recorded, QemuCapabilities()])]
    if ganeti:
        branches.append(st.sampled_from(ganeti))
    return st.one_of(*branches, _random_capabilities())


def _recorded(name: str) -> bool:
    return profile_kind(name) == "recorded"


@functools.cache
def layouts() -> st.SearchStrategy[StateLayout]:
    """State directories outside any temp directory."""
    roots = ["/var/lib/kvmlab", "/srv/lab", "/run/kvmlab-ci"]
    return st.sampled_from([StateLayout(Path(root)) for root in roots])


@st.composite
def start_facts(draw: st.DrawFn, runtime: KVMRuntime, caps: QemuCapabilities) -> StartFacts:
    """NIC plans that fit the runtime's NICs, with temp paths and descriptors."""
    tmp = tempfile.gettempdir()
    plans = []
    for seq, nic in enumerate(runtime.nics):
        if nic.mode is NicMode.USER:
            plans.append(NicPlan(NicPlanKind.USER))
        elif draw(st.booleans()):
            plans.append(NicPlan(NicPlanKind.SCRIPT, script_path=f"{tmp}/kvmlab-x/up-{seq}"))
        else:
            plans.append(NicPlan(NicPlanKind.FD, fd=draw(st.integers(3, 1000))))
    return StartFacts(
        nic_plans=tuple(plans),
        qmp_socket=f"/var/lib/kvmlab/ctrl/{runtime.name}.qmp",
        nic_dir=f"/var/lib/kvmlab/nic/{runtime.name}",
        caps=caps,
    )
