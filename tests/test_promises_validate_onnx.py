"""Validate's promises on real, tiny ONNX files (issue 25: the fast tests that reach what only the
77 s CLI runs of tests/test_validate.py reached before):

- parity data (student and teacher) is written whole and read back as written; a missing or
  unreadable file is one sentence that says to re-run export;
- an artifact is run by ONNX Runtime at every configured batch size against the PyTorch
  reference; the gates of its precision judge the WORST batch size (a model that is exact at
  batch 1 and leaks across a batch fails at the larger one), with the config's limits;
- an artifact exported from another checkpoint, one whose input does not fit the data, and an
  unknown runtime are refused by name; each call is bounded by validate.max_call_s;
- another runtime that runs the same file (OpenVINO) is reported as skipped, with its reason,
  when it cannot run; the artifact's own verdict is ONNX Runtime's;
- the teacher's multi-input ONNX is judged by the FP32 gates on the outputs as the task reads them.

The models are built with onnx.helper (a few hundred bytes, no torch): logits = x·W + b, and with
`leak`, + leak·mean(x over the batch)·W2, which equals the per-row reference only at batch 1.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from onnx import helper as h

from distill_export import validate
from distill_export.config import ValidateConfig
from distill_export.errors import ConfigError, DataError
from distill_export.runtimes import onnx_bounds
from distill_export.runtimes.base import find_runtime
from distill_export.tasks import get_task

TASK = get_task("classification")
RNG = np.random.default_rng(3)
W = RNG.normal(size=(6, 4)).astype(np.float32)
W2 = RNG.normal(size=(6, 4)).astype(np.float32)
B = RNG.normal(size=4).astype(np.float32)
X = RNG.normal(size=(16, 2, 3)).astype(np.float32)
SHA = "c0ffee" * 10 + "abcd"


def reference(x: np.ndarray, leak: float = 0.0) -> np.ndarray:
    """What the PyTorch student returns, row by row (a batch of one each)."""
    flat = x.reshape(len(x), 6).astype(np.float64)
    return (flat @ W + B + leak * flat @ W2).astype(np.float32)


def student_onnx(path: Path, leak: float = 0.0, sha: str | None = SHA, shape=("batch", 2, 3)) -> Path:
    inits = [h.make_tensor("shape", TensorProto.INT64, [2], [-1, 6]),
             h.make_tensor("W", TensorProto.FLOAT, [6, 4], W.ravel()), h.make_tensor("B", TensorProto.FLOAT, [4], B),
             h.make_tensor("W2", TensorProto.FLOAT, [6, 4], (leak * W2).ravel())]
    nodes = [h.make_node("Reshape", ["x", "shape"], ["flat"]), h.make_node("MatMul", ["flat", "W"], ["xw"]),
             h.make_node("Add", ["xw", "B"], ["lin"]),
             h.make_node("ReduceMean", ["flat"], ["mean"], axes=[0], keepdims=1),  # crosses the batch
             h.make_node("MatMul", ["mean", "W2"], ["leak"]), h.make_node("Add", ["lin", "leak"], ["logits"])]
    graph = h.make_graph(nodes, "student", [h.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                         [h.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])], inits)
    return _save(graph, path, {"source_checkpoint_sha256": sha} if sha else {})


def teacher_onnx(path: Path, classes: int = 4) -> Path:
    """Two modalities, (batch, 2) and (batch, 4), concatenated then W[:, :classes]."""
    graph = h.make_graph(
        [h.make_node("Concat", ["image", "audio"], ["both"], axis=1), h.make_node("MatMul", ["both", "W"], ["logits"])],
        "teacher", [h.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 2]),
                    h.make_tensor_value_info("audio", TensorProto.FLOAT, ["batch", 4])],
        [h.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        [h.make_tensor("W", TensorProto.FLOAT, [6, classes], W[:, :classes].ravel())])
    return _save(graph, path, {})


def _save(graph, path: Path, metadata: dict) -> Path:
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.helper.set_model_props(model, metadata)
    onnx.save(model, str(path))
    return path


def _artifact(path: Path, precision: str = "fp32") -> dict:
    return {"path": str(path), "runtime": "onnxruntime", "precision": precision, "format": f"onnx-{precision}"}


def _parity(leak_labels: bool = False, leak: float = 0.0) -> dict:
    ref = reference(X, leak)
    labels = ref.argmax(1)
    if leak_labels:
        labels = labels.copy()
        labels[:4] = (labels[:4] + 1) % 4  # the reference is 75% accurate
    return {"x": X, "labels": labels, "reference": ref, "logits": ref, "checkpoint_sha256": SHA}


# ----- parity data ---------------------------------------------------------------------------

def test_parity_data_is_read_back_as_written_and_a_bad_file_is_one_sentence(tmp_path):
    path = tmp_path / validate.PARITY_FILE
    labels = np.arange(16) % 4
    validate.save_parity_data(path, X.astype(np.float64), labels, reference(X).astype(np.float64), SHA)
    assert os.listdir(tmp_path) == [validate.PARITY_FILE]  # written through a temp file, nothing left
    data = validate.load_parity_data(path)
    assert data["x"].dtype == np.float32 and np.array_equal(data["x"], X)
    assert np.array_equal(data["labels"], labels) and data["checkpoint_sha256"] == SHA
    assert data["reference"].dtype == np.float32 and np.array_equal(data["reference"], reference(X))
    assert data["logits"] is data["reference"]

    boxes = {"boxes": np.ones((16, 3, 4), np.float32), "classes": np.zeros((16, 3), np.int64)}
    validate.save_parity_data(path, X, labels, boxes)  # a detector's outputs: one array per name
    data = validate.load_parity_data(path)
    assert set(data["reference"]) == {"boxes", "classes"} and "logits" not in data
    assert data["reference"]["classes"].dtype == np.int64 and np.array_equal(data["reference"]["boxes"], boxes["boxes"])
    assert data["checkpoint_sha256"] == ""

    np.savez(tmp_path / "old.npz", x=X, labels=labels, logits=reference(X))  # before checksums were stored
    assert validate.load_parity_data(tmp_path / "old.npz")["checkpoint_sha256"] == ""

    with pytest.raises(DataError) as err:
        validate.load_parity_data(tmp_path / "none.npz")
    assert str(err.value) == f"{tmp_path / 'none.npz'} is missing; run `distill-export export` first"
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    np.savez(tmp_path / "nolabels.npz", x=X, logits=reference(X))
    for bad in ("junk.npz", "nolabels.npz"):
        with pytest.raises(DataError) as err:
            validate.load_parity_data(tmp_path / bad)
        msg = str(err.value)
        assert msg.startswith(f"{tmp_path / bad} is not readable parity data (") and "\n" not in msg
        assert msg.endswith("); re-run `distill-export export`")


def test_teacher_parity_data_is_read_back_as_written_and_a_bad_file_is_one_sentence(tmp_path):
    path = tmp_path / validate.TEACHER_PARITY_FILE
    inputs = {"image": X[:, 0, :2].copy(), "audio": X.reshape(16, 6)[:, :4].copy()}
    labels = np.arange(16) % 4
    validate.save_teacher_parity_data(path, inputs, labels, reference(X).astype(np.float64))
    assert os.listdir(tmp_path) == [validate.TEACHER_PARITY_FILE]
    data = validate.load_teacher_parity_data(path)
    assert set(data) == {"inputs", "labels", "logits"} and set(data["inputs"]) == {"image", "audio"}
    assert all(np.array_equal(data["inputs"][k], v) for k, v in inputs.items())
    assert data["logits"].dtype == np.float32 and np.array_equal(data["logits"], reference(X))
    assert np.array_equal(data["labels"], labels)
    with pytest.raises(DataError) as err:
        validate.load_teacher_parity_data(tmp_path / "none.npz")
    assert str(err.value) == f"{tmp_path / 'none.npz'} is missing; run `distill-export export` first"
    np.savez(tmp_path / "nologits.npz", labels=labels, x__image=inputs["image"])
    with pytest.raises(DataError) as err:
        validate.load_teacher_parity_data(tmp_path / "nologits.npz")
    assert str(err.value).startswith(f"{tmp_path / 'nologits.npz'} is not readable parity data (")
    assert str(err.value).endswith("); re-run `distill-export export`")


# ----- an artifact's parity and gates --------------------------------------------------------

def test_a_faithful_onnx_passes_every_gate_of_its_precision_at_every_batch_size(tmp_path):
    parity = _parity(leak_labels=True)
    cfg = ValidateConfig(batch_sizes=[1, 5, 16])
    exports = {"onnx": _artifact(student_onnx(tmp_path / "s.onnx")),
               "onnx-int8": _artifact(student_onnx(tmp_path / "q.onnx"), "int8")}
    results = validate.validate_exports(exports, parity, cfg, TASK, teacher_accuracy=0.8)
    for fmt, precision in (("onnx", "fp32"), ("onnx-int8", "int8")):
        res = results[fmt]
        assert res["passed"] and set(res["per_batch"]) == {"1", "5", "16"}
        names = {g.metric for g in TASK.gates if g.precision == precision}
        assert set(res["gates"]) == names
        for g in TASK.gates:
            if g.precision == precision:
                assert res["gates"][g.metric]["limit"] == getattr(cfg, g.config_key)
        assert res["max_abs_diff"] < 1e-5 and res["top1_agreement"] == 1.0 and res["accuracy"] == 0.75
        assert res["teacher_accuracy_retention"] == pytest.approx(0.75 / 0.8)
        # OpenVINO runs the same ONNX file when installed, with the same gates; else it says why not
        missing = find_runtime("openvino").missing()
        on_openvino = res["runtimes"]["openvino"]
        assert on_openvino == {"skipped": missing} if missing else set(on_openvino["gates"]) == names
    assert validate.failed_gates(results) == []
    if find_runtime("openvino").missing():
        assert validate.runtime_results(results) == {}  # nothing ran on OpenVINO, no gate rows for it


def test_each_gate_judges_the_worst_batch_size(tmp_path):
    """Exact at batch 1, off by leak·(batch mean - row)·W2 at a larger batch: the FP32 gates fail,
    with the larger batch's numbers, and batch 1 alone would have passed."""
    art = _artifact(student_onnx(tmp_path / "leaky.onnx", leak=0.05))
    parity = _parity(leak=0.05)
    res = validate.validate_artifact(art, parity, ValidateConfig(batch_sizes=[1, 16]), TASK, None)
    one, full = res["per_batch"]["1"], res["per_batch"]["16"]
    assert one["max_abs_diff"] < 1e-5 < full["max_abs_diff"]
    assert res["max_abs_diff"] == full["max_abs_diff"] and res["min_cosine"] == full["min_cosine"]
    assert res["top1_agreement"] == min(one["top1_agreement"], full["top1_agreement"])
    assert not res["passed"] and not res["gates"]["max_abs_diff"]["passed"]
    assert res["gates"]["max_abs_diff"]["value"] == full["max_abs_diff"]
    assert validate.failed_gates({"onnx": res})[0] == f"onnx max_abs_diff {full['max_abs_diff']:.4g} > 0.0001"
    alone = validate.validate_artifact(art, parity, ValidateConfig(batch_sizes=[1]), TASK, None)
    assert alone["passed"]
    loose = ValidateConfig(batch_sizes=[16, 1], fp32_max_abs=1.0, fp32_agreement=0.0)  # looser limits pass it
    assert validate.validate_artifact(art, parity, loose, TASK, None)["passed"]


