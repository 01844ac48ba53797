"""``generate_runtime``: whole command lines and the QEMU-version-dependent spellings."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kvmlab.errors import InstanceError, LayoutError
from kvmlab.runtime.generator import generate_runtime
from kvmlab.spec.capabilities import QemuCapabilities, load_profile
from kvmlab.spec.instance import Instance
from kvmlab.spec.layout import StateLayout

UUID = "12345678-1234-5678-1234-567812345678"
MAC1 = "02:00:00:00:00:01"
MAC2 = "02:00:00:00:00:02"
LAYOUT = StateLayout(Path("/srv/kvmlab"))
QEMU_7_2 = QemuCapabilities()


LoadCaps = Callable[[str], QemuCapabilities]


@pytest.fixture
def ganeti_caps() -> LoadCaps:
    """Capabilities of one of Ganeti's QEMU versions (the bundled ``ganeti-<version>`` profile)."""

    def load(version: str) -> QemuCapabilities:
        return load_profile(f"ganeti-{version}")

    return load


def make(**fields: Any) -> Instance:
    """An instance named vm1 with a fixed UUID; ``hvparams`` merged into the defaults."""
    fields.setdefault("name", "vm1")
    fields.setdefault("uuid", UUID)
    return Instance.model_validate(fields)


def argv(
    instance: Instance | None = None, caps: QemuCapabilities | None = None, **kw: Any
) -> list[str]:
    kw.setdefault("layout", LAYOUT)
    return list(generate_runtime(instance or make(), caps, **kw).argv)


def option_values(words: list[str], option: str) -> list[str]:
    """The values following every occurrence of ``option``."""
    return [words[i + 1] for i, word in enumerate(words[:-1]) if word == option]


def value_of(words: list[str], option: str) -> str:
    values = option_values(words, option)
    assert len(values) == 1, f"{option} given {len(values)} times in {words}"
    return values[0]


# --- golden command lines -----------------------------------------------------------------


def test_whole_argv_minimal_kernel_boot_on_qemu_7_2() -> None:
    instance = make(memory=512, vcpus=2, disks=[{"path": "/dev/vg/vm1"}])
    assert argv(instance) == [
        "/usr/bin/kvm",
        "-name", "vm1",
        "-m", "512",
        "-smp", "2",
        "-pidfile", "/srv/kvmlab/pid/vm1",
        "-device", "virtio-balloon",
        "-daemonize",
        "-machine", "pc-i440fx-7.2",
        "-drive", "file=/dev/vg/vm1,format=raw,if=none,id=drive-s08",
        "-device", "virtio-blk-pci,drive=drive-s08,id=disk-s08,addr=0x08",
        "-kernel", "/boot/vmlinuz-3-kvmU",
        "-append", "root=/dev/vda1 ro console=ttyS0,38400",
        "-monitor", "unix:/srv/kvmlab/ctrl/vm1.monitor,server=on,wait=off",
        "-chardev",
        "socket,id=serial0,path=/srv/kvmlab/ctrl/vm1.serial,server=on,wait=off,"
        "logfile=/srv/kvmlab/log/vm1.serial.log,logappend=off",
        "-serial", "chardev:serial0",
        "-chardev", "socket,id=cmd0,path=/srv/kvmlab/ctrl/vm1.cmd,server=on,wait=off",
        "-serial", "chardev:cmd0",
        "-usb", "-device", "usb-tablet",
        "-vnc", "none",
        "-uuid", UUID,
    ]  # fmt: skip


