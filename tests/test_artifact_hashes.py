"""validate records each artifact's sha256; what reads its parity later checks the file is still
that one (a fresh audit of issue 24: a student.onnx replaced by hand after validate was
profiled, reported and recommended with the old parity). `profile RUN`, `report RUN` and the
recommendation refuse in one line, nothing written; `run --resume` validates it again; a run
validated before hashes were recorded still loads (unknown, not changed)."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from typer.testing import CliRunner

from _cli_checks import one_line_error, snapshot
from distill_export.cli import app
from distill_export.errors import ConfigError
from distill_export.files import sha256_file
from distill_export.rundir import RunDir

runner = CliRunner()



def edit_by_hand(path: Path) -> None:
    """The same model with one more metadata entry: other bytes, the same outputs."""
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, "edited": "by hand"})
    onnx.save(model, str(path))


def test_validate_records_the_hash_of_each_artifact(tiny_run):
    report = json.loads((tiny_run / "report.json").read_text())
    arts = [a for a in report["exports"].values()] + [a for a in (report.get("teacher_exports") or {}).values()
                                                      if a.get("parity")]
    assert arts
    for art in arts:
        assert art["parity"]["artifact_sha256"] == sha256_file(tiny_run / art["path"]), art["path"]
    assert RunDir(tiny_run).changed_artifacts() == []


@pytest.mark.parametrize("command", ["profile", "report"])
def test_an_export_replaced_after_validate_is_refused(command, run_copy):
    edit_by_hand(run_copy / "student.onnx")
    before = snapshot(run_copy)
    line = one_line_error(runner.invoke(app, [command, str(run_copy)]), 2)
    assert f"{run_copy / 'student.onnx'} changed after validate" in line
    assert f"`{command}` would report the old parity" in line and f"distill-export validate {run_copy}" in line
    assert snapshot(run_copy) == before


def test_the_recommendation_refuses_a_replaced_export(run_copy):
    from distill_export.recommend import update_run

    (run_copy / "student.onnx").unlink()
    before = snapshot(run_copy)
    with pytest.raises(ConfigError, match=r"student\.onnx is missing \(the export stage made it\)"):
        update_run(RunDir(run_copy))
    assert snapshot(run_copy) == before


@pytest.mark.slow
def test_resume_validates_a_replaced_export_again(run_copy):
    """The run is finished, yet `run --resume` does not say so: validate is stale, and runs again
    with profile and report; the new hash is recorded."""
    edit_by_hand(run_copy / "student.onnx")
    result = runner.invoke(app, ["run", "--resume", str(run_copy), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "validate, report stale: student.onnx changed after validate" in result.output
    report = json.loads((run_copy / "report.json").read_text())
    assert report["exports"]["onnx"]["parity"]["artifact_sha256"] == sha256_file(run_copy / "student.onnx")
    stages = json.loads((run_copy / "state.json").read_text())["stages"]
    assert all(v["status"] == "done" for v in stages.values()), stages
    assert runner.invoke(app, ["report", str(run_copy)]).exit_code == 0


def test_a_run_validated_before_hashes_were_recorded_still_loads(run_copy):
    """No artifact_sha256 (an older run): unknown, so not refused, and no crash."""
    path = run_copy / "report.json"
    report = json.loads(path.read_text())
    for section in ("exports", "teacher_exports"):
        for art in (report.get(section) or {}).values():
            (art.get("parity") or {}).pop("artifact_sha256", None)
    path.write_text(json.dumps(report))
    edit_by_hand(run_copy / "student.onnx")
    assert RunDir(run_copy).changed_artifacts() == []
    result = runner.invoke(app, ["report", str(run_copy)])
    assert result.exit_code == 0, result.output
