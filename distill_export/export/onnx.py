"""FP32 ONNX: torch.onnx.export (dynamo first, TorchScript as the fallback), checked,
shape-inferred, simplified with onnxslim and stamped with metadata."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import warnings
from pathlib import Path

from distill_export import __version__
from distill_export.errors import ExportError
from distill_export.export.base import MIN_OPSET, ExportOptions, ExportResult, ExportSource, register_format
from distill_export.files import atomic_path

log = logging.getLogger(__name__)
OUTPUT_NAME = "logits"
STANDARD_DOMAINS = ("", "ai.onnx")

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# Where each exporter names the operator it could not translate:
#   dynamo:      No ONNX function found for <OpOverload(op='mylib.wiggle', overload='default')>
#   TorchScript: Exporting the operator 'aten::foo' to ONNX opset version 17 is not supported
#                ... an operator with unrecognized namespace mylib::wiggle
_OPERATOR = (
    re.compile(r"OpOverload\(op='([\w.]+)'"),
    re.compile(r"operator '([\w.:]+)'"),
    re.compile(r"namespace ([\w.]+::[\w.]+)"),
    re.compile(r"target=torch\.ops\.([\w]+\.[\w]+)"),
)


def model_name(source: ExportSource) -> str:
    return str(source.meta.get("student") or type(source.model).__name__)


def metadata_props(meta: dict, checkpoint_sha256: str, **extra: str) -> dict[str, str]:
    """What a runtime needs to feed the model and read its output, as ONNX metadata_props."""
    props = {
        "class_names": json.dumps(meta["class_names"]),
        "input_name": meta["input_name"],
        "input_layout": meta.get("input_layout", "NCHW"),
        "input_shape": json.dumps(["batch", *meta["input_shape"]]),
        "output_name": OUTPUT_NAME,
        "norm_mean": json.dumps(meta["norm_mean"]),
        "norm_std": json.dumps(meta["norm_std"]),
        "teacher": str(meta.get("teacher", "")),
        "student": str(meta.get("student", "")),
        "distill_export_version": __version__,
        "source_checkpoint_sha256": checkpoint_sha256,
    }
    props.update({k: str(v) for k, v in extra.items()})
    return props


def set_metadata(model, props: dict[str, str]) -> None:
    """Replace the model's metadata_props (the exporter's own keys included)."""
    import onnx

    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)


def nonstandard_ops(model) -> list[str]:
    """`domain:op` for every node outside the standard ONNX domain (functions included)."""
    nodes = list(model.graph.node) + [n for f in model.functions for n in f.node]
    local = {(f.domain, f.name) for f in model.functions}
    return sorted({
        f"{n.domain}:{n.op_type}" for n in nodes
        if n.domain not in STANDARD_DOMAINS and (n.domain, n.op_type) not in local
    } | {f"{d}:{name}" for d, name in local})


def prune_opset_imports(model) -> None:
    """Drop opset imports of domains no node uses (onnxruntime's optimiser adds a dozen)."""
    used = {n.domain for n in model.graph.node} | {n.domain for f in model.functions for n in f.node}
    used |= {f.domain for f in model.functions}
    keep = [o for o in model.opset_import if o.domain in STANDARD_DOMAINS or o.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(keep)


def _reason(exc: BaseException) -> str:
    """The most telling line of an exporter's exception (its summary, not its advice)."""
    text = _ANSI.sub("", str(exc)).strip()
    if not text:
        return type(exc).__name__
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if "## Exception summary" in text:  # the dynamo exporter: the cause is in the summary
        summary = text.split("## Exception summary", 1)[1]
        lines = [ln.strip() for ln in summary.splitlines() if ln.strip().startswith("<class")] or lines
    return re.sub(r"^<class '(?:[\w]+\.)*(\w+)'>", r"\1", lines[0])[:240]


def unsupported_operator(exc: BaseException) -> str | None:
    text = _ANSI.sub("", str(exc))
    for pattern in _OPERATOR:
        if m := pattern.search(text):
            return m.group(1)
    return None


@contextlib.contextmanager
def _quiet_output(what: str):
    """The exporters print graphs and tracebacks (from Python and from C++) when they fail:
    keep the terminal to our one-line error, and log what they said at debug level."""
    import io
    import sys

    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    try:
        saved = [os.dup(1), os.dup(2)]
    except OSError:  # no real fds (embedded interpreters): silence Python-level writes only
        saved = None
    said = io.StringIO()
    with tempfile.TemporaryFile(mode="w+b") as sink:
        if saved:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
        try:
            with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
                yield
        finally:
            if saved:
                for fd, copy in zip((1, 2), saved):
                    os.dup2(copy, fd)
                    os.close(copy)
            sink.seek(0)
            text = (said.getvalue() + sink.read().decode(errors="replace")).strip()
            if text:
                log.debug("%s exporter said: %s", what, text)


def _torch_export(model, sample, path: Path, input_name: str, options: ExportOptions,
                  name: str = "") -> tuple[str, str | None]:
    """Export to `path`; returns which exporter succeeded ("dynamo" or "torchscript") and,
    after a fallback, why dynamo failed."""
    import torch

    name = name or type(model).__name__
    errors: list[tuple[str, BaseException]] = []
    if options.prefer_dynamo:
        try:
            dims = ({"x": {0: torch.export.Dim("batch", min=1, max=65536)}} if options.dynamic_batch else None)
            with warnings.catch_warnings(), _quiet_output("dynamo"):
                warnings.simplefilter("ignore")
                program = torch.onnx.export(
                    model, (sample,), dynamo=True, opset_version=options.opset,
                    input_names=[input_name], output_names=[OUTPUT_NAME],
                    dynamic_shapes=dims, verbose=False, report=False,
                )
            program.save(str(path), external_data=False)
            return "dynamo", None
        except Exception as exc:  # any failure in the new exporter: try the old one
            errors.append(("dynamo", exc))
            log.warning("dynamo ONNX exporter failed for %s (%s); falling back to TorchScript", name, _reason(exc))
    try:
        axes = {input_name: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if options.dynamic_batch else None
        with warnings.catch_warnings(), _quiet_output("TorchScript"):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, (sample,), str(path), dynamo=False, opset_version=options.opset,
                input_names=[input_name], output_names=[OUTPUT_NAME], dynamic_axes=axes,
                do_constant_folding=True,
            )
        return "torchscript", (_reason(errors[0][1]) if errors else None)
    except Exception as exc:
        errors.append(("torchscript", exc))
    op = next((o for _, e in errors if (o := unsupported_operator(e))), None)
    tried = " and ".join(k for k, _ in errors)
    if op:
        raise ExportError(
            f"cannot export student {name} to onnx (opset {options.opset}): operator {op} is not "
            f"supported by the {tried} exporter; replace it with standard torch ops, or try a higher --opset"
        ) from None
    detail = "; ".join(f"{k}: {_reason(e)}" for k, e in errors)
    other = " or the dynamo exporter" if len(errors) == 1 else ""
    raise ExportError(
        f"cannot export student {name} to onnx (opset {options.opset}): {detail}; try a higher --opset{other}"
    ) from None


def finalize_onnx(path: Path, props: dict[str, str], simplify: bool, dynamic_batch: bool = True):
    """Simplify, check (full), infer shapes and stamp metadata; returns the onnx.ModelProto."""
    import onnx

    model = onnx.load(str(path))
    if simplify:
        import onnxslim

        model = onnxslim.slim(model)
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    prune_opset_imports(model)
    set_metadata(model, props)
    onnx.checker.check_model(model, full_check=True)
    if dynamic_batch:
        dim = model.graph.input[0].type.tensor_type.shape.dim[0]
        if not dim.dim_param:
            raise ValueError(f"the batch axis of input {model.graph.input[0].name} came out static ({dim.dim_value})")
    return model


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
    with atomic_path(final) as tmp:
        exporter, fallback_reason = _torch_export(model, sample, tmp, meta["input_name"], options, name)
        props = metadata_props(meta, source.checkpoint_sha256, format="onnx", precision="fp32",
                               opset=str(options.opset), exporter=exporter)
        try:
            proto = finalize_onnx(tmp, props, options.simplify, options.dynamic_batch)
        except Exception as exc:
            raise ExportError(
                f"the onnx export of student {name} (by the {exporter} exporter) failed its check: "
                f"{_reason(exc)}; try --opset {max(options.opset + 1, 18)}"
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
