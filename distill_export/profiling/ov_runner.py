"""OpenVINO backend (CPU plugin), for ONNX files: the optional extra distill-export[openvino].
It compiles the exported ONNX file itself, one static-batch model per (batch, threads) cell."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from distill_export.profiling.backends import Backend
from distill_export.profiling.measure import Bench


def ov_bench(model: str, fmt: str, path: str | Path, backend: Backend, info: dict,
             input_shape: tuple[int, ...] | None = None) -> Bench:
    from distill_export.profiling.ort_runner import input_specs
    from distill_export.runtimes import openvino_session

    def make(batch: int, threads: int):
        sess = openvino_session(path, threads, batch)
        rng = np.random.default_rng(0)
        feed = {}
        for name, shape, dtype in input_specs(sess, path, input_shape):
            if np.issubdtype(dtype, np.floating):
                feed[name] = rng.standard_normal((batch, *shape)).astype(dtype)
            else:
                feed[name] = np.zeros((batch, *shape), dtype=dtype)
        return lambda: sess.run(None, feed)

    return Bench(model, backend.label, fmt, make, backend.device, dict(info))
