"""Export formats, one module each, chosen through a registry keyed by format name.

Each exporter turns an ``ExportSource`` (the PyTorch student plus what derived formats
need) into one artifact under the run directory and returns an ``ExportResult``.
Derived formats (FP16, INT8, TensorRT) start from the FP32 ONNX, so ``onnx`` always
runs first (each format declares what it ``requires``).
"""

from __future__ import annotations

from distill_export.export.base import (
    ExportOptions,
    ExportResult,
    ExportSource,
    check_formats,
    export_formats,
    format_names,
    parse_formats,
    register_format,
)

__all__ = [
    "ExportOptions",
    "ExportResult",
    "ExportSource",
    "check_formats",
    "export_formats",
    "format_names",
    "parse_formats",
    "register_format",
]
