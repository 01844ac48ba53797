"""The QMP server: greeting, framing, QEMU's request checks, replies and events.

One :class:`QmpMonitor` serves each ``-qmp``/``-mon mode=control`` chardev.
It does what QEMU's monitor does before a command runs (capabilities
negotiation, member and argument checks, with QEMU's error classes and
wording) and then looks the command up in
:data:`kvmlab.fake.monitor.qmp_commands.COMMANDS`, so adding a command never touches
the protocol code. ``json`` is imported by the first request, not at start:
the greeting is formatted by hand.
"""

from __future__ import annotations

from kvmlab.fake.chardevs import Frontend
from kvmlab.fake.errors import QmpCommandError
from kvmlab.fake.lazy import json_module
from kvmlab.fake.monitor.qmp_commands import COMMANDS, version_info

TYPE_CHECKING = False
if TYPE_CHECKING:
    from kvmlab.fake.chardevs import Chardev
    from kvmlab.fake.machine_view import MachineView

__all__ = ["JsonSplitter", "QmpMonitor"]

#: The Python types of QMP's JSON types (a bool is no integer to QEMU's visitor).
_JSON_TYPES: dict[str, type | tuple[type, ...]] = {
    "string": str,
    "boolean": bool,
    "object": dict,
    "array": list,
}

#: Members a QMP request may have.
_QMP_MEMBERS = frozenset({"execute", "exec-oob", "arguments", "id", "control"})


class JsonSplitter:
    """Cut a QMP byte stream into JSON texts, newline or not (like QEMU's streamer)."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.depth = 0
        self.in_string = False
        self.escaped = False
        self.start = 0

    def feed(self, data: bytes) -> list[bytes]:
        """The JSON texts completed by ``data``; a partial one is kept for the next call."""
        out: list[bytes] = []
        for byte in data:
            buf = self.buffer
            if self.depth == 0 and not buf and byte in b" \t\r\n":
                continue
            buf.append(byte)
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif byte == 0x5C:  # backslash
                    self.escaped = True
                elif byte == 0x22:  # quote
                    self.in_string = False
            elif byte == 0x22:
                self.in_string = True
            elif byte in b"{[":
                self.depth += 1
            elif byte in b"}]":
                self.depth -= 1
            ended = byte in b"}] \t\r\n" or self.depth < 0
            if self.depth <= 0 and not self.in_string and ended:
                out.append(bytes(buf).strip())
                self.buffer = bytearray()
                self.depth = 0
        return out


class QmpMonitor(Frontend):
    """QMP on one chardev: its client's negotiation state and request stream.

    :param machine: the VM the commands act on.
    :param dev: the chardev it answers on.
    """

    def __init__(self, machine: MachineView, dev: Chardev) -> None:
        self.machine = machine
        self.dev = dev
        self.negotiated = False
        self.splitter = JsonSplitter()

    def connected(self) -> None:
        self.negotiated = False
        self.splitter = JsonSplitter()
        self.dev.send(self._greeting())

    def disconnected(self) -> None:
        self.negotiated = False

    def received(self, data: bytes) -> None:
        for text in self.splitter.feed(data):
            self._message(text)

    def send_event(self, event: dict[str, object]) -> None:
        """Send an event to the client, once it has negotiated capabilities."""
        if self.dev.client is not None and self.negotiated:
            self._send_json(event)

    def _greeting(self) -> bytes:
        """The QMP greeting, formatted without ``json`` so that it is not imported yet."""
        profile = self.machine.profile
        if self.dev.spec.pretty:
            greeting = {"QMP": {"version": version_info(profile), "capabilities": []}}
            pretty_text: str = json_module().dumps(greeting, indent=4)
            return (pretty_text + "\r\n").encode()
        major, minor, micro = profile.version
        qemu = f'{{"major": {major}, "minor": {minor}, "micro": {micro}}}'
        text = f'{{"QMP": {{"version": {{"qemu": {qemu}, "package": "kvmlab-fake"}}, '
        return (text + '"capabilities": []}}\r\n').encode()

    def _send_json(self, obj: object) -> None:
        indent = 4 if self.dev.spec.pretty else None
        self.dev.send((json_module().dumps(obj, indent=indent) + "\r\n").encode())

    def _error(self, ident: object, klass: str, desc: str) -> None:
        response: dict[str, object] = {"error": {"class": klass, "desc": desc}}
        if ident is not None:
            response["id"] = ident
        self._send_json(response)

    def _message(self, text: bytes) -> None:
        """Check one QMP request the way QEMU's dispatcher does, run it, answer."""
        try:
            message = json_module().loads(text)
        except ValueError as err:
            self._error(None, "GenericError", f"JSON parse error, {err}")
            return
        if not isinstance(message, dict):
            self._error(None, "GenericError", "QMP input must be a JSON object")
            return
        ident = message.get("id")
        unexpected = [key for key in message if key not in _QMP_MEMBERS]
        command = message.get("execute", message.get("exec-oob"))
        arguments = message.get("arguments", {})
        problem = ""
        if unexpected:
            problem = f"QMP input member '{unexpected[0]}' is unexpected"
        elif command is None:
            problem = "QMP input lacks member 'execute'"
        elif not isinstance(command, str):
            problem = "QMP input member 'execute' must be a string"
        elif not isinstance(arguments, dict):
            problem = "QMP input member 'arguments' must be an object"
        if problem or not isinstance(command, str) or not isinstance(arguments, dict):
            self._error(ident, "GenericError", problem)
            return
        self.machine.log("qmp", command=command, arguments=arguments)
        entry = COMMANDS.get(command)
        if entry is None:
            self._error(ident, "CommandNotFound", f"The command {command} has not been found")
            return
        if not self.negotiated and command != "qmp_capabilities":
            desc = "Expecting capabilities negotiation with 'qmp_capabilities'"
            self._error(ident, "CommandNotFound", desc)
            return
        if self.negotiated and command == "qmp_capabilities":
            desc = "Capabilities negotiation is already complete, command ignored"
            self._error(ident, "CommandNotFound", desc)
            return
        for key in arguments:
            if key not in entry.allowed:
                self._error(ident, "GenericError", f"Parameter '{key}' is unexpected")
                return
        for key in entry.required:
            if key not in arguments:
                self._error(ident, "GenericError", f"Parameter '{key}' is missing")
                return
        for key, kind in entry.types.items():
            if key in arguments and not isinstance(arguments[key], _JSON_TYPES[kind]):
                desc = f"Invalid parameter type for '{key}', expected: {kind}"
                self._error(ident, "GenericError", desc)
                return
        if command == "qmp_capabilities":
            self.negotiated = True
        self.machine.scm_fds = self.dev.received_fds  # what getfd takes (QEMU: per monitor)
        try:
            reply = entry.run(self.machine, arguments)
        except QmpCommandError as err:
            self._error(ident, err.klass, str(err))
            return
        response: dict[str, object] = {"return": reply}
        if ident is not None:
            response["id"] = ident
        self._send_json(response)
        if entry.after is not None:
            # Work that ends or resets the machine runs once the reply is sent.
            entry.after(self.machine)
