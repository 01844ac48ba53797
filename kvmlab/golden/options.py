"""QEMU options as the semantic diff reads them: pairs, identities, and what the guest sees.

:mod:`kvmlab.golden.diff` compares two argvs option by option. For that an argv is split
into ``(option, value)`` pairs (:func:`parse_options`), a repeated option is told apart by
its identity (``id=``, the device driver, the drive's role) so that adding one ``-drive``
does not shift every other (:func:`keyed_options`), and each difference is judged
guest-visible or host-only (:func:`is_guest_visible`) from the tables below. Unknown
options count as guest-visible: a reviewer should look at them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Final

from kvmlab.spec.argv import FLAG_OPTIONS

__all__ = [
    "BINARY",
    "HOST_ONLY_OPTIONS",
    "HOST_ONLY_SUBOPTIONS",
    "PLAIN_VALUE_OPTIONS",
    "POSITIONAL",
    "is_guest_visible",
    "keyed_options",
    "parse_options",
    "suboptions",
]

#: Pseudo-option for ``argv[0]``.
BINARY: Final = "(binary)"
#: Pseudo-option for a word that follows no option (old QEMU's positional disk image).
POSITIONAL: Final = "(positional)"

#: Options whose whole value only concerns the host.
HOST_ONLY_OPTIONS: Final = frozenset(
    {
        BINARY,
        "-name",
        "-pidfile",
        "-daemonize",
        "-monitor",
        "-qmp",
        "-qmp-pretty",
        "-chardev",
        "-vnc",
        "-display",
        "-nographic",
        "-k",
        "-chroot",
        "-runas",
        "-run-with",
        "-mem-path",
        "-mem-prealloc",
        "-D",
        "-d",
        "-msg",
        "-overcommit",
        "-sandbox",
        "-S",
        "-incoming",
        "-trace",
    }
)

#: Sub-options that only concern the host, per option; the rest of the value is guest-visible.
HOST_ONLY_SUBOPTIONS: Final[dict[str, frozenset[str]]] = {
    "-drive": frozenset({"aio"}),
    "-netdev": frozenset(
        {"script", "downscript", "fd", "fds", "vhost", "vhostfd", "vhostfds", "vnet_hdr", "ifname"}
    ),
    "-net": frozenset(
        {"script", "downscript", "fd", "fds", "vhost", "vhostfd", "vhostfds", "vnet_hdr", "ifname"}
    ),
}

#: ``-object`` types that are host-side credentials, not guest hardware.
_HOST_OBJECT_TYPES = ("tls-creds", "secret", "authz")

#: Options whose value is a plain string, not QEMU's ``key=value,...`` syntax.
PLAIN_VALUE_OPTIONS: Final = frozenset(
    {BINARY, POSITIONAL, "-append", "-kernel", "-initrd", "-pidfile", "-mem-path", "-chroot"}
    | {"-runas", "-uuid", "-k", "-vga"}
)

_SPLIT_OPTS = re.compile(r"(?<!,),(?!,)")


# --- parsing -------------------------------------------------------------------------------


#: Options known to take a value even when it starts with ``-`` (``-append -v``).
_VALUED_OPTIONS: Final = frozenset(
    {"-append", "-name", "-m", "-smp", "-kernel", "-initrd", "-fw_cfg", "-global", "-set"}
)


def parse_options(argv: Sequence[str], *, binary: bool = True) -> list[tuple[str, str | None]]:
    """Split an argv into ``(option, value)`` pairs.

    ``--opt`` is read as ``-opt`` (QEMU accepts both). Flags get ``None``. An unknown
    option takes the next word as its value unless that word looks like an option.

    :param binary: ``argv[0]`` is the program (paired as ``(binary)``); ``False`` for
        start-time arguments, which have none.
    """
    pairs: list[tuple[str, str | None]] = []
    if not argv:
        return pairs
    index = 0
    if binary:
        pairs.append((BINARY, argv[0]))
        index = 1
    while index < len(argv):
        word = argv[index]
        if not (word.startswith("-") and len(word) > 1):
            pairs.append((POSITIONAL, word))
            index += 1
            continue
        option = "-" + word.lstrip("-")
        following = argv[index + 1] if index + 1 < len(argv) else None
        takes_value = following is not None and option not in FLAG_OPTIONS
        if takes_value and following is not None and following.startswith("-"):
            takes_value = option in _VALUED_OPTIONS or len(following) == 1
        if not takes_value or following is None:
            pairs.append((option, None))
            index += 1
        else:
            pairs.append((option, following))
            index += 2
    return pairs


def suboptions(value: str) -> list[tuple[str, str | None]]:
    """QEMU's ``a=b,c,d=e`` (``,,`` escapes a comma) as ``[(key, value)]``; a bare word's
    value is ``None``."""
    items: list[tuple[str, str | None]] = []
    for raw in _SPLIT_OPTS.split(value):
        part = raw.replace(",,", ",")
        key, sep, rest = part.partition("=")
        items.append((key, rest) if sep else (part, None))
    return items


def _first(value: str | None) -> str:
    return "" if value is None else _SPLIT_OPTS.split(value, maxsplit=1)[0].replace(",,", ",")


def _lookup(value: str | None, key: str) -> str | None:
    if value is None:
        return None
    for name, item in suboptions(value):
        if name == key:
            return item
    return None


def _identity(option: str, value: str | None) -> str:
    """What pairs a repeated option across two argvs (before the occurrence number)."""
    if value is None:
        return ""
    ident = _lookup(value, "id")
    if ident is not None and option not in {"-machine", "-M"}:
        return f"id={ident}"
    if option == "-device":
        return _first(value)
    if option == "-drive":
        if _lookup(value, "media") == "cdrom":
            return "cdrom"
        interface = _lookup(value, "if")
        return "floppy" if interface == "floppy" else "disk"
    if option == "-net":
        vlan = _lookup(value, "vlan")
        return f"{_first(value)}:vlan={vlan}" if vlan is not None else _first(value)
    if option == "-global":
        return value.partition("=")[0]
    if option == "-fw_cfg":
        name = _lookup(value, "name")
        return f"name={name}" if name is not None else ""
    if option == "-object":
        return _first(value)
    return ""


def keyed_options(pairs: Iterable[tuple[str, str | None]]) -> dict[tuple[str, str], str | None]:
    """``{(option, key): value}``; repeats of one identity are numbered in order."""
    seen: dict[tuple[str, str], int] = {}
    keyed: dict[tuple[str, str], str | None] = {}
    for option, value in pairs:
        ident = _identity(option, value)
        count = seen.get((option, ident), 0)
        seen[(option, ident)] = count + 1
        if ident.startswith("id="):
            key = ident if count == 0 else f"{ident}#{count}"
        elif ident:
            key = f"{ident}#{count}"
        else:
            key = "" if count == 0 else f"#{count}"
        keyed[(option, key)] = value
    return keyed


# --- classification ------------------------------------------------------------------------


def _guest_view(option: str, value: str | None) -> object:
    """The part of one option's value the guest can see; equal views mean host-only."""
    if option in HOST_ONLY_OPTIONS:
        return None
    if value is None:
        return True  # a flag's presence
    if option == "-serial":
        return value != "none"  # a port exists or not; where it leads is the host's business
    if option == "-object":
        return None if _first(value).startswith(_HOST_OBJECT_TYPES) else value
    hidden = HOST_ONLY_SUBOPTIONS.get(option)
    if hidden:
        return sorted((key, item or "") for key, item in suboptions(value) if key not in hidden)
    return value


def is_guest_visible(
    option: str, old: str | None, new: str | None, present: tuple[bool, bool]
) -> bool:
    """Whether the guest would notice this option going from ``old`` to ``new``.

    :param present: whether the option is on each side at all (a flag's value is ``None``
        either way, so presence cannot be read from the values).
    """
    if option in HOST_ONLY_OPTIONS:
        return False
    if present[0] != present[1]:
        if option == "-object":
            value = new if present[1] else old
            return _guest_view(option, value) is not None
        if option == "-serial":
            value = new if present[1] else old
            return value != "none"
        return True
    return _guest_view(option, old) != _guest_view(option, new)
