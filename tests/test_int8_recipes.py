"""INT8 recipes (export/int8_recipes.py, quantised by export/common.py): which nodes each quantises, per-architecture defaults,
and that each recipe's model still computes the FP32 model's answer.

A small depthwise-separable net with an SE-style gate (Conv, depthwise Conv, HardSigmoid, Mul,
Add) at 16x16, calibrated on 64 seeded rows; tolerance: top-1 agreement with FP32 >= 90% on
128 rows and logits within 0.25 of FP32 (logit range about ±3)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from distill_export.errors import ExportError
from distill_export.export import ExportOptions, ExportSource, export_formats
from distill_export.export.common import depthwise_convs, quantize_qdq
from distill_export.export.int8_recipes import DEFAULT_RECIPE, INT8_RECIPES, RECIPE_BY_STUDENT, recipe_for


class _DwNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.ReLU())
        self.pw = nn.Conv2d(16, 16, 1)
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(16, 16, 1), nn.Hardsigmoid())
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        y = self.pw(self.dw(self.stem(x)))
        y = y * self.gate(y) + y  # SE-style gate and a residual Add
        return self.head(y.mean((2, 3)))


META = {"class_names": [str(i) for i in range(10)], "input_name": "x", "input_shape": [3, 16, 16],
        "norm_mean": [0.0] * 3, "norm_std": [1.0] * 3, "student": "dw_net", "teacher": "none"}


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    torch.manual_seed(0)
    model = _DwNet().eval()
    rng = np.random.default_rng(0)
    cal = rng.standard_normal((64, 3, 16, 16)).astype(np.float32)
    x = rng.standard_normal((128, 3, 16, 16)).astype(np.float32)
    out = tmp_path_factory.mktemp("int8")
    res = export_formats(ExportSource(model, META, "0" * 64, out, calibration=cal), ["onnx"], ExportOptions())
    return Path(res["onnx"].path), cal, x


def _run(path, x):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def _weight_is_quantised(model, node) -> bool:
    produced = {o: n for n in model.graph.node for o in n.output}
    src = produced.get(node.input[1])
    return src is not None and src.op_type == "DequantizeLinear"


def test_depthwise_convs_are_found_by_group_and_weight_shape(fp32):
    model = onnx.load(str(fp32[0]))
    found = depthwise_convs(model)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert len(convs) == 4 and len(found) == 1  # stem, dw, pw, gate: only dw is depthwise
    (dw,) = [n for n in convs if n.name == found[0]]
    assert next(a.i for a in dw.attribute if a.name == "group") == 16


@pytest.mark.parametrize("name", sorted(INT8_RECIPES))
def test_every_recipe_quantises_and_keeps_the_fp32_answer(fp32, tmp_path, name):
    path, cal, x = fp32
    out = tmp_path / f"{name}.onnx"
    details = quantize_qdq(path, out, cal, ExportOptions(), recipe=INT8_RECIPES[name])
    assert details["recipe"] == name and details["quant_format"] == INT8_RECIPES[name].quant_format
    ref, got = _run(path, x), _run(out, x)
    assert (ref.argmax(1) == got.argmax(1)).mean() >= 0.90
    np.testing.assert_allclose(got, ref, rtol=0, atol=0.25)


def test_no_dw_recipe_leaves_depthwise_convs_in_fp32_and_quantises_the_rest(fp32, tmp_path):
    path, cal, _ = fp32
    quantize_qdq(path, tmp_path / "a.onnx", cal, ExportOptions(), recipe=INT8_RECIPES["qdq-no-dw"])
    q = onnx.load(str(tmp_path / "a.onnx"))
    convs = [n for n in q.graph.node if n.op_type == "Conv"]
    fp32_convs = [n for n in convs if not _weight_is_quantised(q, n)]
    assert len(convs) == 4 and len(fp32_convs) == 1
    assert next(a.i for a in fp32_convs[0].attribute if a.name == "group") == 16


def test_conv_only_recipe_puts_no_qdq_pair_on_elementwise_ops(fp32, tmp_path):
    path, cal, _ = fp32
    for name, expect_quantised in (("qdq", True), ("qdq-conv", False)):
        quantize_qdq(path, tmp_path / f"{name}.onnx", cal, ExportOptions(), recipe=INT8_RECIPES[name])
        q = onnx.load(str(tmp_path / f"{name}.onnx"))
        quantised_inputs = {i for n in q.graph.node if n.op_type == "QuantizeLinear" for i in n.input[:1]}
        elementwise = [n for n in q.graph.node if n.op_type in ("Mul", "Add", "HardSigmoid")]
        # qdq: an elementwise op's output is re-quantised (a Q/DQ pair after it); qdq-conv: never
        requantised = any(o in quantised_inputs for n in elementwise for o in n.output)
        assert requantised is expect_quantised, name
        assert all(_weight_is_quantised(q, n) for n in q.graph.node if n.op_type == "Conv")


def test_qoperator_recipe_writes_qlinear_convs(fp32, tmp_path):
    path, cal, _ = fp32
    quantize_qdq(path, tmp_path / "q.onnx", cal, ExportOptions(), recipe=INT8_RECIPES["qoperator-conv"])
    ops = {n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node}
    assert "QLinearConv" in ops and "Conv" not in ops


def test_auto_picks_the_architecture_default_and_unknown_names_fail():
    for student, recipe in RECIPE_BY_STUDENT.items():
        assert recipe_for("auto", student).name == recipe
    assert recipe_for("auto", "tiny_cnn").name == RECIPE_BY_STUDENT.get("tiny_cnn", DEFAULT_RECIPE)
    assert recipe_for("auto", "somebody:factory").name == DEFAULT_RECIPE
    assert recipe_for("qdq-conv", "resnet18").name == "qdq-conv"
    with pytest.raises(ExportError, match="unknown INT8 recipe 'fast'"):
        recipe_for("fast", None)


def test_the_export_records_the_recipe_it_used(fp32, tmp_path):
    path, cal, _ = fp32
    torch.manual_seed(0)
    source = ExportSource(_DwNet().eval(), META, "0" * 64, tmp_path, calibration=cal)
    res = export_formats(source, ["onnx-int8"], ExportOptions(int8_recipe="qdq-no-dw"))
    assert res["onnx-int8"].details["recipe"] == "qdq-no-dw"
    assert len(res["onnx-int8"].details["fp32_nodes"]) == 2  # the classifier head and the depthwise conv


def test_an_unknown_recipe_in_the_config_fails_before_any_work():
    from distill_export.config import RunConfig, validate_config
    from distill_export.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown INT8 recipe 'fastest'"):
        ExportOptions(int8_recipe="fastest")
    config = RunConfig()
    config.export.int8_recipe = "fastest"
    with pytest.raises(ConfigError, match="unknown INT8 recipe 'fastest'"):
        validate_config(config)
    config.export.int8_recipe = "qdq-conv"
    assert ExportOptions.from_config(config.export).int8_recipe == "qdq-conv"


def test_a_recipe_that_writes_non_standard_operators_is_refused(fp32, tmp_path):
    """QOperator turns the gate's Mul and the residual Add into com.microsoft QLinearMul/QLinearAdd:
    the export says so in one line and leaves no file (the project's ONNX files are standard ops)."""
    _, cal, _ = fp32
    torch.manual_seed(0)
    source = ExportSource(_DwNet().eval(), META, "0" * 64, tmp_path, calibration=cal)
    with pytest.raises(ExportError) as info:
        export_formats(source, ["onnx-int8"], ExportOptions(int8_recipe="qoperator"))
    msg = str(info.value)
    assert "com.microsoft:QLinearAdd" in msg and "qoperator-conv" in msg and "\n" not in msg
    assert not (tmp_path / "student-int8.onnx").exists()
