"""The Task protocol and its registry.

A task owns everything that depends on what the model predicts:

- its targets: how a data source's target column is checked, which rows are labeled;
- the width of the student's and the teacher's output head;
- the supervised loss (teacher, baseline) and the validation score (best epoch, rounds, tune);
- evaluation on the test split into metrics, and the paired significance test of two models;
- the export's output names and metadata;
- the parity comparison of an exported model against the PyTorch student, and its gates;
- its sections of the report.

The registry base never imports its members: built-in tasks are discovered with ``pkgutil``
(the sub-packages of ``distill_export.tasks``), and a user's task registers itself on import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from distill_export.errors import ConfigError
from distill_export.registry import import_members

_TASKS: dict[str, type["Task"]] = {}


@dataclass(frozen=True)
class Gate:
    """One parity gate: the worst case of `metric` over batch sizes must be <= (max) or >= (min)
    the limit, read from ``validate.<config_key>`` (or ``validate.gates[config_key]``)."""

    config_key: str  # e.g. "fp32_agreement"
    precision: str  # fp32 | fp16 | int8: the artifacts it applies to
    metric: str  # a key of Task.parity_metrics()
    kind: str  # "max" (value <= limit) or "min" (value >= limit)
    default: float  # the limit when the config names none


class Task:
    """Subclass, set ``name`` and decorate with ``@register_task``. Arrays are numpy on the
    evaluation side (no torch needed on an edge box), torch tensors on the training side."""

    name: ClassVar[str] = ""
    score_name: ClassVar[str] = "score"  # what the validation score is, for logs and the report
    output_names: ClassVar[tuple[str, ...]] = ("output",)  # the exported graph's outputs
    gates: ClassVar[tuple[Gate, ...]] = ()
    metric_keys: ClassVar[tuple[str, ...]] = ()  # headline metrics, in report order
    # Parity metric -> "higher" or "lower" (is better), or "same" (equal at every batch size):
    # the worst case over batch sizes takes the min, the max or the first value.
    parity_better: ClassVar[dict[str, str]] = {}

    @property
    def headline(self) -> str:
        """The metric a run is summed up by (kd_gain is its difference)."""
        return self.metric_keys[0]

    # teacher.fusion values this task's teachers understand (nets/teacher.py for classification)
    teacher_fusions: ClassVar[tuple[str, ...]] = ("concat", "late")

    def check_config(self, config) -> None:
        """Refuse settings this task cannot serve (one ConfigError naming the key), before any
        directory is made: the student's kind, the teacher's fusion, ..."""
        from distill_export.nets.students import check_student_task, student_names

        if config.teacher.fusion not in self.teacher_fusions:
            # teacher.fusion's default (concat) is a classification fusion: say what to set
            raise ConfigError(f"teacher.fusion={config.teacher.fusion} is not a {self.name} teacher "
                              f"(choices for task {self.name}: {', '.join(self.teacher_fusions)}); set "
                              f"--teacher-fusion {self.teacher_fusions[0]} (or teacher.fusion in --config)")
        # A user's factory says nothing about its task, nor does a task without built-in students.
        if ":" not in config.student.name and student_names(self.name):
            check_student_task(config.student.name, self.name)

    # ----- data and heads ---------------------------------------------------------------
    def targets(self):
        """The codec (data.targets.TargetCodec) that turns a manifest's label cells into targets."""
        raise NotImplementedError

    def output_size(self, data) -> int:
        """Width of the student's and teacher's head for this dataset."""
        raise NotImplementedError

    def export_meta(self, data) -> dict[str, Any]:
        """Task facts stored with the student checkpoint and the exported model."""
        return {}

    def export_tail(self, output_size: int):
        """An nn.Module appended to the exported graph, raw outputs (B, output_size, ...) ->
        the task's ``output_names``, kept in FP32 in every precision (a detector's decode to
        boxes, scores, classes). None: the raw output is what the graph returns."""
        return None

    def decode(self, outputs: np.ndarray):
        """What the exported graph returns for these raw (N, ...) outputs of the PyTorch model:
        the array itself, or {output name: (N, ...) array} through ``export_tail``. Validate
        judges an export's outputs against this."""
        tail = self.export_tail(outputs.shape[1])
        if tail is None:
            return outputs
        import torch

        columns: list[list[np.ndarray]] = [[] for _ in self.output_names]
        with torch.no_grad():
            for start in range(0, len(outputs), 512):
                parts = tail(torch.from_numpy(np.ascontiguousarray(outputs[start : start + 512])).float())
                for column, part in zip(columns, parts):
                    column.append(part.numpy())
        return {name: np.concatenate(col) for name, col in zip(self.output_names, columns)}

    def build_teacher(self, config, data, modalities=None):
        """(checkpoint arch, arch_kwargs, a fresh teacher) that train_teacher trains for this task,
        or None for the multimodal fusion teachers of nets/teacher.py (teacher.fusion concat | late).
        `modalities` restricts the teacher (the self-training control: the student's only)."""
        return None

    # ----- training ---------------------------------------------------------------------
    def supervised_loss(self, outputs, targets):
        """Mean loss of (B, K) outputs against (B, ...) targets of labeled rows (torch)."""
        raise NotImplementedError

    def score(self, outputs: np.ndarray, targets: np.ndarray) -> float:
        """Validation score, higher is better: picks the best epoch, rounds and tune trials."""
        raise NotImplementedError

    # ----- evaluation -------------------------------------------------------------------
    def evaluate(self, outputs: np.ndarray, targets: np.ndarray, data=None) -> dict:
        """Test metrics of (N, K) outputs; ``metric_keys[0]`` is the headline."""
        raise NotImplementedError

    def compare(self, outputs_a: np.ndarray, outputs_b: np.ndarray, targets: np.ndarray, seed: int = 0) -> dict:
        """A vs B on one test set, paired: {gain, ci95, p_value, verdict, ...}."""
        raise NotImplementedError

    # ----- parity -----------------------------------------------------------------------
    def parity_metrics(self, candidate: np.ndarray, reference: np.ndarray, targets: np.ndarray) -> dict:
        """Value metrics of an exported model's outputs against the PyTorch student's."""
        raise NotImplementedError

    def parity(self, candidate, reference, targets) -> dict:
        """parity_metrics with a NaN (an export whose outputs hold NaN) made the worst value of its
        direction, +inf for a lower-is-better metric and -inf for a higher one: a NaN compares false
        with every gate and every other batch size, so max([0.1, nan]) hid it, and report.json never
        holds one (a NaN there is a hand edit, refused on load)."""
        worst = {"higher": float("-inf")}
        return {k: worst.get(self.parity_better.get(k, "lower"), float("inf")) if isinstance(v, float) and v != v else v
                for k, v in self.parity_metrics(candidate, reference, targets).items()}

    def worst_case(self, per_batch: dict[str, dict]) -> dict:
        """The parity metrics the gates judge: the worst over batch sizes, per metric."""
        pick = {"higher": min, "lower": max, "same": lambda values: values[0]}
        first = next(iter(per_batch.values()))
        return {metric: pick[self.parity_better.get(metric, "lower")]([m[metric] for m in per_batch.values()])
                for metric in first}

    def draw_examples(self, images: np.ndarray, outputs: dict[str, np.ndarray], targets: np.ndarray,
                      data, path) -> bool:
        """Draw a few test inputs with each model's raw outputs ({model: (N, ...)}) into the PNG
        `path` for the report; False when the task has no picture to draw."""
        return False

    # ----- report -----------------------------------------------------------------------
    def report_view(self):
        """What this task adds to report.md/html and the terminal (tasks/report_view.py lists
        the names); the default renders the record's metrics and gates as they are named."""
        from distill_export.tasks.report_view import GenericReportView

        return GenericReportView(self.headline, self.score_name)


def register_task(cls: type[Task]) -> type[Task]:
    if not cls.name:
        raise TypeError(f"{cls.__name__} has no name")
    if cls.name in _TASKS and _TASKS[cls.name] is not cls:
        raise TypeError(f"task {cls.name!r} is registered twice")
    _TASKS[cls.name] = cls
    return cls


def task_names() -> list[str]:
    _load_builtin_tasks()
    return sorted(_TASKS)


def get_task(name: str) -> Task:
    _load_builtin_tasks()
    if name not in _TASKS:
        raise ConfigError(f"unknown task {name!r} (choices: {', '.join(sorted(_TASKS))})")
    return _TASKS[name]()


def _load_builtin_tasks() -> None:
    """Every task sub-package of distill_export.tasks, imported once, registers its task."""
    import_members(__file__, __package__, packages_only=True)
