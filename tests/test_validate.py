"""Parity gates: they pass on a faithful export, fail (exit 1) on a perturbed one or a
tightened tolerance, and bad artifacts fail with one line (exit 2). validate needs no torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from typer.testing import CliRunner

from distill_export.cli import app
from distill_export.config import ValidateConfig
from distill_export.errors import ConfigError
from distill_export.tasks import get_task
from distill_export.validate import Gate, gates_for, parse_gate_flags, validate_artifact

TASK = get_task("classification")

runner = CliRunner()


@pytest.fixture()
def run_copy(tiny_run, tmp_path) -> Path:
    """A private copy of the shared tiny run (FP32 ONNX exported, parity data saved)."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    return run


def _report(run: Path) -> dict:
    return json.loads((run / "report.json").read_text())


# ----- metrics and gates as functions ------------------------------------------------------


def test_compare_metrics():
    ref = np.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0], [1.0, 0.0, 0.0]], np.float32)
    cand = ref.copy()
    cand[1] = [0.0, 1.0, 1.5]  # flips row 1 from class 1 to class 2
    labels = np.array([0, 1, 2, 1])
    m = TASK.parity_metrics(cand, ref, labels)
    assert m["max_abs_diff"] == pytest.approx(1.5)
    assert m["mean_abs_diff"] == pytest.approx(1.5 / 12)
    assert m["top1_agreement"] == pytest.approx(0.75)
    assert m["reference_accuracy"] == pytest.approx(0.75) and m["accuracy"] == pytest.approx(0.5)
    assert m["accuracy_drop"] == pytest.approx(0.25)
    assert m["min_cosine"] == pytest.approx(1.0 / np.sqrt(1 + 1.5**2))


def test_default_gates_per_precision():
    cfg = ValidateConfig()
    # the classification task's own defaults are ValidateConfig's (one source for the CLI and YAML)
    assert {g.config_key: g.default for g in TASK.gates} == {
        g.config_key: getattr(cfg, g.config_key) for g in TASK.gates}
    assert gates_for("fp32", cfg, TASK) == [("max_abs_diff", "max", 1e-4), ("top1_agreement", "min", 0.999)]
    assert gates_for("fp16", cfg, TASK) == [("top1_agreement", "min", 0.995)]
    assert gates_for("int8", cfg, TASK) == [("top1_agreement", "min", 0.98), ("accuracy_drop", "max", 0.01)]
    assert Gate("x", 0.97, 0.98, "min").passed is False and Gate("x", 0.02, 0.01, "max").passed is False
    assert Gate("x", float("nan"), 1.0, "max").passed is False  # NaN logits never pass


def test_gate_flags_parse_and_refuse_unknown_names():
    assert parse_gate_flags(["fp32_max_abs=1e-5", "int8_agreement=0.99"], TASK) == {
        "validate.fp32_max_abs": 1e-5, "validate.int8_agreement": 0.99}
    with pytest.raises(ConfigError, match="did you mean fp16_agreement"):
        parse_gate_flags(["fp16_agrement=0.9"], TASK)
    with pytest.raises(ConfigError, match="expected a plain number"):
        parse_gate_flags(["fp16_agreement=high"], TASK)


def test_int8_accuracy_drop_gate_fails_on_a_worse_model(tiny_run, tmp_path):
    """A fake INT8 artifact: the FP32 ONNX labelled int8, judged against reference logits
    that are better than it (labels = the reference's argmax, candidate flipped on 5%)."""
    parity = dict(np.load(tiny_run / "parity_data.npz"))
    from distill_export.runtimes.onnx_runtime import onnx_session, run_onnx

    ours = run_onnx(onnx_session(tiny_run / "student.onnx", 1), parity["x"], 64)
    flip = np.zeros(len(ours), bool)
    flip[:: 20] = True
    reference = ours.copy()
    reference[flip] = np.roll(ours[flip], 1, axis=1)  # the reference disagrees on 5% of rows
    labels = reference.argmax(1)  # ... and is right on all of them
    art = {"path": str(tiny_run / "student.onnx"), "runtime": "onnxruntime", "precision": "int8", "format": "onnx-int8"}
    cfg = ValidateConfig(batch_sizes=[1, 7])
    res = validate_artifact(art, {"x": parity["x"], "labels": labels, "reference": reference}, cfg, TASK, None)
    assert not res["passed"]
    assert not res["gates"]["top1_agreement"]["passed"] and not res["gates"]["accuracy_drop"]["passed"]
    assert res["accuracy_drop"] == pytest.approx(flip.mean(), abs=0.01)


