"""DIST, Huang et al., "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022.

Matches relations instead of exact probabilities, with Pearson correlation ρ:

    inter = 1 − mean over rows    ρ(softmax(s/T)_row, softmax(t/T)_row)      (class ranking per sample)
    intra = 1 − mean over classes ρ(softmax(s/T)_col, softmax(t/T)_col)      (sample ranking per class)
    dist  = T² · (inter_weight · inter + intra_weight · intra)

The intra term is batch-wise: it needs more than one row per batch. Under DDP it correlates
the columns of the whole global batch (gathered from every rank), so N processes compute the
one-process loss; the inter term, a mean over rows, is this rank's share of the global mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill_export.distributed import gather_rows, is_distributed, row_share
from distill_export.methods.base import Term, TermInputs, check_non_negative, check_temperature, register_term


def pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(B, C), (B, C) -> (B,): Pearson correlation of each row pair."""
    return F.cosine_similarity(a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True), dim=-1, eps=eps)


@register_term
class DIST(Term):
    name = "dist"
    needs = frozenset({"logits"})
    tasks = ("classification",)  # softmax over (B, C) class logits
    summary = "DIST: Pearson inter-class + intra-class relations (NeurIPS 2022)"
    search = {"temperature": (1.0, 8.0, "log")}
    global_denominator = True  # exact under DDP by itself: see loss()

    def __init__(self, temperature: float = 1.0, inter_weight: float = 1.0, intra_weight: float = 1.0):
        super().__init__()
        self.temperature = check_temperature(temperature, self.name)
        self.inter_weight = check_non_negative("inter_weight", inter_weight, self.name)
        self.intra_weight = check_non_negative("intra_weight", intra_weight, self.name)

    def loss(self, batch: TermInputs, slot: str) -> torch.Tensor:
        T = self.temperature
        y_s = (batch.student_logits.float() / T).softmax(-1)
        y_t = (batch.teacher_logits.detach().float() / T).softmax(-1)
        inter = 1.0 - pearson_rows(y_s, y_t).mean()  # over this process's rows
        if is_distributed():
            # DDP averages the ranks' gradients; gather_rows' backward sums every rank's gradient
            # of the (identical) intra value into each rank's rows, so the two cancel out.
            inter = inter * row_share(y_s.shape[0])
            y_s, y_t = gather_rows(y_s), gather_rows(y_t)  # (B_global, C)
        intra = 1.0 - pearson_rows(y_s.t(), y_t.t()).mean()
        return T**2 * (self.inter_weight * inter + self.intra_weight * intra)
