"""The fast paths of the runtime hot loop give pydantic's own results.

``KVMRuntime.to_json`` assembles its document from per-field serialisers and the
JSON an ``HvParams`` object keeps once computed; ``KVMRuntime.from_validated``
builds what ``model_construct`` builds; the NIC validators take a one-regex fast
path. Each property here compares the fast path with the plain pydantic (or
original) definition, for every input the hypothesis strategies draw and for
arbitrary text where the models do not constrain it.
"""

from __future__ import annotations

import copy
import pickle
import re
import weakref

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from kvmlab.runtime.generator import generate_runtime
from kvmlab.runtime.saved import KVMRuntime
from kvmlab.spec.instance import Disk, HvParams, Nic
from kvmlab.testing import strategies as kst

inputs = st.tuples(kst.instances(), kst.capabilities(), kst.layouts())
#: Any text JSON can carry: quotes, backslashes, control and non-ASCII characters.
any_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=30)


def pydantic_json(runtime: KVMRuntime) -> str:
    return KVMRuntime.__pydantic_serializer__.to_json(runtime).decode()


@given(inputs)
def test_to_json_equals_pydantic_for_every_generated_runtime(args) -> None:
    instance, caps, layout = args
    runtime = generate_runtime(instance, caps, layout=layout)
    expected = pydantic_json(runtime)
    assert runtime.to_json() == expected  # computes the hvparams' JSON
    assert runtime.to_json() == expected  # reuses it
    assert generate_runtime(instance, caps, layout=layout).to_json() == expected
    loaded = KVMRuntime.from_json(expected)  # fresh objects, nothing cached
    assert loaded.to_json() == expected == pydantic_json(loaded)


@given(
    st.lists(any_text, min_size=1, max_size=6),
    st.lists(kst.nics(), max_size=3),
    st.lists(kst.disks(), max_size=3),
    kst.hvparams(),
    any_text,
)
def test_to_json_equals_pydantic_for_any_text(argv, nics, disks, hv, name) -> None:
    # from_validated trusts its caller: any text reaches the serialisers.
    runtime = KVMRuntime.from_validated(name, tuple(argv), tuple(nics), hv, tuple(disks))
    assert runtime.to_json() == pydantic_json(runtime)
    assert runtime.to_json() == pydantic_json(runtime)


def test_to_json_fails_like_pydantic_on_a_lone_surrogate() -> None:
    runtime = KVMRuntime.model_construct(name="vm1", argv=("x\ud800",))
    with pytest.raises(Exception) as fast:
        runtime.to_json()
    with pytest.raises(Exception) as slow:
        pydantic_json(runtime)
    assert type(fast.value) is type(slow.value)


@given(inputs)
def test_from_validated_builds_what_model_construct_builds(args) -> None:
    instance, caps, layout = args
    runtime = generate_runtime(instance, caps, layout=layout)
    parts = {
        "name": runtime.name,
        "argv": runtime.argv,
        "nics": runtime.nics,
        "hvparams": runtime.hvparams,
        "disks": runtime.disks,
        "nic_slots": runtime.nic_slots,
        "disk_slots": runtime.disk_slots,
    }
    built = KVMRuntime.model_construct(**parts)  # type: ignore[arg-type]
    assert list(runtime.__dict__.items()) == list(built.__dict__.items())
    assert runtime.model_fields_set == built.model_fields_set
    assert runtime.__pydantic_extra__ == built.__pydantic_extra__
    assert runtime.__pydantic_private__ == built.__pydantic_private__
    assert runtime == built
    again = generate_runtime(instance, caps, layout=layout)
    assert again.model_fields_set is not runtime.model_fields_set  # each has its own set


@given(kst.hvparams(), st.booleans())
def test_hvparams_json_is_never_stale_nor_seen(hv, acpi) -> None:
    text = hv.json_bytes().decode()
    assert text == hv.model_dump_json()
    changed = hv.model_copy(update={"acpi": acpi})
    assert changed.json_bytes().decode() == changed.model_dump_json()
    for other in (copy.copy(hv), copy.deepcopy(hv), pickle.loads(pickle.dumps(hv))):
        assert other == hv
        assert hash(other) == hash(hv)
        assert other.json_bytes().decode() == text
    assert "_json" not in hv.model_dump()
    assert "_json" not in repr(hv)
    assert weakref.ref(hv)() is hv


# --- the NIC validators' fast path against the rule as first written ------------------

_MAC = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")


def reference_mac(value: str) -> str:
    """The MAC rule as written before the fast path: shape, then the multicast bit, then
    the all-zero MAC (which QEMU replaces)."""
    mac = value.lower()
    if not _MAC.fullmatch(mac):
        raise ValueError(f"MAC {value!r} is not of the form xx:xx:xx:xx:xx:xx")
    if int(mac[:2], 16) & 1:
        raise ValueError(f"MAC {value!r} is a multicast address (first octet is odd)")
    if mac == "00:00:00:00:00:00":
        raise ValueError(f"MAC {value!r} is all zero, which QEMU replaces with its own")
    return mac


mac_like = st.one_of(
    st.just("00:00:00:00:00:00"),
    kst.macs(),
    kst.macs().map(str.upper),
    st.lists(st.integers(0, 255), min_size=6, max_size=6).map(
        lambda o: ":".join(f"{b:02X}" for b in o)
    ),
    st.text("0123456789abcdefABCDEF:-xg \n", max_size=19),
    any_text,
)


@given(mac_like)
def test_mac_validation_equals_the_reference_rule(value) -> None:
    try:
        expected = reference_mac(value)
    except ValueError as err:
        with pytest.raises(ValidationError) as caught:
            Nic(mac=value, mode="user")
        error = caught.value.errors()[0]
        assert error["loc"] == ("mac",)
        assert error["msg"] == f"Value error, {err}"
        assert error["input"] == value
    else:
        assert Nic(mac=value, mode="user").mac == expected
        assert Nic.model_validate_json(f'{{"mac":"{value}","mode":"user"}}').mac == expected


def test_mac_given_as_bytes_is_checked_too() -> None:
    assert Nic(mac=b"52:54:00:AB:CD:EF", mode="user").mac == "52:54:00:ab:cd:ef"
    with pytest.raises(ValidationError, match="is not of the form"):
        Nic(mac=b"zz", mode="user")


@given(kst.nics(), st.sampled_from(["bridged", "routed", "user"]), st.sampled_from(["", "br0"]))
def test_mode_link_rule_is_unchanged(nic, mode, link) -> None:
    needs_link = mode == "bridged" and not link
    refuses_link = mode == "user" and bool(link)
    if needs_link or refuses_link:
        with pytest.raises(ValidationError, match="link"):
            Nic(mac=nic.mac, mode=mode, link=link)
    else:
        assert Nic(mac=nic.mac, mode=mode, link=link).link == link


def test_disk_and_nic_dump_like_before() -> None:
    nic = Nic(mac="52:54:00:00:00:01", link="br0")
    disk = Disk(path="/srv/a,b.img", mode="ro")
    assert nic.model_dump_json() == '{"mac":"52:54:00:00:00:01","mode":"bridged","link":"br0"}'
    assert disk.model_dump_json() == '{"path":"/srv/a,b.img","mode":"ro"}'
    assert HvParams().json_bytes() == HvParams().model_dump_json().encode()
