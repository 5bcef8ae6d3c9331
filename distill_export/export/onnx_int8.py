"""INT8 ONNX: static QDQ quantisation with onnxruntime.quantization.

The FP32 ONNX is pre-processed (``quant_pre_process``: shape inference and graph
optimisation, so Conv+BN+ReLU chains quantise as one), calibrated on rows drawn from the
training split (``ExportSource.calibration``) with MinMax, Entropy or Percentile, and
quantised with per-channel weights; the classifier head stays FP32. The result holds only standard ONNX ops
(QuantizeLinear/DequantizeLinear around FP32 ops); ONNX Runtime fuses them into integer
kernels when it loads the model.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distill_export.errors import ExportError
from distill_export.export.base import ExportOptions, ExportResult, ExportSource, register_format
from distill_export.export.onnx import _reason, model_name, nonstandard_ops, prune_opset_imports, set_metadata
from distill_export.export.onnx_fp16 import fp32_artifact
from distill_export.files import atomic_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Int8Recipe:
    """How to quantise: which format, which nodes, which weight ranges (see docs/export.md for
    what each measured on mobilenet_v3_small / shufflenet_v2_x0_5 / resnet18 at 224x224)."""

    name: str
    help: str
    quant_format: str = "QDQ"  # QDQ (Q/DQ pairs around FP32 ops) | QOperator (QLinearConv, ...)
    per_channel: bool | None = None  # None: ExportOptions.int8_per_channel
    reduce_range: bool = False  # 7-bit weights (avoids u8s8 saturation on CPUs without VNNI)
    exclude_depthwise: bool = False  # depthwise convs stay FP32
    op_types: tuple[str, ...] | None = None  # quantise only these op types (None: all it can)


INT8_RECIPES = {r.name: r for r in (
    Int8Recipe("qdq", "static QDQ, every op the quantizer supports (the original recipe)"),
    Int8Recipe("qdq-conv", "static QDQ on Conv/Gemm/MatMul only: elementwise ops (Add, Mul, HardSigmoid, "
               "pooling) stay FP32, so no Q/DQ pairs between them", op_types=("Conv", "Gemm", "MatMul")),
    Int8Recipe("qdq-no-dw", "static QDQ with depthwise convs left in FP32", exclude_depthwise=True),
    Int8Recipe("qdq-conv-no-dw", "qdq-conv with depthwise convs left in FP32",
               op_types=("Conv", "Gemm", "MatMul"), exclude_depthwise=True),
    Int8Recipe("qdq-reduce-range", "static QDQ with 7-bit weights", reduce_range=True),
    Int8Recipe("qdq-per-tensor", "static QDQ with one scale per weight tensor", per_channel=False),
    Int8Recipe("qoperator", "QOperator format (QLinearConv, QLinearAdd, ...), every op it supports",
               quant_format="QOperator"),
    Int8Recipe("qoperator-conv", "QOperator format on Conv/Gemm/MatMul only", quant_format="QOperator",
               op_types=("Conv", "Gemm", "MatMul")),
)}
DEFAULT_RECIPE = "qdq"
# Architecture -> the recipe measured best at 224x224x3, 1 thread (docs/export.md, "INT8 recipes").
# mobilenet_v3_small: qdq-conv-no-dw was the fastest INT8 or tied with it in three interleaved
# runs (0.71-0.88x FP32, against 0.50-0.72x for qdq) with the smallest logit error; INT8 is still
# slower than FP32 there, so the recommendation (recommend.py) picks the FP32 ONNX.
RECIPE_BY_STUDENT: dict[str, str] = {"mobilenet_v3_small": "qdq-conv-no-dw"}


def recipe_for(name: str, student: str | None) -> Int8Recipe:
    """`auto`: the architecture's measured best, else DEFAULT_RECIPE; or a recipe by name."""
    if name == "auto":
        name = RECIPE_BY_STUDENT.get(str(student), DEFAULT_RECIPE)
    if name not in INT8_RECIPES:
        raise ExportError(f"unknown INT8 recipe {name!r} (choices: auto, {', '.join(INT8_RECIPES)})")
    return INT8_RECIPES[name]


def depthwise_convs(model) -> list[str]:
    """Names of Conv nodes with one input channel per group (group > 1): depthwise."""
    import onnx

    inits = {t.name: tuple(t.dims) for t in model.graph.initializer}
    out = []
    for n in model.graph.node:
        if n.op_type != "Conv":
            continue
        group = next((onnx.helper.get_attribute_value(a) for a in n.attribute if a.name == "group"), 1)
        w = inits.get(n.input[1])
        if group > 1 and w is not None and len(w) > 1 and w[1] == 1:
            out.append(n.name)
    return out


def _reader(calibration: np.ndarray, input_name: str, batch: int):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        """Yields {input_name: (B, *shape)} batches of the calibration rows, once."""

        def __init__(self) -> None:
            self.batches = iter([calibration[i : i + batch] for i in range(0, len(calibration), batch)])

        def get_next(self):
            x = next(self.batches, None)
            return None if x is None else {input_name: np.ascontiguousarray(x, dtype=np.float32)}

    return Reader()


