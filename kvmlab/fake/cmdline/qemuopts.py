"""QEMU's option value syntax (QemuOpts), sizes, integers and MAC addresses.

Every ``-option key=value,...`` argument goes through :func:`parse_opts`, so
the escaping (``,,``), implied first keys (``-netdev user,...``) and short
booleans (``server,nowait``) behave the same for every option, and a value QEMU
refuses fails with QEMU's message wherever it appears.
"""

from __future__ import annotations

from kvmlab.fake.errors import FakeError

__all__ = [
    "MIB",
    "normal_mac",
    "parse_bool",
    "parse_int",
    "parse_opts",
    "parse_size",
    "split_opts",
]

MIB = 1024 * 1024


def split_opts(text: str) -> list[str]:
    """Split ``a=1,b=x,,y`` at single commas; ``,,`` is an escaped comma."""
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == ",":
            if text.startswith(",,", i):
                current.append(",")
                i += 2
                continue
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        i += 1
    parts.append("".join(current))
    return parts


def parse_opts(
    text: str,
    where: str,
    implied: str | None = None,
    allowed: frozenset[str] | None = None,
) -> dict[str, str]:
    """Parse a QemuOpts string as QEMU does.

    A first element without ``=`` is the value of ``implied`` (``-netdev user,...``);
    any other bare ``key`` means ``key=on`` and ``nokey`` means ``key=off`` (the
    short booleans older profiles use: ``server,nowait``).

    :param where: the option, for error messages.
    :param implied: the key a bare first element sets.
    :param allowed: keys QEMU accepts here, or ``None`` to accept any.
    :raise FakeError: ``Invalid parameter 'x'`` for a key not in ``allowed``.
    """
    result: dict[str, str] = {}
    for index, part in enumerate(split_opts(text)):
        if part == "":
            continue
        if "=" in part:
            key, value = part.split("=", 1)
        elif index == 0 and implied is not None:
            key, value = implied, part
        elif part.startswith("no") and len(part) > 2:
            key, value = part[2:], "off"
        else:
            key, value = part, "on"
        if allowed is not None and key not in allowed:
            raise FakeError(f"Invalid parameter '{key}'", where)
        result[key] = value
    return result


def parse_bool(opts: dict[str, str], key: str, default: bool, where: str) -> bool:
    """A QemuOpts boolean (``on``/``off``, and the ``yes``/``no`` QEMU still takes)."""
    value = opts.get(key)
    if value is None:
        return default
    if value in ("on", "yes", "true", "y"):
        return True
    if value in ("off", "no", "false", "n"):
        return False
    raise FakeError(f"Parameter '{key}' expects 'on' or 'off'", where)


def parse_size(text: str, where: str, default_unit: int = MIB) -> int:
    """Bytes from ``512``, ``512M``, ``1G``, ``1.5G`` (QEMU's ``qemu_strtosz``)."""
    units = {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
    units["e"] = 1 << 60
    number, unit = text, default_unit
    if text and text[-1].lower() in units and not text[-1].isdigit():
        number, unit = text[:-1], units[text[-1].lower()]
    try:
        value = float(number) if "." in number else int(number, 10)
    except ValueError:
        value = -1
    if value < 0 or number.strip() != number or value * unit >= 1 << 64:
        raise FakeError(
            "Parameter 'size' expects a non-negative number below 2^64\n"
            "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n"
            "and exabytes, respectively.",
            where,
        )
    return int(value * unit)


def parse_int(value: str, message: str, where: str = "") -> int:
    """A decimal integer, or :class:`FakeError` with ``message``."""
    try:
        return int(value, 10)
    except ValueError:
        raise FakeError(message, where) from None


def normal_mac(mac: str) -> str | None:
    """``52:54:00:12:34:56`` in lower case, or ``None`` when QEMU would refuse it."""
    parts = mac.replace("-", ":").split(":")
    hexdigits = "0123456789abcdefABCDEF"
    if len(parts) != 6 or not all(len(p) == 2 and all(c in hexdigits for c in p) for p in parts):
        return None
    return ":".join(parts).lower()
