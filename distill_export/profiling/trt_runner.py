"""TensorRT engines through export/tensorrt.py's engine_runner(path) -> (x, batch) -> logits.

The call copies the input to the device and the output back, as trtexec does without
--noDataTransfers; the latency includes those copies."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from distill_export.errors import BackendUnavailable, DataError
from distill_export.profiling.backends import Backend
from distill_export.profiling.measure import Bench


def load_engine_runner(path: str | Path):
    from distill_export.export.tensorrt import engine_runner

    try:
        return engine_runner(str(path))
    except BackendUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - a corrupt or foreign engine file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise DataError(f"{path} is not a loadable TensorRT engine: {first}") from None


def engine_bench(model: str, fmt: str, path: str | Path, backend: Backend, info: dict,
                 input_shape: tuple[int, ...] | None) -> Bench:
    state: dict[str, object] = {}

    def make(batch: int, threads: int):
        if "runner" not in state:
            state["runner"] = load_engine_runner(path)
        runner = state["runner"]
        shape = getattr(runner, "input_shape", None) or input_shape
        if shape is None:
            raise BackendUnavailable(f"the input shape of {Path(path).name} is unknown; pass --input-shape")
        x = np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)
        try:
            runner(x, batch)
        except Exception as exc:  # noqa: BLE001 - outside the engine's optimisation profile
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            raise BackendUnavailable(f"engine cannot run batch {batch}: {first}") from None
        return lambda: runner(x, batch)

    return Bench(model, backend.label, fmt, make, backend.device, dict(info))