def quantize_qdq(fp32_path: Path, out_path: Path, calibration: np.ndarray, options: ExportOptions,
                 symmetric_activations: bool = False, recipe: Int8Recipe | None = None) -> dict:
    """Static QDQ quantisation of `fp32_path` into `out_path`; returns what was done.

    ``symmetric_activations`` gives zero-point-0 int8 activations, which TensorRT requires.
    For ONNX Runtime on CPU, activations are asymmetric uint8 (a ReLU output uses all 256
    levels) with int8 weights: on x86 these U8S8 kernels ran mobilenet_v3_small ~6x faster
    than S8S8 here (tools/bench_export.py).
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    input_name = onnx.load(str(fp32_path), load_external_data=False).graph.input[0].name
    with tempfile.TemporaryDirectory(prefix="int8-") as work, contextlib.redirect_stdout(io.StringIO()):
        # (the Entropy/Percentile calibrators print their progress: keep stdout to ours)
        recipe = recipe or INT8_RECIPES[DEFAULT_RECIPE]
        per_channel = options.int8_per_channel if recipe.per_channel is None else recipe.per_channel
        pre = Path(work) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        pre_model = onnx.load(str(pre))
        keep = classifier_nodes(pre_model) if options.int8_fp32_classifier else []
        if recipe.exclude_depthwise:
            keep += depthwise_convs(pre_model)
        quantize_static(
            str(pre), str(out_path), _reader(calibration, input_name, options.calibration_batch),
            quant_format=QuantFormat.QOperator if recipe.quant_format == "QOperator" else QuantFormat.QDQ,
            op_types_to_quantize=list(recipe.op_types) if recipe.op_types else None,
            per_channel=per_channel, reduce_range=recipe.reduce_range,
            activation_type=QuantType.QInt8 if symmetric_activations else QuantType.QUInt8,
            weight_type=QuantType.QInt8, calibrate_method=methods[options.calibration_method],
            nodes_to_exclude=keep,
            extra_options={"ActivationSymmetric": symmetric_activations, "WeightSymmetric": True},
        )
    return {
        "quantizer": "onnxruntime.quantization.quantize_static",
        "recipe": recipe.name,
        "quant_format": recipe.quant_format,
        "op_types": list(recipe.op_types) if recipe.op_types else "all supported",
        "reduce_range": recipe.reduce_range,
        "calibration_method": options.calibration_method,
        "calibration_samples": int(len(calibration)),
        "per_channel": per_channel,
        "activations": "int8 symmetric" if symmetric_activations else "uint8 asymmetric",
        "weights": "int8 symmetric" + (" (7-bit range)" if recipe.reduce_range else ""),
        "fp32_nodes": keep,
    }


def classifier_nodes(model) -> list[str]:
    """The last Gemm/MatMul (the classifier head): kept in FP32. It costs little to run and
    is where quantisation error turns into flipped top-1 predictions; on the 1-epoch demo
    student, keeping it moved top-1 agreement from 97.8% to 99.2%."""
    heads = [n.name for n in model.graph.node if n.op_type in ("Gemm", "MatMul")]
    return heads[-1:]


def calibration_rows(source: ExportSource, options: ExportOptions, fmt: str) -> np.ndarray:
    cal = source.calibration
    if cal is None or len(cal) == 0:
        raise ExportError(
            f"cannot export student {model_name(source)} to {fmt}: no calibration rows were given "
            "(they come from the training split); use onnx-fp16 for a smaller model without calibration"
        )
    return np.asarray(cal[: options.calibration_samples], dtype=np.float32)


@register_format("onnx-int8", precision="int8")
def export_onnx_int8(source: ExportSource, options: ExportOptions) -> ExportResult:
    import onnx

    name = model_name(source)
    fp32 = fp32_artifact(source, "onnx-int8")
    cal = calibration_rows(source, options, "onnx-int8")
    final = source.out_dir / "student-int8.onnx"
    with atomic_path(final) as tmp:
        try:
            details = quantize_qdq(fp32, tmp, cal, options,
                                   recipe=recipe_for(options.int8_recipe, source.meta.get("student")))
            model = onnx.load(str(tmp))
            prune_opset_imports(model)
            props = {p.key: p.value for p in onnx.load(str(fp32), load_external_data=False).metadata_props}
            set_metadata(model, {**props, "format": "onnx-int8", "precision": "int8",
                                 "calibration_method": options.calibration_method,
                                 "calibration_samples": str(len(cal))})
            onnx.checker.check_model(model, full_check=True)
        except Exception as exc:
            raise ExportError(
                f"cannot quantise student {name} to onnx-int8 ({options.calibration_method} calibration): "
                f"{_reason(exc)}; try --calibration-method minmax, or onnx-fp16"
            ) from None
        if bad := nonstandard_ops(model):  # QOperator: QLinearAdd, QLinearMul ... (ONNX Runtime only)
            raise ExportError(
                f"INT8 recipe {details['recipe']} gave student {name} non-standard operators {', '.join(bad)}, "
                "which only ONNX Runtime runs; use export.int8_recipe qoperator-conv or a qdq recipe"
            )
        onnx.save(model, str(tmp))
    return ExportResult(
        format="onnx-int8", path=str(final), precision="int8", runtime="onnxruntime",
        size_bytes=final.stat().st_size, seconds=0.0, details=details,
    )
