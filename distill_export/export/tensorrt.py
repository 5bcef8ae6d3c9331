"""TensorRT engines (FP32, FP16, INT8) built from the FP32 ONNX with the TensorRT 10 Python API.

NOT RUN ON REAL HARDWARE: written against the TensorRT 10 API reference on a machine
without TensorRT or a GPU; the tests skip with the reason when either is missing.

- one optimisation profile over the batch axis (``trt_min/opt/max_batch``);
- a timing cache in the run directory, reused by later builds on the same machine;
- FP32 engines clear TF32, so they meet the FP32 parity gate;
- INT8 is explicit quantisation: the FP32 ONNX is QDQ-quantised with symmetric
  activations (TensorRT requires zero-point 0), calibrated on the training rows, and the
  engine is built from that model (TensorRT 10 deprecates implicit calibrators);
- each engine gets a JSON sidecar (``<engine>.json``) stamped with the TensorRT version
  and the GPU: an engine only runs on the TensorRT version and GPU it was built for, so
  loading it elsewhere fails with a message saying what to rebuild.

Device buffers come from torch's CUDA allocator (the GPU image ships torch).
"""

from __future__ import annotations

import functools
import json
import logging
import tempfile
from pathlib import Path

import numpy as np

from distill_export import __version__
from distill_export.errors import BackendUnavailable, DataError, ExportError
from distill_export.export.base import ExportOptions, ExportResult, ExportSource, register_format
from distill_export.export.common import calibration_rows, fp32_artifact, model_name, quantize_qdq
from distill_export.files import atomic_path, sha256_file, write_json

log = logging.getLogger(__name__)
MIN_TRT_MAJOR = 10
PRECISIONS = ("fp32", "fp16", "int8")
INSTALL_HINT = (
    "install TensorRT 10 (`pip install tensorrt` with a CUDA 12 driver) on a host with an NVIDIA GPU, "
    "or use the Dockerfile's image (`docker run --gpus all ...`)"
)


def import_tensorrt(what: str):
    """The tensorrt module, or BackendUnavailable naming what to install."""
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendUnavailable(f"{what} needs TensorRT, which is not installed; {INSTALL_HINT}") from None
    try:
        major = int(trt.__version__.split(".")[0])
    except (AttributeError, ValueError):
        major = 0
    if major < MIN_TRT_MAJOR:
        raise BackendUnavailable(
            f"{what} needs TensorRT {MIN_TRT_MAJOR} or newer, found {getattr(trt, '__version__', '?')}; {INSTALL_HINT}"
        )
    return trt


def gpu_identity(what: str) -> dict:
    """Name and compute capability of the current CUDA device, or BackendUnavailable."""
    try:
        import torch
    except ImportError:
        raise BackendUnavailable(f"{what} needs torch with CUDA for device buffers; install it") from None
    if not torch.cuda.is_available():
        raise BackendUnavailable(
            f"{what} needs an NVIDIA GPU, and CUDA sees none here; run it on a GPU host "
            "(with Docker: `docker run --gpus all ...`)"
        )
    index = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    return {"gpu_name": torch.cuda.get_device_name(index), "compute_capability": f"{major}.{minor}"}


def check_available(fmt: str = "tensorrt") -> None:
    """Fail early (before training) when TensorRT or the GPU is missing."""
    import_tensorrt(f"the {fmt} export")
    gpu_identity(f"the {fmt} export")


# ----- build ------------------------------------------------------------------------------


def _parse_errors(parser) -> tuple[str, str | None]:
    """(first error's description, the operator it names, if any)."""
    if parser.num_errors == 0:
        return "the parser reported no error", None
    err = parser.get_error(0)
    desc = err.desc() if hasattr(err, "desc") else str(err)
    op = err.node_operator() if hasattr(err, "node_operator") else None
    return str(desc).strip().splitlines()[0][:240], (op or None)


