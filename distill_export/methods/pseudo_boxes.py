"""Pseudo-boxes from the teacher on the unlabeled rows: self-training for a detector, the
detection counterpart of `pseudo_label` (Lee 2013; thresholded as in FixMatch, Sohn et al. 2020,
and in the teacher-student detectors, e.g. Unbiased Teacher, Liu et al. ICLR 2021).

The teacher's raw heads (B, C+4, h, w) go through the in-graph decode (nets/centernet.py:
3x3 peaks, TopK); its detections with score >= threshold become (B, K, 5) box targets, and the
student's heads are trained on them with the CenterNet loss (focal heatmap + size and offset L1):

    pseudo_boxes = Σ_{unlabeled r with >= 1 confident box} centernet_loss_r / n_pseudo_boxes

- Labeled rows are left to the `ce` (labels) term: their own boxes beat the teacher's.
- An unlabeled row whose teacher finds nothing above the threshold is skipped, not read as
  "background everywhere": every moving-digits frame holds objects, so an empty pseudo-label
  means an unsure teacher. A batch without any confident box gives 0 (not NaN).
- The mean is over pseudo-boxes (CenterNet's per-object normalisation), counted over the
  global batch under DDP (distributed.global_count), so N processes compute the one-process loss.
"""

from __future__ import annotations

import torch

from distill_export.distributed import global_count
from distill_export.methods.base import Term, TermInputs, check_open_unit, register_term
from distill_export.methods.ce import zero_loss
from distill_export.nets.centernet import (
    MAX_DETECTIONS, OUTPUT_STRIDE, box_rows, decode, detection_loss, targets_from_detections,
)


def head_classes(heads: torch.Tensor) -> int:
    """C of (B, C+4, h, w) CenterNet heads."""
    if heads.dim() != 4 or heads.shape[1] < 5:
        raise ValueError(f"detection terms expect (B, C+4, h, w) heads, got {tuple(heads.shape)}")
    return heads.shape[1] - 4


@torch.no_grad()
def teacher_boxes(teacher_heads: torch.Tensor, threshold: float) -> torch.Tensor:
    """(B, K, 5) pseudo-box targets [class, x1, y1, x2, y2] in input px: the teacher's decoded
    detections with score >= threshold, the rest padding (class -1)."""
    heads = teacher_heads.detach().float()
    boxes, scores, classes = decode(heads, head_classes(heads), OUTPUT_STRIDE)
    return targets_from_detections(boxes, scores, classes, threshold, MAX_DETECTIONS)


@register_term
class PseudoBoxes(Term):
    name = "pseudo_boxes"
    needs = frozenset({"logits"})  # the teacher's raw heads
    tasks = ("detection",)
    summary = "CenterNet loss against the teacher's confident detections, unlabeled rows"
    search = {"threshold": (0.2, 0.6, "linear")}
    global_denominator = True  # every pseudo-box of the whole (global) batch

    def __init__(self, threshold: float = 0.35):
        super().__init__()
        self.threshold = check_open_unit("threshold", threshold, self.name)

    def loss(self, batch: TermInputs, slot: str) -> torch.Tensor:
        out = batch.student_logits  # (B, C+4, h, w)
        pseudo = teacher_boxes(batch.teacher_logits, self.threshold)  # (B, K, 5)
        real = box_rows(pseudo) & ~batch.labeled[:, None]  # (B, K): confident boxes, unlabeled rows
        rows = real.any(1)  # (B,)
        n = real.sum()
        denominator = global_count(n)  # before any early return: under DDP every rank all-reduces
        if not bool(n > 0):
            return zero_loss(out)
        # detection_loss is a mean over the objects of the rows it is given: back to a sum.
        return detection_loss(out[rows], pseudo[rows], head_classes(out), OUTPUT_STRIDE) * n / denominator
