"""Pseudo-labels from the teacher on the unlabeled rows (Lee 2013; the threshold as in FixMatch,
Sohn et al. 2020): CE against the teacher's top class where its confidence reaches the threshold.

    pseudo_label = Σ_{unlabeled r, max softmax(t_r) ≥ threshold} CE(s_r, argmax t_r) / n_unlabeled

Dividing by every unlabeled row (not only the confident ones) lets a stricter threshold mean a
weaker term, as in FixMatch. Labeled rows are left to the `ce` term.
"""

from __future__ import annotations

import torch

from distill_export.distributed import global_count
from distill_export.methods.base import Term, TermInputs, check_open_unit, register_term
from distill_export.methods.ce import masked_cross_entropy


@register_term
class PseudoLabel(Term):
    name = "pseudo_label"
    needs = frozenset({"logits"})
    tasks = ("classification",)  # softmax over (B, C) class logits
    summary = "CE on the teacher's confident top class, unlabeled rows"
    search = {"threshold": (0.3, 0.98, "linear")}
    global_denominator = True  # every unlabeled row of the whole (global) batch

    def __init__(self, threshold: float = 0.7):
        super().__init__()
        self.threshold = check_open_unit("threshold", threshold, self.name)

    def loss(self, batch: TermInputs, slot: str) -> torch.Tensor:
        probs = batch.teacher_logits.detach().float().softmax(-1)  # (B, C)
        confidence, pseudo = probs.max(dim=-1)
        unlabeled = ~batch.labeled
        keep = unlabeled & (confidence >= self.threshold)
        return masked_cross_entropy(batch.student_logits, pseudo, keep, global_count(unlabeled.sum()))
