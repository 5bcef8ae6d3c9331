"""`distill-export tune`: searches on the validation split only, writes a config `run --config`
takes, and refuses a bad budget or method with one line."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from typer.testing import CliRunner

from distill_export.cli import app
from distill_export.config import load_config

runner = CliRunner()


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(tiny_run, dst)
    return dst


def _one_line_error(result, needle: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in result.output, result.output


def test_tune_writes_a_config_run_accepts_and_never_reads_the_test_split(run_copy, tmp_path, monkeypatch):
    from distill_export import distill

    def no_test_split(*args, **kwargs):
        raise AssertionError("tune read the test split")

    monkeypatch.setattr(distill, "test_predictions", no_test_split)
    monkeypatch.setattr(distill, "evaluate_student", no_test_split)
    out = tmp_path / "best.yaml"
    result = runner.invoke(app, ["tune", str(run_copy), "--trials", "3", "--methods", "hinton,pseudo_label",
                                 "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    summary = json.loads((run_copy / "tune.json").read_text())
    assert summary["split"] == "validation" and summary["trials"] == 3
    assert {t["params"]["method"] for t in summary["all"]} <= {"hinton", "pseudo_label"}
    best = max(t["val_accuracy"] for t in summary["all"] if t["state"] == "COMPLETE")
    assert summary["best"]["val_accuracy"] == best
    # The reference is the run's own labels-only baseline: the same training as `distill`'s
    baseline_val = json.loads((run_copy / "report.json").read_text())["distill"]["baseline_training"]["best_val_accuracy"]
    assert summary["baseline_val_accuracy"] == baseline_val
    assert summary["beats_baseline"] == (best > baseline_val)
    assert "labels-only baseline on validation" in out.read_text().splitlines()[2]
    terms = yaml.safe_load(out.read_text())["distill"]["terms"]
    assert terms == summary["best"]["terms"] and terms[0]["name"] == "ce"
    config = load_config("avdigits", out)  # what `run --config best.yaml` loads
    assert config.distill.terms == terms


@pytest.mark.parametrize("args,needle", [
    (["--trials", "0"], "--trials must be > 0"),
    (["--trials", "-3"], "--trials must be > 0"),
    (["--minutes", "0"], "--minutes must be"),
    (["--minutes", "nan"], "--minutes must be"),
    (["--methods", "hinton,bogus"], "unknown distillation method 'bogus'"),
])
def test_tune_bad_budget_or_method_is_one_line(run_copy, args, needle):
    before = sorted(p.name for p in run_copy.iterdir())
    result = runner.invoke(app, ["tune", str(run_copy), *args, "--quiet"])
    _one_line_error(result, needle)
    assert sorted(p.name for p in run_copy.iterdir()) == before  # nothing written


@pytest.mark.parametrize("flags,needle", [
    (["--method", "nope"], "unknown distillation method 'nope'"),
])
def test_run_refuses_an_unknown_method_before_training(tmp_path, flags, needle):
    result = runner.invoke(app, ["run", "--out", str(tmp_path / "r"), *flags, "--quiet"])
    _one_line_error(result, needle)
    assert not (tmp_path / "r").exists()