def _timing_cache(config, trt, path: Path):
    """Attach the timing cache at `path` (or a new one when it is absent or stale)."""
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        log.warning("timing cache %s does not fit this TensorRT/GPU; starting a new one", path)
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def build_engine(onnx_path: Path, engine_path: Path, precision: str, options: ExportOptions,
                 name: str, timing_cache: Path) -> dict:
    """Parse `onnx_path`, build a serialized engine into `engine_path`; returns build facts."""
    fmt = f"tensorrt-{precision}"
    trt = import_tensorrt(f"the {fmt} export")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: networks are always explicit-batch
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        desc, op = _parse_errors(parser)
        where = f" at operator {op}" if op else ""
        raise ExportError(
            f"TensorRT {trt.__version__} cannot parse the onnx of student {name} for {fmt}{where}: {desc}; "
            "use the onnx format with onnxruntime, or re-export with a different --opset"
        )
    if network.num_inputs != 1:
        raise ExportError(f"student {name}'s onnx has {network.num_inputs} inputs; {fmt} expects one")
    inp = network.get_input(0)
    sample = tuple(inp.shape)[1:]  # (C, H, W); the batch axis is -1 (dynamic)
    if any(d < 0 for d in sample):
        raise ExportError(f"student {name}'s onnx input {inp.name} has dynamic non-batch axes {tuple(inp.shape)}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.trt_workspace_mib << 20)
    if precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)  # TF32 would break the FP32 max-abs gate
    elif precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)  # with Q/DQ in the network: explicit quantisation
    profile = builder.create_optimization_profile()
    shapes = [(b, *sample) for b in (options.trt_min_batch, options.trt_opt_batch, options.trt_max_batch)]
    profile.set_shape(inp.name, *shapes)
    config.add_optimization_profile(profile)
    _timing_cache(config, trt, timing_cache)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(
            f"TensorRT {trt.__version__} could not build a {fmt} engine for student {name} "
            "(see the TensorRT log above); try tensorrt-fp32, or the onnx format"
        )
    with atomic_path(engine_path) as tmp:
        with open(tmp, "wb") as f:
            f.write(serialized)
    with atomic_path(timing_cache) as tmp:
        with open(tmp, "wb") as f:
            f.write(config.get_timing_cache().serialize())
    return {
        "input_name": inp.name,
        "input_shape": ["batch", *sample],
        "output_name": network.get_output(0).name,
        "profile": {"min": shapes[0], "opt": shapes[1], "max": shapes[2]},
        "timing_cache": timing_cache.name,
    }


def stamp_path(engine_path: str | Path) -> Path:
    return Path(f"{engine_path}.json")


def _export_engine(source: ExportSource, options: ExportOptions, precision: str) -> ExportResult:
    fmt = f"tensorrt-{precision}"
    name = model_name(source)
    trt = import_tensorrt(f"the {fmt} export")
    gpu = gpu_identity(f"the {fmt} export")
    fp32 = fp32_artifact(source, fmt)
    engine = source.out_dir / f"student-trt-{precision}.engine"
    cache = Path(options.trt_timing_cache) if options.trt_timing_cache else source.out_dir / "trt-timing.cache"
    details: dict = {}
    with tempfile.TemporaryDirectory(prefix="trt-") as work:
        onnx_in = fp32
        if precision == "int8":
            onnx_in = Path(work) / "qdq.onnx"
            details["quantization"] = quantize_qdq(
                fp32, onnx_in, calibration_rows(source, options, fmt), options, symmetric_activations=True
            )
        details.update(build_engine(onnx_in, engine, precision, options, name, cache))
    stamp = {
        "tensorrt_version": trt.__version__,
        **gpu,
        "precision": precision,
        "source_onnx_sha256": sha256_file(fp32),
        "source_checkpoint_sha256": source.checkpoint_sha256,
        "distill_export_version": __version__,
        **details,
    }
    write_json(stamp_path(engine), stamp)
    return ExportResult(
        format=fmt, path=str(engine), precision=precision, runtime="tensorrt",
        size_bytes=engine.stat().st_size, seconds=0.0,
        details={"stamp": stamp_path(engine).name, **stamp},
    )


for _precision in PRECISIONS:
    register_format(f"tensorrt-{_precision}", precision=_precision, preflight=check_available)(
        functools.partial(_export_engine, precision=_precision)
    )


# ----- run --------------------------------------------------------------------------------


