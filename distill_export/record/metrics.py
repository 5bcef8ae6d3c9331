"""The task's payloads in the run record: what `metrics.<model>` and `comparisons.<pair>` hold.

Today the one task is classification. This module is the seam the task registry will take over
(tasks/classification/): `TaskMetrics` and `TaskComparison` are the names models.py uses, so a
task that brings its own metrics type changes these two names and nothing else in the record.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

Fraction = Annotated[float, Field(ge=0, le=1)]  # a share of rows: accuracy, precision, recall, F1


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
    confusion_matrix: list[list[int]] | None = None  # [true][predicted]
    n: int | None = None  # test rows


class PairedComparison(BaseModel):
    """A paired test of two classifiers on one test set (significance.compare: exact McNemar
    with a paired-bootstrap interval). gain is a fraction, like accuracy; every number finite."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    gain: float
    ci95: tuple[float, float] | None = None
    p_value: Annotated[float, Field(ge=0, le=1)] | None = None  # RJ_pval2: 2.5 was accepted
    verdict: str | None = None  # "paid" | "hurt" | "no significant difference"
    discordant: tuple[int, int] | None = None  # (only the first right, only the second right)


TaskMetrics = ClassificationMetrics
TaskComparison = PairedComparison
