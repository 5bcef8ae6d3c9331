"""Size on disk, parameters and MACs of ONNX files (with the optional `onnx` package) and of
PyTorch modules (count_params, count_macs: torch is imported only when they run).

MACs per sample: Conv (C_out·H_out·W_out · C_in/groups · kH·kW), Gemm and MatMul with a
constant weight (rows · K · N), read from the graph after shape inference. QDQ-quantized
graphs keep their Conv/MatMul nodes, so INT8 files count the same as FP32 ones."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch stays optional here: an edge box profiles ONNX files without it
    import torch


def size_bytes(path: str | Path) -> int:
    return os.path.getsize(path)


def onnx_info(path: str | Path) -> dict:
    """{"params", "macs"} of an ONNX file, or {} when `onnx` is not installed or the graph is odd."""
    from distill_export.errors import DataError
    from distill_export.files import check_model_file

    check_model_file(path, f"ONNX file {path}", DataError)  # onnx.load reads all of a FIFO or device first
    try:
        import onnx
        from onnx import shape_inference
    except ImportError:
        return {}
    try:
        model = onnx.load(str(path), load_external_data=False)
        model = shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - the runtime will say what is wrong with the file
        return {}
    graph = model.graph
    inits = {t.name: tuple(t.dims) for t in graph.initializer}
    # QDQ graphs: a weight reaches Conv/MatMul through DequantizeLinear; follow it back.
    produced = {o: n for n in graph.node for o in n.output}

    def const_shape(name: str):
        if name in inits:
            return inits[name]
        node = produced.get(name)
        if node is not None and node.op_type in ("DequantizeLinear", "Cast", "Identity") and node.input:
            return const_shape(node.input[0])
        return None

    shapes = {}
    for vi in list(graph.value_info) + list(graph.output) + list(graph.input):
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    # Weights: float, half, double, int8 and uint8 tensors (not shapes, not scalar scales).
    params = sum(math.prod(t.dims) for t in graph.initializer if t.data_type in (1, 2, 3, 10, 11) and t.dims)
    macs = 0
    try:
        for n in graph.node:
            if n.op_type == "Conv":
                w = const_shape(n.input[1])
                out = shapes.get(n.output[0])
                if w is None or not out or any(d is None for d in out[1:]):
                    return {"params": int(params)}
                macs += math.prod(out[1:]) * math.prod(w[1:])
            elif n.op_type in ("Gemm", "MatMul"):
                w = const_shape(n.input[1])
                a = shapes.get(n.input[0])
                if w is None or a is None or any(d is None for d in a[1:-1]) or len(w) != 2:
                    continue
                rows = math.prod(a[1:-1]) if len(a) > 2 else 1
                macs += rows * w[0] * w[1]
    except Exception:  # noqa: BLE001
        return {"params": int(params)}
    return {"params": int(params), "macs": int(macs)}


# ----- PyTorch modules ---------------------------------------------------------------------------


def count_params(module: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def count_macs(module: torch.nn.Module, example) -> int | None:
    """Multiply-accumulates of one forward pass at batch 1 (FLOPs / 2, torch's flop counter)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from distill_export.nets.pt2_bounds import CallTooLong

    try:
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            module.eval()(example)
        return int(counter.get_total_flops() // 2)
    except CallTooLong:  # a .pt2 stopped at profile.max_call_s: the model is refused, not uncounted
        raise
    except Exception:  # noqa: BLE001 - an op the counter does not know must not stop profiling
        return None
