"""`run --tune N` (issue 23): the one command searches and confirms the objective on validation
before distilling, and config.yaml and the report say what was chosen and why."""

from __future__ import annotations

import pytest
import json

import yaml
from typer.testing import CliRunner

from distill_export.cli import app


@pytest.mark.slow
def test_run_tune_chooses_the_objective_before_distilling(tmp_path, tiny_config_file):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", "--config", str(tiny_config_file), "--out", str(out), "--quiet",
                                      "--tune", "2", "--format", "onnx", "--no-self-training-control"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    decision = report["tune"]["decision"]
    assert report["tune"]["trials"] == 2 and report["tune"]["confirmation"] is not None
    # what ran is what was chosen: config.yaml, the distill section and the written tuned.yaml agree
    ran = yaml.safe_load((out / "config.yaml").read_text())["distill"]
    assert ran["terms"] == decision["terms"] == report["distill"]["terms"]
    assert yaml.safe_load((out / "tuned.yaml").read_text())["distill"]["terms"] == decision["terms"]
    assert report["distill"]["distilled"] == decision["distill"]
    assert "chosen by `run --tune`" in (out / "report.md").read_text()
    from distill_export.record.format import md_text

    assert md_text(decision["line"]) in (out / "report.md").read_text()  # Markdown-escaped (ls\_kd), shown as written


def test_run_tune_with_torchrun_is_refused_in_one_line(tmp_path, tiny_config_file):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", "--config", str(tiny_config_file), "--out", str(out),
                                      "--tune", "2", "--nproc", "2"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "--tune" in lines[0]
    assert not out.exists()
