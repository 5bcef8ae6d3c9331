"""INT8 ONNX: static QDQ quantisation with onnxruntime.quantization.

The FP32 ONNX is pre-processed (``quant_pre_process``: shape inference and graph
optimisation, so Conv+BN+ReLU chains quantise as one), calibrated on rows drawn from the
training split (``ExportSource.calibration``) with MinMax, Entropy or Percentile, and
quantised with per-channel weights; the classifier head stays FP32. The result holds only standard ONNX ops
(QuantizeLinear/DequantizeLinear around FP32 ops); ONNX Runtime fuses them into integer
kernels when it loads the model.
"""

from __future__ import annotations

import logging

from distill_export.errors import ExportError
from distill_export.export.base import ExportOptions, ExportResult, ExportSource, register_format
from distill_export.export.common import (
    calibration_rows,
    error_reason,
    fp32_artifact,
    model_name,
    nonstandard_ops,
    prune_opset_imports,
    quantize_qdq,
    raise_if_disk_full,
    set_metadata,
)
from distill_export.export.int8_recipes import recipe_for
from distill_export.files import atomic_path

log = logging.getLogger(__name__)


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
            raise_if_disk_full(exc)
            raise ExportError(
                f"cannot quantise student {name} to onnx-int8 ({options.calibration_method} calibration): "
                f"{error_reason(exc)}; try "
                + ("--calibration-method minmax, or onnx-fp16" if options.calibration_method != "minmax" else "onnx-fp16")
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