def test_an_artifact_of_another_checkpoint_or_another_input_is_refused_by_name(tmp_path):
    other = student_onnx(tmp_path / "other.onnx", sha="ab" * 32)
    cfg = ValidateConfig(batch_sizes=[4])
    with pytest.raises(DataError) as err:
        validate.validate_artifact(_artifact(other), _parity(), cfg, TASK, None)
    assert str(err.value) == (f"{other} was exported from another student.pt (sha256 abababababab…) than the parity "
                              f"data ({SHA[:12]}…); re-run `distill-export export` with --format onnx-fp32")
    unknown = {k: v for k, v in _parity().items() if k != "checkpoint_sha256"}  # no checksum: nothing to compare
    assert validate.validate_artifact(_artifact(other), unknown, cfg, TASK, None)["passed"]
    unsigned = student_onnx(tmp_path / "unsigned.onnx", sha=None)  # an export that predates the checksum
    assert validate.validate_artifact(_artifact(unsigned), _parity(), cfg, TASK, None)["passed"]

    wide = student_onnx(tmp_path / "wide.onnx", shape=("batch", 3, 2))
    with pytest.raises(DataError) as err:
        validate.validate_artifact(_artifact(wide), _parity(), cfg, TASK, None)
    assert str(err.value) == f"{wide} expects input x of shape [batch, 3, 2], the run's data has [batch, 2, 3]"

    with pytest.raises(ConfigError) as err:
        validate.make_runner({"path": "m.bin", "runtime": "tflite"})
    assert str(err.value) == "unknown runtime 'tflite' for m.bin"
    with pytest.raises(ConfigError) as err:
        validate.validate_exports({}, _parity(), cfg, TASK, None)
    assert str(err.value) == "no exported artifacts to validate; run `distill-export export` first"