DB2 = {
    "name": "db2",
    "memory": 2048,
    "vcpus": 4,
    "network_port": 5901,
    "nics": [{"mac": MAC1, "link": "br0"}],
    "disks": [{"path": "/dev/vg/db2-root"}, {"path": "/srv/images/data,1.img", "mode": "ro"}],
    "hvparams": {
        "kernel_path": "",
        "acpi": False,
        "kvm_flag": "enabled",
        "cpu_sockets": 1,
        "cpu_cores": 2,
        "cpu_threads": 2,
        "disk_cache": "none",
        "disk_aio": "native",
        "use_localtime": True,
        "use_chroot": True,
        "security_model": "user",
        "security_domain": "kvmuser",
        "reboot_behavior": "exit",
        "cpu_type": "host",
        "keymap": "de",
        "kvm_extra": "-no-hpet",
    },
}
DB2_HEAD = [
    "/usr/bin/kvm",
    "-name", "db2",
    "-m", "2048",
    "-smp", "4,cores=2,threads=2,sockets=1",
    "-pidfile", "/srv/kvmlab/pid/db2",
    "-device", "virtio-balloon",
    "-daemonize",
]  # fmt: skip
DB2_DRIVES = [
    "-drive", "file=/dev/vg/db2-root,format=raw,if=none,cache=none,aio=native,id=drive-s08",
    "-device", "virtio-blk-pci,drive=drive-s08,id=disk-s08,addr=0x08",
    "-drive",
    "file=/srv/images/data,,1.img,format=raw,if=none,cache=none,aio=native,id=drive-s09,readonly=on",
    "-device", "virtio-blk-pci,drive=drive-s09,id=disk-s09,addr=0x09",
]  # fmt: skip
DB2_CONTROL = [
    "-monitor", "unix:/srv/kvmlab/ctrl/db2.monitor,server=on,wait=off",
    "-chardev",
    "socket,id=serial0,path=/srv/kvmlab/ctrl/db2.serial,server=on,wait=off,"
    "logfile=/srv/kvmlab/log/db2.serial.log,logappend=off",
    "-serial", "chardev:serial0",
    "-chardev", "socket,id=cmd0,path=/srv/kvmlab/ctrl/db2.cmd,server=on,wait=off",
    "-serial", "chardev:cmd0",
    "-usb", "-device", "usb-tablet",
    "-vnc", ":1",
    "-rtc", "base=localtime",
]  # fmt: skip
DB2_TAIL = ["-k", "de", "-cpu", "host", "-uuid", UUID, "-no-hpet"]


def test_whole_argv_disk_boot_confined_on_qemu_7_2() -> None:
    instance = make(uuid=UUID, **DB2)
    assert argv(instance) == [
        *DB2_HEAD,
        "-no-acpi",
        "-no-reboot",
        "-machine", "pc-i440fx-7.2,accel=kvm",
        *DB2_DRIVES,
        *DB2_CONTROL,
        "-chroot", "/srv/kvmlab/chroot/db2",
        "-runas", "kvmuser",
        *DB2_TAIL,
    ]  # fmt: skip


def test_whole_argv_disk_boot_confined_on_qemu_10_0() -> None:
    instance = make(uuid=UUID, **DB2)
    assert argv(instance, load_profile("qemu-10.0")) == [
        *DB2_HEAD,
        "-no-reboot",
        "-machine", "pc-i440fx-10.0,accel=kvm,acpi=off",
        *DB2_DRIVES,
        *DB2_CONTROL,
        "-run-with", "chroot=/srv/kvmlab/chroot/db2,user=kvmuser",
        *DB2_TAIL,
    ]  # fmt: skip


def test_whole_argv_cdrom_install_on_ganetis_qemu_1_0(ganeti_caps: LoadCaps) -> None:
    instance = make(
        memory=1024,
        disks=[{"path": "/dev/vg/vm1"}],
        hvparams={
            "kernel_path": "",
            "boot_order": "cdrom",
            "cdrom_image_path": "/srv/iso/debian.iso",
            "serial_console": False,
            "vnc_bind_address": "",
            "machine_version": "pc-1.0",
        },
    )
    assert argv(instance, ganeti_caps("1.0")) == [
        "/usr/bin/kvm",
        "-name", "vm1",
        "-m", "1024",
        "-smp", "1",
        "-pidfile", "/srv/kvmlab/pid/vm1",
        "-balloon", "virtio",
        "-daemonize",
        "-machine", "pc-1.0",
        "-boot", "d",
        "-drive", "file=/dev/vg/vm1,format=raw,if=none,id=drive-s08",
        "-device", "virtio-blk-pci,drive=drive-s08,id=disk-s08,addr=0x08",
        "-drive", "file=/srv/iso/debian.iso,format=raw,media=cdrom,if=ide",
        "-monitor", "unix:/srv/kvmlab/ctrl/vm1.monitor,server,nowait",
        "-serial", "none",
        "-display", "none",
        "-uuid", UUID,
    ]  # fmt: skip


