"""Hypothesis strategies that draw valid kvmlab inputs.

Every value drawn passes the models' validation, and every instance drawn can be
generated for every capability profile drawn (the strategies keep Ganeti's
cross-parameter rules and draw only feature sets that can express them), so a
property fails only when kvmlab breaks an invariant, not because the input was
impossible.
"""

from __future__ import annotations

import dataclasses
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


def instance_names() -> st.SearchStrategy[str]:
    """DNS labels, short enough for every socket path in the layouts drawn."""
    edge = st.sampled_from(_LABEL_CHARS)
    middle = st.text(_LABEL_CHARS + "-", max_size=20)
    return st.builds(lambda a, m, b: (a + m + b)[:40] if m else a, edge, middle, edge)


def macs() -> st.SearchStrategy[str]:
    """Unicast MAC addresses, lowercase, never the all-zero one (which QEMU replaces)."""
    octets = st.lists(st.integers(0, 255), min_size=6, max_size=6)
    unicast = octets.map(lambda o: ":".join(f"{b:02x}" for b in [o[0] & 0xFE, *o[1:]]))
    return unicast.filter(lambda mac: mac != "00:00:00:00:00:00")


_links = st.text("abcdefghijklmnopqrstuvwxyz0123456789_.-", min_size=1, max_size=15).filter(
    lambda s: s[0] not in ".-"
)


@st.composite
def nics(draw: st.DrawFn, mac: st.SearchStrategy[str] | None = None) -> Nic:
    """One NIC of any mode, with a link where the mode wants one."""
    mode = draw(st.sampled_from(list(NicMode)))
    if mode is NicMode.USER:
        link = ""
    elif mode is NicMode.BRIDGED:
        link = draw(_links)
    else:
        link = draw(st.one_of(st.just(""), _links))
    return Nic(mac=draw(mac if mac is not None else macs()), mode=mode, link=link)


def _paths(prefix_dirs: tuple[str, ...] = _SAFE_DIRS) -> st.SearchStrategy[str]:
    leaf = st.text("abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1, max_size=12).filter(
        lambda s: s not in {".", ".."}
    )
    return st.builds(lambda d, f: f"{d}/{f}", st.sampled_from(prefix_dirs), leaf)


def disks() -> st.SearchStrategy[Disk]:
    return st.builds(Disk, path=_paths(), mode=st.sampled_from(["rw", "ro"]))


@st.composite
def hvparams(draw: st.DrawFn) -> HvParams:
    """Hypervisor parameters that respect Ganeti's cross-parameter rules."""
    values: dict[str, Any] = {}
    boot = draw(st.sampled_from(["disk", "disk", "cdrom", "network", "floppy"]))
    values["boot_order"] = boot
    if boot == "cdrom" or draw(st.booleans()):
        values["cdrom_image_path"] = draw(_paths(("/srv/iso",)))
    if boot == "floppy":
        values["floppy_image_path"] = draw(_paths(("/srv/floppy",)))
    if draw(st.booleans()):
        values["kernel_path"] = draw(_paths(("/boot", "/srv/kernels")))
        values["initrd_path"] = draw(st.one_of(st.just(""), _paths(("/boot",))))
    else:
        values["kernel_path"] = ""
    values["kernel_args"] = draw(st.sampled_from(["ro", "", "quiet loglevel=3", "init=/bin/sh"]))
    values["root_path"] = draw(st.sampled_from(["/dev/vda1", "/dev/sda1", "LABEL=root"]))
    values["serial_console"] = draw(st.booleans())
    values["serial_speed"] = draw(st.sampled_from([9600, 38400, 115200]))
    values["acpi"] = draw(st.booleans())
    values["kvm_flag"] = draw(st.sampled_from(["", "enabled", "disabled"]))
    values["machine_version"] = draw(st.sampled_from(["", "pc", "q35", "pc-i440fx-7.2"]))
    values["cpu_type"] = draw(st.sampled_from(["", "qemu64", "host", "max"]))
    values["nic_type"] = draw(st.sampled_from(["paravirtual", "e1000", "rtl8139", "ne2k_pci"]))
    values["disk_type"] = draw(st.sampled_from(["paravirtual", "ide", "scsi"]))
    cache = draw(st.sampled_from(["default", "none", "writethrough", "writeback"]))
    values["disk_cache"] = cache
    values["disk_aio"] = draw(
        st.sampled_from(["threads", "native"] if cache == "none" else ["threads"])
    )
    vnc = draw(st.sampled_from(["", "0.0.0.0", "127.0.0.1", "/run/kvmlab-vnc"]))
    values["vnc_bind_address"] = vnc
    if vnc and draw(st.booleans()):
        values["vnc_tls"] = True
        if draw(st.booleans()):
            values["vnc_x509_path"] = "/etc/kvmlab/x509"
            values["vnc_x509_verify"] = draw(st.booleans())
    values["vnc_password_file"] = draw(st.sampled_from(["", "/etc/kvmlab/vnc-pass"]))
    values["keymap"] = draw(st.sampled_from(["", "en-us", "de"]))
    values["use_localtime"] = draw(st.booleans())
    values["usb_mouse"] = draw(st.sampled_from(["", "mouse", "tablet"]))
    values["reboot_behavior"] = draw(st.sampled_from(["reboot", "exit"]))
    security = draw(st.sampled_from(["none", "user"]))
    values["security_model"] = security
    values["security_domain"] = "kvmlab" if security == "user" else ""
    values["use_chroot"] = draw(st.booleans())
    values["vhost_net"] = draw(st.booleans())
    values["kvm_extra"] = draw(
        st.sampled_from(["", "-no-hpet", "-global kvm-pit.lost_tick_policy=delay"])
    )
    return HvParams(**values)


@st.composite
def instances(draw: st.DrawFn, max_nics: int = 4, max_disks: int = 3) -> Instance:
    """Valid instances: unique MACs, a CPU topology that fits the vCPUs."""
    vcpus = draw(st.integers(1, 16))
    hv = draw(hvparams())
    if draw(st.booleans()):
        threads = draw(st.sampled_from([d for d in (1, 2) if vcpus % d == 0]))
        cores = draw(
            st.sampled_from([d for d in range(1, vcpus + 1) if (vcpus // threads) % d == 0])
        )
        sockets = vcpus // threads // cores
        hv = hv.model_copy(
            update={"cpu_cores": cores, "cpu_threads": threads, "cpu_sockets": sockets}
        )
    mac_list = draw(st.lists(macs(), max_size=max_nics, unique=True))
    nic_list = [draw(nics(st.just(mac))) for mac in mac_list]
    return Instance(
        name=draw(instance_names()),
        memory=draw(st.integers(16, 65536)),
        vcpus=vcpus,
        nics=tuple(nic_list),
        disks=tuple(draw(st.lists(disks(), max_size=max_disks))),
        hvparams=hv,
        network_port=draw(st.one_of(st.none(), st.integers(5901, 5999))),
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
