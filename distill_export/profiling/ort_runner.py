"""ONNX Runtime backends (CPU, CUDA and TensorRT execution providers). No torch needed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from distill_export.errors import BackendUnavailable, ConfigError
from distill_export.profiling.backends import Backend
from distill_export.profiling.measure import Bench

_DTYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
}


def open_session(path: str | Path, threads: int, backend: Backend):
    """A session on exactly the backend's provider (ORT would otherwise fall back to CPU quietly)."""
    from distill_export.runtimes import onnx_session

    provider = backend.options["provider"]
    providers = [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]
    sess = onnx_session(path, threads, providers)
    if provider not in sess.get_providers():
        raise BackendUnavailable(f"ONNX Runtime could not start {provider} for {path} "
                                 f"(running on {', '.join(sess.get_providers())})")
    return sess


def input_specs(session, path, fallback_shape: tuple[int, ...] | None) -> list[tuple[str, tuple[int, ...], type]]:
    """(name, per-sample shape, dtype) of every input; the first axis is the batch."""
    specs = []
    for inp in session.get_inputs():
        dims = list(inp.shape[1:])
        if not all(isinstance(d, int) and d > 0 for d in dims):
            if fallback_shape is None or len(fallback_shape) != len(dims):
                raise ConfigError(f"{path}: input {inp.name} has dynamic dimensions {inp.shape}; "
                                  "pass --input-shape with the per-sample shape, e.g. 1,28,28")
            dims = list(fallback_shape)
        if inp.type not in _DTYPES:
            raise ConfigError(f"{path}: input {inp.name} has type {inp.type}, which the profiler cannot feed")
        specs.append((inp.name, tuple(dims), _DTYPES[inp.type]))
    return specs


def static_batch(session) -> int | None:
    first = session.get_inputs()[0].shape[0]
    return first if isinstance(first, int) and first > 0 else None


def ort_bench(model: str, fmt: str, path: str | Path, backend: Backend, info: dict,
              input_shape: tuple[int, ...] | None = None) -> Bench:
    sessions: dict[int, object] = {}

    def make(batch: int, threads: int):
        if threads not in sessions:
            sessions[threads] = open_session(path, threads, backend)
        sess = sessions[threads]
        fixed = static_batch(sess)
        if fixed is not None and fixed != batch:
            raise BackendUnavailable(f"{Path(path).name} has a fixed batch of {fixed}")
        feed = random_feed(sess, path, batch, input_shape)
        return lambda: sess.run(None, feed)

    return Bench(model, backend.label, fmt, make, backend.device, dict(info))


def random_feed(sess, path, batch: int, input_shape=None) -> dict[str, np.ndarray]:
    """One seeded batch per input of a session (ONNX Runtime or OpenVINO's wrapper): normal
    noise for float inputs, zeros (padding ids) for integer ones; (batch, *shape) each."""
    rng = np.random.default_rng(0)
    feed = {}
    for name, shape, dtype in input_specs(sess, path, input_shape):
        if np.issubdtype(dtype, np.floating):
            feed[name] = rng.standard_normal((batch, *shape)).astype(dtype)
        else:
            feed[name] = np.zeros((batch, *shape), dtype=dtype)
    return feed
