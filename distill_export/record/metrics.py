"""The task's payloads in the run record: what `metrics.<model>` and `comparisons.<pair>` hold.

`TaskMetrics` types both tasks' fields (classification's and detection's) and `TaskComparison`
the paired tests: the names models.py uses, so a task that brings its own metrics type changes
these two names and nothing else in the record.
"""

from __future__ import annotations

import math
import typing
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

Fraction = Annotated[float, Field(ge=0, le=1)]  # a share of rows: accuracy, precision, recall, F1
Probability = Annotated[float, Field(ge=0, le=1)]  # a p-value
NonNegative = Annotated[float, Field(ge=0)]  # a time or a rate: >= 0 (and finite: the section's allow_inf_nan)
Count = Annotated[int, Field(ge=0)]  # iterations, bytes, parameters, confusion cells: a negative one is a hand edit
Positive = Annotated[int, Field(ge=1)]  # a batch, the calls timed: 0 measured nothing (eleventh round)


def _ordered(interval: tuple[float, float]) -> tuple[float, float]:
    """A 95% interval is (low, high): an inverted one rendered as "(+3.0 to +1.0)" (ninth round)."""
    if interval[0] > interval[1]:
        raise ValueError(f"interval ({interval[0]}, {interval[1]}) has its low end above its high end")
    return interval


Interval = Annotated[tuple[float, float], AfterValidator(_ordered)]


def _inside_run(path: str) -> str:
    """A run's own file, relative to its folder: `../R/student.onnx` made `validate` check and
    record another run's export as this run's (eleventh audit B3)."""
    from pathlib import PurePath

    parts = PurePath(path).parts
    if not path or PurePath(path).is_absolute() or ".." in parts or "\0" in path:
        raise ValueError(f"path {path!r} is not a file inside the run directory")
    return path


RunPath = Annotated[str, AfterValidator(_inside_run)]  # exports.*.path, recommended.*.path


def _is_numeric(annotation) -> bool:
    """Whether a field holds numbers only: its type names int or float (in lists, tuples, mappings
    keyed by str, optional), and no bool, Any or nested section (which checks its own fields)."""
    if annotation in (int, float):
        return True
    if typing.get_origin(annotation) is Annotated:  # Annotated[T, Field(ge=0)]: T decides
        return _is_numeric(typing.get_args(annotation)[0])
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if not args or annotation is Any or (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
        return False
    values = [a for a in args if a is not str] if typing.get_origin(annotation) is dict else args
    return bool(values) and all(a is not Ellipsis and _is_numeric(a) for a in values)


def refuse_booleans(value, path: str) -> None:
    """A JSON true/false in a value (or the lists and mappings it holds) where a number belongs."""
    if isinstance(value, bool):
        raise ValueError(f"{path} is {str(value).lower()}, not a number")
    if isinstance(value, dict):
        for key, item in value.items():
            refuse_booleans(item, f"{path}.{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            refuse_booleans(item, f"{path}[{i}]")


class RecordSection(BaseModel):
    """A section of report.json. JSON `true` is not a number, though pydantic reads it as 1: a
    hand-edited `accuracy: true` rendered "100.0%" and `kd_gain: true` "+100.00 points" (ninth
    audit B1; the eighth's J1 for latency rows). Every field typed as numbers (int, float, and
    their lists, tuples and mappings) refuses booleans here, for every section."""

    model_config = ConfigDict(extra="allow")

    @model_validator(mode="before")
    @classmethod
    def _numbers_not_booleans(cls, data):
        if isinstance(data, dict):
            for name, field in cls.model_fields.items():
                key = field.alias or name
                if key in data and _is_numeric(field.annotation):
                    refuse_booleans(data[key], key)
        return data


class ClassificationMetrics(RecordSection):
    """One model on the test split, as its task's evaluate() reports it: classification's
    fields are typed here, another task's metrics are kept as extra keys (record.task.headline
    names the one a run is summed up by). A score is a finite number: NaN or inf here is a
    corrupt (hand-edited) record, refused on load rather than rendered as "nan%"."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    accuracy: Fraction | None = None  # a share of test rows: 1.7 ("170.0%") is a hand edit (eighth audit)
    macro_precision: Fraction | None = None
    macro_recall: Fraction | None = None
    macro_f1: Fraction | None = None
    confusion_matrix: list[list[Count]] | None = None  # [true][predicted]
    n: Count | None = None  # test rows

    @model_validator(mode="before")
    @classmethod
    def _other_tasks_numbers_not_booleans(cls, data):  # detection's map50, per_class.*.ap50, ...: numbers
        if isinstance(data, dict):
            for key in set(data) - set(cls.model_fields):
                refuse_booleans(data[key], key)
        return data


ALPHA = 0.05  # the significance level of every task's verdict (tasks/*/significance.py)


def verdict_of(gain: float, p_value: float) -> str:
    """'paid', 'hurt' or 'no significant difference' at ALPHA."""
    if p_value < ALPHA:
        return "paid" if gain > 0 else "hurt"
    return "no significant difference"


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p of the discordant counts (scipy's binomtest at 1/2, which is
    symmetric there): min(1, 2 P[X <= min]) for X ~ Binomial(only_a + only_b, 1/2), in logs."""
    n, k = only_a + only_b, min(only_a, only_b)
    if n == 0 or 2 * k == n:
        return 1.0
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2) for i in range(k + 1)]
    top = max(logs)
    return min(1.0, 2 * math.exp(top) * sum(math.exp(v - top) for v in logs))


