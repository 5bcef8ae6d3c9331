"""Export registry, options and results."""

from __future__ import annotations

import importlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from distill_export.errors import ConfigError


@dataclass
class ExportOptions:
    """Every export knob in one typed object (no keyword arguments passed along one by one)."""

    opset: int = 18
    dynamic_batch: bool = True
    simplify: bool = True
    prefer_dynamo: bool = True
    calibration_samples: int = 256
    calibration_method: str = "minmax"  # minmax | entropy | percentile
    fp16_keep_io_types: bool = True
    trt_min_batch: int = 1
    trt_opt_batch: int = 32
    trt_max_batch: int = 128


@dataclass
class ExportSource:
    model: object  # the PyTorch student (nn.Module), in eval mode
    meta: dict  # class names, input name/shape/normalisation, teacher, ...
    checkpoint_sha256: str
    out_dir: Path
    calibration: object = None  # (N, *input_shape) float32 numpy array, drawn from train
    artifacts: dict = field(default_factory=dict)  # format -> ExportResult produced so far


@dataclass
class ExportResult:
    format: str
    path: str
    precision: str  # fp32 | fp16 | int8
    runtime: str  # onnxruntime | tensorrt
    size_bytes: int
    seconds: float
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


Exporter = Callable[[ExportSource, ExportOptions], ExportResult]
_REGISTRY: dict[str, Exporter] = {}
_MODULES = ("onnx", "onnx_fp16", "onnx_int8", "tensorrt")  # importing registers the formats


def register_format(name: str) -> Callable[[Exporter], Exporter]:
    def deco(fn: Exporter) -> Exporter:
        _REGISTRY[name] = fn
        return fn

    return deco


def _load_all() -> None:
    for mod in _MODULES:
        try:
            importlib.import_module(f"distill_export.export.{mod}")
        except ModuleNotFoundError as exc:
            if exc.name != f"distill_export.export.{mod}":
                raise


def format_names() -> list[str]:
    _load_all()
    return list(_REGISTRY)


def parse_formats(spec: list[str] | str) -> list[str]:
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [n.strip() for n in names if n.strip()]
    known = format_names()
    for n in names:
        if n not in known:
            raise ConfigError(f"unknown export format {n!r} (choices: {', '.join(known)})")
    # Derived formats are built from the FP32 ONNX: make sure it comes first.
    ordered = ["onnx"] + [n for n in names if n != "onnx"]
    return ordered


def export_formats(source: ExportSource, formats: list[str], options: ExportOptions) -> dict[str, ExportResult]:
    for name in parse_formats(formats):
        start = time.perf_counter()
        result = _REGISTRY[name](source, options)
        result.seconds = time.perf_counter() - start
        source.artifacts[name] = result
    return source.artifacts
