"""FP32 ONNX: torch.onnx.export (dynamo first, TorchScript as the fallback), checked,
shape-inferred, simplified with onnxslim and stamped with metadata."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

from distill_export import __version__
from distill_export.errors import ExportError
from distill_export.export.base import MIN_OPSET, ExportOptions, ExportResult, ExportSource, register_format
from distill_export.export.common import (
    HEADS_NAME,
    OUTPUT_NAME,
    append_tail,
    check_opset_kept,
    error_reason,
    finalize_onnx,
    model_name,
    nonstandard_ops,
    quiet_output,
    raise_if_disk_full,
    unsupported_operator,
)
from distill_export.export.onnx_names import placeholders, rename_inputs
from distill_export.files import atomic_path

log = logging.getLogger(__name__)


def metadata_props(meta: dict, checkpoint_sha256: str, task_meta: dict | None = None,
                   output_name: str = OUTPUT_NAME, **extra: str) -> dict[str, str]:
    """What a runtime needs to feed the model and read its output, as ONNX metadata_props;
    task_meta (Task.export_meta, e.g. class_names) first, each value as JSON."""
    props = {
        **{k: json.dumps(v) for k, v in (task_meta or {}).items()},
        "input_name": meta["input_name"],
        "input_layout": meta.get("input_layout", "NCHW"),
        "input_shape": json.dumps(["batch", *meta["input_shape"]]),
        "output_name": output_name,
        "norm_mean": json.dumps(meta["norm_mean"]),
        "norm_std": json.dumps(meta["norm_std"]),
        "teacher": str(meta.get("teacher", "")),
        "student": str(meta.get("student", "")),
        "distill_export_version": __version__,
        "source_checkpoint_sha256": checkpoint_sha256,
    }
    props.update({k: str(v) for k, v in extra.items()})
    return props


def _torch_export(model, sample, path: Path, input_name: str, options: ExportOptions,
                  name: str = "", output_name: str = OUTPUT_NAME) -> tuple[str, str | None]:
    """Export to `path`; returns which exporter succeeded ("dynamo" or "torchscript") and,
    after a fallback, why dynamo failed."""
    import torch

    name = name or type(model).__name__
    errors: list[tuple[str, BaseException]] = []
    # exported as a placeholder, renamed after: the input's name may be an inner value's (onnx_names.py)
    (placeholder,) = placeholders(1)
    if options.prefer_dynamo:
        try:
            dims = ({"x": {0: torch.export.Dim("batch", min=1, max=65536)}} if options.dynamic_batch else None)
            with warnings.catch_warnings(), quiet_output("dynamo"):
                warnings.simplefilter("ignore")
                program = torch.onnx.export(
                    model, (sample,), dynamo=True, opset_version=options.opset,
                    input_names=[placeholder], output_names=[output_name],
                    dynamic_shapes=dims, verbose=False, report=False,
                )
            program.save(str(path), external_data=False)
            check_opset_kept(path, options.opset)
            rename_inputs(path, {placeholder: input_name})
            return "dynamo", None
        except Exception as exc:  # any failure in the new exporter: try the old one
            raise_if_disk_full(exc)
            errors.append(("dynamo", exc))
            log.warning("dynamo ONNX exporter failed for %s (%s); falling back to TorchScript", name, error_reason(exc))
    try:
        axes = {placeholder: {0: "batch"}, output_name: {0: "batch"}} if options.dynamic_batch else None
        with warnings.catch_warnings(), quiet_output("TorchScript"):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, (sample,), str(path), dynamo=False, opset_version=options.opset,
                input_names=[placeholder], output_names=[output_name], dynamic_axes=axes,
                do_constant_folding=True,
            )
        rename_inputs(path, {placeholder: input_name})
        return "torchscript", (error_reason(errors[0][1]) if errors else None)
    except Exception as exc:
        raise_if_disk_full(exc)
        errors.append(("torchscript", exc))
    op = next((o for _, e in errors if (o := unsupported_operator(e))), None)
    tried = " and ".join(k for k, _ in errors)
    if op:
        raise ExportError(
            f"cannot export student {name} to onnx (opset {options.opset}): operator {op} is not "
            f"supported by the {tried} exporter; replace it with standard torch ops, or try a higher --opset"
        ) from None
    detail = "; ".join(f"{k}: {error_reason(e)}" for k, e in errors)
    other = " or the dynamo exporter" if len(errors) == 1 else ""
    # An opset above what an exporter knows needs a lower one, not a higher (twenty-second audit B4).
    direction = "lower" if "Unsupported onnx_opset_version" in detail else "higher"
    raise ExportError(
        f"cannot export student {name} to onnx (opset {options.opset}): {detail}; try a {direction} --opset{other}"
    ) from None


@register_format("onnx", precision="fp32", requires=())
def export_onnx(source: ExportSource, options: ExportOptions) -> ExportResult:
    import onnx
    import torch

    name = model_name(source)
    assert options.opset >= MIN_OPSET  # ExportOptions refuses lower ones
    newest = onnx.defs.onnx_opset_version()
    if options.opset > newest:
        raise ExportError(
            f"cannot export student {name} to onnx: opset {options.opset} is newer than the installed "
            f"onnx {onnx.__version__} knows ({newest}); use --opset {newest} or lower"
        )
    meta = source.meta
    final = source.out_dir / "student.onnx"
    sample = torch.zeros(2, *meta["input_shape"])  # batch 2: a batch of 1 can get specialised away
    model = source.model.eval().cpu()
    tail = source.tail is not None  # e.g. a detector's decode: appended after the body is simplified
    body_output = HEADS_NAME if tail else source.output_name
    extra = {"output_names": json.dumps(list(source.output_names))} if tail else {}
    with atomic_path(final) as tmp:
        exporter, fallback_reason = _torch_export(model, sample, tmp, meta["input_name"], options, name,
                                                  body_output)
        props = metadata_props(meta, source.checkpoint_sha256, source.task_meta, source.output_name,
                               format="onnx", precision="fp32",
                               opset=str(options.opset), exporter=exporter, **extra)
        try:
            proto = finalize_onnx(tmp, props, options.simplify, options.dynamic_batch)
            if tail:
                proto = append_tail(proto, source, options)
        except Exception as exc:
            raise_if_disk_full(exc)
            raise ExportError(
                f"the onnx export of student {name} (by the {exporter} exporter) failed its check: "
                f"{error_reason(exc)}; try --opset {max(options.opset + 1, 18)}"
            ) from None
        if bad := nonstandard_ops(proto):
            raise ExportError(
                f"the onnx export of student {name} uses non-standard operators {', '.join(bad)}; "
                "rewrite them with standard torch ops"
            )
        onnx.save(proto, str(tmp))
    return ExportResult(
        format="onnx", path=str(final), precision="fp32", runtime="onnxruntime",
        size_bytes=final.stat().st_size, seconds=0.0,
        details={"exporter": exporter, "opset": options.opset, "simplified": options.simplify,
                 "dynamic_batch": options.dynamic_batch,
                 **({"dynamo_failure": fallback_reason} if fallback_reason else {})},
    )
