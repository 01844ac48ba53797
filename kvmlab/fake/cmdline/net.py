"""Command-line networking and devices: ``-netdev``, ``-net``, ``-nic``, ``-device``.

The NICs are what the guest facts report and the tap backends are what kvmlab's
scripts configure, so their rules (ids, one NIC per netdev, MACs, legacy
``-net nic,vlan=``, which models are NICs) are kept together. The handlers fill
:attr:`Config.net_backends <kvmlab.fake.cmdline.config.Config.net_backends>` and
``nics``; :mod:`kvmlab.fake.host` starts the tap backends.
``-device`` lives here because most devices the fake models are NICs (a virtio
disk is handed to :mod:`kvmlab.fake.cmdline.disk`); the tables below and
:mod:`kvmlab.fake.cmdline.pci`'s slot rules are what QMP hotplug (``device_add``) checks
against too.
"""

from __future__ import annotations

from kvmlab.fake.cmdline.config import NetBackend, Nic
from kvmlab.fake.cmdline.disk import DISK_DRIVERS, add_disk_device, place_at_start
from kvmlab.fake.cmdline.pci import ROOT_PORT, PciError, add_root_port, device_model
from kvmlab.fake.cmdline.qemuopts import normal_mac, parse_bool, parse_int, parse_opts
from kvmlab.fake.errors import FakeError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from kvmlab.fake.cmdline.parse_state import OptionHandler, ParseState

__all__ = ["LEGACY_NIC_MODELS", "NETDEV_TYPES", "NIC_DRIVERS", "OPTIONS"]

#: ``-device`` drivers that are network cards.
NIC_DRIVERS = frozenset(
    """
    virtio-net-pci virtio-net-pci-transitional virtio-net-pci-non-transitional
    virtio-net-device e1000 e1000e e1000-82544gc e1000-82545em igb rtl8139 ne2k_pci
    pcnet vmxnet3 tulip i82550 i82551 i82557a i82557b i82557c i82558a i82558b i82559a
    i82559b i82559c i82559er i82562 i82801 usb-net
    """.split()  # noqa: SIM905 - a word list reads like QEMU's own documentation
)
#: ``-net nic,model=`` names; ``virtio`` is the legacy alias of ``virtio-net-pci``.
LEGACY_NIC_MODELS = {"virtio": "virtio-net-pci", **{name: name for name in NIC_DRIVERS}}
_DEFAULT_NIC_MODEL = "e1000"
NETDEV_TYPES = frozenset(
    {"user", "tap", "bridge", "socket", "stream", "dgram", "vde", "vhost-user", "vhost-vdpa"}
    | {"hubport", "l2tpv3"}
)


#: The keys QEMU's ``NetdevUserOptions`` and ``NetdevTapOptions`` take (with ``id``, ``type``).
_NETDEV_KEYS = {
    "user": frozenset(
        """
        id type ipv4 ipv6 net host ipv6-net ipv6-prefix ipv6-prefixlen ipv6-host restrict
        hostname dhcpstart dns ipv6-dns dnssearch domainname tftp tftp-server-name bootfile
        hostfwd guestfwd smb smbserver
        """.split()  # noqa: SIM905 - QEMU's own list, as its schema spells it
    ),
    "tap": frozenset(
        """
        id type ifname fd fds script downscript br helper sndbuf vnet_hdr vhost vhostfd
        vhostfds vhostforce queues poll-us
        """.split()  # noqa: SIM905
    ),
}


def _backend(p: ParseState, kind: str, ident: str, opts: dict[str, str], where: str) -> NetBackend:
    backend = NetBackend(ident, kind, where)
    if kind == "tap":
        backend.ifname = opts.get("ifname") or None
        backend.vnet_hdr = parse_bool(opts, "vnet_hdr", False, where)
        parse_bool(opts, "vhost", False, where)
        if "fd" in opts:
            backend.fd = parse_int(
                opts["fd"], f"{ident}: Can't use file descriptor {opts['fd']}", where
            )
        else:
            script = opts.get("script", "/etc/qemu-ifup")
            backend.script = None if script in ("", "no") else script
            down = opts.get("downscript", "/etc/qemu-ifdown")
            backend.downscript = None if down in ("", "no") else down
    p.cfg.net_backends.append(backend)
    return backend


def _netdev(p: ParseState, value: str, where: str) -> None:
    opts = parse_opts(value, where, "type")
    kind = opts.get("type", "")
    if kind in ("help", "?"):
        p.ask_help("netdev")
        return
    if kind not in NETDEV_TYPES:
        raise FakeError(f"Parameter 'type' does not accept value '{kind}'", where)
    ident = opts.get("id")
    if not ident:
        raise FakeError("Parameter 'id' is missing", where)
    known = _NETDEV_KEYS.get(kind)
    unknown = next((key for key in opts if known is not None and key not in known), None)
    if unknown is not None:
        raise FakeError(f"Invalid parameter '{unknown}'", where)
    if ident in p.netdev_ids:
        raise FakeError(f"Duplicate ID '{ident}' for netdev", where)
    if kind not in ("user", "tap"):
        raise FakeError(f"-netdev {kind} is not simulated by kvmlab-fake", where)
    p.netdev_ids.add(ident)
    _backend(p, kind, ident, opts, where)


