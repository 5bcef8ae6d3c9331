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


# ----- distill.rounds > 1 with a labels-only objective --------------------------------------------
LABELS_ONLY = [
    (["--method", "labels_only"], None),
    ([], {"distill": {"terms": [{"name": "ce", "weight": 1.0}]}}),
]


@pytest.mark.parametrize("flags,config", LABELS_ONLY, ids=["method_labels_only", "terms_ce_only"])
def test_rounds_with_a_labels_only_objective_is_refused(tmp_path, flags, config):
    args = ["run", "--rounds", "2", "--out", str(tmp_path / "r"), *flags]
    if config is not None:
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
        args += ["--config", str(tmp_path / "c.yaml")]
    before = snapshot(tmp_path)
    line = one_line_error(runner.invoke(app, args), 2)
    assert "distill.rounds" in line and "labels only" in line
    # the fix works wherever rounds came from (a recipe's, too: 49th audit R1)
    assert "pass --rounds 1 (it overrides a recipe's or --config's distill.rounds)" in line, line
    assert not (tmp_path / "r").exists() and snapshot(tmp_path) == before


def test_rounds_with_labels_only_is_refused_by_the_distill_stage(fake_run):
    before = snapshot(fake_run.parent)
    result = runner.invoke(app, ["distill", str(fake_run), "--rounds", "2", "--method", "labels_only"])
    line = one_line_error(result, 2)
    assert "distill.rounds" in line and "labels only" in line
    assert snapshot(fake_run.parent) == before


# ----- tune --methods: something to search ----------------------------------------------------------
BAD_METHODS = [(",", "names no preset"), (" , ,", "names no preset"), ("", "names no preset"),
               ("labels_only", "nothing to search"), ("labels_only,labels_only", "nothing to search")]


@pytest.mark.parametrize("methods,needle", BAD_METHODS, ids=[repr(m) for m, _ in BAD_METHODS])
def test_tune_methods_with_nothing_to_search_is_refused(fake_run, methods, needle):
    before = snapshot(fake_run.parent)
    line = one_line_error(runner.invoke(app, ["tune", str(fake_run), "--methods", methods]), 2)
    assert "--methods" in line and needle in line
    assert snapshot(fake_run.parent) == before


# ----- tune --out: never a user file, never a run file ----------------------------------------------
def _tune_out_cases(run, tmp):
    (tmp / "mine.yaml").write_text("my: notes\n")
    (tmp / "link.yaml").symlink_to(tmp / "gone.yaml")
    return [
        (tmp / "mine.yaml", "already exists"),  # a user file
        (tmp / "link.yaml", "already exists"),  # a dangling link would write through to its target
        (run / "config.yaml", "already exists"),  # the run's own config
        (run / "report.json", "already exists"),
        (run / "tune.json", "inside the run directory"),  # a run file tune itself writes later
        (run / "student.onnx", "inside the run directory"),  # a run file a later stage writes
        (tmp / "no" / "such" / "t.yaml", "does not exist"),
    ]


@pytest.mark.parametrize("case", range(7))
def test_tune_out_never_replaces_a_file(fake_run, case):
    target, needle = _tune_out_cases(fake_run, fake_run.parent)[case]
    before = snapshot(fake_run.parent)
    line = one_line_error(runner.invoke(app, ["tune", str(fake_run), "--out", str(target)]), 2)
    assert "--out" in line and needle in line
    assert snapshot(fake_run.parent) == before


def test_tune_out_accepts_a_new_path_outside_the_run(fake_run):
    """The check refuses nothing else: a new file outside the run gets past it (this fake run then
    stops at its missing teacher)."""
    result = runner.invoke(app, ["tune", str(fake_run), "--out", str(fake_run.parent / "best.yaml")])
    assert result.exit_code == 2 and "teacher.pt is missing" in result.output, result.output
    assert not (fake_run.parent / "best.yaml").exists()


# ----- manifests with nothing to learn from (issue 24: the message said "one class only (none)") --


def test_a_header_only_manifest_is_named_as_having_no_rows(tmp_path):
    manifest = tmp_path / "data" / "header.csv"
    manifest.parent.mkdir()
    manifest.write_text("image,label\n")
    before = snapshot(tmp_path)
    message = one_line_error(CliRunner().invoke(app, ["run", "--data", str(manifest), "--out", str(tmp_path / "r")]), 2)
    assert "header.csv has a header but no rows" in message
    assert snapshot(tmp_path) == before


def test_a_manifest_without_any_label_says_so(tmp_path):
    from _byo_fixtures import make_manifest, read_rows, write_rows

    rows = read_rows(make_manifest(tmp_path / "data", modalities=("image",), split_column=False))
    manifest = write_rows(tmp_path / "data" / "unlabeled.csv", [{**r, "label": ""} for r in rows])
    before = snapshot(tmp_path)
    message = one_line_error(CliRunner().invoke(app, ["run", "--data", str(manifest), "--out", str(tmp_path / "r")]), 2)
    assert "no row has a label" in message and "one class only" not in message
    assert snapshot(tmp_path) == before


def test_calibration_flags_without_an_int8_format_are_refused(tiny_run, tmp_path):
    """--calibration-* only reach INT8 exports: given for an FP32-only export they would sit in
    config.yaml as if they ran (found by a fresh audit of issue 24)."""
    import hashlib
    import shutil

    from typer.testing import CliRunner

    from distill_export.cli import app

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in run.rglob("*") if p.is_file()}
    for flag in (["--calibration-samples", "7"], ["--calibration-method", "entropy"]):
        result = CliRunner().invoke(app, ["export", str(run), "--format", "onnx", *flag])
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and flag[0] in lines[0] and "onnx-int8" in lines[0]
    assert before == {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in run.rglob("*") if p.is_file()}


def test_a_labels_only_run_records_no_temperature_or_alpha(tiny_run, tmp_path):
    """The report never records a setting that did not run: a labels-only objective reads no
    temperature, alpha or beta (a fresh audit found `distill --method labels_only -T 9` recorded
    as temperature 9.0). The run's config.yaml still holds its temperature (4); an explicit -T with
    labels_only is now refused up front (tests/test_audit4_settings.py)."""
    import json
    import shutil

    from typer.testing import CliRunner

    from distill_export.cli import app

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    result = CliRunner().invoke(app, ["distill", str(run), "--method", "labels_only", "--quiet"])
    assert result.exit_code == 0, result.output
    distill = json.loads((run / "report.json").read_text())["distill"]
    assert distill["distilled"] is False
    assert distill["temperature"] is None and distill["alpha"] is None and distill["beta"] is None


def test_profile_input_shape_on_a_run_is_refused(tiny_run, tmp_path):
    """--input-shape on a run directory was recorded in profile.settings but not used (the run's
    models take its own shape; a fresh audit of issue 24): refused in one line, run unchanged."""
    import hashlib
    import shutil

    from typer.testing import CliRunner

    from distill_export.cli import app

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in run.rglob("*") if p.is_file()}
    result = CliRunner().invoke(app, ["profile", str(run), "--input-shape", "3,9,9"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "--input-shape" in lines[0]
    assert before == {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in run.rglob("*") if p.is_file()}
