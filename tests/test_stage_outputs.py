"""A stage recorded done whose output is gone, or an export whose student.pt was replaced since
(a fresh audit of issue 24, B5 and B7): stage commands built on it refuse in one line naming the
file and the command that makes it again (nothing written); `run --resume` makes that stage and
the ones after it stale and runs them again, instead of reusing a file that is not there."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from _cli_checks import forget_student_hash, one_line_error, snapshot
from distill_export.cli import app
from distill_export.errors import ConfigError
from distill_export.files import sha256_file
from distill_export.rundir import RunDir

runner = CliRunner()



def stages(run: Path) -> dict:
    return json.loads((run / "state.json").read_text())["stages"]


# A run records student.pt's sha256 at distill (ninth audit B5): a replaced student.pt is named as
# changed after distill, and distill makes it again. A run from before that hash still has the
# export's own check (parity_data.npz's checkpoint_sha256): changed after export, export again.
SINCE = {"hashed": ("distill", "distill"), "older run": ("export", "export")}


@pytest.mark.parametrize("since", SINCE)
@pytest.mark.parametrize("command", ["validate", "profile", "report"])
def test_a_student_replaced_after_export_is_refused(command, since, run_copy):
    shutil.copyfile(run_copy / "baseline.pt", run_copy / "student.pt")
    if since == "older run":
        forget_student_hash(run_copy)
    stage, again = SINCE[since]
    before = snapshot(run_copy)
    line = one_line_error(runner.invoke(app, [command, str(run_copy)]), 2)
    assert f"{run_copy / 'student.pt'} changed after {stage}" in line, line
    assert f"`{command}` cannot run" in line and f"re-run `distill-export {again} {run_copy}`" in line, line
    assert snapshot(run_copy) == before


@pytest.mark.parametrize("since", SINCE)
def test_the_recommendation_refuses_a_replaced_student(since, run_copy):
    from distill_export.recommend import update_run

    shutil.copyfile(run_copy / "baseline.pt", run_copy / "student.pt")
    if since == "older run":
        forget_student_hash(run_copy)
    stage, again = SINCE[since]
    before = snapshot(run_copy)
    with pytest.raises(ConfigError, match=rf"student\.pt changed after {stage} .*distill-export {again}"):
        update_run(RunDir(run_copy))
    assert snapshot(run_copy) == before


@pytest.mark.slow
def test_resume_distills_again_after_a_replaced_student(run_copy):
    """The record's accuracy and kd_gain are of the student distill trained: a replaced file
    makes distill stale, and the resume trains the student again (its file and its numbers)."""
    shutil.copyfile(run_copy / "baseline.pt", run_copy / "student.pt")
    result = runner.invoke(app, ["run", "--resume", str(run_copy), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "running distill, then export, validate, profile, report" in result.output, result.output
    assert "stale: student.pt changed after distill" in result.output, result.output
    record = json.loads((run_copy / "report.json").read_text())
    assert record["distill"]["files_sha256"]["student.pt"] == sha256_file(run_copy / "student.pt")
    assert sha256_file(run_copy / "student.pt") != sha256_file(run_copy / "baseline.pt")
    with np.load(run_copy / "parity_data.npz") as f:
        assert str(f["checkpoint_sha256"]) == sha256_file(run_copy / "student.pt")
    assert all(v["status"] == "done" for v in stages(run_copy).values())


@pytest.mark.slow
def test_resume_exports_a_replaced_student_again_in_an_older_run(run_copy):
    shutil.copyfile(run_copy / "baseline.pt", run_copy / "student.pt")
    forget_student_hash(run_copy)
    result = runner.invoke(app, ["run", "--resume", str(run_copy), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "running export, then validate, profile, report" in result.output, result.output
    assert "stale: student.pt changed after export" in result.output, result.output
    with np.load(run_copy / "parity_data.npz") as f:
        assert str(f["checkpoint_sha256"]) == sha256_file(run_copy / "student.pt")
    assert all(v["status"] == "done" for v in stages(run_copy).values())
    assert runner.invoke(app, ["report", str(run_copy)]).exit_code == 0


@pytest.mark.parametrize("command", ["validate", "profile", "report"])
def test_a_missing_export_is_named_with_the_command_that_makes_it(command, run_copy):
    (run_copy / "student.onnx").unlink()
    before = snapshot(run_copy)
    line = one_line_error(runner.invoke(app, [command, str(run_copy)]), 2)
    assert f"{run_copy / 'student.onnx'} is missing (the export stage made it)" in line, line
    assert f"re-run `distill-export export {run_copy}`" in line, line
    assert snapshot(run_copy) == before


def test_a_missing_student_checkpoint_is_named_by_export(run_copy):
    (run_copy / "student.pt").unlink()
    before = snapshot(run_copy)
    line = one_line_error(runner.invoke(app, ["export", str(run_copy)]), 2)
    assert f"{run_copy / 'student.pt'} is missing (the distill stage made it)" in line, line
    assert f"re-run `distill-export distill {run_copy}`" in line, line
    assert snapshot(run_copy) == before


@pytest.mark.slow
def test_resume_exports_a_missing_artifact_again(run_copy):
    """Not "export done (reused)" then a failure on the missing file, every resume after."""
    (run_copy / "student.onnx").unlink()
    result = runner.invoke(app, ["run", "--resume", str(run_copy), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "export done" not in result.output and "stale: student.onnx is missing" in result.output, result.output
    assert (run_copy / "student.onnx").is_file() and (run_copy / "report.md").is_file()
    assert all(v["status"] == "done" for v in stages(run_copy).values())
    again = runner.invoke(app, ["run", "--resume", str(run_copy), "--quiet"])
    assert again.exit_code == 2 and "already finished" in again.output, again.output