def _check_vlan(p: ParseState, opts: dict[str, str], where: str) -> None:
    # QEMU 3.0 removed the "vlan" hubs; older recordings still take it.
    if "vlan" in opts and p.profile.version >= (3, 0, 0):
        raise FakeError("Invalid parameter 'vlan'", where)


def _net(p: ParseState, value: str, where: str) -> None:
    opts = parse_opts(value, where, "type")
    kind = opts.get("type", "")
    _check_vlan(p, opts, where)
    if kind == "none":
        return
    if kind == "nic":
        model = opts.get("model", _DEFAULT_NIC_MODEL)
        if model in ("help", "?"):
            p.ask_help_text("Available NIC models:\n" + "\n".join(sorted(LEGACY_NIC_MODELS)))
            return
        if model not in LEGACY_NIC_MODELS:
            raise FakeError(f"Unsupported NIC model: {model}")
        _add_nic(p, LEGACY_NIC_MODELS[model], opts.get("macaddr"), None, where, key="macaddr")
        return
    if kind not in ("user", "tap"):
        if kind in NETDEV_TYPES or kind in ("dump", "socket"):
            raise FakeError(f"-net {kind} is not simulated by kvmlab-fake", where)
        raise FakeError(f"Parameter 'type' does not accept value '{kind}'", where)
    ident = opts.get("name") or opts.get("id") or f"{kind}.{len(p.cfg.net_backends)}"
    _backend(p, kind, ident, opts, where)


def _nic(p: ParseState, value: str, where: str) -> None:
    opts = parse_opts(value, where, "type")
    kind = opts.get("type", "user")
    if kind == "none":
        return
    if kind not in ("user", "tap"):
        raise FakeError(f"-nic {kind} is not simulated by kvmlab-fake", where)
    model = opts.get("model", _DEFAULT_NIC_MODEL)
    if model not in LEGACY_NIC_MODELS:
        raise FakeError(f"Unsupported NIC model: {model}")
    ident = opts.get("id") or f"__org.qemu.nic{len(p.cfg.nics)}"
    p.netdev_ids.add(ident)
    _backend(p, kind, ident, opts, where)
    _add_nic(p, LEGACY_NIC_MODELS[model], opts.get("mac"), ident, where, key="mac")


def _add_nic(
    p: ParseState, model: str, mac: str | None, netdev: str | None, where: str, *, key: str
) -> None:
    owner = "virtio-net-device" if model.startswith("virtio-net") else model
    if netdev is not None and netdev not in p.netdev_ids:
        raise FakeError(f"Property '{owner}.netdev' can't find value '{netdev}'", where)
    if mac is None:
        # QEMU's qemu_macaddr_default_if_unset: 52:54:00:12:34:56, then :57...
        mac = f"52:54:00:12:34:{0x56 + p.default_macs:02x}"
        p.default_macs += 1
    normal = normal_mac(mac)
    if normal is None:
        raise FakeError(f"Property '{owner}.mac' doesn't take value '{mac}'", where)
    if netdev is not None:
        user = p.used_netdevs.get(netdev)
        if user is not None:
            raise FakeError(
                f"Property '{owner}.netdev' can't take value '{netdev}', it's in use", where
            )
        p.used_netdevs[netdev] = where
    p.cfg.nics.append(Nic(model, normal, netdev, where))


def _device(p: ParseState, value: str, where: str) -> None:
    opts = parse_opts(value, where, "driver")
    driver = opts.get("driver", "")
    if driver in ("help", "?"):
        p.ask_help("device")
        return
    model = device_model(p.profile, driver)
    if model is None:
        raise FakeError(f"'{driver}' is not a valid device model name", where)
    driver = model
    if opts.get("help") == "on" or opts.get("?") == "on":
        p.ask_help_text(f"{driver} options:\n")
        return
    _check_bus(p, driver, where)
    cfg = p.cfg
    if driver in DISK_DRIVERS:
        add_disk_device(p, driver, opts, where)
    elif driver in NIC_DRIVERS:
        bus, slot = place_at_start(cfg, driver, opts, where)
        _add_nic(p, driver, opts.get("mac"), opts.get("netdev"), where, key="mac")
        nic = cfg.nics[-1]
        nic.ident = opts.get("id")
        nic.slot = slot
        nic.bus = bus
    elif driver == ROOT_PORT:
        try:
            add_root_port(opts, [*cfg.nics, *cfg.disks], machine=cfg.machine, ports=cfg.root_ports)
        except PciError as err:
            raise FakeError(str(err), where) from None


def _check_bus(p: ParseState, driver: str, where: str) -> None:
    """A USB device needs a ``usb-bus``: the machine's (``-usb``) or a controller's
    created before it, as the profile's ``usb.txt`` records them."""
    profile = p.profile
    controllers = profile.usb_facts("controllers")
    if controllers is None:
        return
    if driver in controllers:
        p.usb_controllers += 1
    if profile.device_buses().get(driver) != "usb-bus" or p.usb_controllers:
        return
    machine = profile.machine_alias(p.cfg.machine or "")
    own = profile.usb_facts("machines") or frozenset()
    optional = profile.usb_facts("machines-with-usb-option") or frozenset()
    if machine in own or (p.cfg.usb and machine in optional):
        return
    raise FakeError(f"No 'usb-bus' bus found for device '{driver}'", where)


OPTIONS: dict[str, OptionHandler] = {
    "netdev": _netdev,
    "net": _net,
    "nic": _nic,
    "device": _device,
}
