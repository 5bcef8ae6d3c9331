"""Fifty-fourth round and after (issue 24): what the fifty-third and fifty-fourth fresh audits found."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from _cli_checks import one_line_error, snapshot
from distill_export.cli import app

runner = CliRunner()


# ----- 54th B2, B3: a state.json whose stages are not the product's shape -------------------------


@pytest.mark.parametrize(("edit", "named"), [
    (lambda stages: {**stages, "validate": "done"}, "`stages.validate` must be a mapping with a status"),
    (lambda stages: [], "`stages` must be a mapping of stage name to its state, got list"),
    (lambda stages: {**stages, "export": {"status": "finished"}}, "`stages.export` must be a mapping with a status "
                                                                  "(pending, done, stale), got status 'finished'"),
])
@pytest.mark.parametrize("command", ["report", "validate"])
def test_a54_b2_b3_a_hand_edited_stage_record_is_named_and_nothing_changes(run_copy, edit, named, command):
    """A string entry was an AttributeError traceback; a list was read as a run made before stages were
    recorded, so `validate` checked no stage and rewrote state.json with two stages left."""
    state = run_copy / "state.json"
    data = json.loads(state.read_text())
    data["stages"] = edit(data["stages"])
    state.write_text(json.dumps(data))
    before = snapshot(run_copy)
    line = one_line_error(runner.invoke(app, [command, str(run_copy)]))
    assert line.startswith(f"error: {state} is corrupt: {named}"), line
    assert snapshot(run_copy) == before


# ----- 53rd B1: a video column as the student modality -------------------------------------------


def test_a53_b1_a_video_student_modality_is_refused_before_any_training(tmp_path, monkeypatch):
    """`--student-modality video` (the manifest's own column) reached conv2d with (B, T, C, H, W) clips:
    a traceback, once the teacher stage was recorded done (and under --nproc 2, from both ranks)."""
    from _video_fixtures import make_video_manifest
    from test_audit31 import _refused

    monkeypatch.chdir(tmp_path)
    manifest = make_video_manifest(tmp_path / "vd", per_split=(6, 2, 2), boxes=True, unlabeled=2)
    line = _refused(runner.invoke(app, ["run", "--task", "detection", "--student", "centernet_tiny", "--method", "det_kd",
                                        "--label-fraction", "0.5", "--data", str(manifest), "--student-modality", "video",
                                        "--epochs", "1", "--teacher-epochs", "1", "--out", "n1", "-q"]))
    assert line == ("error: student modality 'video' is video (clips of shape (5, 1, 16, 16)); the built-in students "
                    "take one image per row: use --student-modality image (each clip at its target frame), or pass "
                    "--student package.module:factory for a clip student"), line
    assert not (tmp_path / "n1").exists()


# ----- 54th B1, A1, B6, B7: a number in report.json that its own sources contradict --------------


def _edit_report(run, edit) -> None:
    path = run / "report.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _set(keys: str, value):
    def edit(data):
        *head, last = keys.split(".")
        for key in head:
            data = data[key]
        data[last] = value
    return edit


@pytest.mark.parametrize(("edit", "named"), [
    (lambda d: _set("metrics.student.accuracy", d["metrics"]["student"]["accuracy"] + 0.25)(d),
     "metrics.student: accuracy "),
    (lambda d: _set("metrics.student.macro_f1", 0.999)(d), "metrics.student: macro_f1 0.999 is not"),
    (lambda d: _set("metrics.student.n", d["metrics"]["student"]["n"] + 1)(d), "metrics.student: n "),
    (_set("metrics.student.confusion_matrix", [[1, 2], [3]]), "confusion_matrix is not square"),
    (_set("metrics.baseline", {"confusion_matrix": [[1, 0], [0, 1]]}), "metrics.baseline.confusion_matrix has 2 rows for "
                                                                      "the dataset's"),
    (lambda d: _set("kd_gain", d["kd_gain"] + 0.5)(d), "kd_gain "),
    (lambda d: _set("comparisons.student_vs_baseline.gain", d["kd_gain"] + 0.001)(d),  # within its CI, same verdict
     "comparisons.student_vs_baseline.gain "),
])
def test_a54_b1_a_hand_edited_score_its_sources_contradict_is_refused(run_copy, edit, named):
    """report.json's accuracy 0.99 beside its own confusion matrix with 0 of 3 right was rendered as
    measured ("student | 99.0%") next to kd_gain +0.00; a ragged matrix was accepted."""
    _edit_report(run_copy, edit)
    before = snapshot(run_copy)
    line = one_line_error(runner.invoke(app, ["report", str(run_copy)]))
    assert line.startswith(f"error: {run_copy / 'report.json'} is corrupt: ") and named in line, line
    assert snapshot(run_copy) == before


def _detection_record() -> dict:
    per_class = {"<i>x</i>": {"ap50": 0.5, "ap50_95": 0.25, "n_objects": 2},
                 "a|b": {"ap50": 0.25, "ap50_95": 0.125, "n_objects": 1}}
    metrics = {"map50": 0.375, "map50_95": 0.1875, "per_class": per_class, "n_images": 3, "n_objects": 3}
    return {"task": {"name": "detection", "headline": "map50"}, "dataset": {"class_names": list(per_class)},
            "metrics": {"student": metrics, "baseline": json.loads(json.dumps(metrics))}}


@pytest.mark.parametrize(("edit", "named"), [
    (_set("metrics.student.per_class.a|b.ap50", "x"), "metrics.student.per_class.a|b.ap50: Input should be a valid number"),
    (_set("metrics.student.map50", 7.5), "metrics.student.map50: Input should be less than or equal to 1"),
    (_set("metrics.student.map50_95", float("inf")), "metrics.student.map50_95: Input should be a finite number"),
    (_set("metrics.student.n_images", -1), "metrics.student.n_images: Input should be greater than or equal to 0"),
    (_set("metrics.student.map50", 0.9), "map50 0.9 is not the mean of the per-class ap50 (0.375000)"),
    (_set("metrics.student.n_objects", 4), "n_objects 4 is not the per-class counts' sum 3"),
    (_set("metrics.student.per_class.zzz", {"ap50": None, "ap50_95": None, "n_objects": 0}),
     "metrics.student.per_class does not list the dataset's classes (differs in ['zzz'])"),
])
def test_a54_b6_b7_detection_metrics_are_typed_and_agree(tmp_path, edit, named):
    """A string AP was a report traceback; mAP50 7.5 rendered as 750.0, inf and -1 as themselves, and a
    class the dataset lacks got a row: detection's numbers were extra keys, checked for booleans only."""
    from distill_export.errors import DistillExportError
    from distill_export.record import store

    path = tmp_path / "report.json"
    good = _detection_record()
    path.write_text(json.dumps(good))
    store.load(path)  # the record as written loads
    edit(good)
    path.write_text(json.dumps(good))
    with pytest.raises(DistillExportError) as caught:
        store.load(path)
    assert str(caught.value).startswith(f"{path} is corrupt: ") and named in str(caught.value), str(caught.value)


# ----- 53rd A1, A2: a relative --teacher read from another folder ---------------------------------


def _relative_teacher_run(run_copy, tmp_path, other: bytes | None):
    """run_copy as if made with `--teacher t/teacher.pt`; a folder `elsewhere` holding `other` there."""
    import yaml

    config = yaml.safe_load((run_copy / "config.yaml").read_text())
    config["teacher"]["path"] = "t/teacher.pt"
    (run_copy / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    state = json.loads((run_copy / "state.json").read_text())
    state["written_config"] = config
    (run_copy / "state.json").write_text(json.dumps(state))
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "t").mkdir(parents=True)
    if other is not None:
        (elsewhere / "t" / "teacher.pt").write_bytes(other)
    return elsewhere


@pytest.mark.parametrize("command", ["validate", "profile", "report"])
def test_a53_a2_a_missing_relative_teacher_says_where_it_was_read(run_copy, tmp_path, monkeypatch, command):
    """From a folder without the file it was only "checkpoint t/teacher.pt does not exist"."""
    monkeypatch.chdir(_relative_teacher_run(run_copy, tmp_path, None))
    before = snapshot(run_copy)
    line = one_line_error(runner.invoke(app, [command, str(run_copy)]))
    assert line == (f"error: t/teacher.pt (teacher.path, read from the current folder {tmp_path / 'elsewhere'}) does not "
                    f"exist there, so `{command}` cannot run; run it from the folder the run was started in"), line
    assert snapshot(run_copy) == before


def test_a53_a1_validate_names_itself_and_refuses_before_any_work(run_copy, tmp_path, monkeypatch):
    """validate checked every export, then its recommendation step refused "so `recommend` cannot run"."""
    monkeypatch.chdir(_relative_teacher_run(run_copy, tmp_path, (run_copy / "teacher.pt").read_bytes() + b"other"))
    before = snapshot(run_copy)
    line = one_line_error(runner.invoke(app, ["validate", str(run_copy)]))
    assert "is not the file the teacher stage measured, so `validate` cannot run" in line, line
    assert snapshot(run_copy) == before


# ----- 54th B5: the opset asked is the opset written -----------------------------------------------


@pytest.mark.parametrize("opset", [17, 18])
def test_a54_b5_the_onnx_file_has_the_opset_asked(tmp_path, opset):
    """`export --opset 17` with the dynamo exporter wrote opset 18 (its down-conversion failed, with a log
    line only) while report.json and config.yaml said 17. The file now has the asked opset, from
    TorchScript when dynamo cannot keep it."""
    import onnx
    import torch

    from distill_export.export.base import ExportOptions
    from distill_export.export.onnx import _torch_export
    from distill_export.nets.students import create_student

    model = create_student("tiny_cnn", 3, in_channels=1).eval()
    path = tmp_path / "m.onnx"
    exporter, why = _torch_export(model, torch.zeros(1, 1, 28, 28), path, "x", ExportOptions(opset=opset))
    written = {o.domain: o.version for o in onnx.load(str(path)).opset_import}
    assert written[""] == opset, (written, exporter, why)
    assert (why is None) == (exporter == "dynamo"), (exporter, why)


# ----- 54th B4, B8, A3: a tune record of other types or another method -------------------------------


def _tune_summary() -> dict:
    terms = [{"name": "ce", "weight": 0.5}, {"name": "kd", "weight": 0.5, "temperature": 4.0}]
    return {"decision": {"distill": True, "method": "hinton", "line": "hinton chosen", "terms": terms},
            "trials": 2, "completed": 2, "pruned": 0, "seconds": 1.0, "baseline_val_accuracy": 0.5,
            "best": {"method": "hinton", "terms": terms, "val_accuracy": 0.6}}


@pytest.mark.parametrize(("edit", "why"), [
    (lambda s: s["decision"].update(method="bogus"), "its decision's method 'bogus' is not a preset"),
    (lambda s: s["decision"].update(method="dist"), "its decision's terms (kd) are not method dist's"),
    (lambda s: s["best"].update(val_accuracy=5), "best.val_accuracy: Input should be less than or equal to 1"),
    (lambda s: s["best"].update(method=["x"]), "best.method: Input should be a valid string"),
    (lambda s: s["decision"].update(distill=False, terms=[{"name": "ce", "weight": 1.0}]),
     "a labels-only decision (distill false) with method 'hinton'"),
    (lambda s: s.update(completed=9), "completed 9 is more than the 2 trials"),
    (lambda s: s.update(seconds=-5), "seconds: Input should be greater than or equal to 0"),
])
def test_a54_b8_a_tune_json_choice_that_tune_cannot_write_is_named_on_resume(tmp_path, edit, why):
    """Method 'bogus' with ce + ls_kd trained a KD student that config.yaml called labels_only and
    report.md called 'bogus'; a best trial's val_accuracy 5 was recorded."""
    from distill_export.config import RunConfig
    from distill_export.errors import ConfigError
    from distill_export.tune_record import resumed_summary

    path = tmp_path / "tune.json"
    summary = _tune_summary()
    path.write_text(json.dumps(summary))
    assert resumed_summary(path, RunConfig())["decision"]["method"] == "hinton"
    edit(summary)
    path.write_text(json.dumps(summary))
    with pytest.raises(ConfigError) as caught:
        resumed_summary(path, RunConfig())
    assert str(caught.value).startswith(f"{path} is not the tune.json tune wrote (") and why in str(caught.value), \
        str(caught.value)


@pytest.mark.parametrize(("tune", "named"), [
    ({"trials": 2, "completed": 1, "seconds": -5, "decision": {"distill": "yes", "method": ["a"], "line": 5}},
     "tune.seconds: Input should be greater than or equal to 0"),
    ({"trials": 2, "completed": 9, "decision": {"distill": True, "method": "bogus", "line": "x"}},
     "tune.decision.terms: Field required"),
])
def test_a54_b4_a_report_tune_section_of_other_types_is_refused(run_copy, tune, named):
    """A tune section of the wrong types was rendered: "...trials completed ...): \\['a'\\]; 5." """
    _edit_report(run_copy, _set("tune", tune))
    before = snapshot(run_copy)
    line = one_line_error(runner.invoke(app, ["report", str(run_copy)]))
    assert line.startswith(f"error: {run_copy / 'report.json'} is corrupt: {named}"), line
    assert snapshot(run_copy) == before


# ----- 54th B9, B10, A2: state.json's other keys -----------------------------------------------------


@pytest.mark.parametrize(("key", "value", "named"), [
    ("written_config", "x", "`written_config` must be a dict, got str"),
    ("run_id", 5, "`run_id` must be a str, got int"),
    ("given_teacher_keys", [1], "`given_teacher_keys` must be a list of names, got list"),
    ("data", [], "`data` must be a dict, got list"),
])
def test_a54_b9_a2_a_state_key_of_another_type_is_named(run_copy, key, value, named):
    """`written_config: "x"` turned the config.yaml edit check off (export, validate and profile then ran
    with an edited teacher.epochs); `run_id: 5` was blamed on report.json."""
    state = run_copy / "state.json"
    data = json.loads(state.read_text())
    data[key] = value
    state.write_text(json.dumps(data))
    before = snapshot(run_copy)
    line = one_line_error(runner.invoke(app, ["export", str(run_copy)]))
    assert line == f"error: {state} is corrupt: {named}; restore it from a copy or start a new run", line
    assert snapshot(run_copy) == before


def test_a54_b10_an_edit_of_the_recorded_config_shows_both_values(run_copy):
    """An edit of state.json's written_config was said to be an edit of config.yaml, with advice to
    restore config.yaml (which was untouched). The line now gives both values and where each is."""
    state = run_copy / "state.json"
    data = json.loads(state.read_text())
    epochs = data["written_config"]["distill"]["epochs"]
    data["written_config"]["distill"]["epochs"] = "many"
    state.write_text(json.dumps(data))
    line = one_line_error(runner.invoke(app, ["validate", str(run_copy)]))
    assert line.startswith(f"error: {run_copy}: distill.epochs in its config.yaml ({epochs}) is not the value the "
                           "distill stage ran with ('many', as state.json records it)"), line


def test_a54_a4_a_speedup_its_latency_rows_contradict_is_refused(run_copy):
    """speedups[0].speedup 1e300 was rendered as a 301-digit ratio beside rows that give about x1-10."""
    _edit_report(run_copy, lambda d: d["speedups"][0].update(speedup=1e300))
    before = snapshot(run_copy)
    line = one_line_error(runner.invoke(app, ["report", str(run_copy)]))
    assert line.startswith(f"error: {run_copy / 'report.json'} is corrupt: speedups[0].speedup 1e+300 is not the p50 "
                           "ratio of its latency rows ("), line
    assert snapshot(run_copy) == before


def test_a54_a7_a_stage_figure_gone_from_the_run_is_said_in_the_report(tmp_path):
    """A deleted plots/detections.png (drawn by distill, not report) was left out of the report in silence."""
    pytest.importorskip("matplotlib")
    from distill_export.record import as_record
    from distill_export.report.plots import make_plots

    record = as_record({"figures": {"detections": "detections.png"}})
    plots, note = make_plots(record, tmp_path)
    assert tmp_path / "detections.png" not in plots
    assert note == ("figure plots/detections.png (drawn by the distill stage) missing from the run folder, so left "
                    "out; `distill-export distill RUN` draws it again"), note
    (tmp_path / "detections.png").write_bytes(b"\x89PNG")
    plots, note = make_plots(record, tmp_path)
    assert tmp_path / "detections.png" in plots and note == ""


# ----- 55th B1-B3: a comparison whose numbers contradict each other -------------------------------


@pytest.mark.parametrize(("edit", "named"), [
    (_set("comparisons.student_vs_baseline.ci95", [0.5, 0.9]), "does not hold its own gain"),
    (_set("comparisons.student_vs_baseline.verdict", "paid"), "comparisons.student_vs_baseline: verdict 'paid' is not "
                                                             "what gain"),
    (lambda d: _set("comparisons.student_vs_baseline.p_value", 0.001)(d) or _set(
        "comparisons.student_vs_baseline.verdict", "paid" if d["kd_gain"] > 0 else "hurt")(d),
     "comparisons.student_vs_baseline: p_value 0.001 is not McNemar's for the discordant counts"),
    (_set("kd_gain_ci95", [0.5, 0.9]), "kd_gain_ci95 (0.5, 0.9) is not comparisons.student_vs_baseline.ci95"),
    (_set("kd_verdict", "paid"), "kd_verdict paid is not comparisons.student_vs_baseline.verdict"),
])
def test_a55_b2_b3_a_comparison_its_own_numbers_contradict_is_refused(run_copy, edit, named):
    """A 95% CI of +50 to +90 beside a gain of +0.00, "Distillation paid ... McNemar p=1", and p=0.001 beside
    no discordant row were rendered."""
    _edit_report(run_copy, edit)
    before = snapshot(run_copy)
    line = one_line_error(runner.invoke(app, ["report", str(run_copy)]))
    assert line.startswith(f"error: {run_copy / 'report.json'} is corrupt: ") and named in line, line
    assert snapshot(run_copy) == before


def test_a55_b1_a_detection_gain_is_the_difference_of_its_maps(tmp_path):
    """A detection gain of 0.5 between two mAP50s of 0 rendered "+50.00 mAP50 points"."""
    from distill_export.errors import DistillExportError
    from distill_export.record import store

    record = _detection_record()
    record["comparisons"] = {"student_vs_baseline": {"gain": 0.125, "ci95": [0.1, 0.15], "p_value": 0.0005,
                                                     "verdict": "paid", "map50_a": 0.5, "map50_b": 0.375}}
    path = tmp_path / "report.json"
    path.write_text(json.dumps(record))
    store.load(path)
    record["comparisons"]["student_vs_baseline"]["gain"] = 0.5
    path.write_text(json.dumps(record))
    with pytest.raises(DistillExportError, match=r"gain 0.5 is not map50_a - map50_b \(0.125000\)"):
        store.load(path)


def test_the_mcnemar_p_the_record_checks_is_scipys():
    from scipy.stats import binomtest

    from distill_export.record.metrics import mcnemar_p

    for a, b in [(0, 1), (3, 9), (20, 20), (500, 430), (7, 0), (3000, 2800)]:
        assert mcnemar_p(a, b) == pytest.approx(binomtest(a, a + b, 0.5).pvalue, rel=1e-9), (a, b)


def test_a55_a1_discordant_counts_are_what_the_test_rows_allow(run_copy):
    """discordant [500, 0] beside 3 test rows was accepted (its p now has to match too)."""
    n = json.loads((run_copy / "report.json").read_text())["metrics"]["student"]["n"]
    _edit_report(run_copy, _set("comparisons.student_vs_baseline.discordant", [n + 1, 0]))
    line = one_line_error(runner.invoke(app, ["report", str(run_copy)]))
    assert "is corrupt: " in line and "discordant" in line, line


def test_a56_a4_a_run_config_that_is_not_a_mapping_is_the_products_error():
    from distill_export.config import config_from_dict
    from distill_export.errors import ConfigError

    with pytest.raises(ConfigError, match="a run config is a mapping of sections, got str"):
        config_from_dict("x")


def test_a55_b6_the_teachers_onnx_has_the_opset_asked(tmp_path):
    """`export RUN --opset 17`: the student fell back to TorchScript at 17, but teacher.onnx was written at
    opset 18 by dynamo and recorded as 17, then profiled as the run's teacher. A net dynamo cannot convert
    down (tiny_cnn, as the 54th audit's student) through the teacher's exporter."""
    import onnx
    import torch

    from distill_export.export.base import ExportOptions
    from distill_export.export.teacher_onnx import _export
    from distill_export.nets.students import create_student

    class Positional(torch.nn.Module):  # as teacher_onnx._positional: the modalities as *xs
        def __init__(self):
            super().__init__()
            self.net = create_student("tiny_cnn", 3, in_channels=1)

        def forward(self, *xs):
            return self.net(xs[0])

    path = tmp_path / "teacher.onnx"
    exporter, why = _export(Positional().eval(), (torch.zeros(2, 1, 28, 28),), ["image"], path, ExportOptions(opset=17))
    assert {o.domain: o.version for o in onnx.load(str(path)).opset_import}[""] == 17, (exporter, why)
    assert exporter == "torchscript" and why == "it wrote opset 18, not the asked 17", (exporter, why)


# ----- 55th B4, B5, B7, B8, A1, A2: a hand edit the record's own checks cannot see -----------------


def test_a55_a_hand_edited_report_json_is_said_first_and_stays_said(run_copy):
    """A recommendation, an export's accuracy or a tune decision edited in report.json, consistent with
    the rest, was rendered as measured. state.json keeps report.json's digest as the product wrote it:
    the report says first that the file was edited, and a later stage's write keeps saying it."""
    run = run_copy
    assert json.loads((run / "state.json").read_text())["record_sha256"]
    result = runner.invoke(app, ["report", str(run)])
    assert result.exit_code == 0 and "warning:" not in result.output and "Warning" not in (run / "report.md").read_text()
    _edit_report(run, lambda d: next(iter(d["recommended"].values())).update(accuracy_drop=-0.5))
    result = runner.invoke(app, ["report", str(run)])
    warning = f"{run / 'report.json'} was edited by hand (changed after distill-export last wrote it; found "
    assert result.exit_code == 0 and f"warning: {warning}" in " ".join(result.output.split()), result.output
    from distill_export.record.format import md_text

    assert (run / "report.md").read_text().splitlines()[2].startswith(f"> **Warning:** {md_text(warning)}")
    assert runner.invoke(app, ["validate", str(run), "-q"]).exit_code in (0, 1)  # writes report.json again
    assert json.loads((run / "state.json").read_text())["record_edited"].startswith("changed after")
    assert "<b>Warning:</b>" in (run / "report.html").read_text()


def test_signals_are_held_while_report_json_and_its_digest_are_written():
    """A SIGTERM between the two writes would make the product's own write look like a hand edit."""
    import os
    import signal

    from distill_export import interrupts

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    interrupts.install()
    try:
        done = []
        with pytest.raises(interrupts.Terminated):
            with interrupts.deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                done.append("the second write")
        assert done == ["the second write"]
        assert signal.getsignal(signal.SIGTERM) is interrupts.raise_terminated  # the product's handler again
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
        interrupts.reported_all()


# ----- 58th: the tools ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("tool", "argv", "line"), [
    ("bench_export", ["--size", "8", "--students", "tiny_cnn", "--int8-recipes", "bogus"],
     "error: argument --int8-recipes: unknown INT8 recipe 'bogus' (choices: "),  # B1: exit 1, no `error:`
    ("bench_export", ["--run", "{tmp}/nope", "--int8-recipes", "bogus"], "error: argument --int8-recipes: unknown INT8"),  # B3
    ("bench_export", ["--size", "0"], "error: --size must be at least 8, got 0"),  # B2: ran the run mode, exit 0
    ("bench_export", ["--batches", "1", "1"], "error: argument --batches: a value is named twice (1 1)"),  # A2
    ("compare_methods", ["--seed", "0", "--set", "seed=3"], "error: --set seed=... is set by --seed: give it there"),  # B7
    ("kd_gain", ["--seeds", "0", "--set", "seed=7"], "error: --set seed=... is set per run by --seeds: give it there"),  # B8
    ("kd_gain", ["--label-fractions", "0.5", "--set", "data.label_fraction=0.2"],
     "error: --set data.label_fraction=... is set per run by --label-fractions: give it there"),  # B8
    ("explore_variants", ["{name: w, teacher.width: 64}"],
     "error: variant 'w' sets teacher.width, but every variant distills from the one teacher trained first: "),  # B11
    ("explore_variants", ["{name: " + "a" * 300 + "}"], "error: variant name 'aaaa"),  # B10: after the teacher trained
    ("bench_train", ["--rows", "10", "20", "--skip", "workers", "overhead"],
     "error: --rows 10: the runs label 0.05 of their training rows, which keeps no row of 10"),  # B12
    ("bench_cache", ["--rss-rows", "100", "--recipe", "bogus", "--widths", "4"],
     "error: --recipe, --widths do not apply with --rss-rows"),  # B15: accepted and ignored
    # the fifty-ninth audit: the same classes in the same tools
    ("bench_export", ["--run", "r", "--student", "resnet18"],
     "error: --student does not apply with --run (it measures the run's student): drop it"),  # B1
    ("bench_export", ["--calibration-method", "bogus"], "error: argument --calibration-method: invalid choice"),  # B2
    ("bench_export", ["--size", "8", "--students", "tiny_cnn", "tiny_cnn"],
     "error: argument --students: a value is named twice (tiny_cnn tiny_cnn)"),  # A6
    ("kd_gain", ["--fusions", "late", "--label-fractions", "0.5"],
     "error: --label-fractions does not apply with --fusions"),  # B3
    ("kd_gain", ["--fusions", "late", "--set", "distill.self_training_control=false"],
     "error: --set distill.self_training_control=... is set per run by --fusions (on for its first fusion): drop it"),  # B5
    ("explore_variants", ["{name: bad, data.source: /nonexist.csv}"], "error: variant 'bad' sets data.source, but"),  # B6
    ("compare_methods", ["--set", "teacher.path=x.pt"], "error: --set teacher.path=... is set by the tool"),  # B16
    ("bench_train", ["--skip", "memory", "overhead", "workers"],
     "error: --skip memory overhead workers leaves nothing to measure"),  # B15
    ("bench_train", ["--skip", "memory", "overhead", "--device", "cuda", "--rows", "20"],
     "error: --rows, --device belong to a step --skip leaves out: drop them"),  # B15
    ("profile_host", ["--device", "cpu", "--kd-calls", "5"], "error: --kd-calls does not apply with --device cpu"),  # B11
    ("make_captioned_digits", ["--false-rate", "1e30"], "error: argument --false-rate: must be a number in [0, 100]"),  # B18
    # the sixty-first audit
    ("bench_export", ["--size", "8", "--students", "centernet_tiny"],
     "error: unknown student 'centernet_tiny' (--size measures classification students: "),  # B1: a traceback after work
    ("bench_cache", ["--rss-rows", "100", "100"], "error: argument --rss-rows: a value is named twice (100 100)"),  # B2
    ("bench_cache", ["--widths", "4", "4"], "error: argument --widths: a value is named twice (4 4)"),  # B2
    ("bench_train", ["--rows", "20", "20"], "error: argument --rows: a value is named twice (20 20)"),  # A3
    ("bench_export", ["--size", "8", "--int8-recipes", "qdq", "qdq"],
     "error: argument --int8-recipes: a value is named twice (qdq qdq)"),  # A1
])
def test_a58_the_tools_refuse_in_one_line_before_any_work(tmp_path, monkeypatch, capsys, tool, argv, line):
    from test_audit33 import _one_line, _run_tool

    out = tmp_path / ("o.json" if tool == "bench_export" else "o")
    code = _run_tool(tool, [a.replace("{tmp}", str(tmp_path)) for a in argv] + ["--out", str(out)], monkeypatch)
    said = _one_line(capsys.readouterr().err)
    assert code == 2 and said.startswith(line), (code, said)
    assert not out.exists()