class PairedComparison(RecordSection):
    """A paired test of two models on one test set (classification: exact McNemar with a
    paired-bootstrap interval; detection: a paired bootstrap over images). gain is a fraction,
    like accuracy; every number finite. The verdict is the one its gain and p give, and what the
    discordant counts (classification) or both mAPs (detection) make is what they make: a verdict
    "paid" beside p=1, p 0.001 beside no discordant row, an interval without its own gain, or a
    detection gain of 50 points between two mAPs of 0 were rendered (fifty-fifth audit B1-B3)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    gain: float
    ci95: Interval | None = None
    p_value: Probability | None = None  # RJ_pval2: 2.5 was accepted
    verdict: str | None = None  # "paid" | "hurt" | "no significant difference"
    discordant: tuple[Count, Count] | None = None  # (only the first right, only the second right)

    @model_validator(mode="after")
    def _numbers_agree(self):
        if self.verdict is not None and self.p_value is not None and self.verdict != verdict_of(self.gain, self.p_value):
            raise ValueError(f"verdict {self.verdict!r} is not what gain {self.gain} and p {self.p_value} give "
                             f"({verdict_of(self.gain, self.p_value)!r})")
        if self.discordant is not None:
            p = mcnemar_p(*self.discordant)
            if self.p_value is not None and abs(self.p_value - p) > 1e-6 * max(p, 1e-6):
                raise ValueError(f"p_value {self.p_value} is not McNemar's for the discordant counts "
                                 f"{list(self.discordant)} ({p:.6g})")
            if self.ci95 is not None and not self.ci95[0] - 1e-6 <= self.gain <= self.ci95[1] + 1e-6:
                raise ValueError(f"ci95 {list(self.ci95)} does not hold its own gain {self.gain}")
        extra = self.model_extra or {}
        a, b = extra.get("map50_a"), extra.get("map50_b")
        if all(isinstance(v, (int, float)) for v in (a, b)) and abs(self.gain - (a - b)) > 2e-6:
            raise ValueError(f"gain {self.gain} is not map50_a - map50_b ({a - b:.6f})")
        return self


def _near(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-6


class DetectionClass(RecordSection):
    """One class of a detection model's test metrics (tasks/detection/metrics.py); an AP is None
    for a class with no ground-truth box."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    ap50: Fraction | None = None
    ap50_95: Fraction | None = None
    n_objects: Count | None = None