def test_generation_is_deterministic() -> None:
    instance = make(uuid=UUID, **DB2)
    first, second = generate_runtime(instance), generate_runtime(make(uuid=UUID, **DB2))
    assert first == second
    assert first.to_json() == second.to_json()


def test_runtime_captures_the_instance_data() -> None:
    instance = make(uuid=UUID, **DB2)
    runtime = generate_runtime(instance, layout=LAYOUT)
    assert runtime.name == "db2"
    assert runtime.nics == instance.nics
    assert runtime.disks == instance.disks
    assert runtime.hvparams == instance.hvparams
    assert runtime.binary == "/usr/bin/kvm"


def test_binary_overrides_kvm_path() -> None:
    assert argv(binary="/opt/qemu/bin/qemu-system-x86_64")[0] == "/opt/qemu/bin/qemu-system-x86_64"
    assert argv(make(hvparams={"kvm_path": "/usr/local/bin/kvm"}))[0] == "/usr/local/bin/kvm"


def test_uuid_is_derived_from_the_name_when_not_given() -> None:
    instance = Instance(name="vm1")
    assert value_of(argv(instance), "-uuid") == str(instance.system_uuid)
    assert value_of(argv(Instance(name="vm1")), "-uuid") == str(instance.system_uuid)


# --- NICs are deferred --------------------------------------------------------------------

NIC_SETS = [
    [{"mac": MAC1, "link": "br0"}],
    [{"mac": MAC1, "mode": "user"}, {"mac": MAC2, "mode": "routed", "link": "100"}],
]


@pytest.mark.parametrize("caps_name", ["qemu-7.2", "qemu-10.0"])
@pytest.mark.parametrize("nics", NIC_SETS)
@pytest.mark.parametrize("nic_type", ["paravirtual", "e1000", "rtl8139"])
def test_no_nic_argument_in_the_saved_argv(
    caps_name: str, nics: list[dict[str, str]], nic_type: str
) -> None:
    instance = make(nics=nics, hvparams={"nic_type": nic_type, "vhost_net": True})
    words = argv(instance, load_profile(caps_name))
    assert not {"-net", "-netdev", "-nic"} & set(words)
    devices = option_values(words, "-device")
    assert not [d for d in devices if re.match(r"(virtio-net|e1000|rtl8139)", d)]
    for nic in nics:
        assert not [w for w in words if nic["mac"] in w]


def test_no_nic_argument_on_legacy_qemu(ganeti_caps: LoadCaps) -> None:
    instance = make(nics=NIC_SETS[1])
    words = argv(instance, ganeti_caps("0.9.1"))
    assert "-net" not in words
    assert not [w for w in words if MAC1 in w or MAC2 in w]


# --- QEMU-version dependent spellings -----------------------------------------------------


def test_acpi_off_on_qemu_7_2_is_no_acpi() -> None:
    words = argv(make(hvparams={"acpi": False}))
    assert "-no-acpi" in words
    assert "acpi=off" not in value_of(words, "-machine")


def test_acpi_off_on_qemu_10_0_is_a_machine_property() -> None:
    words = argv(make(hvparams={"acpi": False}), load_profile("qemu-10.0"))
    assert "-no-acpi" not in words
    assert value_of(words, "-machine").split(",") == ["pc-i440fx-10.0", "acpi=off"]


@pytest.mark.parametrize("caps_name", ["qemu-7.2", "qemu-10.0"])
def test_acpi_on_says_nothing(caps_name: str) -> None:
    words = argv(make(), load_profile(caps_name))
    assert "-no-acpi" not in words
    assert "acpi" not in value_of(words, "-machine")


def test_acpi_off_without_any_spelling_is_refused() -> None:
    caps = QemuCapabilities(has_no_acpi=False, has_machine=False)
    with pytest.raises(InstanceError) as info:
        argv(make(hvparams={"acpi": False}), caps)
    assert info.value.field == "hvparams.acpi"


