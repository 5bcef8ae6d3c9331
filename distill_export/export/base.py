"""Export registry, options and results."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from distill_export.errors import ConfigError
from distill_export.registry import import_members
from distill_export.export.int8_recipes import INT8_RECIPES

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
EXPORTERS = ("dynamo", "torchscript")  # export.exporter: which torch.onnx exporter writes the FP32 model
MIN_OPSET = 17  # the dynamo exporter's floor, and where the ops these students need settled


@dataclass
class ExportOptions:
    """Every export knob in one typed object (no keyword arguments passed along one by one)."""

    opset: int = 18
    dynamic_batch: bool = True
    simplify: bool = True
    exporter: str = "dynamo"  # EXPORTERS: dynamo (TorchScript as its fallback) | torchscript
    calibration_samples: int = 256
    calibration_method: str = "minmax"  # minmax | entropy | percentile
    calibration_batch: int = 32  # rows per calibration step
    int8_per_channel: bool = True
    int8_fp32_classifier: bool = True  # keep the final Gemm/MatMul in FP32
    int8_recipe: str = "auto"  # int8_recipes.INT8_RECIPES name; auto: the architecture's measured best
    fp16_keep_io_types: bool = True
    trt_min_batch: int = 1
    trt_opt_batch: int = 32
    trt_max_batch: int = 128
    trt_workspace_mib: int = 1024
    trt_timing_cache: str | None = None  # default: trt-timing.cache in the run directory

    def __post_init__(self) -> None:
        if self.opset < MIN_OPSET:
            raise ConfigError(f"opset {self.opset} is too low for the ONNX export; use --opset {MIN_OPSET} or higher")
        if self.exporter not in EXPORTERS:
            raise ConfigError(f"unknown exporter {self.exporter!r} for export.exporter (choices: {', '.join(EXPORTERS)})")
        if self.calibration_method not in CALIBRATION_METHODS:
            raise ConfigError(
                f"unknown calibration method {self.calibration_method!r} "
                f"(choices: {', '.join(CALIBRATION_METHODS)})"
            )
        if self.int8_recipe != "auto":
            if self.int8_recipe not in INT8_RECIPES:
                raise ConfigError(f"unknown INT8 recipe {self.int8_recipe!r} (choices: auto, {', '.join(INT8_RECIPES)})")
        if self.calibration_samples < 1:
            raise ConfigError(f"calibration samples must be >= 1, got {self.calibration_samples}")
        if not 1 <= self.trt_min_batch <= self.trt_opt_batch <= self.trt_max_batch:
            raise ConfigError(
                "TensorRT batch profile must satisfy 1 <= min <= opt <= max, got "
                f"{self.trt_min_batch}/{self.trt_opt_batch}/{self.trt_max_batch}"
            )

    @property
    def prefer_dynamo(self) -> bool:
        return self.exporter == "dynamo"

    @classmethod
    def from_config(cls, export_config, **overrides) -> "ExportOptions":
        """Take every ExportConfig field that is also an option (opset, calibration_*, ...)."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in vars(export_config).items() if k in names}
        return cls(**{**values, **overrides})


@dataclass
class ExportSource:
    model: object  # the PyTorch student (nn.Module), in eval mode
    meta: dict  # the checkpoint's: input name/shape/normalisation, teacher, the task's facts, ...
    checkpoint_sha256: str
    out_dir: Path
    calibration: object = None  # (N, *input_shape) float32 numpy array, drawn from train
    artifacts: dict = field(default_factory=dict)  # format -> ExportResult produced so far
    # From the task (tasks/): the graph's output name and the facts a runtime needs to read
    # that output (classification: class_names), written as ONNX metadata_props.
    output_name: str = "logits"
    task_meta: dict = field(default_factory=dict)
    # Task.export_tail: an nn.Module appended to the graph, raw output -> the task's outputs
    # (a detector's decode to boxes, scores, classes), kept in FP32 in every precision.
    tail: object = None
    output_names: tuple[str, ...] = ()  # the tail's outputs, in order


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


@dataclass(frozen=True)
class FormatSpec:
    name: str
    fn: Exporter
    precision: str
    requires: tuple[str, ...]  # formats that must be exported first (their artifacts are read)
    preflight: Callable[[str], None] | None = None  # raises BackendUnavailable when it cannot run here


_REGISTRY: dict[str, FormatSpec] = {}


def register_format(name: str, precision: str, requires: tuple[str, ...] = ("onnx",),
                    preflight: Callable[[str], None] | None = None) -> Callable[[Exporter], Exporter]:
    def deco(fn: Exporter) -> Exporter:
        _REGISTRY[name] = FormatSpec(name, fn, precision, tuple(requires), preflight)
        return fn

    return deco


def _load_all() -> None:
    """Every format module, imported once, registers itself (in alphabetical module order)."""
    import_members(__file__, __package__)


def format_names() -> list[str]:
    _load_all()
    return list(_REGISTRY)


def format_spec(name: str) -> FormatSpec:
    _load_all()
    return _REGISTRY[name]


def parse_formats(spec: list[str] | str) -> list[str]:
    """Requested formats in build order: each after the formats it is derived from."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    shown = ",".join(str(n) for n in names)
    names = [n.strip() if isinstance(n, str) else n for n in names]
    # an empty or repeated name would be recorded in config.yaml as asked while one export ran
    if "" in names:
        raise ConfigError(f"export.formats (--format) {shown!r} has an empty format name; give comma-separated "
                          f"names, e.g. onnx,onnx-fp16")
    repeated = sorted({n for n in names if names.count(n) > 1}, key=names.index)
    if repeated:
        raise ConfigError(f"export.formats (--format) {shown!r} names {', '.join(map(str, repeated))} more than "
                          f"once; give each format once")
    known = format_names()
    for n in names:
        if n not in known:
            raise ConfigError(f"unknown export format {n!r} (choices: {', '.join(known)})")
    ordered: list[str] = []

    def visit(n: str) -> None:
        for dep in _REGISTRY[n].requires:
            visit(dep)
        if n not in ordered:
            ordered.append(n)

    for n in ["onnx", *names]:  # the FP32 ONNX always: parity data and every derived format hang off it
        visit(n)
    return ordered


def check_formats(formats: list[str] | str) -> list[str]:
    """Known names, in build order, each runnable here (TensorRT: library and GPU present)."""
    names = parse_formats(formats)
    for name in names:
        if _REGISTRY[name].preflight:
            _REGISTRY[name].preflight(name)
    return names


def export_formats(source: ExportSource, formats: list[str], options: ExportOptions) -> dict[str, ExportResult]:
    for name in check_formats(formats):
        start = time.perf_counter()
        result = _REGISTRY[name].fn(source, options)
        result.seconds = round(time.perf_counter() - start, 3)
        source.artifacts[name] = result
    return source.artifacts
