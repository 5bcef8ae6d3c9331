"""The typed run record (distill_export/record): a report.json written before schema_version
(tests/fixtures/report_v0.json, the demo at 8898fbc) loads through migrate() and renders; the one
writer checks sections against the models and moves an old file's stage state to state.json; the
published JSON Schema is what the models generate. No training: each test is well under a second."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from distill_export.cli import app
from distill_export.errors import ConfigError
from distill_export.record import SCHEMA_VERSION, RunRecord, migrate
from distill_export.record.migrate import upgrade
from distill_export.rundir import RunDir

FIXTURES = Path(__file__).parent / "fixtures"
V0 = FIXTURES / "report_v0.json"
runner = CliRunner()


def _v0() -> dict:
    return json.loads(V0.read_text())


@pytest.fixture
def v0_run(tmp_path) -> Path:
    """A run directory as 8898fbc left it: report.json (stage state inside), config.yaml."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(V0, run / "report.json")
    shutil.copy(FIXTURES / "report_v0_config.yaml", run / "config.yaml")
    # the files its done stages made (a done stage whose output is gone is stale: run_outputs.py);
    # report reads none of them, only that they are there
    report = json.loads((run / "report.json").read_text())
    for name in ["teacher.pt", "student.pt", "parity_data.npz",
                 *(a["path"] for a in (report.get("exports") or {}).values() if a.get("path"))]:
        (run / name).write_bytes(b"x")
    return run


def test_v0_report_loads_through_migrate():
    record = migrate(_v0())
    assert isinstance(record, RunRecord) and record.schema_version == SCHEMA_VERSION == 1
    assert record.metrics["student"].accuracy == 0.93 and record.metrics["teacher"].n == 1000
    assert len(record.metrics["baseline"].confusion_matrix) == 10
    assert record.comparisons["student_vs_baseline"].discordant == (121, 22)
    assert record.distill.student_training.history[0].train_loss_parts["pseudo_label"] > 0
    assert record.distill.self_training_control.student_training.best_epoch == 11
    assert record.exports["onnx"].parity.gates["top1_agreement"].passed is True
    assert record.exports["onnx"].parity.runtimes["openvino"].skipped.startswith("OpenVINO is not installed")
    assert record.latency[0].measured and record.speedups[0].like_for_like is True
    assert record.recommended["cpu-1t"].format == "onnx"
    assert record.dataset.pca_components == 33  # typed since the tenth audit (B1)
    own = _v0()
    own["dataset"]["vocabulary_size"] = 5000
    assert migrate(own).dataset.model_extra["vocabulary_size"] == 5000  # a dataset's own details are kept
    data, stages = upgrade(_v0())
    assert "stages" not in data and set(stages) == {"train_teacher", "distill", "export", "validate", "profile",
                                                    "report"}
    assert list(data)[0] == "schema_version"
    assert {k: v for k, v in data.items() if k != "schema_version"} == {k: v for k, v in _v0().items()
                                                                          if k != "stages"}


def test_older_speedup_keys_are_migrated():
    raw = {"speedups": [{"model": "student", "format": "onnx", "backend": "onnxruntime-cpu", "batch": 1,
                         "threads": 1, "reference": "teacher (pytorch-cpu)", "speedup_vs_teacher": 20.0}]}
    s = migrate(raw).speedups[0]
    assert s.speedup == 20.0 and s.like_for_like is False


def test_a_newer_or_malformed_record_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="newer distill-export"):
        migrate({"schema_version": SCHEMA_VERSION + 1})
    with pytest.raises(ConfigError, match=r"metrics\.student\.accuracy"):
        migrate({"metrics": {"student": {"accuracy": "high"}}})


def test_report_renders_a_v0_run_directory(v0_run):
    before = (v0_run / "report.json").read_text()
    result = runner.invoke(app, ["report", str(v0_run)])
    assert result.exit_code == 0, result.output
    md, page = (v0_run / "report.md").read_text(), (v0_run / "report.html").read_text()
    for shown in ("| student | 93.0% |", "**kd_gain** = student − baseline = +9.90 points. Distillation paid",
                  "McNemar p=9.2e-18", "Teacher fusion: concat", "recommended for cpu-1t: onnx on onnxruntime-cpu"):
        assert shown in md, shown
    assert "(plots/training_curves.png)" in md and 'src="plots/training_curves.png"' in page
    assert (v0_run / "plots" / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (v0_run / "report.json").read_text() == before  # rendering does not rewrite the record
    # the report stage is recorded in state.json, with the stages the old report.json held
    stages = json.loads((v0_run / "state.json").read_text())["stages"]
    assert {s["status"] for s in stages.values()} == {"done"} and len(stages) == 6


def test_first_write_to_a_v0_run_moves_its_stage_state(v0_run):
    run = RunDir(v0_run)
    assert run.missing_stages() == []  # read from the old report.json
    run.update_report(timings={"extra": 1.5})
    data = json.loads((v0_run / "report.json").read_text())
    assert data["schema_version"] == SCHEMA_VERSION and "stages" not in data
    assert data["timings"]["extra"] == 1.5 and data["timings"]["total"] == 80.142  # merged, one level deep
    assert json.loads((v0_run / "state.json").read_text())["stages"] == _v0()["stages"]
    assert run.missing_stages() == []


def test_the_writer_checks_sections_and_leaves_the_file_on_error(tmp_path):
    run = RunDir(tmp_path)
    run.update_report(metrics={"student": {"accuracy": 0.5, "n": 10}})
    before = (tmp_path / "report.json").read_text()
    with pytest.raises(ValueError, match="not a report.json section: stages"):
        run.update_report(stages={})
    with pytest.raises(ValueError, match=r"metrics\.baseline\.accuracy"):
        run.update_report(metrics={"baseline": {"accuracy": "high"}})  # a metric that is not a number
    assert (tmp_path / "report.json").read_text() == before
    run.update_report(metrics={"baseline": {"accuracy": 0.4}})  # merged beside the student
    assert set(run.load_record().metrics) == {"student", "baseline"}
    run.replace_report(metrics={"teacher": {"accuracy": 0.9}})
    assert set(run.load_record().metrics) == {"teacher"}


def test_a_claimed_run_keeps_its_state_apart_from_its_record(tmp_path):
    run = RunDir.create(tmp_path / "r", fresh=True, stages=("train_teacher", "distill"))
    run_id = json.loads(run.file("state.json").read_text())["run_id"]
    assert json.loads(run.file("report.json").read_text()) == {"schema_version": SCHEMA_VERSION, "run_id": run_id}
    run.mark_stage("train_teacher")
    assert run.missing_stages() == ["distill"]
    assert "stages" not in run.load_report()


def test_checked_in_json_schema_is_what_the_models_generate():
    from distill_export.record.schema import SCHEMA_FILE, render

    assert SCHEMA_FILE.read_text(encoding="utf-8") == render(), (
        "docs/report.schema.json is stale: run `python -m distill_export.record.schema`")


def test_reports_validate_against_the_published_schema():
    jsonschema = pytest.importorskip("jsonschema")
    from distill_export.record.schema import SCHEMA_FILE

    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.validate(upgrade(_v0())[0], schema)
    jsonschema.validate(_v0(), schema)  # a v0 file too (extra keys are allowed)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"metrics": {"student": {"accuracy": "high"}}}, schema)
