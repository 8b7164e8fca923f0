"""docs/configuration.md is generated from RunConfig and the CLI parser: it must be current."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from probekit.cli import REFERENCE_COMMAND, config_reference
from probekit.runs.config import RunConfig

PAGE = Path(__file__).parents[1] / "docs" / "configuration.md"


def test_configuration_page_is_current():
    assert PAGE.read_text() == config_reference(), (
        f"docs/configuration.md is stale: {REFERENCE_COMMAND}"
    )


def test_every_field_has_one_row_with_its_flag_and_default():
    rows = [line for line in config_reference().splitlines() if line.startswith("| `")]
    fields = dataclasses.fields(RunConfig)
    assert [r.split("|")[1].strip() for r in rows] == [f"`{f.name}`" for f in fields]
    by_key = {
        r.split("|")[1].strip().strip("`"): [c.strip() for c in r.split("|")[1:-1]] for r in rows
    }
    assert by_key["batch_size"][1:3] == ["`--batch-size`", "`64`"]
    assert by_key["memory_budget"][1] == "`--memory-budget`"
    assert "fit" in by_key["memory_budget"][5] and "attribute" in by_key["memory_budget"][5]
    assert by_key["max_memory"][4] == "`load_model`"  # accelerate's per-device map, not the budget
