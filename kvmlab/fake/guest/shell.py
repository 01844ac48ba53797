"""A tiny busybox ``sh`` for the fake guest's command channel, over a simulated file tree.

The file tree is computed from the machine at each command, so it follows what the
machine simulates (a NIC added to ``Machine.devices`` shows up at once):

- ``/sys/class/net/{lo,eth0,...}/address`` (``lo`` is ``00:00:00:00:00:00``);
- ``/sys/block/vdX/size`` (512-byte sectors) for each virtio disk (``if=virtio``,
  ``-device virtio-blk-pci`` or hotplugged), ``/proc/partitions`` (major 254, as
  virtio_blk gets on the test guest's kernel), and for a disk at a PCI slot
  ``/sys/bus/pci/devices/0000:00:SS.0/virtioN/block/vdX/size`` (behind a PCIe root
  port at ``PP.F``: ``0000:BB:00.0`` and ``0000:00:PP.F/0000:BB:00.0``, as for NICs);
- ``/proc/meminfo`` (``MemTotal`` equals the ``MEM`` fact), ``/proc/cpuinfo``-free;
- ``/proc/sys/kernel/random/boot_id``, new at each boot;
- files written with ``>`` or ``>>`` anywhere outside ``/proc``, ``/sys`` and ``/dev``
  (lost at a reset, like the initramfs).

Commands: ``:``, ``true``, ``false``, ``echo [-n]``, ``cat``, ``ls``, ``rm``, ``sleep``,
``exit``, ``sh -c``; anything else is ``sh: NAME: not found``, status 127. The
syntax: words with ``'...'``, ``"..."`` and ``\\`` quoting, unquoted ``*``/``?`` globs,
``;``, ``&&``, ``||``, ``>``, ``>>``, ``2>&1``, ``2>/dev/null``. Pipes, ``$``
expansions, backquotes, ``&`` and ``<`` answer ``sh: kvmlab-fake: unsupported shell
syntax`` with status 2: a test that needs them needs the real guest.
"""

from __future__ import annotations

import os
from fnmatch import fnmatchcase

from kvmlab.fake.cmdline.pci import device_dirs

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Generator

    from kvmlab.fake.machine_view import MachineView

__all__ = ["GuestShell"]

_TOP_DIRS = ("bin", "dev", "etc", "lib", "proc", "root", "run", "sbin", "sys", "tmp", "usr", "var")
_READ_ONLY = ("/proc", "/sys", "/dev")
_VIRTIO_BLK_MAJOR = 254
_OPERATORS = (";", "&&", "||", ">>", ">", "2>&1", "2>")


class _Unsupported(Exception):  # noqa: N818 - control flow, never shown
    pass


class _Exit(Exception):  # noqa: N818 - control flow: the "exit" builtin
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _make_dirs(tree: dict[str, str | None], path: str) -> None:
    """``path`` and every directory above it, as directories of ``tree``."""
    while path not in tree:
        tree[path] = None
        path = path.rsplit("/", 1)[0] or "/"


def _boot_id() -> str:
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def tokenize(line: str) -> list[tuple[str, str, bool]]:
    """``(kind, text, globbable)`` tokens: kind ``word`` or ``op``.

    :raise _Unsupported: syntax the fake does not simulate (the character in the message).
    """
    tokens: list[tuple[str, str, bool]] = []
    word: list[str] = []
    started = glob = False
    i, n = 0, len(line)

    def flush() -> None:
        nonlocal started, glob
        if started:
            tokens.append(("word", "".join(word), glob))
        word.clear()
        started = glob = False

    while i < n:
        c = line[i]
        if c in " \t":
            flush()
            i += 1
        elif c == "'":
            end = line.find("'", i + 1)
            if end < 0:
                raise _Unsupported("unterminated quoted string")
            word.append(line[i + 1 : end])
            started = True
            i = end + 1
        elif c == '"':
            i += 1
            while i < n and line[i] != '"':
                if line[i] in "$`":
                    raise _Unsupported(line[i])
                if line[i] == "\\" and i + 1 < n and line[i + 1] in '"\\$`':
                    i += 1
                word.append(line[i])
                i += 1
            if i >= n:
                raise _Unsupported("unterminated quoted string")
            started = True
            i += 1
        elif c == "\\" and i + 1 < n:
            word.append(line[i + 1])
            started = True
            i += 2
        elif c in "$`|&<>;" or (c == "2" and not started and line.startswith("2>", i)):
            for op in _OPERATORS:
                if line.startswith(op, i) and (op[0] != "2" or not started):
                    flush()
                    tokens.append(("op", op, False))
                    i += len(op)
                    break
            else:
                raise _Unsupported(c)
        else:
            word.append(c)
            started = True
            glob = glob or c in "*?["
            i += 1
    flush()
    return tokens