CONFINED = {"use_chroot": True, "security_model": "user", "security_domain": "qemu"}


def test_chroot_and_runas_on_qemu_7_2() -> None:
    words = argv(make(hvparams=CONFINED))
    assert value_of(words, "-chroot") == "/srv/kvmlab/chroot/vm1"
    assert value_of(words, "-runas") == "qemu"
    assert "-run-with" not in words


def test_run_with_on_qemu_10_0() -> None:
    words = argv(make(hvparams=CONFINED), load_profile("qemu-10.0"))
    assert value_of(words, "-run-with") == "chroot=/srv/kvmlab/chroot/vm1,user=qemu"
    assert "-chroot" not in words
    assert "-runas" not in words


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"use_chroot": True}, "chroot=/srv/kvmlab/chroot/vm1"),
        ({"security_model": "user", "security_domain": "qemu"}, "user=qemu"),
    ],
)
def test_run_with_carries_only_what_is_asked(params: dict[str, Any], expected: str) -> None:
    assert value_of(argv(make(hvparams=params), load_profile("qemu-10.0")), "-run-with") == expected


def test_no_confinement_by_default() -> None:
    for caps in (QEMU_7_2, load_profile("qemu-10.0")):
        assert not {"-chroot", "-runas", "-run-with"} & set(argv(caps=caps))


def test_chroot_without_any_spelling_is_refused() -> None:
    caps = QemuCapabilities(has_chroot=False, has_run_with=False)
    with pytest.raises(InstanceError) as info:
        argv(make(hvparams={"use_chroot": True}), caps)
    assert info.value.field == "hvparams.use_chroot"


def test_security_model_pool_is_refused() -> None:
    instance = make(hvparams={"security_model": "pool"})
    with pytest.raises(InstanceError) as info:
        generate_runtime(instance)
    assert info.value.field == "hvparams.security_model"
    assert "pool" in str(info.value)


def test_balloon_option_on_qemu_without_device() -> None:
    caps = QemuCapabilities(has_device=False, has_balloon_option=True)
    words = argv(caps=caps)
    assert option_values(words, "-balloon") == ["virtio"]
    assert "virtio-balloon" not in option_values(words, "-device")


@pytest.mark.parametrize("caps_name", ["qemu-7.2", "qemu-10.0"])
def test_balloon_device_on_modern_qemu(caps_name: str) -> None:
    words = argv(caps=load_profile(caps_name))
    assert "virtio-balloon" in option_values(words, "-device")
    assert "-balloon" not in words


def test_balloon_option_on_ganetis_qemu_0_12_5(ganeti_caps: LoadCaps) -> None:
    words = argv(caps=ganeti_caps("0.12.5"))
    assert option_values(words, "-balloon") == ["virtio"]


def test_no_balloon_when_qemu_has_neither(ganeti_caps: LoadCaps) -> None:
    words = argv(caps=ganeti_caps("0.9.1"))
    assert "-balloon" not in words
    assert "virtio-balloon" not in option_values(words, "-device")


def test_machine_type_with_dash_m_on_qemu_without_machine_option(ganeti_caps: LoadCaps) -> None:
    caps = ganeti_caps("0.12.5")
    assert not caps.has_machine
    words = argv(make(hvparams={"machine_version": "pc-0.12"}), caps)
    assert value_of(words, "-M") == "pc-0.12"
    assert "-machine" not in words


def test_no_machine_type_without_default_or_version(ganeti_caps: LoadCaps) -> None:
    words = argv(caps=ganeti_caps("0.12.5"))
    assert "-M" not in words
    assert "-machine" not in words


def test_machine_version_overrides_the_default_machine() -> None:
    words = argv(make(hvparams={"machine_version": "pc-q35-7.2"}))
    assert value_of(words, "-machine") == "pc-q35-7.2"
    assert not [w for w in words if "pc-i440fx-7.2" in w]


