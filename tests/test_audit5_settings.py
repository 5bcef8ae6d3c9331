"""The fifth audit's settings (issue 24: SC1, X1, LF3, P1/P2b). A setting that cannot apply is
refused in one line, exit 2, before anything is written; a setting the run changes is recorded
as it ran:
- SC1: an explicit --self-training-control with a labels-only objective (no teacher to control);
  the demo recipe's own control with labels_only is not refused (report.json: skipped, with why);
- X1: --skip-bad-rows on a built-in dataset (no manifest, so no row to skip);
- LF3: a --label-fraction under the one-per-class floor keeps more rows than asked: the kept
  fraction is recorded next to the asked one, the report sentence and a note say both;
- P1/P2b: `profile FILE --input-shape` that contradicts the file's own fixed input (a student
  checkpoint's input_shape, an ONNX file's static dims); a dynamic ONNX dim still takes it."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

from _cli_checks import one_line_error, snapshot
from distill_export.cli import app
from distill_export.errors import ConfigError

runner = CliRunner()


# ----- SC1: --self-training-control with labels_only -------------------------------------------


@pytest.mark.parametrize("objective", [["--method", "labels_only"], []])
def test_sc1_an_explicit_control_with_a_labels_only_objective_is_refused(tmp_path, objective):
    config = tmp_path / "c.yaml"  # distill.terms that are CE only: labels only too
    config.write_text("distill:\n  terms: [{name: ce, weight: 1.0}]\n" if not objective else "seed: 0\n")
    out, before = tmp_path / "run", snapshot(tmp_path)
    line = one_line_error(runner.invoke(app, ["run", "--config", str(config), *objective, "--self-training-control",
                                              "--out", str(out), "--quiet"]), 2)
    shown = "--method labels_only" if objective else "distill.terms"
    assert line == (f"error: --self-training-control (distill.self_training_control) cannot apply: {shown} is labels "
                    "only (no term reads a teacher), so a control teacher would have nothing to teach; drop "
                    "--self-training-control or choose a method that distills (e.g. --method pseudo_label)"), line
    assert snapshot(tmp_path) == before and not out.exists()


def test_sc1_the_recipes_control_or_an_off_flag_with_labels_only_is_not_refused():
    from distill_export.cli.options import load
    from distill_export.flag_checks import check_flags_apply

    # the demo recipe turns the control on; labels_only then records it as skipped (distill_runs.py)
    assert load(None, None, {"distill.method": "labels_only"}).distill.self_training_control is True
    assert load(None, None, {"distill.method": "labels_only",
                             "distill.self_training_control": False}).distill.self_training_control is False
    config = load(None, None, {"distill.method": "pseudo_label", "distill.self_training_control": True})
    check_flags_apply(config, {"distill.self_training_control": True})  # a teacher term: the control applies
    config.distill.method = "labels_only"  # `distill RUN --method labels_only --self-training-control` (open_run)
    with pytest.raises(ConfigError, match=r"^--self-training-control .* cannot apply: distill.method labels_only"):
        check_flags_apply(config, {"distill.self_training_control": True})


def test_sc1_labels_only_records_the_recipes_control_as_skipped_with_why(monkeypatch):
    from contextlib import nullcontext
    from types import SimpleNamespace

    from distill_export import distill, distill_runs

    monkeypatch.setattr(distill, "train_baseline", lambda *a, **k: ("net", {"epochs": 1}))  # no training here
    monkeypatch.setattr(distill_runs, "training_checkpoint", lambda *a: None)
    monkeypatch.setattr(distill_runs, "timed", lambda run, name: nullcontext())
    config = SimpleNamespace(distill=SimpleNamespace(augment="none", self_training_control=True))
    models, _, _, control, _ = distill_runs.labels_only_models(config, None, None, "cpu", [], True)
    assert control == {"skipped": "labels_only: no term reads a teacher, so there is no control to run"}
    assert "self_training" not in models  # no control model: the report has no control comparison


# ----- X1: --skip-bad-rows on a built-in dataset -----------------------------------------------


@pytest.mark.parametrize("command", ["run", "train-teacher"])
def test_x1_skip_bad_rows_on_the_built_in_dataset_is_refused(tmp_path, command):
    out, before = tmp_path / "run", snapshot(tmp_path)
    line = one_line_error(runner.invoke(app, [command, "--skip-bad-rows", "--out", str(out), "--quiet"]), 2)
    assert line == ("error: --skip-bad-rows (data.skip_bad_rows) skips bad rows of a manifest .csv/.jsonl, but "
                    "data.source avdigits is a built-in dataset, not a manifest; drop --skip-bad-rows"), line
    assert snapshot(tmp_path) == before and not out.exists()


def test_x1_skip_bad_rows_with_a_manifest_still_applies(tmp_path):
    from distill_export.cli.options import load

    assert load(None, None, {"data.source": str(tmp_path / "m.csv"), "data.skip_bad_rows": True}).data.skip_bad_rows
    with pytest.raises(ConfigError, match=r"data.source moving_digits is a built-in dataset"):
        load("moving_digits", None, {"data.skip_bad_rows": True})


# ----- LF3: the kept label fraction is recorded and said --------------------------------------


def test_lf3_a_fraction_under_the_floor_records_what_was_kept_and_says_so(capsys):
    from distill_export.config import DataConfig
    from distill_export.data import load_dataset

    data = load_dataset(DataConfig(max_train_rows=1000, label_fraction=0.005), seed=0)
    assert int(data.train.labeled.sum()) == 10  # one per class: 1%, not the 0.5% asked
    assert data.info["label_fraction"] == 0.005 and data.info["label_fraction_kept"] == 0.01
    err = capsys.readouterr().err
    assert err.strip() == ("note: --label-fraction 0.005 (data.label_fraction) keeps 10 of the 1000 labelled "
                           "training rows (1.0%): whole rows are kept, at least one per class; report.json records both "
                           "(label_fraction, label_fraction_kept)"), err
    full = load_dataset(DataConfig(max_train_rows=1000, label_fraction=0.1), seed=0)  # 100 of 1000: as asked
    assert full.info["label_fraction_kept"] == 0.1 and capsys.readouterr().err == ""


def test_lf3_the_report_sentence_says_the_kept_fraction_and_the_asked_one():
    from distill_export.record.models import Distill
    from distill_export.tasks.classification import report as classification
    from distill_export.tasks.detection import report as detection

    floor = Distill(method="labels_only", terms=[{"name": "ce", "weight": 1.0}], label_fraction=0.005,
                    label_fraction_kept=0.01)
    assert classification._setting(floor) == ("labels_only: 1·ce; 1.0% of training labels (asked 0.5%; whole rows, "
                                              "at least one per class)")
    assert detection._setting(floor).endswith("1.0% of training labels (asked 0.5%; whole rows, at least one image)")
    as_asked = Distill(terms=[{"name": "ce", "weight": 1.0}], label_fraction=0.05, label_fraction_kept=0.0502)
    assert classification._setting(as_asked).endswith("; 5.0% of training labels")
    older = Distill(terms=[{"name": "ce", "weight": 1.0}], label_fraction=0.05)  # a report without the kept one
    assert classification._setting(older).endswith("; 5.0% of training labels")


# ----- P1/P2b: profile --input-shape against the model's own input ------------------------------


def _onnx(path, dims):
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, dims)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("Relu", ["image"], ["y"])], "g", [x], [y]),
                                opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _student(path):
    from distill_export.nets.checkpoint import save_checkpoint
    from distill_export.nets.students import create_student

    save_checkpoint(path, create_student("tiny_cnn", 10, in_channels=1, input_size=28), kind="student",
                    arch="tiny_cnn", arch_kwargs={"num_classes": 10, "in_channels": 1, "input_size": 28},
                    meta={"input_shape": [1, 28, 28], "input_name": "image"})
    return path


def _profile(path, shape, out):
    return runner.invoke(app, ["profile", str(path), "--input-shape", shape, "--batch", "1", "--threads", "1",
                               "--warmup", "0.01", "--min-time", "0.02", "--min-iters", "2", "--out", str(out), "-q"])


def test_p1_an_input_shape_that_contradicts_a_student_checkpoint_is_refused(tmp_path):
    path = _student(tmp_path / "student.pt")
    out, before = tmp_path / "prof", snapshot(tmp_path)
    line = one_line_error(_profile(path, "1,64,64", out), 2)
    assert line == (f"error: --input-shape 1,64,64 contradicts {path}, whose input is 'input' [batch, 1,28,28], what "
                    "it runs at (the flag sets only an ONNX file's dynamic dims): profile.json would record the "
                    "flag's shape for a measurement at the model's own; drop --input-shape or give 1,28,28"), line
    assert snapshot(tmp_path) == before and not out.exists()


def test_p2b_an_input_shape_that_contradicts_an_onnx_files_static_dims_is_refused(tmp_path):
    path = _onnx(tmp_path / "student.onnx", [1, 1, 28, 28])
    out, before = tmp_path / "prof", snapshot(tmp_path)
    line = one_line_error(_profile(path, "1,64,64", out), 2)
    assert line == (f"error: --input-shape 1,64,64 contradicts {path}, whose input is 'image' [batch, 1,28,28], "
                    "fixed: profile.json would record the flag's shape for a measurement at the model's own; drop "
                    "--input-shape or give 1,28,28"), line
    assert snapshot(tmp_path) == before and not out.exists()
    partly = _onnx(tmp_path / "hw.onnx", ["batch", 1, "h", "w"])  # a static channel the flag must keep
    line = one_line_error(_profile(partly, "3,64,64", out), 2)
    assert line == (f"error: --input-shape 3,64,64 contradicts {partly}: its input 'image' is [batch, 1,?,?] ('?' "
                    "dynamic) and the flag sets only the dynamic dims; keep the static ones (1,?,? with each ? given) "
                    "or drop --input-shape"), line
    assert not out.exists()


def test_p2b_dynamic_dims_take_the_flag_and_the_files_own_shape_is_accepted(tmp_path):
    import json

    partly = _onnx(tmp_path / "hw.onnx", ["batch", 1, "h", "w"])
    result = _profile(partly, "1,64,64", tmp_path / "a")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "a" / "profile.json").read_text())["profile"]["settings"]["input_shape"] == [1, 64, 64]
    fixed = _onnx(tmp_path / "fixed.onnx", [1, 1, 28, 28])
    assert _profile(fixed, "1,28,28", tmp_path / "b").exit_code == 0  # the file's own shape: true, so kept


def test_p1_a_checkpoint_with_several_or_unknown_inputs_takes_no_input_shape():
    from distill_export.profiling.input_shapes import check_given_shape

    two = {"image": [1, 28, 28], "audio": [1, 32, 32]}
    with pytest.raises(ConfigError, match=r"whose inputs are 'image' \[batch, 1,28,28\]; 'audio' \[batch, 1,32,32\], "
                                          r"what it runs at .*; drop --input-shape$"):
        check_given_shape((1, 28, 28), "teacher.pt", two, fills=False)
    with pytest.raises(ConfigError, match=r"'image' \[batch, 1,\?,\?\], what it runs at"):
        check_given_shape((1, 28, 28), "teacher.pt", {"image": [1, None, None]}, fills=False)
    check_given_shape((1, 28, 28), "student.pt", {"input": [1, 28, 28]}, fills=False)  # its own: accepted
    check_given_shape(None, "teacher.pt", two, fills=False)  # not given: nothing to check


def test_p1_an_engine_whose_stamp_fixes_another_shape_is_refused(tmp_path):
    import json

    engine = tmp_path / "student.engine"  # never opened: the stamp beside it says what it was built for
    engine.write_bytes(b"not an engine")
    (tmp_path / "student.engine.json").write_text(json.dumps({"input_shape": [1, 1, 28, 28]}))
    out, before = tmp_path / "prof", snapshot(tmp_path)
    line = one_line_error(_profile(engine, "1,64,64", out), 2)
    assert line.startswith(f"error: --input-shape 1,64,64 contradicts {engine}, whose input is 'input' "
                           "[batch, 1,28,28], what it runs at"), line
    assert line.endswith("drop --input-shape or give 1,28,28") and snapshot(tmp_path) == before and not out.exists()
