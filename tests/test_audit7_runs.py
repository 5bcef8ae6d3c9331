"""The seventh audit's runs, tune and settings (issue 24):
- DD1: `distill RUN` on a detection run summed up by 'accuracy', a key detection has not
  (KeyError after the stage ran): it names the task's own score (mAP50);
- TU12 / TU10: tune's default output RUN/tuned.yaml is checked before the search: a folder, a
  link or a file tune did not write (a person's edit) is refused naming --out; its own is rewritten;
- ST1: data.streaming=on with a built-in dataset (nothing streams) is refused before any folder;
- E8 / E5: an empty or repeated name in --format is refused, not recorded as asked;
- N9: a temperature below 0.01 (-T 1e-320) is refused naming distill.temperature, not trained into NaN;
- G1 / G4: a gate of the other task is named as that task's gate, with this run's gates.
Each bad input: exit 2, one line naming the thing, nothing written or changed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from _cli_checks import one_line_error, snapshot
from distill_export.cli import app
from distill_export.config import load_config

runner = CliRunner()
DETECTION = {"task": "detection", "student.name": "centernet_tiny", "distill.method": "det_kd"}


# ----- DD1: `distill` on a detection run ------------------------------------------------------


def test_dd1_distill_on_a_detection_run_sums_up_by_map50(tmp_path):
    """A real tiny detection run (6 clips, 1 epoch each): the stage and its summary line."""
    pytest.importorskip("av")
    pytest.importorskip("faster_coco_eval")
    from _video_fixtures import make_video_manifest

    manifest = make_video_manifest(tmp_path, per_split=(6, 3, 3), boxes=True)
    config = tmp_path / "det.yaml"
    config.write_text(yaml.safe_dump({
        "task": "detection", "data": {"source": str(manifest), "student_modality": "image", "clip_frames": 5,
                 "label_fraction": 0.5},
        "teacher": {"fusion": "late", "width": 8, "epochs": 1}, "student": {"name": "centernet_tiny"},
        "distill": {"method": "det_kd", "epochs": 1, "self_training_control": False}}))
    run = tmp_path / "run"
    result = runner.invoke(app, ["train-teacher", "--config", str(config), "--out", str(run), "--quiet"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["distill", str(run), "--quiet"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "Traceback" not in result.output and "student mAP50 " in result.output, result.output
    report = json.loads((run / "report.json").read_text())
    assert f"{100 * report['metrics']['student']['map50']:.1f}%" in result.output


def test_dd1_distill_on_a_classification_run_still_says_accuracy(run_copy):
    result = runner.invoke(app, ["distill", str(run_copy), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "student accuracy " in result.output and "baseline " in result.output, result.output


# ----- TU12 / TU10: tune's default output ------------------------------------------------------


def _detection_run(tmp_path: Path) -> Path:
    """A detection run as far as `tune`'s checks before any trial can tell."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(load_config(None, None, DETECTION).to_dict(), sort_keys=False))
    (run / "report.json").write_text(json.dumps({}))
    return run


def _no_search(monkeypatch):
    """tune's search replaced: a refusal must come before it (the audit's TU12 ran it first)."""
    import distill_export.tune as tune_module

    calls = []
    monkeypatch.setattr(tune_module, "tune", lambda *a, **k: calls.append(a) or pytest.fail("the search ran"))
    return calls


@pytest.mark.parametrize("kind", ["folder", "symlink", "edited"])
def test_tu12_tune_refuses_a_default_output_it_did_not_write_before_the_search(tmp_path, monkeypatch, kind):
    run = _detection_run(tmp_path)
    target = run / "tuned.yaml"
    if kind == "folder":
        target.mkdir()
        (target / "keep").write_text("mine")
    elif kind == "symlink":
        (tmp_path / "mine.yaml").write_text("distill: {method: hinton}\n")
        target.symlink_to(tmp_path / "mine.yaml")
    else:
        target.write_text("# my own settings\ndistill: {method: hinton}\n")
    _no_search(monkeypatch)
    before = snapshot(tmp_path)
    line = one_line_error(runner.invoke(app, ["tune", str(run), "--trials", "1", "--confirm-seeds", "0"]))
    assert line.startswith(f"error: {target} "), line
    assert {"folder": "is not a regular file (a directory)", "symlink": "is a symbolic link; move it away or give "
            "--out NEW.yaml", "edited": "was not written by tune"}[kind] in line  # a folder: refused on opening the run
    assert ".tmp" not in line and snapshot(tmp_path) == before


def test_tu10_tune_rewrites_its_own_default_output(tmp_path, monkeypatch):
    """A RUN/tuned.yaml with tune's header is the run's own file: the next tune rewrites it."""
    import distill_export.tune as tune_module

    run = _detection_run(tmp_path)
    (run / "tuned.yaml").write_text(f"{tune_module.TUNE_HEADER} (1 completed trials)\ndistill: {{}}\n")
    summary = {"best": {"method": "det_kd", "val_accuracy": 0.5}, "completed": 1, "pruned": 0, "seconds": 1.0,
               "confirmation": None, "decision": {"line": "distil"}}
    monkeypatch.setattr(tune_module, "tune", lambda *a, **k: summary)
    result = runner.invoke(app, ["tune", str(run), "--trials", "1", "--confirm-seeds", "0"])
    assert result.exit_code == 0, result.output


