"""INT8 recipes: how onnx-int8 quantises (QDQ or QOperator, which nodes, which weight ranges).

Plain data, apart from every format: ExportOptions (base.py) checks a recipe name against
INT8_RECIPES without importing a format, and the quantiser (common.quantize_qdq) reads them.
"""

from __future__ import annotations

from dataclasses import dataclass

from distill_export.errors import ExportError


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
