"""End-to-end CLI behaviour: artifacts, report keys, and one-line errors for bad input."""

from __future__ import annotations

import json

import onnx
import pytest
from typer.testing import CliRunner

from distill_export.cli import app

runner = CliRunner()


def test_run_writes_every_artifact_and_each_is_what_it_claims(tiny_run):
    from distill_export.files import sha256_file
    from distill_export.nets.checkpoint import load_checkpoint
    from distill_export.rundir import RunDir

    run = RunDir(tiny_run)
    assert run.load_config().distill.epochs == 1  # the settings the run used (the tiny config)
    assert load_checkpoint(tiny_run / "teacher.pt", kind="teacher")["arch"] == "fusion_teacher"
    roles = {name: load_checkpoint(tiny_run / f"{name}.pt", kind="student")["meta"]["role"]
             for name in ("student", "baseline")}
    assert roles == {"student": "kd", "baseline": "baseline"}
    props = {p.key: p.value for p in onnx.load(str(tiny_run / "student.onnx")).metadata_props}
    assert props["source_checkpoint_sha256"] == sha256_file(tiny_run / "student.pt")  # made from this student
    report = json.loads((tiny_run / "report.json").read_text())
    assert {s["status"] for s in run.stages().values()} == {"done"}  # state.json
    md, html = (tiny_run / "report.md").read_text(), (tiny_run / "report.html").read_text()
    for model in ("teacher", "student", "baseline"):
        shown = f"{100 * report['metrics'][model]['accuracy']:.1f}%"
        assert shown in md and shown in html, (model, shown)


def test_report_json_has_documented_keys(tiny_run):
    report = json.loads((tiny_run / "report.json").read_text())
    for model in ("teacher", "student", "baseline"):
        for key in ("accuracy", "macro_f1", "macro_precision", "macro_recall", "confusion_matrix"):
            assert key in report["metrics"][model], (model, key)
        cm = report["metrics"][model]["confusion_matrix"]
        assert len(cm) == 10 and sum(map(sum, cm)) == report["metrics"][model]["n"]
    assert report["kd_gain"] == pytest.approx(
        report["metrics"]["student"]["accuracy"] - report["metrics"]["baseline"]["accuracy"], abs=1e-6
    )
    parity = report["exports"]["onnx"]["parity"]
    for key in ("max_abs_diff", "top1_agreement", "accuracy"):
        assert key in parity
    assert parity["max_abs_diff"] <= 1e-4 and parity["top1_agreement"] >= 0.999
    row = report["latency"][0]
    for key in ("model", "backend", "batch", "threads", "p50_ms", "p90_ms", "p99_ms", "throughput"):
        assert key in row
    assert {r["model"] for r in report["latency"]} >= {"teacher", "student"}
    timings = report["timings"]
    for stage in ("train_teacher", "distill", "baseline", "export", "validate", "profile", "total"):
        assert timings[stage] > 0, stage  # measured, not a placeholder
    # The stages run one after another inside `total` (the data load is timed before it).
    inside = sum(v for k, v in timings.items() if k not in ("total", "data"))
    assert inside <= timings["total"] + 0.01 * len(timings), timings  # each is rounded to 1 ms


def test_onnx_has_dynamic_batch_and_metadata(tiny_run):
    model = onnx.load(str(tiny_run / "student.onnx"))
    onnx.checker.check_model(model, full_check=True)
    dim0 = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param and not dim0.dim_value  # symbolic batch
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["class_names"]) == [str(d) for d in range(10)]
    assert props["input_name"] == "image"
    assert json.loads(props["input_shape"])[1:] == [1, 28, 28]
    assert float(props["norm_std"]) > 0


