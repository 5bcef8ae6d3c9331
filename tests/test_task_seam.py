"""A new task is a folder: a toy multi-label task, registered from this file alone, runs the
whole pipeline (train-teacher -> distill -> export -> validate -> profile -> report) through the
task hooks, with no project file edited.

The toy task: each row carries a set of tags ("sq0;sq2": which of three bright squares the
8x8 image holds). Targets are (N, 3) multi-hot floats, the head is 3 logits, the loss is
binary cross-entropy, the score is the mean per-tag accuracy, and its own distillation term
matches the teacher's per-tag probabilities.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from typer.testing import CliRunner

from distill_export.cli import app
from distill_export.data.dataset import IGNORE_INDEX
from distill_export.methods.base import Term, TermInputs, register_term, term_names
from distill_export.tasks import Gate, Task, get_task, register_task, task_names

from _byo_fixtures import write_png, write_rows

TAGS = ("sq0", "sq1", "sq2")
COMBOS = (("sq0",), ("sq1",), ("sq2",), ("sq0", "sq2"), ("sq1", "sq2"), ("sq0", "sq1"))


class TagTargets:
    """The toy's codec: "sq0;sq2" -> [1, 0, 1]; an empty cell -> a row of IGNORE_INDEX."""

    def names(self, labels: set[str], where: str) -> list[str]:
        return sorted({t for label in labels for t in label.split(";")})

    def encode(self, labels, names):
        out = torch.full((len(labels), len(names)), float(IGNORE_INDEX))
        for i, label in enumerate(labels):
            if label is not None:
                tags = set(label.split(";"))
                out[i] = torch.tensor([float(n in tags) for n in names])
        return out


