"""Instance files: :func:`load_instance` reads a ``.json``, ``.toml`` or ``.yaml`` file.

Reading a file is where untrusted bytes meet kvmlab, so the limits are here: size, text
encoding, YAML nesting and aliases, strings that are not valid Unicode. What the file
holds is then validated by :func:`~kvmlab.spec.instance.instance_from_data`, the same
check plain data gets, so a field error reads the same whichever way the instance came in.
Every failure is one :class:`InstanceError` line naming the file, fit for a CLI.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from kvmlab.errors import InstanceError
from kvmlab.spec.instance import Instance, find_unencodable, instance_from_data

__all__ = [
    "MAX_INSTANCE_FILE_BYTES",
    "MAX_YAML_DEPTH",
    "load_instance",
    "parse_instance_text",
]

#: Larger than any instance description; a bigger file is a mistake, not an instance.
MAX_INSTANCE_FILE_BYTES = 1024 * 1024


def load_instance(path: str | Path) -> Instance:
    """Read an instance from a ``.json``, ``.toml``, ``.yaml`` or ``.yml`` file.

    :raise InstanceError: unreadable, empty, too large, malformed or invalid; the
        message is one line naming the file and, when it is a field, the field.
    """
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix not in {".json", ".toml", ".yaml", ".yml"}:
        raise InstanceError(
            f"{file}: unknown file type {suffix or '(none)'!r}: use .json, .toml or .yaml"
        )
    try:
        with file.open("rb") as handle:
            raw = handle.read(MAX_INSTANCE_FILE_BYTES + 1)
    except OSError as err:
        raise InstanceError(f"{file}: cannot read: {err.strerror}") from err
    if len(raw) > MAX_INSTANCE_FILE_BYTES:
        raise InstanceError(f"{file}: larger than {MAX_INSTANCE_FILE_BYTES} bytes")
    if not raw.strip():
        raise InstanceError(f"{file}: the file is empty")
    data = parse_instance_text(raw, suffix, str(file))
    bad = find_unencodable(data)
    if bad is not None:
        raise InstanceError(
            f"{file}: {repr(bad)[1:-1]}: not valid Unicode text (a lone surrogate)",
            field=bad,
        )
    return instance_from_data(data, str(file))


def parse_instance_text(raw: bytes, suffix: str, source: str) -> object:
    """Decode JSON, TOML or YAML into plain data; YAML through the safe loader only."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InstanceError(f"{source}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    try:
        if suffix == ".json":
            return json.loads(text)
        if suffix == ".toml":
            return tomllib.loads(text)
        return _load_yaml(text)
    except (ValueError, RecursionError) as err:
        kind = suffix.lstrip(".").upper().replace("YML", "YAML")
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InstanceError(f"{source}: invalid {kind}: {detail}") from err


#: Deeper flow nesting than any instance needs; PyYAML slows down badly on deep nests.
MAX_YAML_DEPTH = 64


def _yaml_depth(text: str) -> int:
    depth = deepest = 0
    for char in text:
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth = max(depth - 1, 0)
    return deepest


def _load_yaml(text: str) -> object:
    import yaml  # noqa: PLC0415 - only YAML users pay for the import

    if _yaml_depth(text) > MAX_YAML_DEPTH:
        raise ValueError(f"nested deeper than {MAX_YAML_DEPTH} levels")

    try:
        # Plain data only: no tags (safe loader), and no aliases, so an alias bomb
        # cannot expand into gigabytes.
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                raise ValueError("YAML aliases (*name) are not allowed in instance files")
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(str(err).replace("\n", " ")) from err
