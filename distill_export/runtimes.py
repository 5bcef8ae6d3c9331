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
