"""FP16 ONNX: the FP32 ONNX converted by onnxconverter_common.float16.

A task's tail (export/common.py append_tail: a detector's decode) stays FP32.
Inputs and outputs stay FP32 by default (``fp16_keep_io_types``): a caller feeds the same
array to every format, and the Cast nodes that this adds are standard ONNX.
"""

from __future__ import annotations

import warnings

from distill_export.errors import ExportError
from distill_export.export.base import ExportOptions, ExportResult, ExportSource, register_format
from distill_export.export.common import (
    error_reason, fp32_artifact, join_tail, model_name, nonstandard_ops, raise_if_disk_full, set_metadata, split_tail,
)
from distill_export.export.onnx_names import rename_model_inputs, to_placeholders
from distill_export.files import atomic_path


@register_format("onnx-fp16", precision="fp16")
def export_onnx_fp16(source: ExportSource, options: ExportOptions) -> ExportResult:
    import onnx
    from onnxconverter_common import float16

    name = model_name(source)
    fp32 = onnx.load(str(fp32_artifact(source, "onnx-fp16")))
    props = {p.key: p.value for p in fp32.metadata_props}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "the value is truncated" for tiny weights: expected
            # A task's tail (a detector's decode) stays FP32: half-precision peaks tie and boxes
            # move. Only the body is converted (its output cast back to FP32), then the tail rejoins.
            back = to_placeholders(fp32)  # the converter names casts after the inputs (42nd audit B2)
            body, tail = split_tail(fp32)
            model = float16.convert_float_to_float16(body, keep_io_types=options.fp16_keep_io_types or tail is not None)
            if tail is not None:
                model = join_tail(model, tail)
            rename_model_inputs(model, back)
        set_metadata(model, {**props, "format": "onnx-fp16", "precision": "fp16",
                             "fp16_io": str(not options.fp16_keep_io_types).lower()})
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        raise_if_disk_full(exc)
        raise ExportError(
            f"cannot convert student {name} to onnx-fp16: {error_reason(exc)}; use the FP32 onnx, "
            "or onnx-int8 for a smaller model"
        ) from None
    if bad := nonstandard_ops(model):
        raise ExportError(f"the onnx-fp16 model of student {name} uses non-standard operators {', '.join(bad)}")
    final = source.out_dir / "student-fp16.onnx"
    with atomic_path(final) as tmp:
        onnx.save(model, str(tmp))
    return ExportResult(
        format="onnx-fp16", path=str(final), precision="fp16", runtime="onnxruntime",
        size_bytes=final.stat().st_size, seconds=0.0,
        details={"converter": "onnxconverter_common.float16", "keep_io_types": options.fp16_keep_io_types},
    )
