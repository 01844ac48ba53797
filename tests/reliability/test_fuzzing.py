"""Fuzzing the three parsers of untrusted input, and replaying the corpus of what it found.

- ``KVMRuntime.from_json`` (a saved runtime, current or Ganeti's legacy list),
- ``load_instance`` (a ``.json``/``.toml``/``.yaml``/``.yml`` file),
- ``QemuCapabilities.from_help`` (the output of a binary's ``-help``),

with arbitrary bytes and text and with mutations of valid inputs (every golden case in
``fixtures/cases``, runtimes generated from them, Ganeti-style legacy lists, the recorded
help texts in ``fixtures/profiles``). Each may only raise its documented error
(``RuntimeFormatError``, ``InstanceError``, ``CapabilityError``: all ``KvmlabError``),
never another exception, never hang: the ``kvmlab-fuzz`` profile gives each example a
2 s deadline. What loads must also survive ``to_json`` and load back equal.

Examples are derandomized, so the suite is deterministic; for a longer random session::

    KVMLAB_FUZZ_EXAMPLES=5000 KVMLAB_FUZZ_RANDOM=1 pytest tests/reliability/test_fuzzing.py

Inputs worth keeping live in ``fixtures/fuzz/{runtime,instance,help}/``;
``test_corpus_file`` replays every one of them (known bugs as strict xfails).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
from collections.abc import Callable, Iterator
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmlab.errors import CapabilityError, InstanceError, KvmlabError, RuntimeFormatError
from kvmlab.runtime.generator import generate_runtime
from kvmlab.runtime.saved import KVMRuntime
from kvmlab.spec.capabilities import (
    FACTS_FILE,
    QemuCapabilities,
    facts_json,
    load_profile,
    parse_facts,
)
from kvmlab.spec.files import load_instance
from kvmlab.spec.layout import StateLayout

PROJECT = Path(__file__).resolve().parents[2]
CASES = PROJECT / "fixtures" / "cases"
PROFILES = PROJECT / "fixtures" / "profiles"
CORPUS = PROJECT / "fixtures" / "fuzz"
LEGACY = PROJECT / "fixtures" / "legacy-runtimes"
GANETI = PROJECT.parent / "shared" / "fixtures" / "ganeti"
SUFFIXES = (".json", ".toml", ".yaml", ".yml")
DEADLINE_S = 2.0

settings.register_profile(
    "kvmlab-fuzz",
    deadline=timedelta(seconds=DEADLINE_S),
    max_examples=int(os.environ.get("KVMLAB_FUZZ_EXAMPLES", "120")),
    derandomize=not os.environ.get("KVMLAB_FUZZ_RANDOM"),
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FUZZ = settings.get_profile("kvmlab-fuzz")

# -- seeds -------------------------------------------------------------------------------


@cache
def instance_seeds() -> list[tuple[str, bytes]]:
    return sorted((path.suffix, path.read_bytes()) for path in CASES.iterdir())


@cache
def runtime_seeds() -> list[bytes]:
    layout = StateLayout(Path("/srv/kvmlab"))
    seeds: list[bytes] = []
    for path in sorted(CASES.iterdir()):
        for profile in ("qemu-7.2", "qemu-10.0"):
            try:
                runtime = generate_runtime(
                    load_instance(path), load_profile(profile), layout=layout
                )
            except KvmlabError:
                continue
            seeds.append(runtime.to_json().encode())
            seeds.append(legacy_of(runtime).encode())
    legacy = sorted(LEGACY.glob("*.json"))
    assert legacy, f"no legacy runtime files in {LEGACY}"
    seeds += [path.read_bytes() for path in legacy]
    return seeds


def legacy_of(runtime: KVMRuntime) -> str:
    """The runtime as Ganeti wrote it: ``[cmd, nics, hvparams, disks]``."""
    nics = [
        {"mac": n.mac, "nicparams": {"mode": str(n.mode), "link": n.link}} for n in runtime.nics
    ]
    disks = [[{"mode": str(d.mode)}, d.path] for d in runtime.disks]
    return json.dumps([list(runtime.argv), nics, runtime.hvparams.model_dump(mode="json"), disks])


@cache
def help_seeds() -> list[str]:
    texts = [p.read_text() for p in sorted(PROFILES.glob("*/help.txt"))]
    if GANETI.is_dir():
        texts += [p.read_text() for p in sorted(GANETI.glob("*_help*.txt"))]
    return texts


@cache
def side_seeds(name: str) -> list[str]:
    return [p.read_text() for p in sorted(PROFILES.glob(f"*/{name}.txt"))]


# -- mutations ---------------------------------------------------------------------------

TOKENS = [
    b'"',
    b"'",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"=",
    b"\n",
    b"\r\n",
    b"\t",
    b" ",
    b"\\",
    b"null",
    b"true",
    b"false",
    b"NaN",
    b"Infinity",
    b"-1",
    b"0",
    b"1e999",
    b"9" * 40,
    b'"format"',
    b'"name"',
    b'"argv"',
    b'"nics"',
    b'"hvparams"',
    b'"disks"',
    b'"mac"',
    b"\\u0000",
    b"\\n",
    b"\x00",
    b"\xff",
    b"\xc3\x28",
    b"\xef\xbb\xbf",
    b"---",
    b"&a",
    b"*a",
    b"!!",
    b"!!binary",
    b"? ",
    b"- ",
    b"[[",
    b"]]",
    b"'''",
    b'"""',
    b"#",
    b"%YAML 1.1",
    b"-name",
    b"-netdev",
    b"vm1",
    b"52:54:00:00:00:01",
    b"/dev/vda",
    b"..",
    b"\xf0\x9f\x92\xa5",
]


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A seed with 1-6 byte-level edits: flips, deletions, insertions of syntax tokens,
    duplicated or swapped slices, truncation."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 6))):
        size = len(data)
        at = draw(st.integers(0, size))
        kind = draw(st.sampled_from(["flip", "delete", "token", "duplicate", "truncate", "swap"]))
        if kind == "flip" and size:
            at = min(at, size - 1)
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        elif kind == "token":
            data[at:at] = draw(st.sampled_from(TOKENS))
        elif kind == "duplicate":
            end = min(size, at + draw(st.integers(1, 256)))
            data[at:at] = data[at:end] * draw(st.integers(1, 4))
        elif kind == "truncate":
            del data[at:]
        elif kind == "swap" and size > 2:
            other = draw(st.integers(0, size - 1))
            a, b = sorted((at, other))
            data[a:b] = bytes(reversed(data[a:b]))
    return bytes(data)


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def json_tree_mutated(draw: st.DrawFn, seeds: list[bytes]) -> str:
    """A seed parsed as JSON with one node replaced, deleted or added at random."""
    root: list[Any] = [json.loads(draw(st.sampled_from(seeds)))]
    holder: Any = root
    key: Any = 0
    for _ in range(draw(st.integers(0, 6))):
        node = holder[key]
        if isinstance(node, dict) and node:
            holder, key = node, draw(st.sampled_from(sorted(node)))
        elif isinstance(node, list) and node:
            holder, key = node, draw(st.integers(0, len(node) - 1))
        else:
            break
    node = holder[key]
    action = draw(st.sampled_from(["replace", "delete", "add"]))
    if action == "delete" and holder is not root:
        del holder[key]
    elif action == "add" and isinstance(node, dict):
        node[draw(st.text(max_size=12))] = draw(JSON_VALUES)
    elif action == "add" and isinstance(node, list):
        node.insert(draw(st.integers(0, len(node))), draw(JSON_VALUES))
    else:
        holder[key] = draw(JSON_VALUES)
    return json.dumps(root[0])


