"""Named backends: what each runs, on which device, and what to install when it is missing.

A backend picked by default that cannot run here becomes a skipped row with the reason;
one asked for by name (`--backend`) that cannot run is an error naming what to install.
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
from dataclasses import dataclass, field

from distill_export.errors import BackendUnavailable, ConfigError


@dataclass(frozen=True)
class Backend:
    name: str  # what --backend takes
    runs: str  # the artifact kind it runs: "torch" (checkpoints), "onnx" or "engine"
    device: str  # cpu | cuda
    label: str  # the "backend" column of a latency row
    help: str
    options: dict = field(default_factory=dict)


_ALL = [
    Backend("torch-cpu", "torch", "cpu", "pytorch-cpu", "PyTorch eager, fp32"),
    Backend("torch-cpu-cl", "torch", "cpu", "pytorch-cpu-cl", "PyTorch eager, fp32, channels_last",
            {"channels_last": True}),
    Backend("torch-cpu-compile", "torch", "cpu", "torch.compile-cpu", "torch.compile (inductor), fp32",
            {"compile": True}),
    Backend("torch-cuda", "torch", "cuda", "pytorch-cuda", "PyTorch eager on CUDA, fp32"),
    Backend("torch-cuda-fp16", "torch", "cuda", "pytorch-cuda-fp16", "PyTorch eager on CUDA, fp16",
            {"dtype": "float16"}),
    Backend("torch-cuda-fp16-cl", "torch", "cuda", "pytorch-cuda-fp16-cl",
            "PyTorch eager on CUDA, fp16, channels_last", {"dtype": "float16", "channels_last": True}),
    Backend("torch-cuda-compile", "torch", "cuda", "torch.compile-cuda", "torch.compile on CUDA, fp16",
            {"dtype": "float16", "compile": True}),
    Backend("torch-cuda-graphs", "torch", "cuda", "cuda-graphs-fp16", "PyTorch fp16 replayed as a CUDA graph",
            {"dtype": "float16", "cuda_graphs": True}),
    Backend("ort-cpu", "onnx", "cpu", "onnxruntime-cpu", "ONNX Runtime, CPU execution provider",
            {"provider": "CPUExecutionProvider"}),
    Backend("ort-cuda", "onnx", "cuda", "onnxruntime-cuda", "ONNX Runtime, CUDA execution provider",
            {"provider": "CUDAExecutionProvider"}),
    Backend("ort-trt", "onnx", "cuda", "onnxruntime-tensorrt", "ONNX Runtime, TensorRT execution provider",
            {"provider": "TensorrtExecutionProvider"}),
    Backend("ov-cpu", "onnx", "cpu", "openvino-cpu", "OpenVINO, CPU plugin, fp32, reading the ONNX file directly "
            "(pip install distill-export[openvino])", {"runtime": "openvino"}),
    Backend("tensorrt", "engine", "cuda", "tensorrt", "a serialized TensorRT engine (.engine)"),
]
BACKENDS: dict[str, Backend] = {b.name: b for b in _ALL}

CPU_DEFAULT = ["torch-cpu", "ort-cpu", "ov-cpu", "tensorrt"]  # tensorrt only ever meets .engine files
GPU_DEFAULT = ["torch-cuda", "torch-cuda-fp16", "torch-cuda-graphs", "ort-cuda", "ort-trt", "tensorrt"]

_PROVIDER_INSTALL = {
    "CUDAExecutionProvider": "pip install onnxruntime-gpu (and a CUDA runtime)",
    "TensorrtExecutionProvider": "pip install onnxruntime-gpu and TensorRT (pip install tensorrt)",
}


def parse_backends(spec: str | list[str]) -> list[str]:
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    names = list(dict.fromkeys(n.strip() for n in names if n.strip()))
    for n in names:
        if n not in BACKENDS:
            close = difflib.get_close_matches(n, list(BACKENDS), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"unknown backend {n!r} ({hint}choices: {', '.join(BACKENDS)})")
    return names


@functools.lru_cache(maxsize=None)
def torch_missing() -> str | None:
    try:
        import torch  # noqa: F401
    except ImportError:
        return "torch is not installed (pip install torch); this box can profile ONNX files only"
    return None


@functools.lru_cache(maxsize=None)
def cuda_missing() -> str | None:
    if torch_missing():
        return "torch is not installed (pip install torch, a CUDA build)"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU is visible to PyTorch (needs an NVIDIA GPU and a CUDA build of torch)"
    return None


@functools.lru_cache(maxsize=None)
def openvino_missing() -> str | None:
    from distill_export.runtimes import OPENVINO_MISSING

    return OPENVINO_MISSING if importlib.util.find_spec("openvino") is None else None


@functools.lru_cache(maxsize=None)
def ort_providers() -> tuple[str, ...] | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    return tuple(ort.get_available_providers())


def unavailable(backend: Backend) -> str | None:
    """Why `backend` cannot run on this machine, or None when it can."""
    if backend.runs == "torch":
        return cuda_missing() if backend.device == "cuda" else torch_missing()
    if backend.runs == "onnx" and backend.options.get("runtime") == "openvino":
        return openvino_missing()
    if backend.runs == "onnx":
        providers = ort_providers()
        if providers is None:
            return "onnxruntime is not installed (pip install onnxruntime)"
        provider = backend.options["provider"]
        if provider not in providers:
            install = _PROVIDER_INSTALL.get(provider, "an onnxruntime build that has it")
            return f"ONNX Runtime here has no {provider} (available: {', '.join(providers)}); {install}"
        return None
    if backend.runs == "engine":
        if importlib.util.find_spec("tensorrt") is None:
            return "TensorRT is not installed (pip install tensorrt; needs an NVIDIA GPU)"
        if importlib.util.find_spec("distill_export.export.tensorrt") is None:
            return "this distill-export build has no TensorRT runner (distill_export.export.tensorrt)"
        return None
    raise AssertionError(backend.runs)


def require(backend: Backend) -> None:
    reason = unavailable(backend)
    if reason:
        raise BackendUnavailable(f"backend {backend.name} was asked for but cannot run: {reason}")
