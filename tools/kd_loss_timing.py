"""The timing half of tools/bench_kd_loss.py: inputs, forward+backward timed on the device (CUDA
events, or the profiler's device time) and on the host, peak memory, and one shape/dtype case run
over every implementation, interleaved, with paired ratios."""

from __future__ import annotations

import statistics
import time
import traceback

import torch

def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fwd_bwd(fn, s, t, y, device) -> float:
    """Seconds for one forward + backward."""
    s.grad = None
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(s, t, y).backward()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn(s, t, y).backward()
    return time.perf_counter() - t0


def device_time_s(fn, s, t, y, device, reps: int) -> float | None:
    """Seconds of kernel time per fwd+bwd (the profiler's CUDA self times, summed), or None."""
    if device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    try:
        _sync(device)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(reps):
                s.grad = None
                fn(s, t, y).backward()
            _sync(device)
        total_us = sum(e.self_device_time_total for e in prof.key_averages())
    except Exception as exc:  # noqa: BLE001 - the profiler is optional here
        print(f"  (no device time: {type(exc).__name__}: {exc})"[:200])
        return None
    return total_us / 1e6 / reps


def call_time_s(fn, s, t, y, device, reps: int) -> float:
    """Host seconds per fwd+bwd call, issued back to back (no sync between calls)."""
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        s.grad = None
        fn(s, t, y).backward()
    host = time.perf_counter() - t0
    _sync(device)
    return host / reps


def peak_memory_bytes(fn, s, t, y, device) -> int | None:
    """Peak allocation of one fwd+bwd above what was allocated before it (CUDA only)."""
    if device.type != "cuda":
        return None
    s.grad = None
    _sync(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn(s, t, y).backward()
    _sync(device)
    return torch.cuda.max_memory_allocated(device) - base


def make_inputs(n_rows, n_classes, dtype, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    s = (torch.randn(n_rows, n_classes, generator=g) * 2).to(device=device, dtype=dtype)  # (N, C)
    t = (torch.randn(n_rows, n_classes, generator=g) * 2).to(device=device, dtype=dtype)  # (N, C)
    y = torch.randint(0, n_classes, (n_rows,), generator=g)
    y[::17] = -100  # a few unlabeled rows, as in cross-modal KD
    return s.requires_grad_(True), t, y.to(device)


def bench_case(impls, n_rows, n_classes, dtype, device, reps, warmup, peak_gbps, reference_kd):
    """One (rows, classes, dtype) case: every impl warmed up, then timed interleaved.
    reference_kd(s, t, y): the loss each impl is checked against."""
    s0, t, y = make_inputs(n_rows, n_classes, dtype, device)
    elem = s0.element_size()
    useful_bytes = n_rows * n_classes * (elem + t.element_size() + elem)  # s + t + grad(s)
    grad_bytes = n_rows * n_classes * elem
    ref_loss = reference_kd(s0.detach(), t, y).item()

    status: dict[str, str] = {}
    extra: dict[str, dict] = {}
    inputs: dict[str, torch.Tensor] = {}
    for name, fn in impls.items():  # warm up (and compile) each impl outside the timed loop
        try:
            s = inputs[name] = s0.detach().clone().requires_grad_(True)
            t0 = time.perf_counter()
            loss = fn(s, t, y)  # the first call, on fresh logits (Liger's CE overwrites them)
            loss.backward()
            loss = loss.detach().float().item()
            for _ in range(max(warmup - 1, 0)):
                s.grad = None
                fn(s, t, y).backward()
            _sync(device)
            peak = peak_memory_bytes(fn, s, t, y, device)
            extra[name] = {
                "warmup_s": time.perf_counter() - t0,
                "loss_abs_diff_vs_reference": abs(loss - ref_loss),
                "peak_mem_bytes": peak,
                "peak_mem_over_grad": None if peak is None else peak / grad_bytes,
            }
            status[name] = "ok"
        except torch.cuda.OutOfMemoryError:
            status[name] = "oom"
        except Exception as exc:  # one broken impl must not sink the run
            status[name] = f"error: {type(exc).__name__}: {exc}".splitlines()[0][:200]
            traceback.print_exc(limit=2)
        if device.type == "cuda":
            torch.cuda.empty_cache()

    live = [n for n in impls if status[n] == "ok"]
    times: dict[str, list[float]] = {n: [] for n in live}
    for r in range(reps):  # interleaved, rotating start
        order = live[r % len(live):] + live[: r % len(live)] if live else []
        for name in order:
            times[name].append(time_fwd_bwd(impls[name], inputs[name], t, y, device))
    for name in live:  # device time (profiler) and host time per call, each impl in turn
        dev = device_time_s(impls[name], inputs[name], t, y, device, max(3, reps // 4))
        extra[name]["device_ms"] = None if dev is None else dev * 1e3
        extra[name]["device_gbps"] = None if not dev else useful_bytes / dev / 1e9
        extra[name]["call_ms"] = call_time_s(impls[name], inputs[name], t, y, device, max(3, reps // 2)) * 1e3

    rows = []
    for name in impls:
        row = {
            "shape": f"{n_rows}x{n_classes}", "N": n_rows, "C": n_classes,
            "dtype": str(dtype).removeprefix("torch."), "impl": name, "status": status[name],
        }
        if name in times and times[name]:
            med = statistics.median(times[name])
            gbps = useful_bytes / med / 1e9
            row.update(
                median_ms=med * 1e3,
                min_ms=min(times[name]) * 1e3,
                reps=len(times[name]),
                effective_gbps=gbps,
                pct_of_peak=(100.0 * gbps / peak_gbps) if peak_gbps else None,
                **extra[name],
            )
        rows.append(row)
    return rows, times


def paired_ratios(times: dict[str, list[float]], base: str) -> dict[str, float]:
    """median over repetitions of t_impl[r] / t_base[r] (same repetition, so same conditions)."""
    if base not in times:
        return {}
    return {
        name: statistics.median(a / b for a, b in zip(ts, times[base]))
        for name, ts in times.items()
    }