class TestMetrics(ClassificationMetrics):
    """One model on the test split, of either task: classification's fields, and detection's
    (mAPs are fractions, counts >= 0). Each number is also what the others it is made from give:
    accuracy and the macro scores from the confusion matrix, a mAP from the per-class APs, a total
    from the per-class counts. A hand edit of one of them (accuracy 0.99 beside a matrix with none
    right) was rendered as measured (fifty-fourth audit B1, B6, B7)."""

    map50: Fraction | None = None
    map50_95: Fraction | None = None
    n_images: Count | None = None
    n_objects: Count | None = None
    per_class: dict[str, DetectionClass] | None = None

    @model_validator(mode="after")
    def _numbers_agree(self):
        if self.confusion_matrix is not None:
            _check_confusion(self)
        if self.per_class is not None:
            _check_per_class(self)
        return self


def _check_confusion(m: TestMetrics) -> None:
    cm = m.confusion_matrix
    if any(len(row) != len(cm) for row in cm):
        raise ValueError(f"confusion_matrix is not square ({len(cm)} rows of lengths {[len(r) for r in cm][:10]})")
    total, right = sum(map(sum, cm)), sum(cm[i][i] for i in range(len(cm)))
    if m.n is not None and m.n != total:
        raise ValueError(f"n {m.n} is not the confusion matrix's {total} rows")
    if m.accuracy is not None and total and not _near(m.accuracy, right / total):
        raise ValueError(f"accuracy {m.accuracy} is not the confusion matrix's {right}/{total}")
    # macro scores as classification_metrics makes them: a class with no prediction or row scores 0
    predicted, actual = [sum(row[j] for row in cm) for j in range(len(cm))], [sum(row) for row in cm]
    precision = [cm[i][i] / predicted[i] if predicted[i] else 0.0 for i in range(len(cm))]
    recall = [cm[i][i] / actual[i] if actual[i] else 0.0 for i in range(len(cm))]
    f1 = [2 * p * r / (p + r) if p + r else 0.0 for p, r in zip(precision, recall)]
    for name, scores in (("macro_precision", precision), ("macro_recall", recall), ("macro_f1", f1)):
        value = getattr(m, name)
        if value is not None and cm and not _near(value, sum(scores) / len(scores)):
            raise ValueError(f"{name} {value} is not the confusion matrix's {sum(scores) / len(scores):.6f}")


def _check_per_class(m: TestMetrics) -> None:
    counts = [c.n_objects for c in m.per_class.values()]
    if m.n_objects is not None and None not in counts and m.n_objects != sum(counts):
        raise ValueError(f"n_objects {m.n_objects} is not the per-class counts' sum {sum(counts)}")
    for name, key in (("map50", "ap50"), ("map50_95", "ap50_95")):
        aps = [getattr(c, key) for c in m.per_class.values() if getattr(c, key) is not None]
        value, mean = getattr(m, name), (sum(aps) / len(aps) if aps else 0.0)
        if value is not None and not _near(value, mean):
            raise ValueError(f"{name} {value} is not the mean of the per-class {key} ({mean:.6f})")


TaskMetrics = TestMetrics
TaskComparison = PairedComparison


# ----- a latency row's numbers (record/models.py LatencyRow) ----------------------------------------
ORDER_STATISTICS = ("min_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms")
def check_order_statistics(row):
    """min <= p50 <= p90 <= p95 <= p99 <= max, as measured (profiling.measure.latency_stats); a
    p50 above its p90 is a hand edit, and the plot's p50-to-p90 bar cannot draw it (J10)."""
    present = [(k, getattr(row, k)) for k in ORDER_STATISTICS if getattr(row, k) is not None]
    for (low_key, low), (high_key, high) in zip(present, present[1:]):
        if low > high * (1 + 1e-9) + 1e-12:  # the slack: numpy's interpolation, not a real inversion
            raise ValueError(f"{low_key} {low} is above {high_key} {high}: order statistics cannot decrease")
    return row
