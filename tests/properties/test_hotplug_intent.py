"""The hotplug intent file (``conf/NAME.hotplug``, docs/hotplug.md) as hypothesis properties.

- ``load(save(x)) == x`` for every intent a hotplug can write;
- the file is the JSON object kvmlab wrote before the model existed, byte for byte, so
  intents left by either kvmlab load in the other;
- whatever else the file holds (half written, edited, not UTF-8) loads as an
  ``unknown`` operation that died, with the start of its text, as ``info`` shows it.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvmlab.host.store import RAW_LIMIT
from kvmlab.lifecycle.hotplug.intent import HotplugIntent, HotplugOp
from kvmlab.testing import strategies as kst

intent_settings = settings(max_examples=200, deadline=None)

#: Text JSON can carry (no lone surrogates, which no file read as UTF-8 has).
texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=80)
slots = st.integers(min_value=0, max_value=0x1F)

intents = st.one_of(
    st.builds(
        HotplugIntent,
        op=st.just(HotplugOp.ATTACH_NIC),
        mac=kst.macs(),
        slot=slots,
        tap=st.none() | st.from_regex(r"tap[0-9]{1,4}", fullmatch=True),
    ),
    st.builds(HotplugIntent, op=st.just(HotplugOp.DETACH_NIC), mac=kst.macs(), slot=slots),
    st.builds(
        HotplugIntent,
        op=st.sampled_from([HotplugOp.ATTACH_DISK, HotplugOp.DETACH_DISK]),
        path=texts.map(lambda name: f"/srv/images/{name}"),
        slot=slots,
    ),
    texts.map(HotplugIntent.damaged),
)


@contextlib.contextmanager
def intent_file() -> Iterator[Path]:
    """Where a lab keeps the intent of ``vm1``, in a directory of its own (removed after)."""
    with tempfile.TemporaryDirectory(prefix="intent-") as directory:
        yield Path(directory) / "vm1.hotplug"


@intent_settings
@given(intent=intents)
def test_load_of_save_is_the_intent(intent: HotplugIntent) -> None:
    with intent_file() as path:
        intent.save(path)
        assert HotplugIntent.load(path) == intent


@intent_settings
@given(intent=intents)
def test_the_file_is_the_json_object_kvmlab_always_wrote(intent: HotplugIntent) -> None:
    with intent_file() as path:
        intent.save(path)
        assert path.read_text(encoding="utf-8") == json.dumps(intent.report())
        assert json.loads(path.read_text(encoding="utf-8")) == intent.report()


@pytest.mark.parametrize(
    "written",
    [
        # What the NIC and disk hotplug wrote with json.dumps before the model.
        {"op": "attach-nic", "mac": "52:54:00:6b:01:01", "slot": 0x11},
        {"op": "attach-nic", "mac": "52:54:00:6b:01:01", "slot": 0x11, "tap": "tap3"},
        {"op": "detach-nic", "mac": "52:54:00:6b:01:01", "slot": 0x10},
        {"op": "attach-disk", "path": "/srv/images/data.img", "slot": 0x09},
        {"op": "detach-disk", "path": "/srv/images/data.img", "slot": 0x08},
    ],
)
def test_a_file_written_before_the_model_loads(written: dict[str, object]) -> None:
    with intent_file() as path:
        path.write_text(json.dumps(written), encoding="utf-8")
        intent = HotplugIntent.load(path)
    assert intent is not None and intent.op is HotplugOp(str(written["op"]))
    assert intent.report() == written
    assert list(intent.report()) == list(written), "the keys in the order info has shown them"


def test_no_file_is_no_intent() -> None:
    with intent_file() as path:
        assert HotplugIntent.load(path) is None


@intent_settings
@given(data=st.binary(max_size=300) | texts.map(str.encode))
def test_a_damaged_file_is_an_unknown_operation_that_died(data: bytes) -> None:
    with intent_file() as path:
        path.write_bytes(data)
        intent = HotplugIntent.load(path)
    assert intent is not None
    if intent.op is HotplugOp.UNKNOWN:
        assert intent.raw == data.decode("utf-8", errors="replace")[:RAW_LIMIT]
        assert intent.report() == {"op": "unknown", "raw": intent.raw}
    else:  # random bytes that happen to be an intent are one
        assert json.loads(data) == intent.report()


@pytest.mark.parametrize(
    "text",
    [
        "",
        '{"op": "attach-nic", "mac": "52:54:00:6b:01:01"',  # cut short
        '{"op": "attach-nic", "mac": "52:54:00:6b:01:01", "slot": "17"}',  # slot as text
        '{"op": "attach-nic", "path": "/a", "slot": 17}',  # a disk's field
        '{"op": "detach-disk", "path": "/a", "slot": 9, "tap": "tap0"}',
        '{"op": "resize-disk", "path": "/a", "slot": 9}',
        '["attach-nic"]',
        "x" * 1000,
    ],
)
def test_an_edited_or_half_written_file_is_reported_not_raised(text: str) -> None:
    with intent_file() as path:
        path.write_text(text, encoding="utf-8")
        loaded = HotplugIntent.load(path)
    assert loaded == HotplugIntent(op=HotplugOp.UNKNOWN, raw=text[:RAW_LIMIT])


def test_an_intent_has_the_fields_of_its_op_only() -> None:
    with pytest.raises(ValueError, match="needs 'mac'"):
        HotplugIntent(op=HotplugOp.ATTACH_NIC, slot=0x11)
    with pytest.raises(ValueError, match="has no 'tap'"):
        HotplugIntent(op=HotplugOp.DETACH_DISK, path="/a", slot=9, tap="tap0")
    with pytest.raises(ValueError, match="needs 'raw'"):
        HotplugIntent(op=HotplugOp.UNKNOWN)