# -- the properties ----------------------------------------------------------------------


def check_runtime(data: bytes | str) -> None:
    try:
        runtime = KVMRuntime.from_json(data)
    except RuntimeFormatError as err:
        assert str(err)
        return
    assert KVMRuntime.from_json(runtime.to_json()) == runtime


@contextlib.contextmanager
def temp_file(suffix: str, data: bytes) -> Iterator[Path]:
    fd, name = tempfile.mkstemp(prefix="kvmlab-fuzz-", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        yield Path(name)
    finally:
        os.unlink(name)


def check_instance_file(path: Path) -> None:
    try:
        instance = load_instance(path)
    except InstanceError as err:
        assert str(err)
        return
    # What loads must be usable: generated, saved and read back.
    try:
        runtime = generate_runtime(instance, layout=StateLayout(Path("/srv/kvmlab")))
    except KvmlabError:
        return
    assert KVMRuntime.from_json(runtime.to_json()) == runtime


def check_instance(suffix: str, data: bytes) -> None:
    with temp_file(suffix, data) as path:
        check_instance_file(path)


def check_help(text: str, machine: str | None = None, device: str | None = None) -> None:
    try:
        caps = QemuCapabilities.from_help(text, machine, device)
    except CapabilityError as err:
        assert str(err)
        return
    assert len(caps.version) == 3 and all(isinstance(v, int) for v in caps.version)


@cache
def facts_seeds() -> list[bytes]:
    seeds = [path.read_bytes() for path in sorted(PROFILES.glob(f"*/{FACTS_FILE}"))]
    assert seeds, f"no facts profiles under {PROFILES}"
    seeds.append(facts_json(load_profile("qemu-10.0"), {"tool": "tests"}).encode())
    return seeds


def check_facts(data: str | bytes) -> None:
    """A facts profile either loads into valid capabilities or is refused in one line."""
    try:
        caps = parse_facts(data, "fuzzed.json")
    except CapabilityError as err:
        assert str(err) and "\n" not in str(err)
        return
    assert len(caps.version) == 3 and all(type(v) is int for v in caps.version)
    assert QemuCapabilities.from_dict(caps.to_dict()) == caps


@FUZZ
@given(st.data())
def test_parse_facts_on_mutated_profiles(data: st.DataObject) -> None:
    seeds = facts_seeds()
    blob = data.draw(mutated(seeds) | json_tree_mutated(seeds))
    check_facts(blob)


@FUZZ
@given(st.binary(max_size=2048) | st.text(max_size=1024))
def test_from_json_on_arbitrary_input(data: bytes | str) -> None:
    check_runtime(data)


@FUZZ
@given(st.data())
def test_from_json_on_mutated_runtimes(data: st.DataObject) -> None:
    seeds = runtime_seeds()
    blob = data.draw(mutated(seeds) | json_tree_mutated(seeds))
    check_runtime(blob)
    check_runtime(blob.decode("utf-8", "replace") if isinstance(blob, bytes) else blob.encode())


@FUZZ
@given(st.sampled_from(SUFFIXES), st.binary(max_size=2048))
def test_load_instance_on_arbitrary_bytes(suffix: str, data: bytes) -> None:
    check_instance(suffix, data)


@FUZZ
@given(st.sampled_from(SUFFIXES), st.text(max_size=512))
def test_load_instance_on_arbitrary_text(suffix: str, text: str) -> None:
    check_instance(suffix, text.encode())


@FUZZ
@given(st.data())
def test_load_instance_on_mutated_cases(data: st.DataObject) -> None:
    suffix, seed = data.draw(st.sampled_from(instance_seeds()))
    blob = data.draw(mutated([seed]))
    # Each mutant is read as its own format, and as another one.
    check_instance(suffix, blob)
    check_instance(data.draw(st.sampled_from(SUFFIXES)), blob)


@FUZZ
@given(st.data())
def test_load_instance_on_mutated_json_trees(data: st.DataObject) -> None:
    seeds = [seed for suffix, seed in instance_seeds() if suffix == ".json"]
    check_instance(".json", data.draw(json_tree_mutated(seeds)).encode())


@FUZZ
@given(st.text(max_size=2048), st.none() | st.text(max_size=512), st.none() | st.text(max_size=512))
def test_from_help_on_arbitrary_text(text: str, machine: str | None, device: str | None) -> None:
    check_help(text, machine, device)


@FUZZ
@given(st.data())
def test_from_help_on_mutated_help_texts(data: st.DataObject) -> None:
    seed = data.draw(st.sampled_from(help_seeds())).encode()
    text = data.draw(mutated([seed])).decode("utf-8", "replace")
    lines = text.splitlines()
    # mypy infers draw() from the permutation below; the draw is a bool.
    if lines and data.draw(st.booleans()):  # type: ignore[arg-type]  # drop, repeat, reorder
        lines = data.draw(st.permutations(lines)) if len(lines) < 40 else lines[::-1]
        text = "\n".join(lines)
    machine = data.draw(st.none() | st.sampled_from(side_seeds("machine")))
    device = data.draw(st.none() | st.sampled_from(side_seeds("device")))
    if machine is not None and data.draw(st.booleans()):
        machine = data.draw(mutated([machine.encode()])).decode("utf-8", "replace")
    if device is not None and data.draw(st.booleans()):
        device = data.draw(mutated([device.encode()])).decode("utf-8", "replace")
    check_help(text, machine, device)


def test_the_seeds_are_valid() -> None:
    """Mutations start from inputs that load: otherwise the fuzzing starts nowhere."""
    assert len(runtime_seeds()) > 100
    for blob in runtime_seeds()[:20]:
        KVMRuntime.from_json(blob)
    for path in sorted(LEGACY.glob("*.json")):
        KVMRuntime.from_json(path.read_bytes())
    for blob in facts_seeds():
        parse_facts(blob)
    assert len(instance_seeds()) > 60 and len(help_seeds()) >= 2
    for text in help_seeds():
        QemuCapabilities.from_help(text)


# -- the corpus --------------------------------------------------------------------------

#: Corpus files that still trigger a bug: file -> reason (strict xfail). Empty: every
#: bug the corpus found was fixed; add an entry when a new input finds one.
KNOWN_BUGS: dict[str, str] = {}


def corpus_files() -> list[Any]:
    params = []
    for path in sorted(CORPUS.glob("*/*")):
        if path.name == "README.md":
            continue
        rel = f"{path.parent.name}/{path.name}"
        marks = (
            [pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[rel])] if rel in KNOWN_BUGS else []
        )
        params.append(pytest.param(path, id=rel, marks=marks))
    return params


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    def expired(signum: int, frame: object) -> None:
        raise TimeoutError(f"still running after {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def one_line_runtime(data: bytes) -> None:
    """Errors fit the CLI's one line; what loads can be executed (no NUL in an argv word)."""
    try:
        runtime = KVMRuntime.from_json(data)
    except RuntimeFormatError as err:
        assert "\n" not in str(err), str(err)
        return
    assert not any("\0" in word for word in runtime.argv), runtime.argv


def one_line_instance(path: Path) -> None:
    try:
        load_instance(path)
    except InstanceError as err:
        assert "\n" not in str(err), str(err)


CHECKERS: dict[str, Callable[[Path], None]] = {
    "runtime": lambda path: (check_runtime(path.read_bytes()), one_line_runtime(path.read_bytes())),  # type: ignore[dict-item, func-returns-value]
    "instance": lambda path: (check_instance_file(path), one_line_instance(path)),  # type: ignore[dict-item, func-returns-value]
    "help": lambda path: check_help(
        path.read_text("utf-8", "surrogateescape")
        if not path.name.endswith((".machine.txt", ".device.txt"))
        else help_seeds()[0],
        path.read_text() if path.name.endswith(".machine.txt") else None,
        path.read_text() if path.name.endswith(".device.txt") else None,
    ),
}


@pytest.mark.parametrize("path", corpus_files())
def test_corpus_file(path: Path) -> None:
    """Each kept input raises only its documented error (in one line) or loads, in time."""
    try:
        with time_limit(DEADLINE_S):
            CHECKERS[path.parent.name](path)
    except TimeoutError:
        timed_out = True
    else:
        timed_out = False
    if timed_out:  # outside the handler: PyYAML's deep frames upset the hypothesis plugin
        pytest.fail(f"{path.name}: still parsing after {DEADLINE_S:g} s", pytrace=False)


def test_corpus_is_there_and_known_bugs_exist() -> None:
    kinds = {p.parent.name for p in CORPUS.glob("*/*")}
    assert {"runtime", "instance", "help"} <= kinds
    for rel in KNOWN_BUGS:
        assert (CORPUS / rel).is_file(), rel
