"""The method, as trtexec or Olive measure: for every (batch, threads) cell, warm each
model up for a set time, then time the models interleaved in rounds (A B C, B C A, ...)
until each has both a minimum count and a minimum time, so machine drift and load from
other processes hit every model alike. Speedups are ratios of medians from that one run.

Timing is wall-clock around a call that returns only when the work is done: ONNX Runtime
and TensorRT return host arrays, and the PyTorch CUDA backends synchronize the device.
"""

from __future__ import annotations

import gc
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from distill_export.errors import BackendUnavailable

ROUNDS = 5  # interleaving rounds per cell; more rounds cancel slower drift


@dataclass
class Bench:
    """One model on one backend. make(batch, threads) returns a zero-argument callable
    that runs one inference and returns when it is done; it may raise BackendUnavailable
    for a cell it cannot run (a fixed-batch engine, say), which becomes a skipped row."""

    model: str  # teacher | student | baseline | a file's stem
    backend: str  # pytorch-cpu | pytorch-cuda-fp16 | onnxruntime-cpu | tensorrt ...
    fmt: str  # pytorch | onnx | onnx-int8 | tensorrt-fp16 ...
    make: Callable[[int, int], Callable[[], object]] | None = None
    device: str = "cpu"
    info: dict = field(default_factory=dict)  # params, macs, size_bytes, path
    skipped: str | None = None  # why it cannot run at all on this machine
    gpu_memory: Callable[[], float | None] | None = None  # peak MiB since the last reset, if known
    reset_gpu_memory: Callable[[], None] | None = None


@dataclass
class Sweep:
    batches: list[int]
    threads: list[int]  # resolved thread counts, >= 1
    warmup_s: float = 0.2
    min_time_s: float = 0.5
    min_iters: int = 20
    max_call_s: float = 60.0  # one call (runtimes/onnx_bounds.py); a runaway model is stopped and refused


def latency_stats(samples_s, batch: int) -> dict:
    """Statistics of per-call latencies (seconds in, milliseconds out); throughput in samples/s.

    Percentiles interpolate linearly between order statistics (numpy's default)."""
    ms = np.asarray(samples_s, dtype=np.float64) * 1e3
    if ms.size == 0:
        raise ValueError("no latency samples")
    mean = float(ms.mean())
    p50, p90, p95, p99 = (float(v) for v in np.percentile(ms, [50, 90, 95, 99]))
    return {
        "mean_ms": mean,
        "std_ms": float(ms.std(ddof=1)) if ms.size > 1 else 0.0,
        "min_ms": float(ms.min()),
        "p50_ms": p50,
        "p90_ms": p90,
        "p95_ms": p95,
        "p99_ms": p99,
        "max_ms": float(ms.max()),
        "iterations": int(ms.size),
        "throughput": batch * 1e3 / mean if mean > 0 else 0.0,
    }


def time_calls(fn: Callable[[], object], seconds: float, min_calls: int,
               clock: Callable[[], float] = time.perf_counter, cpu: list[float] | None = None) -> list[float]:
    """Call fn until both `min_calls` calls and `seconds` have passed; per-call wall seconds.

    With `cpu`, also append each call's CPU time of this thread: on one thread the work runs
    on the caller, and its CPU time does not count the time other processes held the core."""
    out: list[float] = []
    deadline = clock() + seconds
    while len(out) < min_calls or clock() < deadline:
        c0 = time.thread_time() if cpu is not None else 0.0
        t0 = clock()
        fn()
        out.append(clock() - t0)
        if cpu is not None:
            cpu.append(time.thread_time() - c0)
    return out


def _row(b: Bench, batch: int | None, threads: int | None) -> dict:
    return {"model": b.model, "format": b.fmt, "backend": b.backend, "device": b.device,
            "batch": batch, "threads": threads, **b.info}


