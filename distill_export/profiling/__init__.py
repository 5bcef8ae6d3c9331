"""Stage 5: latency and throughput of teacher and student on the target hardware.

    settings.py   hardware presets (cpu-1t, cpu-4t, gpu), the batch x threads sweep, the budget
    targets.py    run directory | .onnx | .engine | checkpoint -> one Bench per backend
    measure.py    the method (warm up, interleave, min count and min time), statistics, speedups
    session.py    profile_targets(): the whole session, with machine and version context

Backends (what --backend takes), whether each can run here and how each is timed come from the
runtime registry (distill_export/runtimes/), which validate.py uses too.

Nothing imports torch at module level: a box with only onnxruntime profiles ONNX files.
"""

from distill_export.profiling.measure import Bench, Sweep, latency_stats, measure_cell, run_sweep, speedups
from distill_export.profiling.session import ProfileResult, profile_targets
from distill_export.profiling.settings import PRESETS, ProfileSettings, make_settings

__all__ = [
    "PRESETS",
    "Bench",
    "ProfileResult",
    "ProfileSettings",
    "Sweep",
    "latency_stats",
    "make_settings",
    "measure_cell",
    "profile_targets",
    "run_sweep",
    "speedups",
]
