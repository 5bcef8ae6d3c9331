"""Stage 5: latency and throughput of teacher and student, measured as trtexec would.

Method: for every (batch, threads) cell, warm every model up for a set time, then run
the models interleaved in rounds (A B C A B C ...) until each has both a minimum count
and a minimum time, so machine drift hits every model alike. Student/teacher speedups
are ratios of medians from that one run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from distill_export.device import all_threads

ROUNDS = 5


@dataclass
class Bench:
    """One model on one backend. make(batch, threads) returns a zero-argument callable."""

    model: str  # teacher | student | baseline
    backend: str  # pytorch-cpu | pytorch-cuda | onnxruntime-cpu | tensorrt ...
    fmt: str  # pytorch | onnx | onnx-fp16 | onnx-int8 | tensorrt-fp16 ...
    make: Callable[[int, int], Callable[[], None]]
    info: dict = field(default_factory=dict)  # params, macs, size_bytes
    skipped: str | None = None  # reason, when the backend is not available


def latency_stats(samples_s: np.ndarray, batch: int) -> dict:
    """Statistics of per-call latencies (seconds in, milliseconds out)."""
    ms = np.asarray(samples_s, dtype=np.float64) * 1e3
    mean = float(ms.mean())
    return {
        "mean_ms": mean,
        "std_ms": float(ms.std(ddof=1)) if len(ms) > 1 else 0.0,
        "min_ms": float(ms.min()),
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
        "iterations": int(len(ms)),
        "throughput": batch * 1e3 / mean if mean > 0 else 0.0,  # samples per second
    }


def _time_calls(fn: Callable[[], None], seconds: float, min_calls: int) -> list[float]:
    out: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(out) < min_calls or time.perf_counter() < deadline:
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def measure_cell(benches: list[Bench], batch: int, threads: int, cfg) -> list[dict]:
    """Interleaved measurement of every available bench at one (batch, threads) setting."""
    live = [b for b in benches if not b.skipped]
    fns = [b.make(batch, threads) for b in live]
    for fn in fns:
        _time_calls(fn, cfg.warmup_s, 3)
    samples: list[list[float]] = [[] for _ in fns]
    per_round_s = cfg.min_time_s / ROUNDS
    per_round_calls = max(1, -(-cfg.min_iters // ROUNDS))
    for _ in range(ROUNDS):
        for i, fn in enumerate(fns):
            samples[i] += _time_calls(fn, per_round_s, per_round_calls)
    rows = []
    for b, s in zip(live, samples):
        rows.append(_row(b, batch, threads) | latency_stats(np.array(s), batch))
    for b in benches:
        if b.skipped:
            rows.append(_row(b, batch, threads) | {"skipped": b.skipped})
    return rows


def _row(b: Bench, batch: int, threads: int) -> dict:
    return {
        "model": b.model, "backend": b.backend, "format": b.fmt, "batch": batch,
        "threads": threads, **b.info,
    }


def profile(benches: list[Bench], cfg, progress: Callable[[str], None] | None = None) -> list[dict]:
    """Every (batch, threads) cell of the sweep; threads 0 means all cores."""
    rows = []
    threads_list = sorted({t if t > 0 else all_threads() for t in cfg.threads})
    for threads in threads_list:
        for batch in cfg.batches:
            if progress:
                progress(f"profiling batch {batch}, {threads} thread(s)")
            rows += measure_cell(benches, batch, threads, cfg)
    return rows


def speedups(rows: list[dict], baseline_model: str = "teacher", baseline_fmt: str = "pytorch") -> list[dict]:
    """Student/teacher p50 ratios per (batch, threads, backend) from the same run."""
    ref = {
        (r["batch"], r["threads"]): r["p50_ms"]
        for r in rows
        if r["model"] == baseline_model and r["format"] == baseline_fmt and "p50_ms" in r
    }
    out = []
    for r in rows:
        key = (r["batch"], r["threads"])
        if r["model"] == baseline_model or "p50_ms" not in r or key not in ref:
            continue
        out.append({
            "model": r["model"], "format": r["format"], "backend": r["backend"],
            "batch": r["batch"], "threads": r["threads"],
            "speedup_vs_teacher": ref[key] / r["p50_ms"],
        })
    return out


# ----- backends -------------------------------------------------------------------------


def torch_bench(model_name: str, module, example: Callable[[int], object], device: str = "cpu",
                info: dict | None = None) -> Bench:
    """PyTorch eager. example(batch) builds an input (a tensor or a dict of tensors)."""
    import torch

    module = module.eval().to(device)

    def make(batch: int, threads: int):
        torch.set_num_threads(threads)
        x = example(batch)
        x = {k: v.to(device) for k, v in x.items()} if isinstance(x, dict) else x.to(device)
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

        def run():
            with torch.inference_mode():
                module(x)
            sync()

        return run

    return Bench(model_name, f"pytorch-{device}", "pytorch", make, info or {})


def onnx_bench(model_name: str, fmt: str, path, input_shape: tuple[int, ...], info: dict | None = None) -> Bench:
    """ONNX Runtime on CPU, one session per thread count."""
    from distill_export.runtimes import onnx_session

    sessions: dict[int, object] = {}

    def make(batch: int, threads: int):
        if threads not in sessions:
            sessions[threads] = onnx_session(path, threads)
        sess = sessions[threads]
        inp = sess.get_inputs()[0]
        dtype = np.float16 if "float16" in inp.type else np.float32
        feed = {inp.name: np.random.default_rng(0).standard_normal((batch, *input_shape)).astype(dtype)}
        return lambda: sess.run(None, feed)

    return Bench(model_name, "onnxruntime-cpu", fmt, make, info or {})


def count_macs(module, example) -> int | None:
    """Multiply-accumulates of one forward pass (FLOPs / 2), from torch's flop counter."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            module.eval()(example)
        return int(counter.get_total_flops() // 2)
    except Exception:  # an op the counter does not know must not fail profiling
        return None


def count_params(module) -> int:
    return int(sum(p.numel() for p in module.parameters()))