def test_tu10_the_header_tune_checks_is_the_one_it_writes():
    import inspect

    import distill_export.tune as tune_module

    assert 'header = (f"{TUNE_HEADER} (' in inspect.getsource(tune_module.tune)


# ----- ST1: streaming on a built-in dataset ----------------------------------------------------


@pytest.mark.parametrize("command", ["train-teacher", "run"])
def test_st1_streaming_on_with_built_in_data_is_refused_before_any_folder(tmp_path, command):
    config = tmp_path / "st1.yaml"
    config.write_text(yaml.safe_dump({"data": {"max_train_rows": 100, "streaming": "on"},
                                      "teacher": {"epochs": 1, "width": 8}}))
    out = tmp_path / "out"
    before = snapshot(tmp_path)
    line = one_line_error(runner.invoke(app, [command, "--config", str(config), "--out", str(out), "--quiet"]))
    assert line.startswith("error: data.streaming=on ") and "data.source avdigits is a built-in dataset" in line, line
    assert snapshot(tmp_path) == before and not out.exists()


def test_st1_streaming_auto_and_off_still_load_with_built_in_data(tmp_path):
    from distill_export.cli.options import load

    for value in ("auto", "off"):
        config = tmp_path / f"{value}.yaml"
        config.write_text(yaml.safe_dump({"data": {"streaming": value}}))
        assert load(None, config, {}).data.streaming == value


# ----- E8 / E5: empty or repeated export format names -----------------------------------------


@pytest.mark.parametrize("spec, needle", [("", "has an empty format name"),
                                          ("onnx,,onnx", "has an empty format name"),
                                          ("onnx,onnx-fp16,onnx", "names onnx more than once")])
def test_e8_export_refuses_an_empty_or_repeated_format_name(run_copy, spec, needle):
    before = snapshot(run_copy)
    line = one_line_error(runner.invoke(app, ["export", str(run_copy), "--format", spec, "--quiet"]))
    assert line.startswith(f"error: export.formats (--format) {spec!r} ") and needle in line, line
    assert snapshot(run_copy) == before


def test_e8_format_lists_without_empties_parse_as_before():
    from distill_export.export import parse_formats

    assert parse_formats(" onnx-fp16 , onnx-int8") == ["onnx", "onnx-fp16", "onnx-int8"]
    assert parse_formats([]) == ["onnx"]


# ----- N9: a temperature too small to train ----------------------------------------------------


@pytest.mark.parametrize("value", ["1e-320", "0.001"])
def test_n9_a_tiny_temperature_is_refused_naming_the_key(run_copy, value):
    before = snapshot(run_copy)
    line = one_line_error(runner.invoke(app, ["distill", str(run_copy), "--method", "hinton", "-T", value, "-q"]))
    assert line.startswith("error: distill.temperature must be in [0.01, 1000]"), line
    assert snapshot(run_copy) == before


def test_n9_a_terms_own_temperature_has_the_same_bound():
    from distill_export.config_checks import MIN_TEMPERATURE
    from distill_export.errors import ConfigError
    from distill_export.methods import base
    from distill_export.methods.kd import HintonKD

    assert base.MIN_TEMPERATURE == MIN_TEMPERATURE
    message = rf"term {HintonKD.name}: temperature must be a finite number >= 0.01, got 1e-05"
    with pytest.raises(ConfigError, match=message):
        HintonKD(temperature=1e-5)
    assert HintonKD(temperature=0.01).temperature == 0.01


def test_n9_tunes_temperature_search_stays_within_the_bound():
    from distill_export.config_checks import MIN_TEMPERATURE
    from distill_export.methods.base import term_class, term_names

    for name in term_names():
        low = (getattr(term_class(name), "search", {}) or {}).get("temperature", (MIN_TEMPERATURE,))[0]
        assert low >= MIN_TEMPERATURE, name


# ----- G1 / G4: a gate of the other task -------------------------------------------------------


@pytest.mark.parametrize("task, gate, other", [("detection", "fp32_agreement", "classification"),
                                               ("classification", "fp32_map50_delta", "detection")])
def test_g1_a_gate_of_the_other_task_is_named_as_such(task, gate, other):
    from distill_export import validate
    from distill_export.errors import ConfigError
    from distill_export.tasks import get_task

    run_task = get_task(task)
    with pytest.raises(ConfigError) as err:
        validate.parse_gate_flags([f"{gate}=0.5"], run_task)
    names = ", ".join(g.config_key for g in run_task.gates)
    assert str(err.value) == f"--gate {gate} is a {other} gate, but this run's task is {task}; its gates: {names}"


def test_g1_validate_with_a_detection_gate_on_a_classification_run_is_one_line(run_copy):
    before = snapshot(run_copy)
    line = one_line_error(runner.invoke(app, ["validate", str(run_copy), "--gate", "fp32_map50_delta=0.01"]))
    assert line.startswith("error: --gate fp32_map50_delta is a detection gate") and "fp32_max_abs" in line, line
    assert "expects NAME=VALUE" not in line and snapshot(run_copy) == before
