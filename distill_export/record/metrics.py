"""The task's payloads in the run record: what `metrics.<model>` and `comparisons.<pair>` hold.

Today the one task is classification. This module is the seam the task registry will take over
(tasks/classification/): `TaskMetrics` and `TaskComparison` are the names models.py uses, so a
task that brings its own metrics type changes these two names and nothing else in the record.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

Fraction = Annotated[float, Field(ge=0, le=1)]  # a share of rows: accuracy, precision, recall, F1
Probability = Annotated[float, Field(ge=0, le=1)]  # a p-value
NonNegative = Annotated[float, Field(ge=0)]  # a time or a rate: >= 0 (and finite: the section's allow_inf_nan)
Count = Annotated[int, Field(ge=0)]  # iterations, bytes, parameters, confusion cells: a negative one is a hand edit
Batch = Annotated[int, Field(ge=1)]  # rows per call: a batch of 0 measured nothing (ninth round)


def _ordered(interval: tuple[float, float]) -> tuple[float, float]:
    """A 95% interval is (low, high): an inverted one rendered as "(+3.0 to +1.0)" (ninth round)."""
    if interval[0] > interval[1]:
        raise ValueError(f"interval ({interval[0]}, {interval[1]}) has its low end above its high end")
    return interval


Interval = Annotated[tuple[float, float], AfterValidator(_ordered)]


class ClassificationMetrics(BaseModel):
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


class PairedComparison(BaseModel):
    """A paired test of two classifiers on one test set (significance.compare: exact McNemar
    with a paired-bootstrap interval). gain is a fraction, like accuracy; every number finite."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    gain: float
    ci95: Interval | None = None
    p_value: Probability | None = None  # RJ_pval2: 2.5 was accepted
    verdict: str | None = None  # "paid" | "hurt" | "no significant difference"
    discordant: tuple[int, int] | None = None  # (only the first right, only the second right)


TaskMetrics = ClassificationMetrics
TaskComparison = PairedComparison


# ----- a latency row's numbers (record/models.py LatencyRow) ----------------------------------------
ORDER_STATISTICS = ("min_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms")
LATENCY_NUMBERS = (*ORDER_STATISTICS, "mean_ms", "std_ms", "throughput", "cpu_p50_ms", "iterations",
                   "size_bytes", "params", "macs", "batch", "threads")


def reject_booleans(data, keys):
    """JSON `true` is not a number, though pydantic would read it as 1 (eighth audit J1)."""
    if isinstance(data, dict):
        for key in keys:
            if isinstance(data.get(key), bool):
                raise ValueError(f"{key} is {str(data[key]).lower()}, not a number")
    return data


def check_order_statistics(row):
    """min <= p50 <= p90 <= p95 <= p99 <= max, as measured (profiling.measure.latency_stats); a
    p50 above its p90 is a hand edit, and the plot's p50-to-p90 bar cannot draw it (J10)."""
    present = [(k, getattr(row, k)) for k in ORDER_STATISTICS if getattr(row, k) is not None]
    for (low_key, low), (high_key, high) in zip(present, present[1:]):
        if low > high * (1 + 1e-9) + 1e-12:  # the slack: numpy's interpolation, not a real inversion
            raise ValueError(f"{low_key} {low} is above {high_key} {high}: order statistics cannot decrease")
    return row
