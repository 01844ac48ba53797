"""The migration journal survives its file: ``MigrationJournal.load(save(x)) == x``.

Generated journals (every field present or absent, any text JSON can carry, the runtime of
a generated instance or arbitrary text in its place) are saved atomically and loaded back
equal; the file is the sorted-key JSON object kvmlab has always written; and any prefix of
it that a crash could leave is still reported as a (damaged) journal, never an exception.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvmlab.lifecycle.migration.journal import (
    DamagedJournal,
    MigrationJournal,
    MigrationStep,
)
from kvmlab.runtime.generator import generate_runtime
from kvmlab.testing import strategies as kst

#: Any text JSON can carry (a lone surrogate cannot be written as UTF-8).
text = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)


_RUNTIME_INPUTS = st.tuples(kst.instances(), kst.capabilities(), kst.layouts())


@st.composite
def runtimes_json(draw: st.DrawFn) -> str:
    instance, caps, layout = draw(_RUNTIME_INPUTS)
    return generate_runtime(instance, caps, layout=layout).to_json()


journals = st.builds(
    MigrationJournal,
    name=st.none() | kst.instance_names(),
    source=kst.layouts().map(lambda layout: str(layout.root)) | text,
    target=kst.layouts().map(lambda layout: str(layout.root)) | text,
    live=st.booleans(),
    resume_source=st.booleans(),
    uri=st.none() | text,
    step=st.none() | st.sampled_from(MigrationStep),
    started=st.none() | st.just("2025-01-31T23:59:59Z") | text,
    role=st.sampled_from([None, "target"]),
    target_runtime=st.none() | runtimes_json() | text,
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("journals")


@given(journals)
def test_a_saved_journal_loads_back_equal(folder: Path, journal: MigrationJournal) -> None:
    path = folder / "vm1.migration"
    journal.save(path)
    assert MigrationJournal.load(path) == journal


@given(journals)
def test_the_file_is_the_sorted_json_object_of_its_fields(
    folder: Path, journal: MigrationJournal
) -> None:
    path = folder / "vm1.migration"
    journal.save(path)
    text = path.read_text(encoding="utf-8")
    data = {
        key: value for key, value in journal.model_dump(mode="json").items() if value is not None
    }
    assert text == json.dumps(data, sort_keys=True) + "\n"
    loaded = MigrationJournal.load(path)
    assert isinstance(loaded, MigrationJournal)
    assert loaded.record() == {key: value for key, value in data.items() if key != "target_runtime"}


@given(journals, st.data())
def test_a_half_written_journal_is_still_reported(
    folder: Path, journal: MigrationJournal, data: st.DataObject
) -> None:
    path = folder / "vm1.migration"
    journal.save(path)
    whole = path.read_bytes()
    cut = data.draw(st.integers(min_value=0, max_value=len(whole) - 2), label="cut")
    path.write_bytes(whole[:cut])  # the closing brace is gone: no JSON object
    loaded = MigrationJournal.load(path)
    assert isinstance(loaded, DamagedJournal)
    assert loaded.record()["op"] == "unknown"
