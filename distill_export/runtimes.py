"""Runtimes for exported artifacts (no torch needed): ONNX Runtime sessions and batched runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from distill_export.errors import BackendUnavailable, DataError


def onnx_session(path: str | Path, threads: int = 0, providers: list[str] | None = None):
    """An InferenceSession with `threads` intra-op threads (0 = ORT's default: all cores)."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise DataError(f"ONNX file {path} does not exist")
    available = ort.get_available_providers()
    providers = providers or ["CPUExecutionProvider"]
    for p in providers:
        if p not in available:
            hint = {"CUDAExecutionProvider": "onnxruntime-gpu", "TensorrtExecutionProvider": "onnxruntime-gpu and TensorRT"}
            raise BackendUnavailable(
                f"ONNX Runtime provider {p} is not installed (available: {', '.join(available)}); "
                f"install {hint.get(p, 'an onnxruntime build with it')}"
            )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path} is not a loadable ONNX model: {first}") from None


def onnx_metadata(session) -> dict[str, str]:
    return dict(session.get_modelmeta().custom_metadata_map)


def check_input_signature(session, path, sample_shape: tuple[int, ...]) -> None:
    """Fail clearly when an ONNX model's input does not fit the run's data."""
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise DataError(f"{path} has {len(inputs)} inputs; a student takes exactly one")
    declared = inputs[0].shape[1:]
    if len(declared) != len(sample_shape) or any(
        isinstance(d, int) and d != s for d, s in zip(declared, sample_shape)
    ):
        raise DataError(
            f"{path} expects input {inputs[0].name} of shape [batch, {', '.join(map(str, declared))}], "
            f"the run's data has [batch, {', '.join(map(str, sample_shape))}]"
        )


def run_onnx(session, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Logits for all rows of x, `batch_size` rows per call. x: (N, *shape) float32."""
    name = session.get_inputs()[0].name
    want = session.get_inputs()[0].type  # 'tensor(float)' or 'tensor(float16)'
    dtype = np.float16 if "float16" in want else np.float32
    outs = [
        session.run(None, {name: x[i : i + batch_size].astype(dtype, copy=False)})[0]
        for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(outs).astype(np.float32)


def run_onnx_inputs(session, inputs: dict[str, np.ndarray], batch_size: int) -> np.ndarray:
    """Logits of a multi-input model (a teacher: one input per modality), `batch_size` rows per
    call. inputs: name -> (N, *shape), each cast to the dtype its ONNX input declares."""
    dtypes = {i.name: _NP_TYPES.get(i.type, np.float32) for i in session.get_inputs()}
    missing = sorted(set(dtypes) - set(inputs))
    if missing:
        raise DataError(f"no data for ONNX input(s) {', '.join(missing)}")
    n = len(next(iter(inputs.values())))
    outs = [
        session.run(None, {k: inputs[k][i : i + batch_size].astype(t, copy=False) for k, t in dtypes.items()})[0]
        for i in range(0, n, batch_size)
    ]
    return np.concatenate(outs).astype(np.float32)


_NP_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
             "tensor(int32)": np.int32, "tensor(double)": np.float64}


# ----- OpenVINO (optional extra: pip install distill-export[openvino]) ---------------------------

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

        path = Path(path)
        if not path.is_file():
            raise DataError(f"ONNX file {path} does not exist")
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
        self._inputs = [_OvInput(p) for p in self.compiled.inputs]

    def get_inputs(self) -> list[_OvInput]:
        return self._inputs

    def get_providers(self) -> list[str]:
        return ["OpenVINO CPU"]

    def run(self, output_names, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        result = self.request.infer(feed)
        return [np.array(result[out]) for out in self.compiled.outputs]  # copies: the request reuses its buffers


def openvino_session(path: str | Path, threads: int = 0, batch: int | None = None) -> OpenVinoSession:
    import importlib.util

    if importlib.util.find_spec("openvino") is None:
        raise BackendUnavailable(OPENVINO_MISSING)
    return OpenVinoSession(path, threads, batch)
