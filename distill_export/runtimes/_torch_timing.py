"""PyTorch timers: eager (fp32/fp16, channels_last) on CPU or CUDA, torch.compile and CUDA
graphs. Private to runtimes/pytorch.py, which imports it only when a PyTorch model is profiled
(this module imports torch)."""

from __future__ import annotations

import copy
from typing import Callable

import torch

from distill_export.errors import BackendUnavailable
from distill_export.runtimes.base import Backend, Timer

Example = Callable[[int], "torch.Tensor | dict[str, torch.Tensor]"]  # batch -> input


def _to(x, device: str, dtype, channels_last: bool):
    if isinstance(x, dict):
        return {k: _to(v, device, dtype, channels_last) for k, v in x.items()}
    # float32 inputs take the backend's dtype; ids, masks and a program's own half inputs keep theirs (59th B7)
    x = x.to(device=device, dtype=dtype) if x.dtype == torch.float32 else x.to(device=device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def torch_timer(model: str, module: torch.nn.Module, example: Example, backend: Backend) -> Timer:
    """A Timer for `module` on `backend`; example(batch) builds a random input on CPU."""
    opts = backend.options
    device = backend.device
    dtype = getattr(torch, opts.get("dtype", "float32"))
    channels_last = bool(opts.get("channels_last"))
    prepared: dict[str, object] = {}

    def prepare():
        if "module" not in prepared:
            m = copy.deepcopy(module).eval().to(device=device, dtype=dtype)
            if channels_last:
                m = m.to(memory_format=torch.channels_last)
            prepared["module"] = m
            prepared["run"] = torch.compile(m, dynamic=False) if opts.get("compile") else m
            prepared["limit"] = getattr(m, "max_call_s", None)  # a .pt2's per-call limit (nets/pt2_bounds.py)
        return prepared["run"]

    def make(batch: int, threads: int):
        torch.set_num_threads(threads)
        try:
            fwd = prepare()
            x = _to(example(batch), device, dtype, channels_last)
        except Exception as exc:  # noqa: BLE001 - e.g. an exported program that refuses fp16
            if not opts:
                raise
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise BackendUnavailable(f"{backend.name} cannot run {model}: {first}") from None
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        if prepared["limit"] and not opts.get("compile"):
            # A .pt2: this first call at the cell's batch is bounded (a runaway stops here); the timed
            # calls repeat it without the alarm's few microseconds, as ONNX's do (onnx_bounds).
            prepared["module"].max_call_s = prepared["limit"]
            try:
                with torch.inference_mode():
                    fwd(x)
            finally:
                prepared["module"].max_call_s = None
        if opts.get("compile"):
            try:
                with torch.inference_mode():
                    fwd(x)  # compiles for this shape, outside the timed window
            except Exception as exc:  # noqa: BLE001 - inductor needs a compiler toolchain
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                raise BackendUnavailable(f"torch.compile failed: {first} (it needs a working C++ compiler on CPU "
                                         "or Triton on CUDA)") from None
        if opts.get("cuda_graphs"):
            return _graphed(fwd, x)

        def run():
            with torch.inference_mode():
                fwd(x)
            sync()

        return run

    gpu_memory = reset = None
    if device == "cuda":
        reset = torch.cuda.reset_peak_memory_stats
        gpu_memory = lambda: torch.cuda.max_memory_allocated() / 2**20  # noqa: E731
    return Timer(make, gpu_memory, reset)


def _graphed(fwd, x) -> Callable[[], None]:
    """Capture one forward into a CUDA graph; each call replays it and synchronizes."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.inference_mode():
        for _ in range(3):  # warm up on a side stream before capture, as the docs require
            fwd(x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.inference_mode(), torch.cuda.graph(graph):
        fwd(x)

    def run():
        graph.replay()
        torch.cuda.synchronize()

    return run
