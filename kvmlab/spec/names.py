"""The rules for an instance name (a DNS label) and a snapshot tag: both become file names.

A name reaches paths under the state directory (``pid/NAME``, ``conf/NAME.runtime``), QEMU's
``-name`` and the up-scripts, so the model, the lifecycle's look-ups and the command line all
apply this rule and no other. Standard library only: ``kvmlab list`` checks names without
importing pydantic.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = [
    "INSTANCE_NAME_PATTERN",
    "INSTANCE_NAME_RULE",
    "SNAPSHOT_TAG_PATTERN",
    "SNAPSHOT_TAG_RULE",
    "is_instance_name",
    "is_snapshot_tag",
]

#: 1-63 characters from ``a-z``, ``0-9`` and ``-``, not starting or ending with ``-``.
INSTANCE_NAME_PATTERN: Final = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
#: The rule in words, for error messages.
INSTANCE_NAME_RULE: Final = "1-63 characters from a-z 0-9 and '-', not starting or ending with '-'"

_INSTANCE_NAME: Final = re.compile(INSTANCE_NAME_PATTERN)


def is_instance_name(name: str) -> bool:
    """Whether ``name`` may name an instance (a DNS label)."""
    return _INSTANCE_NAME.fullmatch(name) is not None


#: 1-63 characters from ``A-Z a-z 0-9 . _ -``, starting with a letter or digit (and no ``..``,
#: checked apart): a tag is a file name under ``snap/NAME/``, never a path or a shell word.
SNAPSHOT_TAG_PATTERN: Final = r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}"
#: The tag rule in words, for error messages.
SNAPSHOT_TAG_RULE: Final = (
    "1-63 characters from A-Z a-z 0-9 '.' '_' '-', starting with a letter or digit, no '..'"
)

_SNAPSHOT_TAG: Final = re.compile(SNAPSHOT_TAG_PATTERN)


def is_snapshot_tag(tag: str) -> bool:
    """Whether ``tag`` may name a snapshot (``snap/NAME/TAG.state``)."""
    return _SNAPSHOT_TAG.fullmatch(tag) is not None and ".." not in tag
