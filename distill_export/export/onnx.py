"""FP32 ONNX: torch.onnx.export (dynamo first, TorchScript as the fallback), checked,
shape-inferred, simplified with onnxslim and stamped with metadata."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

from distill_export import __version__
from distill_export.errors import ExportError
from distill_export.export.base import ExportOptions, ExportResult, ExportSource, register_format
from distill_export.files import atomic_path

log = logging.getLogger(__name__)
MIN_OPSET = 17
OUTPUT_NAME = "logits"


def metadata_props(meta: dict, checkpoint_sha256: str) -> dict[str, str]:
    """What a runtime needs to feed the model and read its output, as ONNX metadata_props."""
    return {
        "class_names": json.dumps(meta["class_names"]),
        "input_name": meta["input_name"],
        "input_layout": meta.get("input_layout", "NCHW"),
        "input_shape": json.dumps(["batch", *meta["input_shape"]]),
        "norm_mean": json.dumps(meta["norm_mean"]),
        "norm_std": json.dumps(meta["norm_std"]),
        "teacher": str(meta.get("teacher", "")),
        "student": str(meta.get("student", "")),
        "distill_export_version": __version__,
        "source_checkpoint_sha256": checkpoint_sha256,
    }


def _torch_export(model, sample, path: Path, input_name: str, options: ExportOptions) -> str:
    """Export to `path`; returns which exporter succeeded."""
    import torch

    errors = []
    if options.prefer_dynamo:
        try:
            dims = {"x": {0: torch.export.Dim("batch", min=1)}} if options.dynamic_batch else None
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                program = torch.onnx.export(
                    model, (sample,), dynamo=True, opset_version=options.opset,
                    input_names=[input_name], output_names=[OUTPUT_NAME],
                    dynamic_shapes=dims, verbose=False, report=False,
                )
            program.save(str(path), external_data=False)
            return "dynamo"
        except Exception as exc:  # any failure in the new exporter: try the old one
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            errors.append(f"dynamo: {reason}")
            log.warning("dynamo ONNX exporter failed (%s); falling back to TorchScript", reason)
    try:
        axes = {input_name: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if options.dynamic_batch else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, (sample,), str(path), dynamo=False, opset_version=options.opset,
                input_names=[input_name], output_names=[OUTPUT_NAME], dynamic_axes=axes,
                do_constant_folding=True,
            )
        return "torchscript"
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        errors.append(f"torchscript: {reason}")
        raise ExportError(
            f"could not export student {model.__class__.__name__} to ONNX opset {options.opset}: "
            + "; ".join(errors)
            + " (try a higher --opset, or a student without custom operators)"
        ) from None


def finalize_onnx(path: Path, props: dict[str, str], simplify: bool):
    """Simplify, check (full), infer shapes and stamp metadata; returns the onnx.ModelProto."""
    import onnx

    model = onnx.load(str(path))
    if simplify:
        import onnxslim

        model = onnxslim.slim(model)
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    onnx.checker.check_model(model, full_check=True)
    return model


@register_format("onnx")
def export_onnx(source: ExportSource, options: ExportOptions) -> ExportResult:
    import onnx
    import torch

    if options.opset < MIN_OPSET:
        raise ExportError(f"opset {options.opset} is too low for the ONNX export; use --opset {MIN_OPSET} or higher")
    meta = source.meta
    final = source.out_dir / "student.onnx"
    sample = torch.zeros(2, *meta["input_shape"])
    model = source.model.eval().cpu()
    with atomic_path(final) as tmp:
        exporter = _torch_export(model, sample, tmp, meta["input_name"], options)
        try:
            proto = finalize_onnx(tmp, metadata_props(meta, source.checkpoint_sha256), options.simplify)
        except Exception as exc:
            raise ExportError(f"ONNX check of the exported student failed: {str(exc)[:300]}") from None
        onnx.save(proto, str(tmp))
    return ExportResult(
        format="onnx", path=str(final), precision="fp32", runtime="onnxruntime",
        size_bytes=final.stat().st_size, seconds=0.0,
        details={"exporter": exporter, "opset": options.opset, "simplified": options.simplify},
    )
