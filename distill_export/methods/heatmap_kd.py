"""Heatmap KD for CenterNet-style detectors: the student's centre heatmaps imitate the teacher's,
and its box size and offset copy the teacher's at the teacher's confident peaks.

    heat  = Σ_cells |σ(s) − σ(t)|^β · BCE(σ(s), σ(t))          (every class map, every row)
    reg   = Σ_{teacher peaks p ≥ threshold} 0.1·|size_s − size_t|₁ + 1·|offset_s − offset_t|₁
    heatmap_kd = (heat + regression_weight · reg) / n_peaks       (n_peaks >= 1, global batch)

Why this form. The heatmap is a per-cell Bernoulli, so the matching divergence is a binary
cross-entropy against the teacher's probability (soft targets), not a softmax KL. Almost every
cell is background in both maps; a plain BCE or MSE summed over the map is dominated by those
easy cells (the imbalance CenterNet's focal loss exists for). The modulating factor
|σ(s) − σ(t)|^β is the Quality Focal Loss of GFL (Li et al., "Generalized Focal Loss", NeurIPS
2020, β = 2 as there), a focal loss for soft targets: it is 0 exactly where the student
matches the teacher (so the loss is 0 at student == teacher, which BCE alone is not: it keeps
the teacher's entropy) and down-weights cells that are already close. The regression part is
CenterNet's own size/offset L1 with its weights, read at the teacher's peaks (3x3 local maxima,
as decode finds them) where the teacher is confident, so the student learns the teacher's boxes
there (on occluded objects, the video teacher's). Dividing by the number of those peaks puts the
term on the same per-object scale as the labels and pseudo_boxes terms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill_export.distributed import global_count
from distill_export.errors import ConfigError
from distill_export.methods.base import (
    Term, TermInputs, check_non_negative, check_open_unit, check_positive, register_term,
)
from distill_export.methods.pseudo_boxes import head_classes
from distill_export.nets.centernet import OFFSET_WEIGHT, SIZE_WEIGHT, split_heads


def soft_focal_bce(student_logits: torch.Tensor, target: torch.Tensor, beta: float) -> torch.Tensor:
    """Quality focal loss, summed: student logits and target probabilities of one shape."""
    p = torch.sigmoid(student_logits)
    bce = F.binary_cross_entropy_with_logits(student_logits, target, reduction="none")
    return ((p - target).abs().pow(beta) * bce).sum()


@torch.no_grad()
def confident_peaks(heat: torch.Tensor, threshold: float) -> torch.Tensor:
    """(B, C, h, w) probabilities -> bool: 3x3 local maxima with p >= threshold (decode's peaks)."""
    return (F.max_pool2d(heat, 3, stride=1, padding=1) == heat) & (heat >= threshold)


@register_term
class HeatmapKD(Term):
    name = "heatmap_kd"
    needs = frozenset({"logits"})  # the teacher's raw heads
    tasks = ("detection",)
    summary = "student heatmaps imitate the teacher's (soft focal BCE) + its boxes at its peaks"
    search = {"threshold": (0.2, 0.6, "linear"), "regression_weight": (0.1, 2.0, "log")}
    global_denominator = True  # divides by the teacher peaks of the whole (global) batch

    def __init__(self, beta: float = 2.0, threshold: float = 0.3, regression_weight: float = 1.0):
        super().__init__()
        self.beta = check_positive("beta", beta, self.name)
        if self.beta < 1:  # |x|^β has an infinite slope at 0 below 1: NaN gradients where s == t
            raise ConfigError(f"term {self.name}: beta must be >= 1, got {beta}")
        self.threshold = check_open_unit("threshold", threshold, self.name)
        self.regression_weight = check_non_negative("regression_weight", regression_weight, self.name)

    def loss(self, batch: TermInputs, slot: str) -> torch.Tensor:
        C = head_classes(batch.student_logits)
        s_heat, s_size, s_off = split_heads(batch.student_logits.float(), C)
        t_heat, t_size, t_off = split_heads(batch.teacher_logits.detach().float(), C)
        t_prob = torch.sigmoid(t_heat)  # (B, C, h, w)
        peaks = confident_peaks(t_prob, self.threshold)  # (B, C, h, w)
        denominator = global_count(peaks.sum())  # >= 1
        total = soft_focal_bce(s_heat, t_prob, self.beta)
        if self.regression_weight > 0:
            cells = peaks.any(1, keepdim=True).float()  # (B, 1, h, w): where a box is read
            reg = (SIZE_WEIGHT * (s_size - t_size).abs() + OFFSET_WEIGHT * (s_off - t_off).abs()) * cells
            total = total + self.regression_weight * reg.sum()
        return total / denominator