def test_each_call_is_bounded_by_validate_max_call_s(tmp_path, monkeypatch):
    limits = []
    real = validate.make_runner

    def make_runner(*args, **kwargs):
        run = real(*args, **kwargs)
        return lambda x, bs: (limits.append(onnx_bounds._LIMIT.get()), run(x, bs))[1]

    monkeypatch.setattr(validate, "make_runner", make_runner)
    cfg = ValidateConfig(batch_sizes=[1, 8], max_call_s=7.5)
    validate.validate_exports({"onnx": _artifact(student_onnx(tmp_path / "s.onnx"))}, _parity(), cfg, TASK, None)
    assert limits == [7.5, 7.5]
    assert onnx_bounds._LIMIT.get() == onnx_bounds.DEFAULT_MAX_CALL_S  # restored after validate


class _StandIn:
    name = "standin"

    def __init__(self, missing=None):
        self._missing = missing

    def missing(self):
        return self._missing


def test_another_runtime_reports_its_own_gates_or_why_it_was_skipped(tmp_path, monkeypatch):
    art = _artifact(student_onnx(tmp_path / "s.onnx"))
    cfg = ValidateConfig(batch_sizes=[2])
    assert validate.validate_on_runtime(_StandIn("pip install it"), art, _parity(), cfg, TASK, None) == {
        "skipped": "pip install it"}
    opened = []
    real = validate.make_runner

    def make_runner(artifact, *args):
        opened.append(artifact["runtime"])
        if artifact["runtime"] == "standin":
            raise DataError("s.onnx: operator Foo is not supported")
        return real(artifact, *args)

    monkeypatch.setattr(validate, "make_runner", make_runner)
    assert validate.validate_on_runtime(_StandIn(), art, _parity(), cfg, TASK, None) == {
        "skipped": "s.onnx: operator Foo is not supported"}
    assert opened == ["standin"]  # the artifact is opened on that runtime, not its own
    _StandIn.name = "onnxruntime"  # a runtime that does run it: its result, gates and all
    try:
        res = validate.validate_on_runtime(_StandIn(), art, _parity(), cfg, TASK, 0.5)
    finally:
        _StandIn.name = "standin"
    assert res["passed"] and res["teacher_accuracy_retention"] == pytest.approx(2.0)
    results = {"onnx": {"gates": res["gates"], "runtimes": {"openvino": res, "tensorrt": {"skipped": "no GPU"}}}}
    assert validate.runtime_results(results) == {"onnx on openvino": res}