@pytest.mark.parametrize(
    ("caps_name", "switches"),
    [("qemu-7.2", "server=on,wait=off"), ("qemu-10.0", "server=on,wait=off")],
)
def test_long_booleans_on_modern_qemu(caps_name: str, switches: str) -> None:
    words = argv(caps=load_profile(caps_name))
    assert value_of(words, "-monitor").endswith(f",{switches}")
    console, channel = option_values(words, "-chardev")
    assert f",{switches}," in console
    assert channel.endswith(f",{switches}")
    assert not [w for w in words if "nowait" in w]


@pytest.mark.parametrize("version", ["1.1.2", "5.2.0"])
def test_short_booleans_before_qemu_6(version: str, ganeti_caps: LoadCaps) -> None:
    words = argv(caps=ganeti_caps(version))
    assert value_of(words, "-monitor") == "unix:/srv/kvmlab/ctrl/vm1.monitor,server,nowait"
    assert not [w for w in words if "wait=off" in w or "server=on" in w]


def test_serial_socket_without_chardev_logfile(ganeti_caps: LoadCaps) -> None:
    words = argv(caps=ganeti_caps("1.1.2"))
    assert option_values(words, "-serial") == [
        "unix:/srv/kvmlab/ctrl/vm1.serial,server,nowait",
        "unix:/srv/kvmlab/ctrl/vm1.cmd,server,nowait",
    ]
    assert "-chardev" not in words


def test_command_channel_is_the_second_serial_port_beside_the_console() -> None:
    words = argv()
    assert option_values(words, "-serial") == ["chardev:serial0", "chardev:cmd0"]
    assert "socket,id=cmd0,path=/srv/kvmlab/ctrl/vm1.cmd,server=on,wait=off" in words


def test_no_command_channel_without_a_serial_console() -> None:
    # After "-serial none" the next -serial would be ttyS0, not ttyS1.
    words = argv(make(hvparams={"serial_console": False}))
    assert option_values(words, "-serial") == ["none"]
    assert not [w for w in words if "cmd" in w]


@pytest.mark.parametrize(
    ("kvm_flag", "accel", "expected"),
    [
        ("enabled", None, "accel=kvm"),
        ("disabled", None, "accel=tcg"),
        ("enabled", "tcg", "accel=kvm"),
        ("disabled", "kvm", "accel=tcg"),
        ("", "kvm", "accel=kvm"),
        ("", "tcg", "accel=tcg"),
    ],
)
def test_accelerator_in_machine_option(kvm_flag: str, accel: Any, expected: str) -> None:
    words = argv(make(hvparams={"kvm_flag": kvm_flag}), accel=accel)
    assert value_of(words, "-machine") == f"pc-i440fx-7.2,{expected}"
    assert "-enable-kvm" not in words
    assert "-no-kvm" not in words


def test_no_accelerator_by_default() -> None:
    assert value_of(argv(), "-machine") == "pc-i440fx-7.2"


@pytest.mark.parametrize(
    ("kvm_flag", "flag", "absent"),
    [("enabled", "-enable-kvm", "-no-kvm"), ("disabled", "-no-kvm", "-enable-kvm")],
)
def test_accelerator_flags_on_qemu_without_machine_option(
    kvm_flag: str, flag: str, absent: str, ganeti_caps: LoadCaps
) -> None:
    words = argv(make(hvparams={"kvm_flag": kvm_flag}), ganeti_caps("0.12.5"))
    assert words.count(flag) == 1
    assert absent not in words


# --- drives -------------------------------------------------------------------------------


def drives(words: list[str]) -> list[str]:
    return option_values(words, "-drive")


def test_commas_in_paths_are_doubled() -> None:
    instance = make(
        disks=[{"path": "/srv/a,b.img"}],
        hvparams={
            "kernel_path": "",
            "cdrom_image_path": "/srv/x,file=/etc/shadow.iso",
            "cdrom2_image_path": "/srv/y,,z.iso",
            "floppy_image_path": "/srv/f,1.img",
        },
    )
    assert drives(argv(instance)) == [
        "file=/srv/a,,b.img,format=raw,if=none,id=drive-s08",
        "file=/srv/x,,file=/etc/shadow.iso,format=raw,media=cdrom,if=ide",
        "file=/srv/y,,,,z.iso,format=raw,media=cdrom,if=ide",
        "file=/srv/f,,1.img,format=raw,if=floppy",
    ]


