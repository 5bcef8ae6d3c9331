"""A task's tail (Task.export_tail: a detector's decode) is appended to the exported graph and
stays FP32 in the FP16 and INT8 files; the graph returns the tail's named outputs, and ONNX
Runtime agrees with PyTorch's decode of the same heads."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from distill_export.export import ExportOptions, ExportSource, export_formats
from distill_export.export.common import TAIL_PREFIX, nonstandard_ops, tail_nodes
from distill_export.nets.centernet import OUTPUT_STRIDE, decode
from distill_export.runtimes.onnx_runtime import onnx_session, run_onnx

C = 3  # classes


class Heads(nn.Module):
    """(B, 1, 16, 16) -> (B, C + 4, 4, 4): a stand-in detector body at stride 4."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, C + 4, 3, 2, 1))

    def forward_features(self, x):
        out = self.body(x)
        return out, out

    def forward(self, x):
        return self.body(x)


class Decode(nn.Module):
    def forward(self, heads):
        return decode(heads.float(), C, OUTPUT_STRIDE, k=5)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = Heads().eval()
    out_dir = tmp_path_factory.mktemp("tail")
    meta = {"input_name": "image", "input_shape": [1, 16, 16], "norm_mean": 0.0, "norm_std": 1.0}
    x = np.random.default_rng(0).normal(size=(32, 1, 16, 16)).astype(np.float32)
    source = ExportSource(model, meta, "0" * 64, out_dir, calibration=x, output_name="boxes",
                          tail=Decode(), output_names=("boxes", "scores", "classes"))
    results = export_formats(source, ["onnx", "onnx-fp16", "onnx-int8"], ExportOptions(calibration_samples=32))
    return model, x, {fmt: r.path for fmt, r in results.items()}


def test_the_graph_returns_the_tails_outputs_and_matches_pytorch(exported):
    model, x, paths = exported
    proto = onnx.load(paths["onnx"])
    assert [o.name for o in proto.graph.output] == ["boxes", "scores", "classes"]
    assert not nonstandard_ops(proto)
    assert {"TopK", "MaxPool", "Sigmoid"} <= {n.op_type for n in proto.graph.node if n.name.startswith(TAIL_PREFIX)}
    with torch.no_grad():
        boxes, scores, classes = Decode()(model(torch.from_numpy(x)))
    for bs in (1, 7):
        got = run_onnx(onnx_session(paths["onnx"], 1), x, bs)
        np.testing.assert_allclose(got["scores"], scores.numpy(), atol=1e-6)
        np.testing.assert_array_equal(got["classes"], classes.numpy())
        np.testing.assert_allclose(got["boxes"], boxes.numpy(), atol=1e-4)


def test_fp16_and_int8_keep_the_tail_in_fp32(exported):
    _, x, paths = exported
    for fmt in ("onnx-fp16", "onnx-int8"):
        proto = onnx.load(paths[fmt])
        tail = set(tail_nodes(proto))
        assert tail, fmt
        types = {vi.name: vi.type.tensor_type.elem_type for vi in onnx.shape_inference.infer_shapes(proto).graph.value_info}
        topk = next(n for n in proto.graph.node if n.op_type == "TopK")
        assert topk.name in tail
        assert types.get(topk.input[0], onnx.TensorProto.FLOAT) == onnx.TensorProto.FLOAT, fmt
        if fmt == "onnx-int8":  # quantised nodes exist, none of them in the tail
            quant = [n.name for n in proto.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
            assert quant and not set(quant) & tail
        outputs = {o.name: o.type.tensor_type.elem_type for o in proto.graph.output}
        assert outputs == {"boxes": onnx.TensorProto.FLOAT, "scores": onnx.TensorProto.FLOAT,
                           "classes": onnx.TensorProto.INT64}, fmt  # not FP16, not re-cast
        casts = lambda m: sorted(n.name for n in m.graph.node if n.name.startswith(TAIL_PREFIX) and n.op_type == "Cast")  # noqa: E731
        if fmt == "onnx-fp16":  # the decode's own casts only, no FP16 round trips
            assert casts(proto) == casts(onnx.load(paths["onnx"]))
        got = run_onnx(onnx_session(paths[fmt], 1), x, 4)
        assert got["boxes"].shape == (32, 5, 4) and got["classes"].dtype == np.int64