def measure_cell(benches: list[Bench], batch: int, threads: int, sweep: Sweep) -> list[dict]:
    """Interleaved measurement of every runnable bench at one (batch, threads) setting."""
    live: list[tuple[Bench, Callable]] = []
    rows: list[dict] = []
    memory: dict[int, float | None] = {}
    gc.collect()
    for b in benches:
        if b.reset_gpu_memory:
            b.reset_gpu_memory()
        try:
            fn = b.make(batch, threads)
        except BackendUnavailable as exc:
            rows.append(_row(b, batch, threads) | {"skipped": str(exc)})
            continue
        time_calls(fn, sweep.warmup_s, 3)
        memory[id(b)] = b.gpu_memory() if b.gpu_memory else None
        live.append((b, fn))
    samples: list[list[float]] = [[] for _ in live]
    # CPU time per call where it means latency without preemption: one thread, on the CPU.
    cpu: list[list[float] | None] = [[] if threads == 1 and b.device == "cpu" else None for b, _ in live]
    per_round_s = sweep.min_time_s / ROUNDS
    per_round_calls = max(1, math.ceil(sweep.min_iters / ROUNDS))
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection inside one model's window would be charged to it alone
    try:
        for r in range(ROUNDS):
            for k in range(len(live)):  # rotate the order each round: no model always goes first
                i = (k + r) % len(live)
                samples[i] += time_calls(live[i][1], per_round_s, per_round_calls, cpu=cpu[i])
    finally:
        if gc_was_enabled:
            gc.enable()
    for (b, _), s, c in zip(live, samples, cpu, strict=True):
        extra = {"gpu_peak_mb": memory[id(b)]} if memory[id(b)] is not None else {}
        if c:
            extra["cpu_p50_ms"] = float(np.percentile(np.asarray(c) * 1e3, 50))
        rows.append(_row(b, batch, threads) | latency_stats(s, batch) | extra)
    return rows


def run_sweep(benches: list[Bench], sweep: Sweep, progress: Callable[[str], None] | None = None) -> list[dict]:
    """Every (threads, batch) cell; GPU benches run only in the cell with the most threads.

    Benches that cannot run at all give one row each, after the measured ones, with batch
    and threads null and the reason under "skipped"."""
    rows: list[dict] = []
    live = [b for b in benches if not b.skipped]
    cpu_threads = sorted(sweep.threads)
    for threads in cpu_threads if live else []:
        cell_benches = [b for b in live if b.device == "cpu" or threads == cpu_threads[-1]]
        for batch in sweep.batches:
            if progress:
                progress(f"profiling batch {batch}, {threads} thread(s): {len(cell_benches)} model/backend pairs")
            rows += measure_cell(cell_benches, batch, threads, sweep)
    return rows + [_row(b, None, None) | {"skipped": b.skipped} for b in benches if b.skipped]


FP32_FORMATS = ("pytorch", "onnx")  # what a reference (the teacher) runs as, by preference


def _fp32_rank(fmt: str) -> int:
    return FP32_FORMATS.index(fmt) if fmt in FP32_FORMATS else len(FP32_FORMATS)


def speedups(rows: list[dict], reference: str | None = None) -> list[dict]:
    """p50 ratios reference/model for every measured row, from the same run and cell.

    The reference is the teacher (or `reference`, or the first model measured). Each row
    gets up to two entries:

    - ``like_for_like: true``: the reference on the row's own backend (PyTorch vs PyTorch,
      ONNX Runtime vs ONNX Runtime), in its FP32 form there (``pytorch``, else ``onnx``):
      what the smaller model bought, and the headline;
    - ``like_for_like: false``: the reference on PyTorch eager fp32 of the same device, for a
      row on another runtime: the student's gain and the runtime's gain mixed together.

    On one CPU thread each entry also carries the ratio of CPU times per call."""
    measured = [r for r in rows if "p50_ms" in r]
    if not measured:
        return []
    models = [r["model"] for r in measured]
    ref_model = reference or ("teacher" if "teacher" in models else models[0])
    ref_rows: dict[tuple, dict] = {}  # (backend, batch, threads) -> the reference's FP32 row there
    for r in measured:
        if r["model"] != ref_model:
            continue
        key = (r["backend"], r["batch"], r["threads"])
        if key not in ref_rows or _fp32_rank(r["format"]) < _fp32_rank(ref_rows[key]["format"]):
            ref_rows[key] = r
    out = []
    for r in measured:
        if r["model"] == ref_model:
            continue
        eager = f"pytorch-{r['device']}"
        for ref_backend, like in ((r["backend"], True), (eager, False)):
            if not like and r["backend"] == eager:
                continue
            ref = ref_rows.get((ref_backend, r["batch"], r["threads"]))
            if ref is None or r["p50_ms"] <= 0:  # a 0 ms p50 has no ratio (inf; the record refuses it)
                continue
            entry = {
                "model": r["model"], "format": r["format"], "backend": r["backend"],
                "batch": r["batch"], "threads": r["threads"], "reference": f"{ref_model} ({ref_backend})",
                "reference_format": ref["format"], "like_for_like": like, "speedup": ref["p50_ms"] / r["p50_ms"],
            }
            if ref.get("cpu_p50_ms") and r.get("cpu_p50_ms"):
                entry["cpu_speedup"] = ref["cpu_p50_ms"] / r["cpu_p50_ms"]  # from CPU time: immune to other load
            out.append(entry)
    return out