def test_a_second_runtime_that_runs_the_file_is_judged_by_the_same_gates_apart(tmp_path, monkeypatch):
    """A stand-in for OpenVINO (it runs ONNX Runtime's artifacts) whose outputs are off by 0.01:
    its own gates fail under runtimes.<name>, the artifact's verdict stays ONNX Runtime's."""
    from distill_export.runtimes import base
    from distill_export.runtimes.onnx_runtime import OnnxRuntime

    class Drifting(OnnxRuntime):
        also_runs = ("onnxruntime",)

        def runner(self, path, threads, sample_shape, check_facts):
            run = super().runner(path, threads, sample_shape, check_facts)
            return lambda x, bs: run(x, bs) + 0.01

    drifting = Drifting()
    drifting.name = "drifting"
    monkeypatch.setitem(base._REGISTRY, "drifting", drifting)
    monkeypatch.setitem(base._ORDER, "drifting", 99)
    cfg = ValidateConfig(batch_sizes=[1, 4])
    results = validate.validate_exports({"onnx": _artifact(student_onnx(tmp_path / "s.onnx"))},
                                        _parity(leak_labels=True), cfg, TASK, teacher_accuracy=0.8)
    res, other = results["onnx"], results["onnx"]["runtimes"]["drifting"]
    assert res["passed"] and not other["passed"] and set(other["per_batch"]) == {"1", "4"}
    assert other["gates"]["max_abs_diff"] == {"value": pytest.approx(0.01, rel=1e-3), "limit": 1e-4,
                                              "kind": "max", "passed": False}
    assert other["teacher_accuracy_retention"] == pytest.approx(0.75 / 0.8)
    assert validate.runtime_results(results) == {"onnx on drifting": other}
    assert validate.failed_gates(results) == []  # the exit code follows ONNX Runtime's verdict


