"""The teacher exported to ONNX (one input per modality), its parity against the PyTorch
teacher, its rows on the student's runtimes, and like-for-like speedups.

Tolerances: FP32 ONNX vs PyTorch logits within 1e-4 absolute (the fp32_max_abs gate; seen
~5e-6), top-1 agreement 100%."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from rich.console import Console

from distill_export.config import ValidateConfig
from distill_export.errors import ExportError
from distill_export.export.base import ExportOptions
from distill_export.export.teacher_onnx import export_teacher_onnx
from distill_export.nets.teacher import FusionTeacher
from distill_export.profiling import make_settings, speedups
from distill_export.profiling import targets as targets_mod
from distill_export.config import ProfileConfig
from distill_export.tasks import get_task
from distill_export.validate import validate_teacher_onnx

ATOL = 1e-4


def _teacher(seed: int = 0) -> FusionTeacher:
    torch.manual_seed(seed)
    return FusionTeacher({"image": 1, "audio": 1}, num_classes=10, width=4,
                         kinds={"image": "image", "audio": "audio"}).eval()


def _inputs(n: int, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(n, 1, 28, 28, generator=g), "audio": torch.randn(n, 1, 40, 32, generator=g)}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    teacher = _teacher()
    return teacher, export_teacher_onnx(teacher, _inputs(4), out, ExportOptions())


def test_one_onnx_input_per_modality_with_a_dynamic_batch(exported):
    import onnxruntime as ort

    _, res = exported
    sess = ort.InferenceSession(res.path, providers=["CPUExecutionProvider"])
    got = {i.name: i.shape for i in sess.get_inputs()}
    assert got == {"audio": ["batch", 1, 40, 32], "image": ["batch", 1, 28, 28]}
    assert [o.name for o in sess.get_outputs()] == ["logits"]
    meta = sess.get_modelmeta().custom_metadata_map
    assert json.loads(meta["input_names"]) == ["audio", "image"] and meta["precision"] == "fp32"
    assert res.precision == "fp32" and res.runtime == "onnxruntime" and res.size_bytes > 0


@pytest.mark.parametrize("batch", [1, 7])
def test_onnx_logits_match_the_pytorch_teacher(exported, batch):
    import onnxruntime as ort

    teacher, res = exported
    x = _inputs(batch, seed=batch)
    sess = ort.InferenceSession(res.path, providers=["CPUExecutionProvider"])
    got = sess.run(None, {k: v.numpy() for k, v in x.items()})[0]
    with torch.inference_mode():
        want = teacher(x).numpy()
    assert got.shape == (batch, 10)
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)


def test_validate_teacher_onnx_passes_with_real_values_and_fails_a_wrong_model(exported, tmp_path):
    teacher, res = exported
    x = _inputs(40, seed=3)
    with torch.inference_mode():
        logits = teacher(x).numpy()
    labels = logits.argmax(1)
    parity = {"inputs": {k: v.numpy() for k, v in x.items()}, "labels": labels, "logits": logits}
    cfg = ValidateConfig(batch_sizes=[1, 16])
    res_ok = validate_teacher_onnx(res.path, parity, cfg, get_task("classification"))
    assert res_ok["passed"] and res_ok["max_abs_diff"] <= ATOL and res_ok["top1_agreement"] == 1.0
    assert res_ok["accuracy"] == 1.0 and set(res_ok["per_batch"]) == {"1", "16"}
    assert set(res_ok["gates"]) == {"max_abs_diff", "top1_agreement"}
    # Another teacher's ONNX (other weights) against the same reference logits: the gates fail.
    other = export_teacher_onnx(_teacher(seed=5), _inputs(4), tmp_path, ExportOptions())
    res_bad = validate_teacher_onnx(other.path, parity, cfg, get_task("classification"))
    assert not res_bad["passed"] and not res_bad["gates"]["max_abs_diff"]["passed"]
    assert res_bad["max_abs_diff"] > 1e-2


@torch.library.custom_op("distill_export_test::teacher_wiggle", mutates_args=())
def _wiggle(x: torch.Tensor) -> torch.Tensor:
    return x.sin()


@_wiggle.register_fake
def _(x):
    return torch.empty_like(x)


class _UnexportableTeacher(torch.nn.Module):
    modality_names = ["audio", "image"]

    def forward_features(self, inputs, drop=()):
        feats = _wiggle(inputs["image"]).mean((1, 2, 3)).unsqueeze(1) + inputs["audio"].mean((1, 2, 3)).unsqueeze(1)
        return feats, feats.repeat(1, 10)


def test_an_unexportable_teacher_is_one_line_naming_the_operator(tmp_path):
    with pytest.raises(ExportError) as info:
        export_teacher_onnx(_UnexportableTeacher(), _inputs(2), tmp_path, ExportOptions())
    msg = str(info.value)
    assert "teacher" in msg and "teacher_wiggle" in msg and "\n" not in msg
    assert list(tmp_path.iterdir()) == []  # no partial file


# ----- the pipeline: skipped with a reason, profiled like for like -------------------------------


def test_pipeline_records_why_the_teacher_was_not_exported(tiny_run, tmp_path, monkeypatch):
    """A teacher the exporters refuse: one warning line, {"skipped": reason}, and its ONNX rows
    on every ONNX backend say why; the PyTorch rows are unaffected."""
    from distill_export.pipeline import export_stage as pipeline
    from distill_export.data import load_dataset
    from distill_export.export import teacher_onnx
    from distill_export.rundir import RunDir

    run = RunDir.existing(shutil.copytree(tiny_run, tmp_path / "run"))
    config = run.load_config()

    def refuse(*a, **k):
        raise ExportError("cannot export the teacher to onnx: operator mylib::wiggle is not supported")

    monkeypatch.setattr(teacher_onnx, "export_teacher_onnx", refuse)
    data = load_dataset(config.data, config.seed)
    console = Console(record=True, width=300)
    monkeypatch.setattr(pipeline, "console", console)
    entry = pipeline._export_teacher(config, run, data, ExportOptions())
    assert entry == {"skipped": "cannot export the teacher to onnx: operator mylib::wiggle is not supported"}
    warning = console.export_text().strip()
    assert len(warning.splitlines()) == 1 and "mylib::wiggle" in warning

    report = run.load_report()
    report["teacher_exports"] = {"onnx": entry}
    settings = make_settings(ProfileConfig(batches=[1], threads=[1]), device="cpu")
    benches = targets_mod.teacher_onnx_benches(run, report, settings)
    # one skipped row per ONNX runtime (ONNX Runtime, and OpenVINO, the optional extra), each saying why
    assert [(b.model, b.fmt, b.backend) for b in benches] == [("teacher", "onnx", "onnxruntime-cpu"),
                                                              ("teacher", "onnx", "openvino-cpu")]
    assert all(b.skipped == "the teacher was not exported to ONNX: " + entry["skipped"] for b in benches)


def test_run_exports_validates_and_profiles_the_teacher_like_for_like(tiny_run):
    report = json.loads((tiny_run / "report.json").read_text())
    art = report["teacher_exports"]["onnx"]
    assert (tiny_run / art["path"]).is_file() and art["details"]["inputs"] == ["audio", "image"]
    parity = art["parity"]
    assert parity["passed"] and parity["max_abs_diff"] <= ATOL and parity["top1_agreement"] == 1.0
    # The teacher's ONNX scores what the PyTorch teacher scores on the test split.
    assert parity["accuracy"] == pytest.approx(report["metrics"]["teacher"]["accuracy"], abs=1e-3)
    rows = {(r["model"], r["format"], r["backend"]): r for r in report["latency"] if "p50_ms" in r}
    t_ort, s_ort = rows[("teacher", "onnx", "onnxruntime-cpu")], rows[("student", "onnx", "onnxruntime-cpu")]
    like = {(s["format"], s["backend"]): s for s in report["speedups"] if s["like_for_like"]}
    cross = {(s["format"], s["backend"]): s for s in report["speedups"] if not s["like_for_like"]}
    assert like[("onnx", "onnxruntime-cpu")]["speedup"] == pytest.approx(t_ort["p50_ms"] / s_ort["p50_ms"])
    assert like[("onnx", "onnxruntime-cpu")]["reference"] == "teacher (onnxruntime-cpu)"
    t_pt = rows[("teacher", "pytorch", "pytorch-cpu")]
    assert cross[("onnx", "onnxruntime-cpu")]["speedup"] == pytest.approx(t_pt["p50_ms"] / s_ort["p50_ms"])
    assert ("pytorch", "pytorch-cpu") in like and ("pytorch", "pytorch-cpu") not in cross
    md = (tiny_run / "report.md").read_text()
    assert "**Like for like**" in md and "no (runtimes differ)" in md
    # The recommendation for the one profiled target: a gate-passing export, its teacher on ORT.
    rec = report["recommended"]["cpu-1t"]
    assert report["exports"][rec["format"]]["parity"]["passed"]
    # ONNX Runtime, or OpenVINO when the extra is installed and measured faster
    t_rec = rows[("teacher", "onnx", rec["backend"])]
    assert rec["speedup_vs_teacher"] == pytest.approx(t_rec["p50_ms"] / rec["p50_ms"])
    assert rec["p50_ms"] <= s_ort["p50_ms"]
    assert "## Recommended artifact per target" in md and "recommended for cpu-1t: " in md


# ----- speedups: like for like vs cross-runtime ---------------------------------------------------


def _row(model, backend, fmt, p50, threads=1, batch=1, device="cpu"):
    return {"model": model, "backend": backend, "format": fmt, "device": device, "batch": batch,
            "threads": threads, "p50_ms": p50}


def test_speedups_pair_each_row_with_the_teacher_on_its_own_runtime_and_label_cross_runtime():
    rows = [_row("teacher", "pytorch-cpu", "pytorch", 10.0), _row("teacher", "onnxruntime-cpu", "onnx", 4.0),
            _row("student", "pytorch-cpu", "pytorch", 2.0), _row("student", "onnxruntime-cpu", "onnx", 0.5),
            _row("student", "onnxruntime-cpu", "onnx-int8", 0.8)]
    got = {(s["format"], s["like_for_like"]): s for s in speedups(rows)}
    assert set(got) == {("pytorch", True), ("onnx", True), ("onnx", False), ("onnx-int8", True), ("onnx-int8", False)}
    assert got[("pytorch", True)]["speedup"] == pytest.approx(5.0)
    assert got[("onnx", True)]["speedup"] == pytest.approx(8.0)  # 4.0 / 0.5, both on ORT
    assert got[("onnx", True)]["reference"] == "teacher (onnxruntime-cpu)"
    assert got[("onnx", True)]["reference_format"] == "onnx"
    assert got[("onnx-int8", True)]["speedup"] == pytest.approx(5.0)  # INT8 student vs FP32 teacher, on ORT
    assert got[("onnx", False)]["speedup"] == pytest.approx(20.0)  # 10.0 / 0.5: runtimes mixed
    assert got[("onnx", False)]["reference"] == "teacher (pytorch-cpu)"


def test_without_a_teacher_on_ort_only_the_cross_runtime_ratio_remains():
    rows = [_row("teacher", "pytorch-cpu", "pytorch", 10.0), _row("student", "onnxruntime-cpu", "onnx", 0.5)]
    (only,) = speedups(rows)
    assert only["like_for_like"] is False and only["speedup"] == pytest.approx(20.0)


def test_an_external_pt2_teacher_is_exported_too(tmp_path):
    """A torch.export program loaded as an ExternalTeacher re-exports to ONNX with the same
    logits as the module it came from (a program that will not re-trace is skipped with a reason,
    as in test_pipeline_records_why_the_teacher_was_not_exported)."""
    import sys

    import onnxruntime as ort

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from _byo_fixtures import synthetic_dataset
    from distill_export.nets.external import ExternalTeacher, export_teacher_program
    from distill_export.nets.model_io import load_teacher
    from distill_export.train_teacher import teacher_kwargs

    data = synthetic_dataset()
    torch.manual_seed(0)
    fusion = FusionTeacher(**teacher_kwargs(data, 4, 0.0)).eval()
    program = export_teacher_program(fusion, {m: v[:2] for m, v in data.train.inputs.items()}, tmp_path / "t.pt2")
    teacher = load_teacher(program, data)
    assert isinstance(teacher, ExternalTeacher)
    res = export_teacher_onnx(teacher, dict(data.test.inputs), tmp_path, ExportOptions())
    sess = ort.InferenceSession(res.path, providers=["CPUExecutionProvider"])
    got = sess.run(None, {m: v.numpy() for m, v in data.test.inputs.items()})[0]
    with torch.inference_mode():
        want = fusion(dict(data.test.inputs)).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)


@pytest.mark.slow
def test_validate_goes_on_when_the_teacher_parity_data_is_gone(tiny_run, tmp_path):
    """The student's gates still decide the exit code; the teacher's parity says it was not checked."""
    from typer.testing import CliRunner

    from distill_export.cli import app

    run = shutil.copytree(tiny_run, tmp_path / "run")
    (run / "teacher_parity_data.npz").unlink()
    result = CliRunner().invoke(app, ["validate", str(run)])
    assert result.exit_code == 0, result.output
    report = json.loads((run / "report.json").read_text())
    assert report["teacher_exports"]["onnx"]["parity"] is None
    assert report["exports"]["onnx"]["parity"]["passed"]