def _tag_accuracy(outputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(N,) per-row fraction of tags predicted right (logit > 0 means present)."""
    return ((np.asarray(outputs) > 0) == (np.asarray(targets) > 0.5)).mean(1)


@register_task
class TagsTask(Task):
    name = "toy_tags"
    score_name = "tag accuracy"
    output_names = ("tag_logits",)
    metric_keys = ("tag_accuracy",)
    gates = (
        Gate("toy_fp32_max_abs", "fp32", "max_abs_diff", "max", 1e-4),
        Gate("toy_fp32_agreement", "fp32", "tag_agreement", "min", 0.99),
    )
    parity_better = {"max_abs_diff": "lower", "tag_agreement": "higher"}

    def targets(self):
        return TagTargets()

    def output_size(self, data) -> int:
        return len(data.target_names)

    def supervised_loss(self, outputs, targets):
        return F.binary_cross_entropy_with_logits(outputs, targets)

    def score(self, outputs, targets) -> float:
        return float(_tag_accuracy(outputs, targets).mean())

    def evaluate(self, outputs, targets, data=None) -> dict:
        return {"tag_accuracy": self.score(outputs, targets), "n": int(len(targets))}

    def compare(self, outputs_a, outputs_b, targets, seed: int = 0) -> dict:
        diff = _tag_accuracy(outputs_a, targets) - _tag_accuracy(outputs_b, targets)  # (N,)
        rng = np.random.default_rng(seed)
        means = diff[rng.integers(0, len(diff), (1000, len(diff)))].mean(1)
        lo, hi = np.quantile(means, [0.025, 0.975])
        verdict = "paid" if lo > 0 else "hurt" if hi < 0 else "no significant difference"
        return {"gain": float(diff.mean()), "ci95": [float(lo), float(hi)], "p_value": 1.0, "verdict": verdict}

    def parity_metrics(self, candidate, reference, targets) -> dict:
        return {"max_abs_diff": float(np.abs(candidate - reference).max()),
                "tag_agreement": float(((candidate > 0) == (reference > 0)).mean())}


@register_term
class TagKD(Term):
    """BCE to the teacher's per-tag probabilities on every row, plus BCE on the labeled rows."""

    name = "toy_tag_kd"
    needs = frozenset({"logits"})
    summary = "per-tag soft targets + labels"

    def loss(self, batch: TermInputs, slot: str) -> torch.Tensor:
        s = batch.student_logits.float()
        soft = F.binary_cross_entropy_with_logits(s, torch.sigmoid(batch.teacher_logits.float()))
        keep = batch.labeled
        hard = F.binary_cross_entropy_with_logits(s[keep], batch.labels[keep].float()) if keep.any() else s.sum() * 0
        return soft + hard


def _square_image(tags: tuple[str, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 40, (8, 8)).astype(np.float64)
    for t in tags:
        k = TAGS.index(t)
        img[2 * k : 2 * k + 3, 2 * k : 2 * k + 3] = 250
    return img


def _tag_manifest(root: Path, per_combo: int = 8) -> Path:
    """image + text columns, label = tags joined by ';', a split column (5 train, 1 val, 2 test
    per combination, plus 2 unlabeled train rows)."""
    rows = []
    for c, tags in enumerate(COMBOS):
        for i in range(per_combo + 2):
            labeled = i < per_combo
            path = f"img/{c}_{i}.png"
            write_png(root / path, _square_image(tags, seed=100 * c + i))
            split = "train" if (i < 5 or not labeled) else "val" if i == 5 else "test"
            rows.append({"image": path, "text": " ".join(f"has {t}" for t in tags),
                         "label": ";".join(tags) if labeled else "", "split": split})
    return write_rows(root / "manifest.csv", rows)


def test_the_toy_task_and_term_are_registered_from_this_file():
    assert "toy_tags" in task_names() and "classification" in task_names()
    assert "toy_tag_kd" in term_names()
    assert isinstance(get_task("toy_tags"), TagsTask)


@pytest.mark.slow
def test_a_task_defined_in_a_test_file_runs_the_whole_pipeline(tmp_path):
    manifest = _tag_manifest(tmp_path / "data")
    config = {
        "task": "toy_tags",
        "data": {"source": str(manifest), "student_modality": "image"},
        "teacher": {"epochs": 2},
        "distill": {"epochs": 2, "terms": [{"name": "toy_tag_kd", "weight": 1.0}]},
        "export": {"formats": ["onnx"]},
        "profile": {"batches": [1], "threads": [1], "warmup_s": 0.01, "min_time_s": 0.05, "min_iters": 5},
    }
    cfg_file = tmp_path / "toy.yaml"
    cfg_file.write_text(yaml.safe_dump(config))
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", "--config", str(cfg_file), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output

    report = json.loads((out / "report.json").read_text())
    # evaluation: the task's metrics, for every model
    for model in ("teacher", "student", "baseline"):
        assert set(report["metrics"][model]) == {"tag_accuracy", "n"}, report["metrics"][model]
        assert 0.0 <= report["metrics"][model]["tag_accuracy"] <= 1.0
    # the paired comparison is the task's, and kd_gain is its gain in the headline metric
    gain = report["metrics"]["student"]["tag_accuracy"] - report["metrics"]["baseline"]["tag_accuracy"]
    assert report["comparisons"]["student_vs_baseline"]["gain"] == pytest.approx(gain)
    # validate: the task's parity metrics and gates judged the ONNX export
    parity = report["exports"]["onnx"]["parity"]
    assert set(parity["gates"]) == {"max_abs_diff", "tag_agreement"} and parity["passed"]
    # export: the student's ONNX predicts 3 tags per row
    import onnxruntime as ort

    session = ort.InferenceSession(str(out / "student.onnx"), providers=["CPUExecutionProvider"])
    x = np.zeros((2, *session.get_inputs()[0].shape[1:]), np.float32)
    assert session.run(None, {session.get_inputs()[0].name: x})[0].shape == (2, 3)
    # report: rendered, headline metric named
    md = (out / "report.md").read_text()
    assert "tag_accuracy" in md or "tag accuracy" in md