def test_read_only_disk() -> None:
    instance = make(disks=[{"path": "/dev/sda"}, {"path": "/dev/sdb", "mode": "ro"}])
    first, second = drives(argv(instance))
    assert "readonly" not in first
    assert second.split(",")[-1] == "readonly=on"


def test_read_only_disk_is_never_silently_writable(ganeti_caps: LoadCaps) -> None:
    instance = make(disks=[{"path": "/dev/sdb", "mode": "ro"}])
    try:
        words = argv(instance, ganeti_caps("0.12.5"))
    except InstanceError:
        return
    assert "readonly" in drives(words)[0]


@pytest.mark.parametrize(
    ("disk_type", "interface"),
    [("paravirtual", "none"), ("ide", "ide"), ("ioemu", "ide")],
)
def test_disk_interface(disk_type: str, interface: str) -> None:
    instance = make(disks=[{"path": "/dev/sda"}], hvparams={"disk_type": disk_type})
    assert f",if={interface}" in drives(argv(instance))[0]


def test_scsi_disks_hang_off_a_virtio_scsi_controller_on_modern_qemu(
    ganeti_caps: LoadCaps,
) -> None:
    instance = make(
        disks=[{"path": "/dev/sda"}, {"path": "/dev/sdb"}], hvparams={"disk_type": "scsi"}
    )
    words = argv(instance)
    devices = [words[i + 1] for i, w in enumerate(words) if w == "-device"]
    assert "virtio-scsi-pci,id=scsi0" in devices
    assert "scsi-hd,drive=disk1,bus=scsi0.0" in devices
    assert drives(words)[1] == "file=/dev/sdb,format=raw,if=none,id=disk1"
    # QEMU 1.x had no virtio-scsi on every build but attached if=scsi drives itself.
    assert ",if=scsi" in drives(argv(instance, ganeti_caps("1.0")))[0]


@pytest.mark.parametrize("disk_type", ["sd", "mtd"])
def test_disk_types_without_a_bus_on_x86_are_refused(disk_type: str) -> None:
    instance = make(disks=[{"path": "/dev/sda"}], hvparams={"disk_type": disk_type})
    with pytest.raises(InstanceError, match="x86 PC") as caught:
        argv(instance)
    assert caught.value.field == "hvparams.disk_type"


def test_more_than_four_ide_units_are_refused() -> None:
    disks = [{"path": f"/dev/sd{c}"} for c in "abc"]
    hv = {"disk_type": "ide", "cdrom_image_path": "/a.iso", "cdrom2_image_path": "/b.iso"}
    with pytest.raises(InstanceError, match="4 IDE units"):
        argv(make(disks=disks, hvparams=hv))
    argv(make(disks=disks[:2], hvparams=hv))  # exactly four is fine


def test_more_virtio_disks_than_disk_slots_are_refused() -> None:
    disks = [{"path": f"/dev/vd{c}"} for c in "abcdefghi"]
    with pytest.raises(InstanceError, match="only 8 PCI slots are reserved for disks"):
        argv(make(disks=disks))
    argv(make(disks=disks[:8]))  # exactly eight is fine


@pytest.mark.parametrize(
    ("cache", "aio", "suffix"),
    [("none", "native", ",cache=none,aio=native"), ("writeback", "threads", ",cache=writeback")],
)
def test_cache_and_aio(cache: str, aio: str, suffix: str) -> None:
    instance = make(disks=[{"path": "/d"}], hvparams={"disk_cache": cache, "disk_aio": aio})
    assert drives(argv(instance))[0] == f"file=/d,format=raw,if=none{suffix},id=drive-s08"


@pytest.mark.parametrize(
    ("boot_order", "extra", "flag"),
    [
        ("network", {}, "n"),
        ("cdrom", {"cdrom_image_path": "/srv/x.iso"}, "d"),
        ("floppy", {"floppy_image_path": "/srv/f.img"}, "a"),
    ],
)
def test_boot_order(boot_order: str, extra: dict[str, str], flag: str) -> None:
    params = {"kernel_path": "", "boot_order": boot_order, **extra}
    assert value_of(argv(make(hvparams=params)), "-boot") == flag


