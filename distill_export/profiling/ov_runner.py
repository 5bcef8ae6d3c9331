"""OpenVINO backend (CPU plugin), for ONNX files: the optional extra distill-export[openvino].
It compiles the exported ONNX file itself, one static-batch model per (batch, threads) cell."""

from __future__ import annotations

from pathlib import Path

from distill_export.profiling.backends import Backend
from distill_export.profiling.measure import Bench


def ov_bench(model: str, fmt: str, path: str | Path, backend: Backend, info: dict,
             input_shape: tuple[int, ...] | None = None) -> Bench:
    from distill_export.profiling.ort_runner import random_feed
    from distill_export.runtimes import openvino_session

    def make(batch: int, threads: int):
        sess = openvino_session(path, threads, batch)
        feed = random_feed(sess, path, batch, input_shape)
        return lambda: sess.run(None, feed)

    return Bench(model, backend.label, fmt, make, backend.device, dict(info))
