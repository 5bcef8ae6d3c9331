"""Stage 4: parity of every exported artifact against the PyTorch student, with gates.

Needs no torch: the export stage stores the test inputs, labels and the PyTorch
student's logits in ``parity_data.npz``, so an edge box with only onnxruntime can
check its own runtime against the model that was trained.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distill_export.errors import ConfigError, DataError
from distill_export.metrics import classification_metrics

PARITY_FILE = "parity_data.npz"


@dataclass
class Gate:
    name: str
    value: float
    limit: float
    kind: str  # "max" (value <= limit) or "min" (value >= limit)

    @property
    def passed(self) -> bool:
        return bool(self.value <= self.limit if self.kind == "max" else self.value >= self.limit)

    def to_dict(self) -> dict:
        return {"value": self.value, "limit": self.limit, "kind": self.kind, "passed": self.passed}


def gates_for(precision: str, cfg) -> list[tuple[str, str, float]]:
    """(metric, kind, limit) per precision; limits come from ValidateConfig."""
    if precision == "fp32":
        return [("max_abs_diff", "max", cfg.fp32_max_abs), ("top1_agreement", "min", cfg.fp32_agreement)]
    if precision == "fp16":
        return [("top1_agreement", "min", cfg.fp16_agreement)]
    if precision == "int8":
        return [
            ("top1_agreement", "min", cfg.int8_agreement),
            ("accuracy_drop", "max", cfg.int8_max_accuracy_drop),
        ]
    raise ConfigError(f"no parity gates for precision {precision!r}")


def save_parity_data(path: str | Path, x: np.ndarray, labels: np.ndarray, reference_logits: np.ndarray) -> None:
    from distill_export.files import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, x=x.astype(np.float32), labels=labels, logits=reference_logits.astype(np.float32))


def load_parity_data(path: str | Path) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} is missing; run `distill-export export` first")
    with np.load(path) as f:
        return {k: f[k] for k in ("x", "labels", "logits")}


def compare(candidate: np.ndarray, reference: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    """Per-output value metrics of candidate vs reference logits, both (N, C)."""
    diff = np.abs(candidate.astype(np.float64) - reference.astype(np.float64))
    dot = (candidate * reference).sum(1)
    norms = np.linalg.norm(candidate, axis=1) * np.linalg.norm(reference, axis=1)
    cosine = np.where(norms > 0, dot / np.maximum(norms, 1e-30), 1.0)
    ref_acc = classification_metrics(reference, labels, num_classes)["accuracy"]
    acc = classification_metrics(candidate, labels, num_classes)["accuracy"]
    return {
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
        "min_cosine": float(cosine.min()) if cosine.size else 1.0,
        "top1_agreement": float((candidate.argmax(1) == reference.argmax(1)).mean()),
        "accuracy": acc,
        "reference_accuracy": ref_acc,
        "accuracy_drop": ref_acc - acc,
    }


def make_runner(artifact: dict, threads: int = 0):
    """(x, batch_size) -> logits for one artifact from report.json's exports."""
    if artifact["runtime"] == "onnxruntime":
        from distill_export.runtimes import onnx_session, run_onnx

        session = onnx_session(artifact["path"], threads)
        return lambda x, bs: run_onnx(session, x, bs)
    if artifact["runtime"] == "tensorrt":
        from distill_export.export.tensorrt import engine_runner

        return engine_runner(artifact["path"])
    raise ConfigError(f"unknown runtime {artifact['runtime']!r} for {artifact['path']}")


def validate_artifact(
    artifact: dict, parity: dict[str, np.ndarray], cfg, num_classes: int, teacher_accuracy: float | None
) -> dict:
    """Parity at batch 1 and at a larger batch (so the dynamic axis is exercised)."""
    run = make_runner(artifact)
    x, labels, reference = parity["x"], parity["labels"], parity["logits"]
    per_batch = {}
    outputs = {}
    for bs in cfg.batch_sizes:
        outputs[bs] = run(x, bs)
        if outputs[bs].shape != reference.shape:
            raise DataError(
                f"{artifact['path']} returned logits of shape {outputs[bs].shape}, expected {reference.shape}"
            )
        per_batch[str(bs)] = compare(outputs[bs], reference, labels, num_classes)
    # Gates use the worst case over batch sizes.
    worst = {
        "max_abs_diff": max(m["max_abs_diff"] for m in per_batch.values()),
        "mean_abs_diff": max(m["mean_abs_diff"] for m in per_batch.values()),
        "min_cosine": min(m["min_cosine"] for m in per_batch.values()),
        "top1_agreement": min(m["top1_agreement"] for m in per_batch.values()),
        "accuracy": min(m["accuracy"] for m in per_batch.values()),
        "accuracy_drop": max(m["accuracy_drop"] for m in per_batch.values()),
        "reference_accuracy": next(iter(per_batch.values()))["reference_accuracy"],
    }
    gates = [Gate(n, worst[n], lim, kind) for n, kind, lim in gates_for(artifact["precision"], cfg)]
    result = {
        **worst,
        "per_batch": per_batch,
        "gates": {g.name: g.to_dict() for g in gates},
        "passed": all(g.passed for g in gates),
    }
    if teacher_accuracy:
        result["teacher_accuracy_retention"] = worst["accuracy"] / teacher_accuracy
    return result


def validate_exports(exports: dict, parity: dict[str, np.ndarray], cfg, num_classes: int,
                     teacher_accuracy: float | None) -> dict[str, dict]:
    if not exports:
        raise ConfigError("no exported artifacts to validate; run `distill-export export` first")
    return {
        fmt: validate_artifact(art, parity, cfg, num_classes, teacher_accuracy)
        for fmt, art in exports.items()
    }
