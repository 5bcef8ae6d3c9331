"""OpenVINO's CPU plugin (the optional extra: pip install distill-export[openvino]), reading the
exported ONNX file itself: validate checks every ONNX Runtime artifact on it too, and the profiler
compiles one static-batch model per (batch, threads) cell."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Callable

import numpy as np

from distill_export.errors import BackendUnavailable, DataError
from distill_export.runtimes import onnx_runtime
from distill_export.runtimes.base import Backend, Runtime, Runner, Timer, register_runtime
from distill_export.runtimes.onnx_bounds import bounded_run


@register_runtime("openvino", position=2)
class OpenVinoCpu(Runtime):
    runs = "onnx"
    also_runs = ("onnxruntime",)  # the same ONNX file, compiled by OpenVINO
    backends = (
        Backend("ov-cpu", "onnx", "cpu", "openvino-cpu", "OpenVINO, CPU plugin, fp32, reading the ONNX file directly "
                "(pip install distill-export[openvino])", {"runtime": "openvino"}),
    )

    def missing(self, backend: Backend | None = None) -> str | None:
        return openvino_missing()

    def runner(self, path: str, threads: int, sample_shape: tuple[int, ...] | None,
               check_facts: Callable[[dict], None]) -> Runner:
        ort_session = onnx_runtime.onnx_session(path, 1)  # reads the file's ONNX metadata
        session = openvino_session(path, threads)
        if sample_shape is not None:
            onnx_runtime.check_input_signature(session, path, tuple(sample_shape))
        check_facts(onnx_runtime.onnx_metadata(ort_session))
        return lambda x, bs: onnx_runtime.run_onnx(session, x, bs)

    def timer(self, source, backend: Backend, sample, model: str) -> Timer:
        path, input_shape = source, sample

        def make(batch: int, threads: int):
            sess = openvino_session(path, threads, batch)
            feed = onnx_runtime.random_feed(sess, path, batch, input_shape)
            bounded_run(sess, feed, path)  # the timed calls repeat this one: a runaway stops here
            return lambda: sess.run(None, feed)

        return Timer(make)


@functools.lru_cache(maxsize=None)
def openvino_missing() -> str | None:
    return OPENVINO_MISSING if importlib.util.find_spec("openvino") is None else None


OPENVINO_MISSING = "OpenVINO is not installed (pip install distill-export[openvino])"
_OV_TYPES = {"f32": "tensor(float)", "f16": "tensor(float16)", "f64": "tensor(double)", "i64": "tensor(int64)",
             "i32": "tensor(int32)", "u8": "tensor(uint8)", "i8": "tensor(int8)", "boolean": "tensor(bool)"}


class _OvInput:
    """One input as ONNX Runtime's NodeArg describes it: name, shape (str for dynamic dims), type."""

    def __init__(self, port):
        self.name = port.get_any_name()
        self.shape = [d.get_length() if d.is_static else "?" for d in port.get_partial_shape()]
        self.type = _OV_TYPES.get(port.get_element_type().get_type_name(), "tensor(unknown)")


class OpenVinoSession:
    """An ONNX file compiled by OpenVINO for its CPU plugin, with the slice of ONNX Runtime's
    InferenceSession API the validators, profiler and benchmarks use (get_inputs, run), so the
    same code drives both runtimes. Precision is pinned to f32: on CPUs with bf16 units the
    plugin otherwise runs FP32 models in bf16, which is not the model that was exported."""

    def __init__(self, path: str | Path, threads: int = 0, batch: int | None = None):
        import openvino as ov

        from distill_export.files import check_model_file

        path = check_model_file(path, f"ONNX file {path}", DataError)
        core = ov.Core()
        try:
            model = core.read_model(str(path))  # the ONNX file itself: no conversion step, no IR on disk
            if batch is not None:  # a static batch compiles to faster code than a dynamic one
                model.reshape({p.get_any_name(): ov.PartialShape([ov.Dimension(batch), *list(p.get_partial_shape())[1:]])
                               for p in model.inputs})
            config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
            if threads > 0:
                config["INFERENCE_NUM_THREADS"] = threads
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises plain RuntimeErrors
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise DataError(f"OpenVINO cannot compile {path}: {first[:200]}") from None
        self.request = self.compiled.create_infer_request()
        self.path = path  # for messages (onnx_runtime._source)
        self._inputs = [_OvInput(p) for p in self.compiled.inputs]

    def get_inputs(self) -> list[_OvInput]:
        return self._inputs

    def get_outputs(self) -> list[_OvInput]:
        return [_OvInput(p) for p in self.compiled.outputs]

    def get_providers(self) -> list[str]:
        return ["OpenVINO CPU"]

    def run(self, output_names, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        result = self.request.infer(feed)
        return [np.array(result[out]) for out in self.compiled.outputs]  # copies: the request reuses its buffers


def openvino_session(path: str | Path, threads: int = 0, batch: int | None = None) -> OpenVinoSession:
    if importlib.util.find_spec("openvino") is None:
        raise BackendUnavailable(OPENVINO_MISSING)
    return OpenVinoSession(path, threads, batch)
