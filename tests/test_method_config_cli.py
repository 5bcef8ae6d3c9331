"""Bad distillation objectives in a --config: one line, exit 2, before any directory or training."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from distill_export.cli import app

runner = CliRunner()


@pytest.mark.parametrize("yaml_text,needle", [
    ("distill:\n  terms: [{name: bogus}]\n", "unknown distillation term 'bogus' (choices: ce, dist, dkd"),
    ("distill:\n  terms: [{name: kd, weight: 0}, {name: ce, weight: 0}]\n", "weight 0"),
    ("distill:\n  terms: [{name: pseudo_label, threshold: 1.0}, {name: ce}]\n", "threshold must be in (0, 1)"),
    ("distill:\n  terms: [{name: pseudo_label, threshold: 0}, {name: ce}]\n", "threshold must be in (0, 1)"),
    ("distill:\n  terms: [{name: kd, temprature: 2}]\n", "has no parameter 'temprature'"),
    ("distill:\n  terms: [{name: kd, weight: -1}]\n", "weight must be a finite number >= 0"),
    ("distill:\n  terms: [kd]\n", "must be a mapping with a name"),
    ("distill:\n  method: hintn\n", "unknown distillation method 'hintn' (choices: labels_only, hinton"),
])
def test_bad_objective_is_one_line_and_nothing_is_made(tmp_path, yaml_text, needle):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml_text)
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "--config", str(cfg), "--out", str(out), "--quiet"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in result.output, result.output
    assert not out.exists()
