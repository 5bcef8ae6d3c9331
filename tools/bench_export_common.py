"""What tools/bench_export.py and its --size mode (bench_export_size.py) share: the formats they
time, the machine line, and OpenVINO sessions when the extra is installed."""

from __future__ import annotations

import platform
from pathlib import Path

FORMATS = ("onnx", "onnx-fp16", "onnx-int8")
OV = "/openvino"  # suffix of the OpenVINO rows


def openvino_sessions(paths: dict[str, str], threads: int, batch: int | None = None) -> dict:
    """{"<key>/openvino": session} per ONNX file when OpenVINO is installed, else {} (rows skipped)."""
    import importlib.util

    if importlib.util.find_spec("openvino") is None:
        return {}
    from distill_export.runtimes.openvino_cpu import openvino_session

    return {f"{k}{OV}": openvino_session(p, threads, batch) for k, p in paths.items()}


def machine() -> dict:
    import onnx
    import onnxruntime
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    try:
        import openvino

        ov_version = openvino.__version__.split("-")[0]
    except ImportError:
        ov_version = "not installed (pip install distill-export[openvino]): no OpenVINO rows"
    return {
        "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
        "torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
        "openvino": ov_version,
        "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
