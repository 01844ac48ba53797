"""Standard-library modules the fake imports only when it first needs them.

Start time is most of what a fake is for: ``json`` (with the ``re`` it pulls
in) is the biggest import left, and a VM that nobody sends a QMP command and
that writes no event log never needs it. Every user goes through
:func:`json_module`, so the deferral is one rule in one place, and the
start-up test can check ``json`` is not loaded by argv parsing.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType

__all__ = ["json_module"]


def json_module() -> ModuleType:
    """``json``, imported on first use."""
    import json  # noqa: PLC0415 - deferred for start-up time, see the module docstring

    return json
