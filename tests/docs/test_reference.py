"""The instance-file reference (docs/instances.md) and JSON Schema are the models' own.

They are generated (``python tools/gen_instance_docs.py``); these tests fail when a field
is added without its description, or when either file no longer matches the models.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from doc_examples import PROJECT

from kvmlab.cli.app import main
from kvmlab.spec.fielddocs import FIELD_DOCS
from kvmlab.spec.reference import (
    MODELS,
    instance_schema,
    render_reference,
    schema_text,
    undocumented,
)

REGENERATE = "run: python tools/gen_instance_docs.py"


def test_every_field_has_a_description_and_a_qemu_option() -> None:
    assert undocumented() == []


def test_no_description_is_left_without_its_field() -> None:
    fields = {f"{name}.{field}" for name, model in MODELS for field in model.model_fields}
    assert set(FIELD_DOCS) == fields


def test_the_reference_page_is_fresh() -> None:
    text = (PROJECT / "docs" / "instances.md").read_text(encoding="utf-8")
    assert text == render_reference(), f"docs/instances.md is stale; {REGENERATE}"


def test_the_schema_file_is_fresh() -> None:
    text = (PROJECT / "docs" / "instance.schema.json").read_text(encoding="utf-8")
    assert text == schema_text(), f"docs/instance.schema.json is stale; {REGENERATE}"


def test_every_field_is_in_the_page() -> None:
    page = render_reference()
    for name, model in MODELS:
        assert f"## {name}" in page
        for field in model.model_fields:
            assert f"| `{field}` |" in page, field


def test_the_schema_checks_what_the_model_checks() -> None:
    schema = instance_schema()
    assert schema["required"] == ["name"]
    assert schema["additionalProperties"] is False
    nic = schema["$defs"]["Nic"]
    assert nic["required"] == ["mac"]
    assert "mode defaults to bridged" not in json.dumps(nic)  # the message, not the doc
    assert schema["properties"]["memory"]["minimum"] == 16


def test_kvmlab_schema_prints_the_committed_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    assert capsys.readouterr().out == (PROJECT / "docs" / "instance.schema.json").read_text()


def test_the_generator_tool_checks_without_writing() -> None:
    result = subprocess.run(
        [sys.executable, str(PROJECT / "tools" / "gen_instance_docs.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
