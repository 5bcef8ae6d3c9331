"""Cross-entropy on the labeled rows: the term every objective (and the baseline) starts from."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill_export.distributed import global_count
from distill_export.methods.base import IGNORE_INDEX, Term, TermInputs, register_term


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, keep: torch.Tensor,
                         denominator: torch.Tensor | float) -> torch.Tensor:
    """sum over kept rows of CE(logits, targets) / denominator; logits (B, C), targets/keep (B,)."""
    safe = torch.where(keep, targets, torch.zeros_like(targets))
    rows = F.cross_entropy(logits.float(), safe, reduction="none")  # (B,)
    # where(), not a product: a non-finite CE on an ignored row must not leak NaN.
    return torch.where(keep, rows, torch.zeros_like(rows)).sum() / denominator


@register_term
class CrossEntropy(Term):
    """Mean CE over the batch's labeled rows (0 when it has none); unlabeled rows are ignored."""

    name = "ce"
    summary = "cross-entropy on labeled rows"
    global_denominator = True  # the labeled rows of the whole (global) batch

    def loss(self, batch: TermInputs, slot: str) -> torch.Tensor:
        keep = batch.labels != IGNORE_INDEX
        return masked_cross_entropy(batch.student_logits, batch.labels, keep, global_count(keep.sum()))
