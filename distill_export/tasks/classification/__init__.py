"""Classification: one integer class per row, logits (N, C) out, accuracy and McNemar."""

from distill_export.tasks.classification.task import ClassificationTask

__all__ = ["ClassificationTask"]
