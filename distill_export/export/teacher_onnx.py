"""The teacher as FP32 ONNX, so student and teacher are profiled on the same runtime.

The teacher takes one input per modality (``{"audio": (B, 1, 40, 32), "image": (B, 1, 28, 28)}``
for the demo); the ONNX model gets one input per modality, named after it, in the teacher's
``modality_names`` order, each with a dynamic batch axis, and one output ``logits``. The
same exporters as the student's (dynamo first, TorchScript as the fallback), the same
checks (onnxslim, full checker, strict shape inference, standard operators only).

A teacher that cannot be exported (an operator no exporter knows, an external ``.pt2``
program that will not re-trace) raises ExportError with one line saying why; the pipeline
records it and goes on without the teacher's ONNX rows.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

from distill_export import __version__
from distill_export.errors import ExportError
from distill_export.export.base import ExportOptions, ExportResult
from distill_export.export.common import (
    OUTPUT_NAME,
    check_opset_kept,
    error_reason,
    finalize_onnx,
    nonstandard_ops,
    quiet_output,
    raise_if_disk_full,
    unsupported_operator,
)
from distill_export.export.onnx_names import placeholders, rename_inputs
from distill_export.files import atomic_path

log = logging.getLogger(__name__)
TEACHER_ONNX = "teacher.onnx"


def _positional(teacher, names: list[str]):
    """teacher(dict) as a module of one positional tensor per modality: what ONNX inputs are."""
    from torch import nn

    class Positional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.teacher = teacher

        def forward(self, *xs):
            return self.teacher.forward_features(dict(zip(names, xs, strict=True)))[1]  # (B, C)

    return Positional().eval()


def _export(wrapper, sample: tuple, names: list[str], path: Path, options: ExportOptions) -> tuple[str, str | None]:
    import torch

    errors: list[tuple[str, BaseException]] = []
    # exported as placeholders, renamed after: a modality's name may be an inner value's (onnx_names.py)
    temporary = placeholders(len(names))
    if options.prefer_dynamo:
        try:
            batch = torch.export.Dim("batch", min=1, max=65536)
            dims = ({"xs": tuple({0: batch} for _ in names)} if options.dynamic_batch else None)
            with warnings.catch_warnings(), quiet_output("dynamo"):
                warnings.simplefilter("ignore")
                program = torch.onnx.export(
                    wrapper, sample, dynamo=True, opset_version=options.opset, input_names=temporary,
                    output_names=[OUTPUT_NAME], dynamic_shapes=dims, verbose=False, report=False,
                )
            program.save(str(path), external_data=False)
            check_opset_kept(path, options.opset)  # else TorchScript: the asked opset (55th audit B6)
            rename_inputs(path, dict(zip(temporary, names)))
            return "dynamo", None
        except Exception as exc:  # noqa: BLE001 - any failure of the new exporter: try the old one
            raise_if_disk_full(exc)
            errors.append(("dynamo", exc))
            log.debug("dynamo ONNX exporter failed for the teacher (%s); trying TorchScript", error_reason(exc))
    try:
        axes = ({**{n: {0: "batch"} for n in temporary}, OUTPUT_NAME: {0: "batch"}} if options.dynamic_batch else None)
        with warnings.catch_warnings(), quiet_output("TorchScript"):
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapper, sample, str(path), dynamo=False, opset_version=options.opset,
                              input_names=temporary, output_names=[OUTPUT_NAME], dynamic_axes=axes,
                              do_constant_folding=True)
        rename_inputs(path, dict(zip(temporary, names)))
        return "torchscript", (error_reason(errors[0][1]) if errors else None)
    except Exception as exc:  # noqa: BLE001
        raise_if_disk_full(exc)
        errors.append(("torchscript", exc))
    op = next((o for _, e in errors if (o := unsupported_operator(e))), None)
    tried = " and ".join(k for k, _ in errors)
    if op:
        raise ExportError(f"cannot export the teacher to onnx (opset {options.opset}): operator {op} is not "
                          f"supported by the {tried} exporter") from None
    raise ExportError("cannot export the teacher to onnx: " + "; ".join(f"{k}: {error_reason(e)}" for k, e in errors)) from None


def export_teacher_onnx(teacher, example: dict, out_dir: Path, options: ExportOptions,
                        teacher_name: str = "teacher", checkpoint_sha256: str = "") -> ExportResult:
    """Export `teacher` (FusionTeacher or ExternalTeacher: forward_features(dict) -> (feats, logits))
    to out_dir/teacher.onnx. `example` maps modality -> a (B >= 2, *shape) tensor of the right dtype."""
    import onnx

    names = [m for m in getattr(teacher, "modality_names", sorted(example)) if m in example]
    if not names:
        raise ExportError("cannot export the teacher to onnx: it names no modality inputs")
    final = Path(out_dir) / TEACHER_ONNX
    wrapper = _positional(teacher.eval().cpu(), names)
    sample = tuple(example[m][:2].cpu() for m in names)  # batch 2: a batch of 1 can get specialised away
    with atomic_path(final) as tmp:
        try:
            exporter, fallback = _export(wrapper, sample, names, tmp, options)
        except ExportError:
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. an external program that will not re-trace
            raise_if_disk_full(exc)
            raise ExportError(f"cannot export the teacher to onnx: {error_reason(exc)}") from None
        props = {
            "model": "teacher", "teacher": teacher_name, "input_names": json.dumps(names),
            "input_shapes": json.dumps({m: ["batch", *example[m].shape[1:]] for m in names}),
            "output_name": OUTPUT_NAME, "format": "onnx", "precision": "fp32", "opset": str(options.opset),
            "exporter": exporter, "distill_export_version": __version__,
            "source_checkpoint_sha256": checkpoint_sha256,
        }
        try:
            proto = finalize_onnx(tmp, props, options.simplify, options.dynamic_batch)
        except Exception as exc:  # noqa: BLE001
            raise_if_disk_full(exc)
            raise ExportError(f"the onnx export of the teacher (by the {exporter} exporter) failed its check: "
                              f"{error_reason(exc)}") from None
        if bad := nonstandard_ops(proto):
            raise ExportError(f"the onnx export of the teacher uses non-standard operators {', '.join(bad)}")
        onnx.save(proto, str(tmp))
    return ExportResult(
        format="onnx", path=str(final), precision="fp32", runtime="onnxruntime",
        size_bytes=final.stat().st_size, seconds=0.0,
        details={"exporter": exporter, "opset": options.opset, "inputs": names,
                 **({"dynamo_failure": fallback} if fallback else {})},
    )