# ----- the validate command ----------------------------------------------------------------


def test_validate_passes_and_prints_a_gate_table(run_copy):
    result = runner.invoke(app, ["validate", str(run_copy)])
    assert result.exit_code == 0, result.output
    assert "max_abs_diff" in result.output and "top1_agreement" in result.output and "PASS" in result.output
    parity = _report(run_copy)["exports"]["onnx"]["parity"]
    assert parity["passed"] and parity["gates"]["max_abs_diff"]["limit"] == 1e-4


def test_tightened_tolerance_fails_with_exit_1(run_copy):
    # A max difference of exactly 0: ONNX Runtime and PyTorch never agree to the last bit on a
    # conv net. (An agreement above 1 is out of validate.fp32_agreement's range, refused with exit 2.)
    result = runner.invoke(app, ["validate", str(run_copy), "--gate", "fp32_max_abs=0"])
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.output and "onnx max_abs_diff" in result.output
    gates = _report(run_copy)["exports"]["onnx"]["parity"]["gates"]
    assert gates["max_abs_diff"]["passed"] is False and gates["max_abs_diff"]["limit"] == 0.0
    assert gates["top1_agreement"]["passed"] is True


def test_perturbed_student_fails_with_exit_1(run_copy):
    """The exported student with its first conv's weights nudged: a wrong export."""
    path = run_copy / "student.onnx"
    model = onnx.load(str(path))
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    init = next(i for i in model.graph.initializer if i.name == conv.input[1])
    w = numpy_helper.to_array(init)
    rng = np.random.default_rng(0)
    init.CopyFrom(numpy_helper.from_array((w + 0.05 * rng.standard_normal(w.shape)).astype(w.dtype), init.name))
    onnx.save(model, str(path))
    result = runner.invoke(app, ["validate", str(run_copy)])
    assert result.exit_code == 1, result.output
    assert "onnx max_abs_diff" in result.output
    parity = _report(run_copy)["exports"]["onnx"]["parity"]
    assert parity["passed"] is False and parity["max_abs_diff"] > 1e-4


def test_unknown_gate_is_exit_2(run_copy):
    result = runner.invoke(app, ["validate", str(run_copy), "--gate", "fp64_max_abs=1"])
    assert result.exit_code == 2 and "--gate expects NAME=VALUE" in result.output


def test_input_signature_mismatch_is_one_line(run_copy):
    """An ONNX whose input does not fit the run's data (32x32 instead of 28x28)."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 32, 32])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])
    w = numpy_helper.from_array(np.zeros((1024, 10), np.float32), "w")
    shape = numpy_helper.from_array(np.array([0, -1], np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["image", "shape"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["logits"])],
        "wrong", [x], [y], [w, shape])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(run_copy / "student.onnx"))
    result = runner.invoke(app, ["validate", str(run_copy)])
    assert result.exit_code == 2
    assert "expects input image of shape [batch, 1, 32, 32]" in result.output and "[batch, 1, 28, 28]" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_corrupt_onnx_is_one_line(run_copy):
    (run_copy / "student.onnx").write_bytes(b"\x08\x07garbage")
    result = runner.invoke(app, ["validate", str(run_copy)])
    assert result.exit_code == 2 and "not a loadable ONNX model" in result.output


def test_stale_artifact_from_another_checkpoint_is_named(run_copy):
    path = run_copy / "student.onnx"
    model = onnx.load(str(path))
    for p in model.metadata_props:
        if p.key == "source_checkpoint_sha256":
            p.value = "f" * 64
    onnx.save(model, str(path))
    result = runner.invoke(app, ["validate", str(run_copy)])
    assert result.exit_code == 2 and "exported from another student.pt" in result.output


@pytest.mark.slow
def test_validate_needs_no_torch(run_copy):
    code = (
        "import sys; sys.modules['torch'] = None\n"  # any `import torch` now raises ImportError
        "from typer.testing import CliRunner\n"
        "from distill_export.cli import app\n"
        f"r = CliRunner().invoke(app, ['validate', {str(run_copy)!r}])\n"
        "print(r.output); sys.exit(r.exit_code)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASS" in proc.stdout
