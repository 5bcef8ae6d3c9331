"""Export suite: every CPU format round-trips through the CLI and passes its parity gates;
metadata, standard ops and dynamic batch are checked on the files; bad input fails with
one line and leaves no file under a final name. TensorRT tests skip without TensorRT/GPU."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from _cli_checks import forget_student_hash
from distill_export.cli import app
from distill_export.errors import BackendUnavailable, ConfigError, ExportError
from distill_export.export import ExportOptions, ExportSource, export_formats, parse_formats
from distill_export.export.common import nonstandard_ops
from distill_export.files import sha256_file

runner = CliRunner()
CPU_FORMATS = ("onnx", "onnx-fp16", "onnx-int8")
FILES = {"onnx": "student.onnx", "onnx-fp16": "student-fp16.onnx", "onnx-int8": "student-int8.onnx"}


@pytest.fixture(scope="module")
def exported_run(tiny_run, tmp_path_factory) -> Path:
    """A copy of the shared tiny run, exported to every CPU format by the default exporter
    (dynamo; the tiny run itself uses TorchScript for speed) and validated."""
    run = tmp_path_factory.mktemp("export") / "run"
    shutil.copytree(tiny_run, run)
    result = runner.invoke(app, ["export", str(run), "--format", ",".join(CPU_FORMATS), "--exporter", "dynamo",
                                 "--quiet"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["validate", str(run)])
    assert result.exit_code == 0, result.output
    return run


def _props(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp") or p.name.startswith("."))


def _student_source(run: Path, out_dir: Path, model=None) -> ExportSource:
    from distill_export.nets.model_io import load_student

    student, meta = load_student(run / "student.pt")
    x = np.load(run / "parity_data.npz")["x"]
    return ExportSource(model or student, meta, sha256_file(run / "student.pt"), out_dir, calibration=x[:64],
                        task_meta={"class_names": meta["class_names"]})  # what stage_export passes


# ----- round trip and parity --------------------------------------------------------------


def test_every_cpu_format_round_trips_and_passes_parity(exported_run):
    report = json.loads((exported_run / "report.json").read_text())
    for fmt in CPU_FORMATS:
        art = report["exports"][fmt]
        assert art["path"] == FILES[fmt] and (exported_run / art["path"]).is_file()
        parity = art["parity"]
        assert parity["passed"], (fmt, parity["gates"])
        assert set(parity["per_batch"]) == {"1", "64"}  # batch 1 and a larger batch
        for key in ("max_abs_diff", "mean_abs_diff", "min_cosine", "top1_agreement", "accuracy",
                    "accuracy_drop", "teacher_accuracy_retention"):
            assert key in parity, (fmt, key)
    assert report["exports"]["onnx"]["parity"]["max_abs_diff"] <= 1e-4
    assert report["exports"]["onnx-int8"]["parity"]["accuracy_drop"] <= 0.01
    assert set(report["exports"]["onnx-int8"]["parity"]["gates"]) == {"top1_agreement", "accuracy_drop"}


def test_metadata_present_and_correct(exported_run):
    from distill_export.nets.model_io import load_student

    _, meta = load_student(exported_run / "student.pt")
    sha = sha256_file(exported_run / "student.pt")
    for fmt in CPU_FORMATS:
        props = _props(exported_run / FILES[fmt])
        assert json.loads(props["class_names"]) == meta["class_names"]
        assert props["input_name"] == "image" and props["input_layout"] == "NCHW"
        assert json.loads(props["input_shape"]) == ["batch", 1, 28, 28]
        assert json.loads(props["norm_mean"]) == pytest.approx(meta["norm_mean"])
        assert json.loads(props["norm_std"]) == pytest.approx(meta["norm_std"])
        assert props["teacher"] == meta["teacher"] and props["teacher"].startswith("fusion_teacher")
        assert props["student"] == "tiny_cnn"
        assert props["source_checkpoint_sha256"] == sha
        assert props["distill_export_version"]
        assert props["format"] == fmt
    assert [_props(exported_run / FILES[f])["precision"] for f in CPU_FORMATS] == ["fp32", "fp16", "int8"]
    assert _props(exported_run / "student.onnx")["exporter"] == "dynamo"  # --exporter dynamo, no fallback


def test_exported_onnx_is_standard_and_has_a_dynamic_batch(exported_run):
    import onnxruntime as ort

    x = np.load(exported_run / "parity_data.npz")["x"][:3]
    for fmt in CPU_FORMATS:
        model = onnx.load(str(exported_run / FILES[fmt]))
        onnx.checker.check_model(model, full_check=True)
        assert nonstandard_ops(model) == [], fmt  # standard-domain ops only
        assert {o.domain for o in model.opset_import} <= {"", "ai.onnx"}
        assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
        for value in (model.graph.input[0], model.graph.output[0]):
            assert value.type.tensor_type.shape.dim[0].dim_param, (fmt, value.name)  # symbolic batch
            assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # FP32 I/O, FP16 too
        out = ort.InferenceSession(str(exported_run / FILES[fmt]), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
        assert out.shape == (3, 10)


def test_fp16_and_int8_are_what_they_claim(exported_run):
    fp16 = onnx.load(str(exported_run / FILES["onnx-fp16"]))
    conv_w = {i.name: i for i in fp16.graph.initializer}
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in conv_w.values())
    int8 = onnx.load(str(exported_run / FILES["onnx-int8"]))
    ops = [n.op_type for n in int8.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in int8.graph.initializer}
    weight_scales = [inits[n.input[1]] for n in int8.graph.node
                     if n.op_type == "DequantizeLinear" and inits.get(n.input[0]) is not None
                     and inits[n.input[0]].dtype == np.int8 and inits[n.input[0]].ndim == 4]
    assert weight_scales and all(s.size > 1 for s in weight_scales)  # per-channel conv weights
    report = json.loads((exported_run / "report.json").read_text())
    details = report["exports"]["onnx-int8"]["details"]
    assert details["calibration_method"] == "minmax" and details["per_channel"]
    assert 0 < details["calibration_samples"] <= 256


# ----- options, registry, calibration ----------------------------------------------------


def test_formats_are_ordered_by_what_they_derive_from():
    assert parse_formats("onnx-int8,onnx-fp16") == ["onnx", "onnx-int8", "onnx-fp16"]
    assert parse_formats(["tensorrt-int8"]) == ["onnx", "tensorrt-int8"]
    with pytest.raises(ConfigError, match="unknown export format 'onnx-int4'.*onnx-int8"):
        parse_formats("onnx-int4")


def test_export_options_come_from_config_and_are_checked():
    from distill_export.config import ExportConfig

    opts = ExportOptions.from_config(ExportConfig(opset=19, calibration_samples=64, calibration_method="entropy"))
    assert (opts.opset, opts.calibration_samples, opts.calibration_method) == (19, 64, "entropy")
    with pytest.raises(ConfigError, match="calibration method 'histogram'.*minmax, entropy, percentile"):
        ExportOptions(calibration_method="histogram")
    with pytest.raises(ConfigError, match="opset 11 is too low.*--opset 17"):
        ExportOptions(opset=11)
    with pytest.raises(ConfigError, match="min <= opt <= max"):
        ExportOptions(trt_min_batch=8, trt_opt_batch=4)
    with pytest.raises(ConfigError, match="exporter 'jit' for export.exporter.*dynamo, torchscript"):
        ExportOptions(exporter="jit")


@pytest.mark.slow
def test_the_torchscript_exporter_is_chosen_by_flag_and_recorded(exported_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(exported_run, run)
    before = (run / "student.onnx").read_bytes()
    bad = runner.invoke(app, ["export", str(run), "--exporter", "jit"])
    assert bad.exit_code == 2 and "exporter 'jit'" in bad.output
    assert (run / "student.onnx").read_bytes() == before  # refused before any work
    result = runner.invoke(app, ["export", str(run), "--exporter", "torchscript", "--quiet"])
    assert result.exit_code == 0, result.output
    assert _props(run / "student.onnx")["exporter"] == "torchscript"
    assert "dynamo_failure" not in json.loads((run / "report.json").read_text())["exports"]["onnx"].get("details", {})
    assert runner.invoke(app, ["validate", str(run)]).exit_code == 0  # same outputs as student.pt


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_int8_calibration_methods(exported_run, tmp_path, method):
    from distill_export.runtimes.onnx_runtime import onnx_session, run_onnx

    source = _student_source(exported_run, tmp_path)
    source.artifacts["onnx"] = _fp32_result(exported_run)
    results = export_formats(source, ["onnx-int8"], ExportOptions(calibration_method=method, calibration_samples=64))
    assert results["onnx-int8"].details["calibration_method"] == method
    parity = np.load(exported_run / "parity_data.npz")
    logits = run_onnx(onnx_session(results["onnx-int8"].path, 1), parity["x"], 64)
    agreement = (logits.argmax(1) == parity["logits"].argmax(1)).mean()
    assert agreement >= 0.95, agreement


def _fp32_result(run: Path):
    from dataclasses import fields

    from distill_export.export import ExportResult

    art = json.loads((run / "report.json").read_text())["exports"]["onnx"]
    keep = {f.name for f in fields(ExportResult)}
    return ExportResult(**{k: v for k, v in art.items() if k in keep} | {"path": str(run / art["path"])})


# ----- bad input ---------------------------------------------------------------------------


def test_missing_checkpoint(exported_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(exported_run, run)
    (run / "student.pt").unlink()
    result = runner.invoke(app, ["export", str(run)])
    assert result.exit_code == 2
    assert "student.pt is missing" in result.output and "Traceback" not in result.output


def test_corrupt_checkpoint_leaves_no_partial_file(exported_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(exported_run, run)
    (run / "student.pt").write_bytes(b"PK\x03\x04 not really a zip")
    for f in FILES.values():
        (run / f).unlink()
    forget_student_hash(run)  # a run from before distill's hash: the loader itself must refuse
    result = runner.invoke(app, ["export", str(run), "--format", "onnx,onnx-int8"])
    assert result.exit_code == 2
    assert "student.pt is not a readable checkpoint" in result.output
    assert not any((run / f).exists() for f in FILES.values()) and _leftovers(run) == []


def test_opset_too_low_is_one_line(exported_run):
    result = runner.invoke(app, ["export", str(exported_run), "--opset", "11"])
    assert result.exit_code == 2
    assert "export.opset must be in [17," in result.output and "got 11" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_bad_calibration_method_is_refused_before_any_work(exported_run):
    result = runner.invoke(app, ["export", str(exported_run), "--format", "onnx-int8", "--calibration-method", "kl"])
    assert result.exit_code == 2 and "calibration method 'kl'" in result.output


@torch.library.custom_op("distill_export_test::wiggle", mutates_args=())
def _wiggle(x: torch.Tensor) -> torch.Tensor:
    return x.sin()


@_wiggle.register_fake
def _(x):
    return torch.empty_like(x)


class _StudentWithCustomOp(torch.nn.Module):
    def forward(self, x):
        return _wiggle(x).mean((2, 3)).repeat(1, 10)


def test_unexportable_operator_is_named_and_nothing_is_left(exported_run, tmp_path):
    source = _student_source(exported_run, tmp_path, model=_StudentWithCustomOp())
    with pytest.raises(ExportError) as info:
        export_formats(source, ["onnx"], ExportOptions())
    msg = str(info.value)
    assert "student tiny_cnn" in msg and "to onnx" in msg  # the model and the format
    assert "distill_export_test" in msg and "wiggle" in msg  # the operator
    assert "dynamo and torchscript" in msg and "--opset" in msg  # both exporters tried; a fallback
    assert "\n" not in msg
    assert list(tmp_path.iterdir()) == []  # no partial file, no temp file


class _StudentWithDataDependentBranch(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(28 * 28, 10)

    def forward(self, x):
        if x.sum() > 0:  # torch.export refuses a branch on data; tracing records the branch taken
            x = x * 2
        return self.fc(x.flatten(1))


def test_dynamo_failure_falls_back_to_torchscript_and_says_why(exported_run, tmp_path, caplog):
    source = _student_source(exported_run, tmp_path, model=_StudentWithDataDependentBranch().eval())
    result = export_formats(source, ["onnx"], ExportOptions())["onnx"]
    assert result.details["exporter"] == "torchscript"
    assert "data-dependent" in result.details["dynamo_failure"]
    assert any("falling back to TorchScript" in r.getMessage() for r in caplog.records)
    assert _props(Path(result.path))["exporter"] == "torchscript"


def test_unwritable_export_path(exported_run, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    source = _student_source(exported_run, blocker / "sub")
    with pytest.raises(ConfigError, match="cannot write .*student.onnx"):
        export_formats(source, ["onnx"], ExportOptions())


# ----- TensorRT ----------------------------------------------------------------------------


def _tensorrt_missing() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "TensorRT is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    return None


def test_tensorrt_missing_is_a_clear_error(exported_run):
    if _tensorrt_missing() is None:
        pytest.skip("TensorRT and a GPU are present: the error path cannot be exercised")
    result = runner.invoke(app, ["export", str(exported_run), "--format", "tensorrt-fp16"])
    assert result.exit_code == 2
    assert "TensorRT" in result.output or "GPU" in result.output
    assert "install" in result.output or "--gpus all" in result.output
    assert not list(exported_run.glob("*.engine"))


def test_engine_stamp_refuses_another_machine(tmp_path):
    from distill_export.export.tensorrt import check_stamp

    engine = tmp_path / "student-trt-fp16.engine"
    engine.write_bytes(b"\0")
    (tmp_path / "student-trt-fp16.engine.json").write_text(json.dumps(
        {"tensorrt_version": "10.3.0", "gpu_name": "NVIDIA A100-SXM4-80GB", "precision": "fp16"}))
    assert check_stamp(engine, "10.3.0", "NVIDIA A100-SXM4-80GB")["precision"] == "fp16"
    with pytest.raises(BackendUnavailable, match="built with TensorRT 10.3.0 for NVIDIA A100.*this machine has "
                       "TensorRT 10.7.0 and NVIDIA H100.*--format tensorrt-fp16"):
        check_stamp(engine, "10.7.0", "NVIDIA H100 80GB HBM3")


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_tensorrt_engine_round_trips(exported_run, tmp_path, precision):
    if reason := _tensorrt_missing():
        pytest.skip(reason)
    run = tmp_path / "run"
    shutil.copytree(exported_run, run)
    fmt = f"tensorrt-{precision}"
    result = runner.invoke(app, ["export", str(run), "--format", fmt, "--quiet"])
    assert result.exit_code == 0, result.output
    stamp = json.loads((run / f"student-trt-{precision}.engine.json").read_text())
    assert stamp["tensorrt_version"] and stamp["gpu_name"] and stamp["precision"] == precision
    assert (run / "trt-timing.cache").is_file()
    result = runner.invoke(app, ["validate", str(run)])
    assert result.exit_code == 0, result.output
    assert json.loads((run / "report.json").read_text())["exports"][fmt]["parity"]["passed"]
