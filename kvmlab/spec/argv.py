"""Reading a QEMU command line: which options take no value, and what follows an option.

Several layers look into an argv they did not build: the runtime reads a legacy
file's ``-name``, the inventory reads ``-m``, ``-smp`` and ``-name`` from saved
runtimes without pydantic (fast ``kvmlab list``), the semantic diff and the notebook
display split a whole command line into options. They must agree on one thing QEMU
decides, which options are flags, so that table lives here, below all of them. The
module imports nothing, so every layer may use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

__all__ = ["FLAG_OPTIONS", "option_value"]

#: Options that take no value (QEMU's ``HAS_ARG``-less options that kvmlab or Ganeti emit,
#: plus common ones), so the next word is an option of its own.
FLAG_OPTIONS: Final = frozenset(
    {
        "-S",
        "-daemonize",
        "-no-acpi",
        "-no-reboot",
        "-no-shutdown",
        "-no-hpet",
        "-no-kvm",
        "-enable-kvm",
        "-nographic",
        "-nodefaults",
        "-no-user-config",
        "-snapshot",
        "-mem-prealloc",
        "-localtime",
        "-usb",
        "-full-screen",
        "-no-fd-bootchk",
        "-no-quit",
        "-s",
        "-win2k-hack",
        "-alt-grab",
        "-ctrl-grab",
        "-enable-fips",
        "-only-migratable",
        "-preconfig",
        "-semihosting",
        "-no-frame",
        "-qmp-pretty",
    }
)


def option_value(argv: Sequence[str], option: str) -> str | None:
    """The word following the first ``option`` in ``argv``, or ``None``."""
    for index in range(len(argv) - 1):
        if argv[index] == option:
            return argv[index + 1]
    return None