@pytest.mark.slow
def test_stages_rerun_on_the_run_directory(tiny_run, tmp_path):
    """export, validate and report rerun on a copy of the shared run (never on the run itself):
    the files they write are removed first, so they exist again only if the stages really ran."""
    import shutil

    from _cli_checks import snapshot

    before = snapshot(tiny_run)
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    for name in ("student.onnx", "parity_data.npz", "report.md", "report.html"):
        (run / name).unlink()
    result = runner.invoke(app, ["export", str(run), "--format", "onnx", "--quiet"])
    assert result.exit_code == 0, result.output
    assert (run / "student.onnx").is_file() and (run / "parity_data.npz").is_file()
    result = runner.invoke(app, ["validate", str(run)])
    assert result.exit_code == 0, result.output
    assert "PASS" in result.output
    assert json.loads((run / "report.json").read_text())["exports"]["onnx"]["parity"]["passed"] is True
    # the latency measured the export of before: stale (issue 24), so the report waits for profile
    result = runner.invoke(app, ["report", str(run)])
    assert result.exit_code == 2 and "profile is stale" in result.output, result.output
    # the tiny config's sweep: `profile RUN` takes its flags, not the run's profile settings
    fast = ["--batch", "1", "--threads", "1", "--warmup", "0.01", "--min-time", "0.05", "--min-iters", "5"]
    assert runner.invoke(app, ["profile", str(run), *fast, "--quiet"]).exit_code == 0
    result = runner.invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    assert "kd_gain" in (run / "report.md").read_text() and (run / "report.html").stat().st_size > 0
    assert snapshot(tiny_run) == before  # the shared fixture is untouched


def _error(result) -> str:
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    text = result.output.strip()
    assert "Traceback" not in text
    return text


def test_unknown_student_lists_choices(tmp_path):
    result = runner.invoke(app, ["run", "--student", "resnet9000", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    text = _error(result)
    assert "resnet9000" in text and "mobilenet_v3_small" in text and "tiny_cnn" in text
    assert not (tmp_path / "r").exists()  # caught before any directory is made or model trained


def test_run_refuses_a_directory_that_holds_a_run(tiny_run):
    before = (tiny_run / "report.json").read_text()
    result = runner.invoke(app, ["run", "--out", str(tiny_run)])
    assert result.exit_code == 2
    assert "already holds a run" in _error(result)
    assert (tiny_run / "report.json").read_text() == before


def test_outputs_are_readable_by_others(tiny_run):
    import os
    import stat

    umask = os.umask(0)
    os.umask(umask)
    for name in ("report.json", "student.onnx", "student.pt"):
        mode = stat.S_IMODE((tiny_run / name).stat().st_mode)
        assert mode == 0o666 & ~umask, (name, oct(mode))


def test_config_typo_names_the_key(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("distill:\n  temperture: 2\n")
    result = runner.invoke(app, ["run", "--config", str(cfg), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    text = _error(result)
    assert "temperture" in text and "temperature" in text


def test_config_that_is_code_is_refused(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("seed: !!python/object/apply:os.system ['echo pwned']\n")
    result = runner.invoke(app, ["run", "--config", str(cfg), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert "not valid YAML" in _error(result)


def test_unwritable_out_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = runner.invoke(app, ["run", "--out", str(blocker / "sub")])
    assert result.exit_code == 2
    assert f"{blocker} is a file, not a folder, so the folder cannot be made" in _error(result)


@pytest.mark.parametrize("content", [b"not a checkpoint", b"PK\x03\x04garbage"])
def test_corrupt_teacher_file(tmp_path, content):
    bad = tmp_path / "teacher.pt"
    bad.write_bytes(content)
    result = runner.invoke(app, ["run", "--teacher", str(bad), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert "teacher.pt" in _error(result)


def test_pickled_code_is_never_executed(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (exec, ("open(%r, 'w').write('pwned')" % str(tmp_path / "pwned"),))

    bad = tmp_path / "evil.pt"
    import torch

    torch.save({"format": "distill-export/1", "x": Evil()}, bad, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    result = runner.invoke(app, ["run", "--teacher", str(bad), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert not (tmp_path / "pwned").exists()


def test_stage_on_a_directory_that_is_not_a_run(tmp_path):
    result = runner.invoke(app, ["distill", str(tmp_path)])
    assert result.exit_code == 2
    assert "not a run directory" in _error(result)


def test_help_explains_every_option():
    result = runner.invoke(app, ["run", "--help"])
    assert result.exit_code == 0
    for opt in ("--student", "--temperature", "--alpha", "--beta", "--label-fraction", "--config", "--device", "--seed"):
        assert opt in result.output
