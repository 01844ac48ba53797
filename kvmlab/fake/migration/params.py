"""Migration settings: capabilities and parameters, as QEMU 7.2 and 10.0 report them.

``migrate-set-capabilities`` takes any capability name the imitated QEMU knows
(only ``events`` changes what the fake does); ``migrate-set-parameters`` takes the
parameters ``query-migrate-parameters`` lists (``max-bandwidth``, in bytes per second,
and ``downtime-limit``, in ms, are the ones the fake's transfer uses). Values are
checked as QEMU checks them. Imported by the first migration settings command.
"""

from __future__ import annotations

from kvmlab.fake.errors import QmpCommandError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from kvmlab.fake.machine_view import MachineView

__all__ = [
    "CAPABILITIES",
    "capabilities",
    "defaults",
    "parameters",
    "query_capabilities",
    "query_parameters",
    "set_capabilities",
    "set_parameters",
]

#: QEMU 7.2's migration capabilities (10.0 drops ``block``, ``compress``, adds a few).
CAPABILITIES = (
    "xbzrle",
    "rdma-pin-all",
    "auto-converge",
    "zero-blocks",
    "compress",
    "events",
    "postcopy-ram",
    "x-colo",
    "release-ram",
    "block",
    "return-path",
    "pause-before-switchover",
    "multifd",
    "dirty-bitmaps",
    "postcopy-blocktime",
    "late-block-activate",
    "x-ignore-shared",
    "validate-uuid",
    "background-snapshot",
    "zero-copy-send",
    "postcopy-preempt",
)
_CAPABILITIES_10 = (
    *(c for c in CAPABILITIES if c not in ("block", "compress")),
    "switchover-ack",
    "dirty-limit",
    "mapped-ram",
)

_COMMON: dict[str, object] = {
    "cpu-throttle-tailslow": False,
    "xbzrle-cache-size": 67108864,
    "cpu-throttle-initial": 20,
    "announce-max": 550,
    "multifd-channels": 2,
    "multifd-zstd-level": 1,
    "announce-initial": 50,
    "downtime-limit": 300,
    "tls-authz": "",
    "multifd-compression": "none",
    "announce-rounds": 5,
    "announce-step": 100,
    "tls-creds": "",
    "multifd-zlib-level": 1,
    "max-cpu-throttle": 99,
    "max-postcopy-bandwidth": 0,
    "tls-hostname": "",
    "throttle-trigger-threshold": 50,
    "max-bandwidth": 134217728,
    "x-checkpoint-delay": 20000,
    "cpu-throttle-increment": 10,
}
_ONLY_7 = {
    "decompress-threads": 2,
    "compress-threads": 8,
    "compress-level": 1,
    "block-incremental": False,
    "compress-wait-thread": True,
}
_ONLY_10 = {
    "direct-io": False,
    "avail-switchover-bandwidth": 0,
    "zero-page-detection": "multifd",
    "multifd-qatzip-level": 1,
    "mode": "normal",
    "vcpu-dirty-limit": 1,
    "x-vcpu-dirty-limit-period": 1000,
}
#: QEMU's upper bound for ``downtime-limit`` (ms).
_MAX_DOWNTIME = 2000000


def capabilities(m: MachineView) -> dict[str, bool]:
    """The migration capabilities set so far (``events`` is the one the fake acts on)."""
    if m.migrate_caps is None:
        m.migrate_caps = {}
    return m.migrate_caps


def parameters(m: MachineView) -> dict[str, object]:
    """``query-migrate-parameters``: QEMU's defaults, as changed by ``migrate-set-parameters``."""
    if m.migrate_params is None:
        m.migrate_params = defaults(m.profile.version)
    return m.migrate_params


def _names(m: MachineView) -> tuple[str, ...]:
    return _CAPABILITIES_10 if m.profile.version >= (9, 0, 0) else CAPABILITIES


def defaults(version: tuple[int, int, int]) -> dict[str, object]:
    """The parameters a fresh QEMU of that version reports."""
    extra = _ONLY_10 if version >= (9, 0, 0) else _ONLY_7
    return {**_COMMON, **extra}


def set_capabilities(m: MachineView, arguments: dict[str, object]) -> object:
    caps = capabilities(m)
    items = arguments["capabilities"]
    if not isinstance(items, list):
        raise QmpCommandError("Invalid parameter type for 'capabilities', expected: array")
    if m.outgoing is not None and m.outgoing.status in ("setup", "active", "device"):
        raise QmpCommandError("There's a migration process in progress")
    changes: dict[str, bool] = {}
    for index, item in enumerate(items):
        where = f"capabilities[{index}]"
        if not isinstance(item, dict) or "capability" not in item or "state" not in item:
            missing = "state" if isinstance(item, dict) and "capability" in item else "capability"
            raise QmpCommandError(f"Parameter '{where}.{missing}' is missing")
        name = item["capability"]
        if name not in _names(m):
            raise QmpCommandError(f"Parameter 'capability' does not accept value '{name}'")
        if not isinstance(item["state"], bool):
            raise QmpCommandError(f"Invalid parameter type for '{where}.state', expected: boolean")
        changes[str(name)] = item["state"]
    caps.update(changes)
    return {}


def query_capabilities(m: MachineView, arguments: dict[str, object]) -> object:
    caps = capabilities(m)
    return [{"state": caps.get(name, False), "capability": name} for name in _names(m)]


def query_parameters(m: MachineView, arguments: dict[str, object]) -> object:
    return dict(parameters(m))


def set_parameters(m: MachineView, arguments: dict[str, object]) -> object:
    params = parameters(m)
    for key, value in arguments.items():
        if key not in params:
            raise QmpCommandError(f"Parameter '{key}' is unexpected")
        kind = type(params[key])
        if kind is int and (not isinstance(value, int) or isinstance(value, bool)):
            raise QmpCommandError(f"Parameter '{key}' expects uint64")
        if kind is bool and not isinstance(value, bool):
            raise QmpCommandError(f"Invalid parameter type for '{key}', expected: boolean")
        if kind is str and not isinstance(value, str):
            raise QmpCommandError(f"Invalid parameter type for '{key}', expected: string")
    changes = dict(arguments)
    for key, value in arguments.items():
        if isinstance(value, int) and not isinstance(value, bool) and value < 0:
            changes[key] = value + 2**64  # QEMU reads a uint64: -1 is the largest value
    limit = changes.get("downtime-limit")
    if isinstance(limit, int) and limit > _MAX_DOWNTIME:
        raise QmpCommandError(
            "Parameter 'downtime_limit' expects an integer in the range of 0 to (2000 * 1000) ms"
        )
    params.update(changes)
    return {}
