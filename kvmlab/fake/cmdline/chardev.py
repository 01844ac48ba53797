"""Command-line character devices: ``-chardev``, ``-serial``, ``-monitor``, ``-qmp``, ``-mon``.

QEMU's chardev rules are the fiddliest part of its command line (ids, the
``unix:PATH,server=on,wait=off`` shorthands, one frontend per backend, which
backends the fake simulates), and every socket kvmlab talks to comes from
here, so they have their own module. The handlers fill
:attr:`Config.chardevs <kvmlab.fake.cmdline.config.Config.chardevs>`, ``serials`` and
``monitors``; :mod:`kvmlab.fake.chardevs` opens them at start.
"""

from __future__ import annotations

import os

from kvmlab.fake.cmdline.config import ChardevSpec
from kvmlab.fake.cmdline.qemuopts import parse_bool, parse_opts
from kvmlab.fake.errors import FakeError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from kvmlab.fake.cmdline.parse_state import OptionHandler, ParseState

__all__ = ["OPTIONS"]


def _chardev(p: ParseState, value: str, where: str) -> None:
    opts = parse_opts(value, where, "backend")
    backend = opts.get("backend", "")
    if backend in ("help", "?"):
        p.ask_help("chardev")
        return
    ident = opts.get("id")
    if not ident:
        raise FakeError("chardev: no id specified", where)
    if ident in p.named:
        raise FakeError(
            f"attempt to add duplicate property '{ident}' to object (type 'container')", where
        )
    spec = _make_chardev(p, ident, backend, opts, where, text=value)
    p.named[ident] = spec


def _make_chardev(
    p: ParseState, ident: str, backend: str, opts: dict[str, str], where: str, *, text: str
) -> ChardevSpec:
    if backend in ("vc", "null", "pty", "msmouse", "ringbuf", "memory"):
        backend = "null"  # nothing a test can see: output is dropped
    elif backend not in ("socket", "file", "stdio"):
        raise FakeError(f"chardev backend '{backend}' is not simulated by kvmlab-fake", where)
    spec = ChardevSpec(ident, backend, where, text)
    spec.logfile = os.path.abspath(opts["logfile"]) if opts.get("logfile") else None
    spec.logappend = parse_bool(opts, "logappend", False, where)
    if backend in ("socket", "file"):
        path = opts.get("path")
        if not path:
            if backend == "socket":
                raise FakeError("chardev: socket: no host given", where)
            raise FakeError("chardev: file: no filename given", where)
        spec.path = os.path.abspath(path)
    if backend == "socket":
        spec.server = parse_bool(opts, "server", False, where)
        spec.wait = parse_bool(opts, "wait", True, where)
        if not spec.server:
            raise FakeError("kvmlab-fake simulates server sockets only (server=on)", where)
    p.cfg.chardevs.append(spec)
    return spec


def _compat_chardev(p: ParseState, value: str, where: str, label: str) -> ChardevSpec | None:
    """The ``-serial``/``-monitor``/``-qmp`` shorthand: ``unix:PATH,server=on,wait=off``..."""
    ident = f"compat_{label}{len(p.cfg.chardevs)}"
    if value in ("none",):
        return None
    if value.startswith("chardev:"):
        spec = p.named.get(value[8:])
        if spec is None:
            return None
        return spec
    if value.startswith("unix:"):
        opts = parse_opts(value[5:], where, "path")
        return _make_chardev(p, ident, "socket", opts, where, text=value)
    if value.startswith("file:"):
        return _make_chardev(p, ident, "file", {"path": value[5:]}, where, text=value)
    if value in ("stdio", "null", "vc", "pty") or value.startswith("vc:"):
        return _make_chardev(p, ident, value.split(":", 1)[0], {}, where, text=value)
    raise FakeError(f"chardev '{value}' is not simulated by kvmlab-fake", where)


def _use(spec: ChardevSpec, frontend: str, where: str) -> None:
    if spec.frontend:
        raise FakeError(f"Device '{spec.id}' is in use", where)
    spec.frontend = frontend


def _serial(p: ParseState, value: str, where: str) -> None:
    spec = _compat_chardev(p, value, where, "serial")
    if spec is None:
        if value.startswith("chardev:"):
            raise FakeError(
                f"could not connect serial device to character backend '{value}'", where
            )
        return
    _use(spec, "serial", where)
    p.cfg.serials.append(spec)


def _monitor(p: ParseState, value: str, where: str) -> None:
    _add_monitor(p, value, where, "hmp")


def _qmp(p: ParseState, value: str, where: str) -> None:
    _add_monitor(p, value, where, "qmp")


def _qmp_pretty(p: ParseState, value: str, where: str) -> None:
    spec = _add_monitor(p, value, where, "qmp")
    if spec is not None:
        spec.pretty = True


def _add_monitor(p: ParseState, value: str, where: str, frontend: str) -> ChardevSpec | None:
    spec = _compat_chardev(p, value, where, frontend)
    if spec is None:
        if value.startswith("chardev:"):
            raise FakeError(f'chardev "{value[8:]}" not found', where)
        return None
    _use(spec, frontend, where)
    p.cfg.monitors.append(spec)
    return spec


def _mon(p: ParseState, value: str, where: str) -> None:
    opts = parse_opts(
        value, where, "chardev", frozenset({"chardev", "mode", "pretty", "id", "default"})
    )
    ident = opts.get("chardev", "")
    spec = p.named.get(ident)
    if spec is None:
        raise FakeError(f'chardev "{ident}" not found', where)
    mode = opts.get("mode", "readline")
    if mode not in ("readline", "control"):
        raise FakeError(f"Parameter 'mode' does not accept value '{mode}'", where)
    _use(spec, "qmp" if mode == "control" else "hmp", where)
    spec.pretty = parse_bool(opts, "pretty", False, where)
    p.cfg.monitors.append(spec)


OPTIONS: dict[str, OptionHandler] = {
    "chardev": _chardev,
    "serial": _serial,
    "monitor": _monitor,
    "qmp": _qmp,
    "qmp-pretty": _qmp_pretty,
    "mon": _mon,
}