def test_a_runner_opened_without_a_sample_shape_or_checksum_checks_neither(tmp_path):
    """make_runner's defaults: no input signature check, no checkpoint to compare with."""
    path = student_onnx(tmp_path / "signed.onnx", sha="ab" * 32)
    run = validate.make_runner({"path": str(path), "runtime": "onnxruntime", "format": "onnx"})
    assert np.allclose(run(X, 5), reference(X), atol=1e-5)


# ----- the teacher's ONNX ---------------------------------------------------------------------

def _teacher_parity() -> dict:
    flat = X.reshape(16, 6)
    inputs = {"image": flat[:, :2].copy(), "audio": flat[:, 2:].copy()}
    logits = (flat.astype(np.float64) @ W).astype(np.float32)
    return {"inputs": inputs, "labels": logits.argmax(1), "logits": logits}


class _ScaledTask(type(TASK)):
    """A task whose exported graph returns its raw outputs read differently (decoded)."""

    def decode(self, outputs):
        return outputs * 3.0 + 1.0


def test_the_teacher_onnx_is_judged_by_the_fp32_gates_on_decoded_outputs(tmp_path):
    path = teacher_onnx(tmp_path / "teacher.onnx")
    cfg = ValidateConfig(batch_sizes=[1, 6])
    res = validate.validate_teacher_onnx(path, _teacher_parity(), cfg, TASK)
    assert res["passed"] and set(res["per_batch"]) == {"1", "6"}
    assert set(res["gates"]) == {"max_abs_diff", "top1_agreement"}  # the FP32 gates
    assert res["gates"]["max_abs_diff"]["limit"] == cfg.fp32_max_abs and res["top1_agreement"] == 1.0
    scaled = validate.validate_teacher_onnx(path, _teacher_parity(), cfg, _ScaledTask())
    assert scaled["passed"] and scaled["max_abs_diff"] < 1e-4  # both sides decoded, so they still agree
    parity = _teacher_parity()
    parity["logits"] = parity["logits"] + 0.01  # the PyTorch teacher said something else
    res = validate.validate_teacher_onnx(path, parity, ValidateConfig(batch_sizes=[16], fp32_max_abs=1e-3), TASK)
    assert not res["passed"] and res["gates"]["max_abs_diff"]["value"] == pytest.approx(0.01, rel=1e-3)
    assert validate.validate_teacher_onnx(path, parity, ValidateConfig(batch_sizes=[4], fp32_max_abs=0.02), TASK)["passed"]
    narrow = teacher_onnx(tmp_path / "narrow.onnx", classes=3)
    with pytest.raises(DataError) as err:
        validate.validate_teacher_onnx(narrow, _teacher_parity(), cfg, TASK)
    assert str(err.value) == f"{narrow} returned outputs of shape (16, 3), expected (16, 4)"
