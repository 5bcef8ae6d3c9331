"""The supervised term on the labeled rows, for every task: the term every objective (and the
baseline) starts from. Its name stays `ce`, which is what it computes for classification.

    ce = Σ_{labeled r} loss_r / n_labeled

Classification: cross-entropy, computed row by row here (exact under DDP). Any other task: the
task's own supervised loss (Task.supervised_loss, handed over in SetupInfo), a mean over the
labeled rows it is given, scaled to its share of the global batch's labeled rows (exact when
that loss is a mean over rows; detection's is a mean over objects, so under DDP it is the
mean of the ranks' per-object means weighted by their labeled images).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill_export.distributed import global_count
from distill_export.methods.base import IGNORE_INDEX, SetupInfo, Term, TermInputs, register_term


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, keep: torch.Tensor,
                         denominator: torch.Tensor | float) -> torch.Tensor:
    """sum over kept rows of CE(logits, targets) / denominator; logits (B, C), targets/keep (B,)."""
    safe = torch.where(keep, targets, torch.zeros_like(targets))
    rows = F.cross_entropy(logits.float(), safe, reduction="none")  # (B,)
    # where(), not a product: a non-finite CE on an ignored row must not leak NaN.
    return torch.where(keep, rows, torch.zeros_like(rows)).sum() / denominator


def zero_loss(outputs: torch.Tensor) -> torch.Tensor:
    """A float32 0 that is still a function of `outputs` (gradient 0, never NaN), so DDP and
    autograd see every parameter take part when a batch has nothing for a term."""
    return outputs.reshape(-1)[:0].float().sum()


@register_term
class CrossEntropy(Term):
    """Mean supervised loss over the batch's labeled rows (0 when it has none); unlabeled rows
    are ignored. Cross-entropy for classification, the task's supervised loss otherwise."""

    name = "ce"
    summary = "supervised loss on labeled rows (cross-entropy for classification)"
    global_denominator = True  # the labeled rows of the whole (global) batch

    def __init__(self):
        super().__init__()
        self.supervised_loss = None  # None: cross-entropy (set by setup for other tasks)

    def setup(self, info: SetupInfo) -> None:
        self.supervised_loss = None if info.task == "classification" else info.supervised_loss

    def loss(self, batch: TermInputs, slot: str) -> torch.Tensor:
        if self.supervised_loss is None:
            keep = batch.labels != IGNORE_INDEX
            return masked_cross_entropy(batch.student_logits, batch.labels, keep, global_count(keep.sum()))
        keep = batch.labeled  # (B,): a row with any target that is not IGNORE_INDEX
        n = keep.sum()
        denominator = global_count(n)  # before any early return: under DDP every rank all-reduces
        if not bool(n > 0):
            return zero_loss(batch.student_logits)
        mean = self.supervised_loss(batch.student_logits[keep], batch.labels[keep]).float()
        return mean * n / denominator
