"""Behaviour-level tests of the latency method's promises (issue 25, profiling/measure.py):
warm-up calls are never timed; each model gets at least min_iters calls and min_time_s of
timed calls, in ROUNDS rounds; the collector is off while timing and restored after; a row
carries the bench's identity, its GPU peak when known and CPU time only on one CPU thread;
speedups take the reference's FP32 form on each backend. Fake benches: no model runs."""

from __future__ import annotations

import gc
import math
import time

import pytest

from distill_export.errors import BackendUnavailable
from distill_export.profiling.measure import ROUNDS, Bench, Sweep, measure_cell, run_sweep, speedups, time_calls


def _sleepy_bench(name: str, calls: list, warm_s: float = 0.0, device: str = "cpu", **kw) -> Bench:
    """A bench whose first three calls (the warm-up's minimum) sleep warm_s, the rest ~0."""

    def make(batch, threads):
        def fn():
            calls.append((name, batch, threads))
            if len(calls) <= 3:
                time.sleep(warm_s)

        return fn

    return Bench(name, f"fake-{device}", "pytorch", make, device, {"params": 5, "path": f"{name}.pt"}, **kw)


def test_warm_up_calls_are_never_timed():
    calls: list = []
    sweep = Sweep(batches=[2], threads=[1], warmup_s=0.0, min_time_s=0.0, min_iters=ROUNDS)
    (row,) = measure_cell([_sleepy_bench("a", calls, warm_s=0.05)], 2, 1, sweep)
    assert len(calls) == 3 + ROUNDS and row["iterations"] == ROUNDS  # three warm-up calls, then one a round
    assert row["max_ms"] < 40 and row["p99_ms"] < 40  # none of the 50 ms warm-up calls
    assert row == row | {"model": "a", "format": "pytorch", "backend": "fake-cpu", "device": "cpu", "batch": 2,
                         "threads": 1, "params": 5, "path": "a.pt"}
    assert "gpu_peak_mb" not in row and row["cpu_p50_ms"] >= 0


def test_warm_up_lasts_its_time():
    calls: list = []
    t0 = time.perf_counter()
    measure_cell([_sleepy_bench("a", calls)], 1, 1, Sweep([1], [1], warmup_s=0.05, min_time_s=0.0, min_iters=1))
    assert time.perf_counter() - t0 >= 0.05 and len(calls) > 3 + ROUNDS


@pytest.mark.parametrize("min_iters,min_time_s", [(7, 0.0), (1, 0.05)])
def test_each_model_gets_its_minimum_count_and_time(min_iters, min_time_s):
    calls: list = []
    sweep = Sweep([1], [2], warmup_s=0.0, min_time_s=min_time_s, min_iters=min_iters)

    def make(batch, threads):
        return lambda: (calls.append(1), time.sleep(0.002))

    rows = measure_cell([Bench("a", "fake", "onnx", make), Bench("b", "fake", "onnx", make)], 1, 2, sweep)
    for row in rows:
        assert row["iterations"] >= max(min_iters, ROUNDS)
        if min_time_s == 0:  # ceil(7 / 5) = 2 calls a round
            assert row["iterations"] == ROUNDS * math.ceil(min_iters / ROUNDS)
        assert row["mean_ms"] * row["iterations"] >= min_time_s * 1e3 * 0.99
        assert "cpu_p50_ms" not in row  # two threads: CPU time is not latency


def test_the_collector_is_off_while_timing_and_restored():
    seen = []
    bench = Bench("a", "fake", "pytorch", lambda b, t: lambda: seen.append(gc.isenabled()))
    sweep = Sweep([1], [1], warmup_s=0.0, min_time_s=0.0, min_iters=1)
    was = gc.isenabled()
    try:
        gc.enable()
        measure_cell([bench], 1, 1, sweep)
        assert seen[:3] == [True] * 3 and seen[3:] == [False] * ROUNDS and gc.isenabled()
        gc.disable()
        measure_cell([bench], 1, 1, sweep)
        assert not gc.isenabled()  # it was off: it stays off
    finally:
        (gc.enable if was else gc.disable)()


def test_gpu_rows_carry_their_peak_memory_and_no_cpu_time():
    events = []
    bench = Bench("s", "fake-cuda", "pytorch", lambda b, t: (events.append("make"), lambda: events.append("call"))[1],
                  "cuda", gpu_memory=lambda: 12.5, reset_gpu_memory=lambda: events.append("reset"))
    rows = run_sweep([bench], Sweep([1, 4], [1], warmup_s=0.0, min_time_s=0.0, min_iters=1))
    assert [r["batch"] for r in rows] == [1, 4]
    assert all(r["gpu_peak_mb"] == 12.5 and "cpu_p50_ms" not in r and r["device"] == "cuda" for r in rows)
    assert events[:2] == ["reset", "make"]  # the peak is reset before the model is built
    unknown = Bench("s", "fake-cuda", "pytorch", lambda b, t: lambda: None, "cuda", gpu_memory=lambda: None)
    (row,) = measure_cell([unknown], 1, 1, Sweep([1], [1], warmup_s=0.0, min_time_s=0.0, min_iters=1))
    assert "gpu_peak_mb" not in row


