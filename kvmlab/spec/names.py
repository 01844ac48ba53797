"""The one rule for an instance name: a DNS label, because a name becomes file names.

A name reaches paths under the state directory (``pid/NAME``, ``conf/NAME.runtime``), QEMU's
``-name`` and the up-scripts, so the model, the lifecycle's look-ups and the command line all
apply this rule and no other. Standard library only: ``kvmlab list`` checks names without
importing pydantic.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["INSTANCE_NAME_PATTERN", "INSTANCE_NAME_RULE", "is_instance_name"]

#: 1-63 characters from ``a-z``, ``0-9`` and ``-``, not starting or ending with ``-``.
INSTANCE_NAME_PATTERN: Final = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
#: The rule in words, for error messages.
INSTANCE_NAME_RULE: Final = "1-63 characters from a-z 0-9 and '-', not starting or ending with '-'"

_INSTANCE_NAME: Final = re.compile(INSTANCE_NAME_PATTERN)


def is_instance_name(name: str) -> bool:
    """Whether ``name`` may name an instance (a DNS label)."""
    return _INSTANCE_NAME.fullmatch(name) is not None
