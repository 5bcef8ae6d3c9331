"""A setting that cannot apply, or a value out of range, is refused up front in one line (exit 2)
naming the setting, before any directory is made or file written (issue 24, "no setting
recorded that did not run"). docs/reliability.md lists each case with its test."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from _cli_checks import one_line_error, snapshot
from distill_export.cli import app
from distill_export.config import RunConfig

runner = CliRunner()


@pytest.fixture
def fake_run(tmp_path):
    """A run directory as far as the checks before any work can tell: config.yaml and report.json
    (no data or models: a command that got past its checks would fail differently)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(RunConfig().to_dict(), sort_keys=False))
    (run / "report.json").write_text(json.dumps({"exports": {}}))
    return run


# ----- validate --gate: the config's own ranges -------------------------------------------------
BAD_GATES = [
    ("fp32_max_abs=nan", "fp32_max_abs"),
    ("fp32_max_abs=inf", "fp32_max_abs"),
    ("fp32_max_abs=-1", "fp32_max_abs"),
    ("fp32_agreement=1.01", "fp32_agreement"),
    ("fp16_agreement=-0.5", "fp16_agreement"),
    ("int8_max_accuracy_drop=nan", "int8_max_accuracy_drop"),
]


@pytest.mark.parametrize("gate,key", BAD_GATES, ids=[g for g, _ in BAD_GATES])
def test_validate_gate_out_of_range_is_refused(fake_run, gate, key):
    before = snapshot(fake_run.parent)
    line = one_line_error(runner.invoke(app, ["validate", str(fake_run), "--gate", gate]), 2)
    assert f"--gate {key}" in line and f"validate.{key}" in line
    assert snapshot(fake_run.parent) == before  # nothing written, report.json included
