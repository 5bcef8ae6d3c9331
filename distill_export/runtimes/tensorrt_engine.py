"""Serialized TensorRT engines (.engine), run through export/tensorrt.py's engine_runner: the
call copies the input to the device and the output back, as trtexec does without
--noDataTransfers; the profiler's latency includes those copies."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Callable

import numpy as np

from distill_export.errors import BackendUnavailable, DataError
from distill_export.runtimes.base import Backend, Runtime, Runner, Timer, register_runtime


@register_runtime("tensorrt", position=3)
class TensorRtEngine(Runtime):
    runs = "engine"
    backends = (Backend("tensorrt", "engine", "cuda", "tensorrt", "a serialized TensorRT engine (.engine)"),)

    def missing(self, backend: Backend | None = None) -> str | None:
        if importlib.util.find_spec("tensorrt") is None:
            return "TensorRT is not installed (pip install tensorrt; needs an NVIDIA GPU)"
        if importlib.util.find_spec("distill_export.export.tensorrt") is None:
            return "this distill-export build has no TensorRT runner (distill_export.export.tensorrt)"
        return None

    def runner(self, path: str, threads: int, sample_shape: tuple[int, ...] | None,
               check_facts: Callable[[dict], None]) -> Runner:
        from distill_export.export.tensorrt import engine_runner

        facts = engine_stamp(path)
        declared = facts.get("input_shape", [])[1:]
        if sample_shape is not None and declared and list(declared) != list(sample_shape):
            raise DataError(
                f"{path} expects input of shape [batch, {', '.join(map(str, declared))}], "
                f"the run's data has [batch, {', '.join(map(str, sample_shape))}]"
            )
        check_facts(facts)
        return engine_runner(path)

    def timer(self, source, backend: Backend, sample, model: str) -> Timer:
        path, input_shape = source, sample
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

        return Timer(make)


def engine_stamp(path) -> dict:
    """The engine's stamp (the JSON file beside it), or {} when it has none or it is unreadable."""
    stamp = Path(f"{path}.json")
    try:
        return json.loads(stamp.read_text()) if stamp.is_file() else {}
    except (OSError, ValueError):
        return {}


def load_engine_runner(path: str | Path):
    from distill_export.export.tensorrt import engine_runner

    try:
        return engine_runner(str(path))
    except BackendUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - a corrupt or foreign engine file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise DataError(f"{path} is not a loadable TensorRT engine: {first}") from None
