"""The migration journal on disk (docs/migration.md): the files kvmlab wrote before the
journal was a model still load, a damaged one is reported, ``info``'s view of it."""

from __future__ import annotations

import json
from pathlib import Path

from kvmlab.channels.qemu_state import MigrationStatus, QemuRunState
from kvmlab.lifecycle.migration.journal import (
    DamagedJournal,
    MigrationJournal,
    MigrationOutcome,
    MigrationStep,
    incoming_runtime,
    pending_migration,
)
from kvmlab.runtime.generator import generate_runtime
from kvmlab.spec.capabilities import QemuCapabilities
from kvmlab.spec.instance import Instance
from kvmlab.spec.layout import StateLayout


def _runtime_json(target: StateLayout) -> str:
    return generate_runtime(Instance(name="vm1"), QemuCapabilities(), layout=target).to_json()


def _as_written_before(source: StateLayout, target: StateLayout) -> dict[str, object]:
    """The source's journal exactly as ``migrate`` wrote it when it was a dict."""
    return {
        "op": "migrate",
        "name": "vm1",
        "source": str(source.root),
        "target": str(target.root),
        "live": True,
        "resume_source": True,
        "uri": f"unix:{target.migration_socket('vm1')}",
        "step": "transferring",
        "started": "2025-01-31T23:59:59Z",
        "target_runtime": _runtime_json(target),
    }


def _layouts(tmp_path: Path) -> tuple[StateLayout, StateLayout]:
    source, target = StateLayout(tmp_path / "a"), StateLayout(tmp_path / "b")
    for layout in (source, target):
        layout.migration_journal("vm1").parent.mkdir(parents=True)
    return source, target


def test_a_journal_in_the_old_format_loads_and_saves_the_same_bytes(tmp_path: Path) -> None:
    source, target = _layouts(tmp_path)
    old = _as_written_before(source, target)
    for layout, data in ((source, old), (target, {**old, "role": "target"})):
        path = layout.migration_journal("vm1")
        written = json.dumps(data, sort_keys=True) + "\n"
        path.write_text(written)
        journal = MigrationJournal.load(path)
        assert isinstance(journal, MigrationJournal)
        assert journal.step is MigrationStep.TRANSFERRING
        assert (journal.source, journal.target) == (str(source.root), str(target.root))
        assert journal.role == data.get("role")
        journal.save(path)
        assert path.read_text() == written
        assert pending_migration(layout, "vm1") == {
            key: value for key, value in data.items() if key != "target_runtime"
        }
    arriving = incoming_runtime(target, "vm1")
    assert arriving is not None and arriving.to_json() == old["target_runtime"]
    assert incoming_runtime(source, "vm1") is None, "the source's journal is not an arrival"


def test_a_journal_with_fields_missing_loads_with_the_defaults(tmp_path: Path) -> None:
    source, target = _layouts(tmp_path)
    path = source.migration_journal("vm1")
    path.write_text(json.dumps({"source": str(source.root), "target": str(target.root)}))
    journal = MigrationJournal.load(path)
    assert isinstance(journal, MigrationJournal)
    assert journal.live and journal.resume_source and journal.target_runtime is None
    assert journal.record() == {"source": str(source.root), "target": str(target.root)}


def test_a_damaged_journal_is_reported_as_an_unknown_operation(tmp_path: Path) -> None:
    source, _target = _layouts(tmp_path)
    path = source.migration_journal("vm1")
    for text in ('{"op": "migrate", "sour', "[1, 2]", '{"op": "migrate"}', "\xff\xfe"):
        path.write_text(text, encoding="latin-1")
        journal = MigrationJournal.load(path)
        assert isinstance(journal, DamagedJournal)
        assert pending_migration(source, "vm1") == journal.record()
        assert journal.record()["op"] == "unknown"
    path.unlink()
    assert MigrationJournal.load(path) is None and pending_migration(source, "vm1") is None


def test_the_state_words_are_the_strings_on_the_wire() -> None:
    assert QemuRunState.POSTMIGRATE == "postmigrate" and "running" in {QemuRunState.RUNNING}
    assert MigrationStatus.COMPLETED == "completed"
    assert json.dumps([MigrationOutcome.ROLLED_BACK, MigrationStep.STARTING_TARGET]) == (
        '["rolled back", "starting-target"]'
    )
    assert f"{MigrationOutcome.COMPLETED}" == "completed"
