"""Validation rules of the instance model: every bad value is refused with its field and value."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from kvmlab.errors import InstanceError
from kvmlab.spec.instance import Disk, HvParams, Instance, Nic, NicMode, instance_from_data

MAC1 = "02:00:00:00:00:01"
MAC2 = "02:00:00:00:00:02"


def bridged(mac: object = MAC1, link: str = "br0") -> dict[str, Any]:
    return {"mac": mac, "mode": "bridged", "link": link}


def data(**fields: Any) -> dict[str, Any]:
    """A valid instance document with ``fields`` replaced."""
    return {"name": "vm1", **fields}


def hv(**params: Any) -> dict[str, Any]:
    return data(hvparams=params)


def refused(document: object) -> InstanceError:
    """Validate ``document``, expecting refusal; return the error after generic checks."""
    with pytest.raises(InstanceError) as info:
        instance_from_data(document)
    err = info.value
    assert "\n" not in str(err), "errors are one line"
    return err


def assert_names(err: InstanceError, field: str, value: object) -> None:
    assert err.field == field
    message = str(err)
    assert repr(value) in message or str(value) in message, message


def test_a_minimal_instance_is_valid() -> None:
    instance = instance_from_data({"name": "vm1"})
    assert instance.name == "vm1"
    assert instance.nics == ()
    assert instance.disks == ()


# --- names -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "web/1",
        "..",
        "../etc",
        "my vm",
        "vm;reboot",
        "$(reboot)",
        "vm`id`",
        "vm\x00",
        "vm\n1",
        "VM1",
        "Vm",
        "a" * 64,
        "-vm",
        "vm-",
        "vm.example",
        "",
    ],
)
def test_bad_names_are_refused(name: str) -> None:
    err = refused(data(name=name))
    assert_names(err, "name", name)


@pytest.mark.parametrize("name", ["a", "vm-1", "1vm", "a" * 63, "x0-y1-z2"])
def test_dns_label_names_are_accepted(name: str) -> None:
    assert instance_from_data(data(name=name)).name == name


# --- NICs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mac",
    [
        "01:00:5e:00:00:01",  # IPv4 multicast
        "03:00:00:00:00:01",  # odd first octet
        "ff:ff:ff:ff:ff:ff",  # broadcast
        "02:00:00:00:00",
        "02:00:00:00:00:01:02",
        "02-00-00-00-00-01",
        "0200.0000.0001",
        "020000000001",
        "zz:00:00:00:00:01",
        "2:0:0:0:0:1",
        " 02:00:00:00:00:01",
        "",
    ],
)
def test_bad_macs_are_refused(mac: str) -> None:
    err = refused(data(nics=[bridged(mac=mac)]))
    assert_names(err, "nics.0.mac", mac)


def test_mac_that_is_not_a_string_is_refused() -> None:
    err = refused(data(nics=[bridged(mac=0x020000000001)]))
    assert err.field == "nics.0.mac"


def test_uppercase_mac_is_accepted_and_normalised() -> None:
    instance = instance_from_data(data(nics=[bridged(mac="02:AB:CD:EF:00:0A")]))
    assert instance.nics[0].mac == "02:ab:cd:ef:00:0a"


@pytest.mark.parametrize("second", ["02:ab:cd:00:00:01", "02:AB:CD:00:00:01", "02:Ab:cD:00:00:01"])
def test_duplicated_mac_is_refused_naming_it(second: str) -> None:
    mac = "02:ab:cd:00:00:01"
    err = refused(data(nics=[bridged(mac), bridged(MAC2), bridged(second)]))
    assert mac in str(err)
    assert "nics.2" in str(err)


def test_duplicated_mac_error_names_the_field() -> None:
    err = refused(data(nics=[bridged(MAC1), bridged(MAC1)]))
    assert err.field.startswith("nics.1")


@pytest.mark.parametrize(
    "link",
    ["br 0", "br0;reboot", "a" * 16, "..", ".", "br/0", "br0\n", "$(id)", "br:0"],
)
def test_bad_links_are_refused(link: str) -> None:
    err = refused(data(nics=[bridged(link=link)]))
    assert_names(err, "nics.0.link", link)


@pytest.mark.parametrize("link", ["br0", "a" * 15, "vmbr-lan.10", "xenbr_0"])
def test_linux_interface_names_are_accepted_as_links(link: str) -> None:
    assert instance_from_data(data(nics=[bridged(link=link)])).nics[0].link == link


def test_bridged_nic_without_link_is_refused() -> None:
    err = refused(data(nics=[{"mac": MAC1, "mode": "bridged"}]))
    assert err.field == "nics.0.link"
    assert "link" in str(err)


def test_bridged_is_the_default_mode_and_needs_a_link() -> None:
    err = refused(data(nics=[{"mac": MAC1}]))
    assert err.field == "nics.0.link"


def test_user_nic_with_link_is_refused() -> None:
    err = refused(data(nics=[{"mac": MAC1, "mode": "user", "link": "br0"}]))
    assert_names(err, "nics.0.link", "br0")


def test_unknown_nic_mode_is_refused() -> None:
    err = refused(data(nics=[{"mac": MAC1, "mode": "macvtap", "link": "eth0"}]))
    assert_names(err, "nics.0.mode", "macvtap")


def test_routed_and_user_nics_need_no_bridge() -> None:
    instance = instance_from_data(
        data(nics=[{"mac": MAC1, "mode": "user"}, {"mac": MAC2, "mode": "routed"}])
    )
    assert [nic.mode for nic in instance.nics] == [NicMode.USER, NicMode.ROUTED]


# --- sizes --------------------------------------------------------------------------------


@pytest.mark.parametrize("memory", [0, -1, 15, 4 * 1024 * 1024 + 1])
def test_memory_out_of_range_is_refused(memory: int) -> None:
    assert_names(refused(data(memory=memory)), "memory", memory)


@pytest.mark.parametrize("memory", [16, 4096, 4 * 1024 * 1024])
def test_memory_in_range_is_accepted(memory: int) -> None:
    assert instance_from_data(data(memory=memory)).memory == memory


@pytest.mark.parametrize("vcpus", [0, -2, 256])
def test_vcpus_out_of_range_are_refused(vcpus: int) -> None:
    assert_names(refused(data(vcpus=vcpus)), "vcpus", vcpus)


@pytest.mark.parametrize("vcpus", [1, 255])
def test_vcpus_in_range_are_accepted(vcpus: int) -> None:
    assert instance_from_data(data(vcpus=vcpus)).vcpus == vcpus


# --- paths and text -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "field", "value"),
    [
        (data(disks=[{"path": "disk.img"}]), "disks.0.path", "disk.img"),
        (data(disks=[{"path": "./disk.img"}]), "disks.0.path", "./disk.img"),
        (data(disks=[{"path": ""}]), "disks.0.path", ""),
        (data(disks=[{"path": "/a\nb"}]), "disks.0.path", "/a\nb"),
        (hv(kernel_path="vmlinuz"), "hvparams.kernel_path", "vmlinuz"),
        (hv(initrd_path="boot/initrd"), "hvparams.initrd_path", "boot/initrd"),
        (hv(cdrom_image_path="x.iso"), "hvparams.cdrom_image_path", "x.iso"),
        (hv(floppy_image_path="a.img"), "hvparams.floppy_image_path", "a.img"),
        (hv(kvm_path="kvm"), "hvparams.kvm_path", "kvm"),
        (hv(kvm_path=""), "hvparams.kvm_path", ""),
        (hv(mem_path="hugepages"), "hvparams.mem_path", "hugepages"),
        (hv(vnc_password_file="pw"), "hvparams.vnc_password_file", "pw"),
    ],
)
def test_relative_paths_are_refused(document: dict[str, Any], field: str, value: str) -> None:
    assert_names(refused(document), field, value)


def test_disk_mode_must_be_rw_or_ro() -> None:
    assert_names(refused(data(disks=[{"path": "/d", "mode": "rwx"}])), "disks.0.mode", "rwx")


@pytest.mark.parametrize("args", ["ro\nquiet", "ro\rinit=/bin/sh", "ro\x00"])
def test_kernel_args_with_control_characters_are_refused(args: str) -> None:
    assert_names(refused(hv(kernel_args=args)), "hvparams.kernel_args", args)


def test_root_path_with_newline_is_refused() -> None:
    assert_names(refused(hv(root_path="/dev/vda1\n")), "hvparams.root_path", "/dev/vda1\n")


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("machine_version", "pc,accel=tcg"),
        ("cpu_type", "host,+vmx"),
        ("keymap", "en us"),
        ("vnc_bind_address", "0.0.0.0,tls"),
        ("vnc_bind_address", "localhost"),
        ("vnc_bind_address", "/run/vnc,x"),
    ],
)
def test_values_inside_qemu_options_cannot_carry_commas_or_spaces(param: str, value: str) -> None:
    assert_names(refused(hv(**{param: value})), f"hvparams.{param}", value)


# --- unknown fields and wrong types -------------------------------------------------------


def test_unknown_hvparam_is_refused() -> None:
    err = refused(hv(kernel_pth="/boot/vmlinuz"))
    assert err.field == "hvparams.kernel_pth"
    assert "kernel_pth" in str(err)
    assert "unknown" in str(err)


def test_unknown_top_level_field_is_refused() -> None:
    err = refused(data(colour="blue"))
    assert err.field == "colour"
    assert "colour" in str(err)


def test_unknown_nic_field_is_refused() -> None:
    err = refused(data(nics=[{**bridged(), "model": "e1000"}]))
    assert err.field == "nics.0.model"


def test_missing_name_is_refused() -> None:
    err = refused({"memory": 512})
    assert err.field == "name"


@pytest.mark.parametrize(
    ("document", "field", "value"),
    [
        (data(name=5), "name", 5),
        (data(memory="lots"), "memory", "lots"),
        (data(memory=512.5), "memory", 512.5),
        (data(memory=[512]), "memory", [512]),
        (data(vcpus="two"), "vcpus", "two"),
        (data(nics="02:00:00:00:00:01"), "nics", "02:00:00:00:00:01"),
        (data(nics=[MAC1]), "nics.0", MAC1),
        (data(disks=[["/dev/sda"]]), "disks.0", ["/dev/sda"]),
        (hv(acpi="maybe"), "hvparams.acpi", "maybe"),
        (hv(serial_speed="fast"), "hvparams.serial_speed", "fast"),
        (data(uuid="not-a-uuid"), "uuid", "not-a-uuid"),
        (data(network_port="vnc"), "network_port", "vnc"),
    ],
)
def test_wrong_types_are_refused(document: dict[str, Any], field: str, value: object) -> None:
    assert_names(refused(document), field, value)


@pytest.mark.parametrize("document", [data(hvparams="acpi=0"), data(hvparams=[["acpi", False]])])
def test_hvparams_must_be_a_mapping(document: dict[str, Any]) -> None:
    assert refused(document).field == "hvparams"


@pytest.mark.parametrize("document", [["vm1"], "vm1", 42, None])
def test_document_that_is_not_a_mapping_is_refused(document: object) -> None:
    err = refused(document)
    assert "mapping" in str(err)


def test_boolean_is_not_a_vcpu_count() -> None:
    refused(data(vcpus=True))


@pytest.mark.parametrize("port", [5899, 65536, 22])
def test_vnc_port_out_of_range_is_refused(port: int) -> None:
    assert_names(refused(data(network_port=port)), "network_port", port)


# --- Ganeti's cross-parameter rules --------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "mentions", "field"),
    [
        ({"boot_order": "cdrom"}, ["boot_order", "cdrom_image_path"], "cdrom_image_path"),
        ({"boot_order": "floppy"}, ["boot_order", "floppy_image_path"], "floppy_image_path"),
        (
            {"kernel_path": "/boot/vmlinuz", "root_path": ""},
            ["/boot/vmlinuz", "root_path"],
            "root_path",
        ),
        ({"security_model": "user"}, ["security_domain"], "security_domain"),
        (
            {"security_model": "none", "security_domain": "qemu"},
            ["'none'", "'qemu'"],
            "security_domain",
        ),
        (
            {"security_model": "pool", "security_domain": "qemu"},
            ["'pool'", "'qemu'"],
            "security_domain",
        ),
        ({"disk_aio": "native"}, ["native", "'default'"], "disk_aio"),
        ({"disk_aio": "native", "disk_cache": "writeback"}, ["native", "'writeback'"], "disk_aio"),
        ({"vnc_x509_verify": True, "vnc_tls": True}, ["vnc_x509_path"], "vnc_x509_path"),
        ({"vnc_tls": True, "vnc_bind_address": ""}, ["vnc_bind_address"], "vnc_bind_address"),
        (
            {"vnc_x509_path": "/etc/x509", "vnc_bind_address": ""},
            ["vnc_bind_address"],
            "vnc_bind_address",
        ),
        ({"vnc_x509_path": "/etc/x509"}, ["vnc_tls"], "vnc_tls"),
    ],
)
def test_cross_parameter_rules(params: dict[str, Any], mentions: list[str], field: str) -> None:
    err = refused(hv(**params))
    assert err.field == f"hvparams.{field}"
    for word in mentions:
        assert word in str(err)


@pytest.mark.parametrize(
    "params",
    [
        {"boot_order": "cdrom", "cdrom_image_path": "/srv/debian.iso"},
        {"boot_order": "floppy", "floppy_image_path": "/srv/fd.img"},
        {"kernel_path": "", "root_path": ""},
        {"security_model": "user", "security_domain": "kvm-user"},
        {"disk_aio": "native", "disk_cache": "none"},
        {"vnc_tls": True, "vnc_x509_path": "/etc/x509", "vnc_x509_verify": True},
    ],
)
def test_cross_parameter_rules_accept_consistent_settings(params: dict[str, Any]) -> None:
    instance_from_data(hv(**params))


@pytest.mark.parametrize("speed", [12345, 0, -9600, 38401])
def test_invalid_serial_speed_is_refused(speed: int) -> None:
    assert_names(refused(hv(serial_speed=speed)), "hvparams.serial_speed", speed)


@pytest.mark.parametrize("speed", [9600, 115200])
def test_standard_serial_speeds_are_accepted(speed: int) -> None:
    assert instance_from_data(hv(serial_speed=speed)).hvparams.serial_speed == speed


# --- kvm_extra ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "option"),
    [
        ("-net user", "-net"),
        ("-netdev user,id=n9", "-netdev"),
        ("-nic user", "-nic"),
        ("-qmp unix:/x,server=on,wait=off", "-qmp"),
        ("-monitor stdio", "-monitor"),
        ("-serial stdio", "-serial"),
        ("-chardev pty,id=c", "-chardev"),
        ("-pidfile /tmp/p", "-pidfile"),
        ("-daemonize", "-daemonize"),
        ("-name other", "-name"),
        ("-m 4096", "-m"),
        ("-smp 8", "-smp"),
        ("-device e1000,mac=02:00:00:00:00:09", "-device"),
        ("-incoming tcp:0:4444", "-incoming"),
        ("-S", "-S"),
        ("-cpu host '-netdev' user,id=x", "-netdev"),
        ('-cpu host "-daemonize"', "-daemonize"),
    ],
)
def test_kvm_extra_cannot_set_reserved_options(extra: str, option: str) -> None:
    err = refused(hv(kvm_extra=extra))
    assert_names(err, "hvparams.kvm_extra", extra)
    assert option in str(err)


@pytest.mark.parametrize("extra", ["--netdev user,id=x", "--qmp unix:/x,server=on", "--daemonize"])
def test_kvm_extra_cannot_set_reserved_options_with_double_dash(extra: str) -> None:
    refused(hv(kvm_extra=extra))


@pytest.mark.parametrize("extra", ["-append 'ro", '-cpu "host', "-cpu host\\"])
def test_kvm_extra_with_unbalanced_quotes_is_refused(extra: str) -> None:
    assert_names(refused(hv(kvm_extra=extra)), "hvparams.kvm_extra", extra)


@pytest.mark.parametrize("extra", ["-no-hpet\n-net user", "-no-hpet\x00"])
def test_kvm_extra_with_control_characters_is_refused(extra: str) -> None:
    assert refused(hv(kvm_extra=extra)).field == "hvparams.kvm_extra"


def test_kvm_extra_is_split_like_a_shell_without_running_one() -> None:
    params = instance_from_data(hv(kvm_extra="-cpu host -global 'a.b=c d' $(id)")).hvparams
    assert params.kvm_extra_args == ("-cpu", "host", "-global", "a.b=c d", "$(id)")


# --- CPU topology -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("vcpus", "topology"),
    [
        (4, {"cpu_sockets": 2, "cpu_cores": 2, "cpu_threads": 2}),
        (8, {"cpu_sockets": 1, "cpu_cores": 2, "cpu_threads": 2}),
        (4, {"cpu_cores": 8}),
        (2, {"cpu_cores": 2, "cpu_threads": 2}),
    ],
)
def test_cpu_topology_must_match_vcpus(vcpus: int, topology: dict[str, int]) -> None:
    err = refused(data(vcpus=vcpus, hvparams=topology))
    assert f"vcpus = {vcpus}" in str(err)


def test_cpu_topology_error_names_a_field() -> None:
    err = refused(data(vcpus=4, hvparams={"cpu_sockets": 2, "cpu_cores": 2, "cpu_threads": 2}))
    assert err.field


@pytest.mark.parametrize(
    ("vcpus", "topology"),
    [
        (8, {"cpu_sockets": 2, "cpu_cores": 2, "cpu_threads": 2}),
        (4, {"cpu_cores": 2}),
        (4, {"cpu_cores": 4}),
    ],
)
def test_cpu_topology_matching_vcpus_is_accepted(vcpus: int, topology: dict[str, int]) -> None:
    instance_from_data(data(vcpus=vcpus, hvparams=topology))


# --- defaults and immutability ------------------------------------------------------------


@pytest.mark.parametrize(
    ("param", "ganeti_default"),
    [
        ("acpi", True),
        ("boot_order", "disk"),
        ("serial_console", True),
        ("serial_speed", 38400),
        ("kernel_args", "ro"),
        ("root_path", "/dev/vda1"),
        ("initrd_path", ""),
        ("disk_cache", "default"),
        ("disk_aio", "threads"),
        ("nic_type", "paravirtual"),
        ("disk_type", "paravirtual"),
        ("security_model", "none"),
        ("security_domain", ""),
        ("vnc_bind_address", "0.0.0.0"),
        ("vnc_tls", False),
        ("kvm_path", "/usr/bin/kvm"),
        ("kvm_flag", ""),
        ("cpu_mask", "all"),
        ("use_chroot", False),
        ("use_localtime", False),
        ("vhost_net", False),
        ("reboot_behavior", "reboot"),
        ("migration_port", 8102),
        ("migration_bandwidth", 32),
        ("migration_downtime", 30),
        ("migration_mode", "live"),
    ],
)
def test_defaults_are_ganetis(param: str, ganeti_default: object) -> None:
    assert getattr(HvParams(), param) == ganeti_default
    assert getattr(instance_from_data(data()).hvparams, param) == ganeti_default


def test_a_ganeti_hvparams_dict_with_empty_strings_loads_unchanged() -> None:
    params = {"kernel_path": "", "initrd_path": "", "cdrom_image_path": "", "kvm_flag": ""}
    assert instance_from_data(hv(**params)).hvparams.model_dump(include=set(params)) == params


def test_instance_is_frozen() -> None:
    instance = instance_from_data(data(nics=[bridged()], disks=[{"path": "/dev/sda"}]))
    with pytest.raises(ValidationError):
        instance.memory = 4096
    with pytest.raises(ValidationError):
        instance.hvparams.acpi = False
    with pytest.raises(ValidationError):
        instance.nics[0].mac = MAC2
    with pytest.raises(ValidationError):
        instance.disks[0].path = "/dev/sdb"
    with pytest.raises(TypeError):
        instance.nics[0] = Nic(mac=MAC2, link="br1")  # type: ignore[index]
    assert instance.memory == 128
    assert instance.nics[0].mac == MAC1


def test_direct_construction_validates_too() -> None:
    with pytest.raises(ValidationError, match="DNS label"):
        Instance(name="web/1")
    with pytest.raises(ValidationError):
        Disk(path="relative")


def test_uuid_is_derived_from_the_name_and_stable() -> None:
    first = instance_from_data(data(name="vm1"))
    again = instance_from_data(data(name="vm1", memory=1024))
    other = instance_from_data(data(name="vm2"))
    assert first.system_uuid == again.system_uuid
    assert first.system_uuid != other.system_uuid
    given = "12345678-1234-5678-1234-567812345678"
    assert str(instance_from_data(data(uuid=given)).system_uuid) == given