def test_kernel_boot_ignores_boot_order() -> None:
    params = {"boot_order": "cdrom", "cdrom_image_path": "/srv/x.iso"}
    words = argv(make(hvparams=params))
    assert "-boot" not in words
    assert value_of(words, "-kernel") == "/boot/vmlinuz-3-kvmU"


def test_first_disk_gets_boot_on_when_qemu_needs_it(ganeti_caps: LoadCaps) -> None:
    instance = make(disks=[{"path": "/a"}, {"path": "/b"}], hvparams={"kernel_path": ""})
    first, second = drives(argv(instance, ganeti_caps("0.12.5")))
    assert first.endswith(",boot=on")
    assert "boot=on" not in second
    assert not [d for d in drives(argv(instance)) if "boot=on" in d]


# --- kernel and serial --------------------------------------------------------------------


def test_kernel_append_with_serial_console() -> None:
    words = argv(make(hvparams={"kernel_args": "ro quiet", "serial_speed": 115200}))
    append = value_of(words, "-append").split(" ")
    assert append[0] == "root=/dev/vda1"
    assert append[1:3] == ["ro", "quiet"]
    assert append[-1] == "console=ttyS0,115200"


def test_kernel_append_without_serial_console() -> None:
    words = argv(make(hvparams={"serial_console": False}))
    assert value_of(words, "-append") == "root=/dev/vda1 ro"
    assert value_of(words, "-serial") == "none"
    assert "-chardev" not in words


def test_kernel_with_initrd_and_custom_root() -> None:
    params = {"kernel_path": "/k", "initrd_path": "/i", "root_path": "/dev/sda2", "kernel_args": ""}
    words = argv(make(hvparams=params))
    assert value_of(words, "-kernel") == "/k"
    assert value_of(words, "-initrd") == "/i"
    assert value_of(words, "-append") == "root=/dev/sda2 console=ttyS0,38400"


def test_no_kernel_no_append() -> None:
    words = argv(make(hvparams={"kernel_path": ""}))
    assert not {"-kernel", "-append", "-initrd"} & set(words)


def test_serial_console_on_is_a_logged_socket() -> None:
    words = argv()
    assert option_values(words, "-serial")[0] == "chardev:serial0"
    chardev = option_values(words, "-chardev")[0].split(",")
    assert chardev[:3] == ["socket", "id=serial0", "path=/srv/kvmlab/ctrl/vm1.serial"]
    assert "logfile=/srv/kvmlab/log/vm1.serial.log" in chardev


# --- VNC ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("port", "bind", "expected"),
    [
        (None, "0.0.0.0", "none"),
        (5901, "0.0.0.0", ":1"),
        (5901, "127.0.0.1", "127.0.0.1:1"),
        (5999, "192.0.2.7", "192.0.2.7:99"),
        (None, "/run/vnc", "unix:/run/vnc/vm1.vnc"),
        (5901, "/run/vnc", "unix:/run/vnc/vm1.vnc"),
    ],
)
def test_vnc_display(port: int | None, bind: str, expected: str) -> None:
    words = argv(make(network_port=port, hvparams={"vnc_bind_address": bind}))
    assert value_of(words, "-vnc") == expected


def test_no_vnc_bind_address_means_no_display() -> None:
    words = argv(make(network_port=5901, hvparams={"vnc_bind_address": ""}))
    assert "-vnc" not in words
    assert value_of(words, "-display") == "none"
    assert "-usb" not in words


def test_usb_tablet_follows_vnc_unless_a_mouse_is_chosen() -> None:
    assert option_values(argv(make(network_port=5901)), "-device")[-1] == "usb-tablet"
    words = argv(make(hvparams={"usb_mouse": "mouse"}))
    assert "usb-mouse" in option_values(words, "-device")
    assert "usb-tablet" not in option_values(words, "-device")