class GuestShell:
    """The guest's shell state for one boot: written files and the boot id."""

    def __init__(self, machine: MachineView) -> None:
        self.machine = machine
        self.files: dict[str, str] = {}
        self.boot_id = _boot_id()
        self.output: list[str] = []

    def take_output(self) -> str:
        text = "".join(self.output)
        self.output.clear()
        return text

    # -- the file tree

    def tree(self) -> dict[str, str | None]:
        """Every path: its text for a file, ``None`` for a directory."""
        cfg = self.machine.cfg
        tree: dict[str, str | None] = {"/": None}
        for top in _TOP_DIRS:
            tree["/" + top] = None
        for d in ("/sys/class", "/sys/class/net", "/sys/block", "/proc/sys", "/proc/sys/kernel"):
            tree[d] = None
        tree["/proc/sys/kernel/random"] = None
        tree["/proc/sys/kernel/random/boot_id"] = self.boot_id + "\n"
        mem = cfg.guest_mem_kb
        tree["/proc/meminfo"] = "".join(
            f"{label:<16}{value:>8} kB\n"
            for label, value in (
                ("MemTotal:", mem),
                ("MemFree:", mem * 9 // 10),
                ("MemAvailable:", mem * 9 // 10),
                ("Buffers:", 0),
                ("Cached:", mem // 20),
            )
        )
        nets = [("lo", "00:00:00:00:00:00")]
        nets += [(f"eth{i}", nic.mac) for i, nic in enumerate(self.machine.nics)]
        for name, mac in nets:
            tree[f"/sys/class/net/{name}"] = None
            tree[f"/sys/class/net/{name}/address"] = mac + "\n"
        ports = cfg.root_ports
        for index, nic in enumerate(self.machine.nics):
            if nic.slot is None:
                continue
            # The PCI function, as sysfs shows it: the net device under it.
            for pci in device_dirs(nic, ports):
                under = f"{pci}/virtio{index}" if nic.model.startswith("virtio") else pci
                _make_dirs(tree, under)
                tree[f"{under}/net"] = None
                tree[f"{under}/net/eth{index}"] = None
                tree[f"{under}/net/eth{index}/address"] = nic.mac + "\n"
        partitions = "major minor  #blocks  name\n\n"
        for disk in sorted(self.machine.disks, key=lambda disk: disk.index):
            name = "vd" + "abcdefghijklmnopqrstuvwxyz"[disk.index % 26]
            try:
                size = os.stat(disk.path).st_size
            except OSError:
                size = 0
            tree[f"/sys/block/{name}"] = None
            tree[f"/sys/block/{name}/size"] = f"{size // 512}\n"
            partitions += (
                f"{_VIRTIO_BLK_MAJOR:4d}  {disk.index * 16:7d} {size // 1024:10d} {name}\n"
            )
            # The PCI function, as sysfs shows it: the block device under it.
            for pci in device_dirs(disk, ports) if disk.slot is not None else ():
                under = f"{pci}/virtio{len(self.machine.nics) + disk.index}"
                _make_dirs(tree, under)
                tree[f"{under}/block"] = None
                tree[f"{under}/block/{name}"] = None  # the same device as /sys/block/vdX
                tree[f"{under}/block/{name}/size"] = f"{size // 512}\n"
        tree["/proc/partitions"] = partitions
        for path, text in self.files.items():
            tree[path] = text
        return tree

    @staticmethod
    def _children(tree: dict[str, str | None], path: str) -> list[str]:
        prefix = path.rstrip("/") + "/"
        return sorted(
            {p[len(prefix) :] for p in tree if p.startswith(prefix) and "/" not in p[len(prefix) :]}
        )

    def _glob(self, tree: dict[str, str | None], pattern: str) -> list[str]:
        parts = pattern.split("/")
        found = [
            path
            for path in tree
            if path != "/"
            and len(path.split("/")) == len(parts)
            and all(fnmatchcase(a, b) for a, b in zip(path.split("/"), parts, strict=True))
        ]
        return sorted(found) or [pattern]

    # -- running

    def run(self, line: str) -> Generator[float, None, int]:
        """Run a command line; yields seconds to sleep; returns the exit status."""
        try:
            tokens = tokenize(line)
        except _Unsupported as err:
            self.output.append(f"sh: kvmlab-fake: unsupported shell syntax {str(err)!r}\n")
            return 2
        try:
            return (yield from self._sequence(tokens))
        except _Exit as stop:
            return stop.status

    def _sequence(self, tokens: list[tuple[str, str, bool]]) -> Generator[float, None, int]:
        status = 0
        skip = False
        command: list[tuple[str, str, bool]] = []
        for token in [*tokens, ("op", ";", False)]:
            kind, text, _ = token
            if kind == "op" and text in (";", "&&", "||"):
                if command and not skip:
                    status = yield from self._simple(command)
                elif not command and text != ";":
                    self.output.append(f'sh: syntax error: unexpected "{text}"\n')
                    return 2
                command = []
                skip = (text == "&&" and status != 0) or (text == "||" and status == 0)
            else:
                command.append(token)
        return status

    def _simple(self, tokens: list[tuple[str, str, bool]]) -> Generator[float, None, int]:
        tree = self.tree()
        words: list[str] = []
        stdout: tuple[str, bool] | None = None  # (path, append)
        stderr = "tty"
        it = iter(tokens)
        for kind, text, glob in it:
            if kind == "op":
                if text == "2>&1":
                    stderr = "stdout"
                    continue
                target = next(it, None)
                if target is None or target[0] != "word":
                    self.output.append("sh: syntax error: unexpected newline\n")
                    return 2
                if text == "2>":
                    stderr = "null" if target[1] == "/dev/null" else "tty"
                else:
                    stdout = (target[1], text == ">>")
                continue
            words += self._glob(tree, text) if glob else [text]
        out: list[tuple[int, str]] = []
        status = 0
        if stdout is not None:
            path = stdout[0]
            parent = os.path.dirname(path.rstrip("/")) or "/"
            if path.startswith(_READ_ONLY) or tree.get(path, "") is None:
                self.output.append(f"sh: can't create {path}: Permission denied\n")
                return 1
            if parent not in tree or tree[parent] is not None:
                self.output.append(f"sh: can't create {path}: nonexistent directory\n")
                return 1
            if not stdout[1] or path not in self.files:
                self.files[path] = ""
        if words:
            status = yield from self._builtin(words, tree, out)
        for fd, text in out:
            if fd == 1 and stdout is not None:
                self.files[stdout[0]] += text
            elif fd == 2 and stderr == "null":
                continue
            elif fd == 2 and stderr == "stdout" and stdout is not None:
                self.files[stdout[0]] += text
            else:
                self.output.append(text)
        return status

    def _builtin(
        self, words: list[str], tree: dict[str, str | None], out: list[tuple[int, str]]
    ) -> Generator[float, None, int]:
        name, args = words[0], words[1:]
        if name in (":", "true"):
            return 0
        if name == "false":
            return 1
        if name == "echo":
            newline = "\n"
            if args[:1] == ["-n"]:
                args, newline = args[1:], ""
            out.append((1, " ".join(args) + newline))
            return 0
        if name == "cat":
            status = 0
            for path in args:
                if path not in tree:
                    out.append((2, f"cat: can't open '{path}': No such file or directory\n"))
                    status = 1
                elif tree[path] is None:
                    out.append((2, "cat: read error: Is a directory\n"))
                    status = 1
                else:
                    out.append((1, tree[path] or ""))
            return status
        if name == "ls":
            return self._ls([a for a in args if a != "-1"], tree, out)
        if name == "rm":
            status = 0
            for path in (a for a in args if a != "-f"):
                if self.files.pop(path, None) is None and "-f" not in args:
                    out.append((2, f"rm: can't remove '{path}': No such file or directory\n"))
                    status = 1
            return status
        if name == "sleep":
            try:
                seconds = float(args[0]) if len(args) == 1 else -1.0
            except ValueError:
                seconds = -1.0
            if seconds < 0:
                out.append((2, f"sleep: invalid number '{' '.join(args)}'\n"))
                return 1
            yield seconds
            return 0
        if name == "exit":
            raise _Exit(int(args[0]) & 255 if args and args[0].isdigit() else 0)
        if name == "sh" and args[:1] == ["-c"] and len(args) >= 2:
            self.output.extend(text for _, text in out)
            out.clear()
            return (yield from self.run(args[1]))
        out.append((2, f"sh: {name}: not found\n"))
        return 127

    def _ls(self, paths: list[str], tree: dict[str, str | None], out: list[tuple[int, str]]) -> int:
        status = 0
        for path in paths or ["."]:
            where = "/" if path == "." else path
            if where not in tree:
                out.append((2, f"ls: {path}: No such file or directory\n"))
                status = 1
            elif tree[where] is not None:
                out.append((1, path + "\n"))
            else:
                header = f"{path}:\n" if len(paths) > 1 else ""
                out.append((1, header + "".join(c + "\n" for c in self._children(tree, where))))
        return status