def test_sweep_reports_progress_and_skips_benches_that_cannot_run():
    said = []
    gone = Bench("t", "fake", "tensorrt", None, skipped="no TensorRT")
    assert run_sweep([gone], Sweep([1], [1]), progress=said.append) == [
        {"model": "t", "format": "tensorrt", "backend": "fake", "device": "cpu", "batch": None, "threads": None,
         "skipped": "no TensorRT"}]
    assert said == []
    calls: list = []
    rows = run_sweep([_sleepy_bench("a", calls), gone], Sweep([1, 8], [2, 1], warmup_s=0.0, min_time_s=0.0, min_iters=1),
                     progress=said.append)
    assert said == [f"profiling batch {b}, {t} thread(s): 1 model/backend pairs" for t in (1, 2) for b in (1, 8)]
    assert [(r["batch"], r["threads"]) for r in rows] == [(1, 1), (8, 1), (1, 2), (8, 2), (None, None)]


def test_a_cell_a_bench_cannot_run_is_a_row_with_its_reason():
    def make(batch, threads):
        raise BackendUnavailable("fixed batch of 1")

    (row,) = measure_cell([Bench("a", "trt", "tensorrt", make, "cuda", {"params": 2})], 8, 1, Sweep([8], [1]))
    assert row == {"model": "a", "format": "tensorrt", "backend": "trt", "device": "cuda", "batch": 8, "threads": 1,
                   "params": 2, "skipped": "fixed batch of 1"}


def test_time_calls_records_cpu_time_per_call():
    cpu: list[float] = []
    out = time_calls(lambda: sum(range(20000)), 0.0, 4, cpu=cpu)
    assert len(out) == len(cpu) == 4 and all(c >= 0 for c in cpu)
    assert time_calls(lambda: None, 0.0, 2) == pytest.approx([0, 0], abs=0.01)


def _row(model, backend, fmt, p50, threads=2, device="cpu"):
    return {"model": model, "backend": backend, "format": fmt, "device": device, "batch": 1, "threads": threads,
            "p50_ms": p50}


def test_speedups_take_the_references_fp32_form_and_the_named_reference():
    rows = [_row("teacher", "onnxruntime-cpu", "onnx-int8", 2.0), _row("teacher", "onnxruntime-cpu", "onnx", 8.0),
            _row("teacher", "onnxruntime-cpu", "onnx-fp16", 1.0), _row("student", "onnxruntime-cpu", "onnx-int8", 1.0),
            _row("baseline", "onnxruntime-cpu", "onnx", 4.0)]
    got = {s["model"]: s for s in speedups(rows)}
    assert got["student"]["reference_format"] == "onnx" and got["student"]["speedup"] == pytest.approx(8.0)
    assert got["student"]["like_for_like"] is True and got["student"]["reference"] == "teacher (onnxruntime-cpu)"
    assert set(got) == {"student", "baseline"}
    named = speedups(rows, reference="baseline")
    assert {s["model"] for s in named} == {"teacher", "student"} and all(s["reference_format"] == "onnx" for s in named)
    first = speedups([_row("a", "pytorch-cpu", "pytorch", 3.0), _row("b", "pytorch-cpu", "pytorch", 1.0)])
    assert [(s["model"], s["speedup"]) for s in first] == [("b", 3.0)]  # no teacher: the first model measured
    assert speedups([{"model": "x", "skipped": "y"}]) == []
    # Ranked pytorch before onnx: a teacher with both on one backend is compared as pytorch.
    mixed = speedups([_row("teacher", "x", "onnx", 9.0), _row("teacher", "x", "pytorch", 6.0), _row("s", "x", "onnx", 3.0)])
    assert [(s["reference_format"], s["speedup"]) for s in mixed] == [("pytorch", 2.0)]
    # Only the same cell: another batch or thread count has no reference.
    assert speedups([_row("teacher", "x", "onnx", 9.0, threads=1), _row("s", "x", "onnx", 3.0)]) == []
    # cpu speedup only when both rows have CPU times
    one = [_row("teacher", "pytorch-cpu", "pytorch", 4.0, 1) | {"cpu_p50_ms": 3.0},
           _row("s", "pytorch-cpu", "pytorch", 2.0, 1) | {"cpu_p50_ms": 1.0}, _row("u", "pytorch-cpu", "pytorch", 2.0, 1)]
    got = {s["model"]: s for s in speedups(one)}
    assert got["s"]["cpu_speedup"] == pytest.approx(3.0) and "cpu_speedup" not in got["u"]
    assert got["s"]["batch"] == 1 and got["s"]["threads"] == 1 and got["s"]["backend"] == "pytorch-cpu"