def test_a58_a1_prepare_avmnist_refuses_a_limit_that_leaves_a_split_empty(tmp_path, monkeypatch, capsys):
    from pathlib import Path

    from test_audit33 import _one_line, _run_tool

    data = Path(__file__).resolve().parents[2] / "shared" / "data"
    if not (data / "mnist").is_dir() or not (data / "fsdd").is_dir():
        pytest.skip("../shared/data (MNIST, FSDD) is absent")
    fsdd = next(p for p in (data / "fsdd" / "recordings", data / "fsdd") if p.is_dir())
    code = _run_tool("prepare_avmnist", ["--mnist", str(data / "mnist"), "--fsdd", str(fsdd), "--limit", "12",
                                         "--out", str(tmp_path / "o")], monkeypatch)
    assert code == 2 and _one_line(capsys.readouterr().err).startswith(
        "error: --limit 12 leaves the val and test splits empty"), code
    assert not (tmp_path / "o").exists()


def test_a58_b13_b14_a_pt2_file_is_named_by_its_file_and_its_fixed_batch_kept(tmp_path):
    """A .pt2 with a fixed batch of 2, profiled at batch 1, was a shape traceback (guards are off); its other
    cells are now skipped, as an ONNX file's are (59th A4). Every .pt2 given as a file was labelled
    `teacher`, and speedups over it said to be over a teacher."""
    import torch

    from distill_export.profiling import make_settings
    from distill_export.profiling.targets import checkpoint_benches
    from distill_export.config import ProfileConfig

    class Flat(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(64, 3)

        def forward(self, x):
            return self.lin(x.reshape(x.shape[0], -1))

    fixed, dynamic = tmp_path / "fixed.pt2", tmp_path / "dyn.pt2"
    torch.export.save(torch.export.export(Flat().eval(), (torch.zeros(2, 1, 8, 8),)), str(fixed))
    batch = torch.export.Dim("b", min=1, max=64)
    torch.export.save(torch.export.export(Flat().eval(), (torch.zeros(2, 1, 8, 8),), dynamic_shapes=({0: batch},)),
                      str(dynamic))
    from distill_export.profiling.measure import run_sweep

    settings = make_settings(ProfileConfig(), batches=[1, 2], threads=[1], device="cpu")
    settings.sweep.warmup_s, settings.sweep.min_time_s, settings.sweep.min_iters = 0.0, 0.01, 2
    rows = {r["batch"]: r for r in run_sweep(checkpoint_benches(fixed, settings), settings.sweep)}
    assert rows[1]["skipped"] == "fixed.pt2 has a fixed batch of 2" and "p50_ms" in rows[2], rows  # as ONNX's cells
    assert {b.model for b in checkpoint_benches(dynamic, settings)} == {"dyn"}


@pytest.mark.parametrize(("dtype", "forward"), [("int64", "embed"), ("float16", "half")])
def test_a59_b7_a_pt2_input_is_fed_in_its_own_dtype(tmp_path, dtype, forward):
    """An int64 (ids) or float16 input was fed float32: a traceback from the embedding or a dtype mismatch."""
    import torch

    from distill_export.config import ProfileConfig
    from distill_export.profiling import make_settings
    from distill_export.profiling.measure import run_sweep
    from distill_export.profiling.targets import checkpoint_benches

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(10, 3)

        def forward(self, x):
            return self.embed(x).mean(1) if forward == "embed" else x.float() * 2

    path = tmp_path / "m.pt2"
    batch = torch.export.Dim("b", min=1, max=64)
    program = torch.export.export(Net().eval(), (torch.zeros(2, 5, dtype=getattr(torch, dtype)),),
                                  dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    settings = make_settings(ProfileConfig(), batches=[1, 3], threads=[1], device="cpu")
    settings.sweep.warmup_s, settings.sweep.min_time_s, settings.sweep.min_iters = 0.0, 0.01, 2
    assert all("p50_ms" in r for r in run_sweep(checkpoint_benches(path, settings), settings.sweep))


def test_a59_b8_b9_a_pt2_without_inputs_or_with_unknown_dims_is_one_line(tmp_path):
    import torch

    from distill_export.config import ProfileConfig
    from distill_export.errors import ConfigError
    from distill_export.profiling import make_settings
    from distill_export.profiling.targets import checkpoint_benches

    class NoInput(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.ones(3))

        def forward(self):
            return self.p * 2

    class Seq(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(8, 3)

        def forward(self, x):
            return self.lin(x).mean(1)

    torch.export.save(torch.export.export(NoInput().eval(), ()), str(tmp_path / "none.pt2"))
    dims = ({0: torch.export.Dim("b", min=1, max=64), 1: torch.export.Dim("t", min=2, max=100)},)
    torch.export.save(torch.export.export(Seq().eval(), (torch.zeros(2, 5, 8),), dynamic_shapes=dims),
                      str(tmp_path / "seq.pt2"))
    settings = make_settings(ProfileConfig(), batches=[1], threads=[1], device="cpu")
    with pytest.raises(ConfigError, match=r"none.pt2 takes no inputs: there is no batch to feed it"):
        checkpoint_benches(tmp_path / "none.pt2", settings)
    with pytest.raises(ConfigError, match=r"the input shapes of .*seq.pt2 are not fixed; give --input-shape"):
        checkpoint_benches(tmp_path / "seq.pt2", settings)


def test_a58_b5_bench_profile_refuses_a_run_whose_files_disagree(run_copy, tmp_path, monkeypatch, capsys):
    """baseline.pt copied over student.pt: `profile` refused it, bench_profile timed the baseline's weights
    beside the distilled student's export and drew speedups between them."""
    import shutil

    from test_audit33 import _one_line, _run_tool

    shutil.copy(run_copy / "baseline.pt", run_copy / "student.pt")
    code = _run_tool("bench_profile", [str(run_copy), "--repeats", "1", "--out", str(tmp_path / "bp")], monkeypatch)
    said = _one_line(capsys.readouterr().err)
    assert code == 2 and said.startswith(f"error: {run_copy / 'student.pt'} changed after distill"), said
    assert not (tmp_path / "bp").exists()


@pytest.mark.parametrize(("argv", "line"), [
    (["--size", "8", "--run", "r", "--epochs", "3"], "error: --run, --epochs do not apply with --size: drop them"),
    (["--students", "tiny_cnn"], "error: --students does not apply without --size: drop it"),
])
def test_a58_b17_bench_export_refuses_the_other_modes_flags(tmp_path, monkeypatch, capsys, argv, line):
    from test_audit33 import _one_line, _run_tool

    assert _run_tool("bench_export", argv + ["--out", str(tmp_path / "o.json")], monkeypatch) == 2
    assert _one_line(capsys.readouterr().err) == line


def test_a58_a4_a5_a6_helper_module_and_variant_yaml(tmp_path, monkeypatch, capsys):
    import subprocess
    import sys
    from pathlib import Path

    from test_audit33 import _one_line, _run_tool

    tools = Path(__file__).resolve().parents[1] / "tools"
    done = subprocess.run([sys.executable, str(tools / "bench_export_size.py")], capture_output=True, text=True)
    assert done.returncode == 2 and _one_line(done.stderr).startswith("error: bench_export_size.py is the --size mode")
    for variant, said in (("{name: a, name: b}", "error: variant 1 ('{name: a, name: b}') is not YAML: key 'name' "
                                                 "appears twice"),
                          ("{name: a", "error: variant 1 ('{name: a') is not YAML: ")):
        assert _run_tool("explore_variants", ["--out", str(tmp_path / "o"), variant], monkeypatch) == 2
        assert _one_line(capsys.readouterr().err).startswith(said)


@pytest.mark.parametrize(("tool", "argv", "line"), [
    ("bench_decode_memory", ["--rows", "10", "20"], "error: --rows 10 20: give at least 100 rows per manifest"),  # B10
    ("compile_kd_offline", ["--arch", "0", "--quick"], "error: argument --arch: must be an integer in 50..200, got 0"),
])
def test_a59_tools_without_an_out_folder_refuse_in_one_line(tmp_path, monkeypatch, capsys, tool, argv, line):
    """59th audit B10 (exit 1 after the manifest, a list repr), B13 (an LLVM abort, exit 134), B12 (espeak-ng
    missing said without `error:`, exit 1; with it, every clip built before --out was looked at)."""
    from test_audit33 import _one_line, _run_tool

    code = _run_tool(tool, [a.replace("{tmp}", str(tmp_path)) for a in argv], monkeypatch)
    said = _one_line(capsys.readouterr().err)
    assert code == 2 and said.startswith(line.replace("{tmp}", str(tmp_path))), (code, said)


def test_a59_b17_kd_gain_refuses_a_config_key_a_flag_sets_per_run(tmp_path, monkeypatch, capsys):
    from test_audit33 import _one_line, _run_tool

    config = tmp_path / "kc.yaml"
    config.write_text("seed: 7\ndata:\n  label_fraction: 0.5\n")
    code = _run_tool("kd_gain", ["--config", str(config), "--seeds", "0", "--out", str(tmp_path / "o")], monkeypatch)
    assert code == 2 and _one_line(capsys.readouterr().err) == (
        f"error: --config {config} sets seed, which --seeds sets per run: give it there")


def test_a59_b14_bench_train_never_writes_its_images_into_a_run(run_copy, tmp_path, monkeypatch, capsys):
    from test_audit33 import _one_line, _run_tool

    before = snapshot(run_copy)
    code = _run_tool("bench_train", ["--throughput-rows", "20", "--skip", "memory", "overhead",
                                     "--images", str(run_copy / "img"), "--out", str(tmp_path / "o")], monkeypatch)
    assert code == 2 and _one_line(capsys.readouterr().err) == (
        f"error: --images {run_copy / 'img'} is inside the run {run_copy.resolve()}; give a folder outside any run")
    assert snapshot(run_copy) == before


def test_a59_b12_make_demo_audio_check_looks_at_out_first(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from test_audit33 import _one_line

    tool = Path(__file__).resolve().parents[1] / "tools" / "make_demo_audio.py"
    done = subprocess.run([sys.executable, str(tool), "--check", "--out", str(tmp_path / "nope.npz")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and _one_line(done.stderr) == (
        f"error: --out {tmp_path / 'nope.npz'} does not exist: nothing to --check against"), done.stderr


def test_a62_b2_parity_of_huge_logits_is_computed_in_float64_without_warnings():
    """Logits near 1e34 (a run at lr 100) overflowed float32 products: numpy RuntimeWarnings with their
    source lines on screen, and min_cosine -Infinity in report.json for two outputs that agree."""
    import warnings

    import numpy as np

    from distill_export.tasks.classification.task import ClassificationTask

    logits = np.array([[3.5e34, -3e34, 1e30], [1.0, 2.0, 3.0]], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any RuntimeWarning fails the test
        metrics = ClassificationTask().parity_metrics(logits, logits * np.float32(1.0000001), np.array([0, 2]))
    assert 0.999999 <= metrics["min_cosine"] <= 1.0, metrics



@pytest.mark.parametrize(("modalities", "setting", "line"), [
    (("image", "audio"), "clip_frames: 3", "error: data.clip_frames 3 applies to video columns, and the data has none "
                                           "(modalities: audio, image); drop data.clip_frames"),
    (("image", "text"), "max_audio_seconds: 5.0", "error: data.max_audio_seconds 5.0 applies to audio columns, and the "
                                                  "data has none (modalities: image, text); drop data.max_audio_seconds"),
])
def test_a63_b1_a_column_setting_without_its_column_is_refused(tmp_path, monkeypatch, modalities, setting, line):
    """data.clip_frames on a manifest without video was recorded in config.yaml (only the built-in demo's was
    refused); data.max_audio_seconds without audio likewise (63rd audit B1, A1)."""
    from _byo_fixtures import make_manifest
    from test_audit31 import _refused

    monkeypatch.chdir(tmp_path)
    manifest = make_manifest(tmp_path / "m", per_class=6, modalities=modalities)
    (tmp_path / "c.yaml").write_text(f"data:\n  {setting}\n")
    said = _refused(runner.invoke(app, ["train-teacher", "--data", str(manifest), "--student-modality", "image",
                                        "--teacher-epochs", "1", "--config", "c.yaml", "--out", "t"]))
    assert said == line, said
    assert not (tmp_path / "t").exists()


def test_a64_b1_a_named_backend_no_target_is_for_is_refused(run_copy, tmp_path):
    """`profile RUN/student.onnx --backend torch-cpu,ort-cpu` ran ONNX Runtime alone and recorded both backends."""
    line = one_line_error(runner.invoke(app, ["profile", str(run_copy / "student.onnx"), "--backend", "torch-cpu,ort-cpu",
                                              "--batch", "1", "--threads", "1", "--out", str(tmp_path / "p")]))
    assert line == "error: --backend torch-cpu runs none of the targets (it runs torch files or runs); drop it from " \
                   "--backend", line
    assert not (tmp_path / "p").exists()