def check_stamp(path: str | Path, trt_version: str, gpu_name: str) -> dict:
    """The engine's stamp, or BackendUnavailable when this machine is not the one it was built for."""
    path = Path(path)
    sidecar = stamp_path(path)
    if not sidecar.is_file():
        raise DataError(f"{path} has no stamp {sidecar.name}; rebuild it with `distill-export export RUN_DIR --format tensorrt-...`")
    try:
        stamp = json.loads(sidecar.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{sidecar} is not a readable engine stamp: {exc}") from None
    built = (stamp.get("tensorrt_version"), stamp.get("gpu_name"))
    if built != (trt_version, gpu_name):
        raise BackendUnavailable(
            f"{path.name} was built with TensorRT {built[0]} for {built[1]}; this machine has TensorRT "
            f"{trt_version} and {gpu_name}. Engines do not move between TensorRT versions or GPUs: "
            f"rebuild it here with `distill-export export RUN_DIR --format tensorrt-{stamp.get('precision', 'fp16')}`"
        )
    return stamp


class EngineRunner:
    """A loaded engine: ``runner(x, batch_size) -> logits``; x: (N, *input_shape) float32 numpy.

    Rows run ``batch_size`` at a time (clamped to the optimisation profile); inputs are
    copied to the GPU and logits back, on one CUDA stream.
    """

    def __init__(self, path: str | Path):
        trt = import_tensorrt("running a TensorRT engine")
        gpu = gpu_identity("running a TensorRT engine")
        import torch

        self.path = Path(path)
        self.stamp = check_stamp(self.path, trt.__version__, gpu["gpu_name"])
        logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise DataError(f"{self.path} is not a loadable TensorRT engine (see the TensorRT log above)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or not outputs:
            raise DataError(f"{self.path} has {len(inputs)} inputs and {len(outputs)} outputs; a student has one "
                            "input and one output (a detector: boxes, scores, classes)")
        self.input_name, self.output_names = inputs[0], outputs
        # Untested on real TensorRT (none on the build machines); a detector's classes are int32 or int64.
        dtypes = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16,
                  trt.DataType.INT32: torch.int32, getattr(trt.DataType, "INT64", trt.DataType.INT32): torch.int64}
        self.in_dtype = dtypes[self.engine.get_tensor_dtype(self.input_name)]
        self.out_dtypes = {n: dtypes[self.engine.get_tensor_dtype(n)] for n in outputs}
        min_shape, _, max_shape = self.engine.get_tensor_profile_shape(self.input_name, 0)
        self.min_batch, self.max_batch = int(min_shape[0]), int(max_shape[0])
        self.input_shape = tuple(int(d) for d in tuple(max_shape)[1:])  # (C, H, W)
        self.stream = torch.cuda.Stream()
        self._torch = torch

    def __call__(self, x: np.ndarray, batch_size: int):
        """One output: its (N, ...) array; several (a detector): {output name: (N, ...) array}."""
        torch = self._torch
        step = max(self.min_batch, min(batch_size, self.max_batch))
        outs: dict[str, list] = {n: [] for n in self.output_names}
        with torch.cuda.stream(self.stream):  # copies and the engine on one stream, in order
            for i in range(0, len(x), step):
                xb = torch.from_numpy(np.ascontiguousarray(x[i : i + step], dtype=np.float32))
                xb = xb.to("cuda", dtype=self.in_dtype)
                n = xb.shape[0]
                if n < self.min_batch:  # a short last batch below the profile's minimum: pad it
                    xb = torch.cat([xb, xb.new_zeros((self.min_batch - n, *xb.shape[1:]))])
                if not self.context.set_input_shape(self.input_name, tuple(xb.shape)):
                    raise DataError(
                        f"{self.path} does not accept input shape {tuple(xb.shape)} "
                        f"(profile {self.min_batch}..{self.max_batch})"
                    )
                ys = {name: torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=self.out_dtypes[name],
                                        device="cuda") for name in self.output_names}
                self.context.set_tensor_address(self.input_name, xb.data_ptr())
                for name, yb in ys.items():
                    self.context.set_tensor_address(name, yb.data_ptr())
                if not self.context.execute_async_v3(self.stream.cuda_stream):
                    raise DataError(f"TensorRT failed to run {self.path}")
                for name, yb in ys.items():  # .cpu() waits for the stream
                    outs[name].append((yb[:n].float() if yb.is_floating_point() else yb[:n].long()).cpu())
        joined = {name: torch.cat(parts).numpy() for name, parts in outs.items()}
        return next(iter(joined.values())) if len(joined) == 1 else joined


def engine_runner(path: str | Path) -> EngineRunner:
    """(x, batch_size) -> logits for a stamped engine (validate's and the profiler's entry point)."""
    return EngineRunner(path)
