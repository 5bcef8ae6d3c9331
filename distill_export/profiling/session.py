"""One profiling session: targets -> benches -> the sweep -> rows, speedups and the context
(machine, versions, settings, peak memory) a reader needs to trust the numbers."""

from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable

from distill_export.profiling.measure import run_sweep, speedups
from distill_export.profiling.settings import ProfileSettings
from distill_export.profiling.targets import benches_for_targets
from distill_export.runtimes.onnx_bounds import call_limit


@dataclass
class ProfileResult:
    rows: list[dict]
    speedups: list[dict]
    meta: dict = field(default_factory=dict)


def profile_targets(targets: list[str | Path], settings: ProfileSettings,
                    progress: Callable[[str], None] | None = None) -> ProfileResult:
    start = time.perf_counter()
    machine = machine_info()  # before we load the cores ourselves: the load is everyone else's
    benches = benches_for_targets(targets, settings)
    torch = sys.modules.get("torch")  # imported only if a PyTorch model is profiled
    threads = torch.get_num_threads() if torch else None
    try:
        with call_limit(settings.sweep.max_call_s):  # a user's ONNX file cannot spin forever
            rows = run_sweep(benches, settings.sweep, progress)
    finally:
        if threads:
            torch.set_num_threads(threads)  # the sweep changes it; leave the caller's setting
    notes = list(settings.notes)
    busy = machine.get("load_average_1m", 0) > machine.get("usable_cores", machine.get("cores") or 1)
    if busy:
        notes.append(f"the machine was busy (load {machine['load_average_1m']} on "
                     f"{machine.get('usable_cores', machine.get('cores'))} cores): wall times are inflated, "
                     "multi-thread rows most; on one thread compare CPU ms/call")
    meta = {
        "targets": [str(t) for t in targets],
        "settings": settings.to_dict(),
        "notes": notes,
        "machine": machine,
        "versions": versions(),
        "peak_rss_mb": peak_rss_mb(),
        "seconds": round(time.perf_counter() - start, 3),
    }
    return ProfileResult(rows, speedups(rows), meta)


def peak_rss_mb() -> float | None:
    """High-water resident memory of this process (every profiled model loaded together)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(kib / (2**20 if sys.platform == "darwin" else 2**10), 1)  # bytes on macOS, KiB on Linux


def machine_info() -> dict:
    info = {"platform": platform.platform(), "machine": platform.machine(), "cpu": _cpu_name(),
            "cores": os.cpu_count()}
    try:
        info["usable_cores"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    try:
        info["load_average_1m"] = round(os.getloadavg()[0], 2)  # other work competing for the cores
    except OSError:
        pass
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions() -> dict:
    """Installed versions, read from package metadata: nothing is imported to learn them."""
    out = {"python": platform.python_version()}
    for dist in ("distill-export", "numpy", "onnxruntime", "onnxruntime-gpu", "torch", "tensorrt", "onnx"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    from distill_export.runtimes.onnx_runtime import ort_providers

    providers = ort_providers()
    if providers is not None:
        out["onnxruntime_providers"] = list(providers)
    return out
