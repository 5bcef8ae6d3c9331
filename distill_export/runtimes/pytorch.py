"""PyTorch (checkpoints and external teachers): eager fp32/fp16, channels_last, torch.compile,
CUDA graphs, on CPU or CUDA. torch is imported only when a PyTorch model is profiled."""

from __future__ import annotations

import functools

from distill_export.runtimes.base import Backend, Runtime, Timer, register_runtime


@register_runtime("pytorch", position=0)
class PyTorch(Runtime):
    runs = "torch"
    backends = (
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
    )

    def missing(self, backend: Backend | None = None) -> str | None:
        return cuda_missing() if backend is not None and backend.device == "cuda" else torch_missing()

    def timer(self, source, backend: Backend, sample, model: str) -> Timer:
        from distill_export.runtimes._torch_timing import torch_timer

        return torch_timer(model, source, sample, backend)


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