@pytest.mark.parametrize(
    ("params", "suffix"),
    [
        ({"vnc_tls": True}, ",tls"),
        ({"vnc_tls": True, "vnc_x509_path": "/etc/x509"}, ",tls,x509=/etc/x509"),
        (
            {"vnc_tls": True, "vnc_x509_path": "/etc/x,509", "vnc_x509_verify": True},
            ",tls,x509verify=/etc/x,,509",
        ),
        ({"vnc_password_file": "/etc/vnc.pw"}, ",password"),
        ({"vnc_tls": True, "vnc_password_file": "/etc/vnc.pw"}, ",tls,password"),
    ],
)
def test_vnc_tls_and_password_on_old_qemu(
    params: dict[str, Any], suffix: str, ganeti_caps: LoadCaps
) -> None:
    words = argv(make(network_port=5902, hvparams=params), ganeti_caps("1.1.2"))
    assert value_of(words, "-vnc") == ":2" + suffix


def test_vnc_password_on_qemu_7_2() -> None:
    words = argv(make(network_port=5902, hvparams={"vnc_password_file": "/etc/vnc.pw"}))
    assert value_of(words, "-vnc") == ":2,password=on"


def test_vnc_tls_on_qemu_7_2_uses_tls_creds() -> None:
    params = {"vnc_tls": True, "vnc_x509_path": "/etc/x509"}
    words = argv(make(network_port=5902, hvparams=params))
    vnc = value_of(words, "-vnc").split(",")
    assert not [opt for opt in vnc if opt.startswith(("tls=", "x509"))]
    assert [opt for opt in vnc if opt.startswith("tls-creds=")]


# --- misc options -------------------------------------------------------------------------


def test_localtime_spelling(ganeti_caps: LoadCaps) -> None:
    params = {"use_localtime": True}
    assert value_of(argv(make(hvparams=params)), "-rtc") == "base=localtime"
    old = argv(make(hvparams=params), ganeti_caps("0.9.1"))
    assert "-localtime" in old
    assert "-rtc" not in old


def test_kvm_extra_comes_last_and_split() -> None:
    words = argv(make(hvparams={"kvm_extra": "-global 'isa-fdc.driveA=' -no-hpet"}))
    assert words[-3:] == ["-global", "isa-fdc.driveA=", "-no-hpet"]


def test_mem_path_with_prealloc() -> None:
    words = argv(make(hvparams={"mem_path": "/dev/hugepages"}))
    index = words.index("-mem-path")
    assert words[index : index + 3] == ["-mem-path", "/dev/hugepages", "-mem-prealloc"]


def test_reboot_behaviour_exit() -> None:
    assert "-no-reboot" in argv(make(hvparams={"reboot_behavior": "exit"}))
    assert "-no-reboot" not in argv()


# --- layout -------------------------------------------------------------------------------


def test_default_layout_is_var_lib_kvmlab() -> None:
    words = list(generate_runtime(make()).argv)
    assert value_of(words, "-pidfile") == "/var/lib/kvmlab/pid/vm1"


def test_socket_path_over_the_unix_limit_is_a_layout_error() -> None:
    root = Path("/srv/" + "x" * 90)
    expected = f"{root}/ctrl/vm1.monitor"
    assert len(expected.encode()) > 107
    with pytest.raises(LayoutError) as info:
        generate_runtime(make(), layout=StateLayout(root))
    assert expected in str(info.value)


def test_socket_path_at_the_unix_limit_is_fine() -> None:
    # /ctrl/ + name + .monitor: the longest socket (.monitor, 8) decides.
    root = Path("/" + "r" * (107 - len("/ctrl/vm1.monitor") - 1))
    assert len(f"{root}/ctrl/vm1.monitor") == 107
    generate_runtime(make(), layout=StateLayout(root))


@pytest.mark.parametrize(
    "root", ["relative/state", "./state", "/srv/a,b", "/srv/it's", "/srv/$HOME", "/srv/a\nb"]
)
def test_unusable_state_directories(root: str) -> None:
    with pytest.raises(LayoutError) as info:
        StateLayout(Path(root))
    assert repr(str(Path(root))) in str(info.value)
