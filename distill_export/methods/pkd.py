"""PKD, Cao et al., "PKD: General Distillation Framework for Object Detectors via Pearson
Correlation Coefficient", NeurIPS 2022; here restricted to the cells near objects.

Feature imitation between a student and a teacher of another architecture (here another input:
a clip) fails on raw feature maps: their magnitudes differ per channel, and a few channels with
large values dominate an MSE. PKD normalises each channel first, so only the pattern is imitated:

    z(f)_c      = (f_c − mean_hw f_c) / (std_hw f_c + 1e-6)      per image, per channel, over the map
    pkd         = Σ_cells w · mean_c (z(P·f_s) − z(f_t))² / 2 / Σ_cells w
    w           = 1 in a cell that overlaps an object box, background_weight elsewhere

Over the whole map (w = 1) this is 1 − Pearson ρ per channel, averaged: the paper's loss. It is
invariant to any positive per-channel affine change of either feature map. P is a learned 1x1
convolution from the student's D channels to the teacher's D_t (built in setup, run in the
trainable module's forward, so DDP syncs it). Object boxes: the teacher's decoded detections
with score >= threshold (every row) and the labeled rows' own boxes.

Unlike the authors' code (mmrazor's PKDLoss normalises each channel over batch and map
together), statistics are per image: the loss of a row does not depend on its batch-mates,
and the term is exact under DDP with no gathering.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distill_export.distributed import global_count
from distill_export.errors import ConfigError
from distill_export.methods.base import SetupInfo, Term, TermInputs, check_open_unit, register_term
from distill_export.methods.pseudo_boxes import teacher_boxes
from distill_export.nets.centernet import OUTPUT_STRIDE, box_rows


def pearson_normalise(f: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(B, D, h, w) -> each map of each image to zero mean and unit (population) variance."""
    mean = f.mean(dim=(-2, -1), keepdim=True)
    std = f.std(dim=(-2, -1), keepdim=True, correction=0)
    return (f - mean) / (std + eps)


@torch.no_grad()
def box_mask(targets: torch.Tensor, h: int, w: int, stride: float) -> torch.Tensor:
    """(B, M, 5) boxes in input px -> (B, h, w) float 1 where a cell overlaps a real box."""
    real = box_rows(targets)  # (B, M)
    x1, y1, x2, y2 = (targets[..., i, None, None] / stride for i in range(1, 5))  # (B, M, 1, 1)
    xs = torch.arange(w, device=targets.device, dtype=torch.float32).view(1, 1, 1, w)
    ys = torch.arange(h, device=targets.device, dtype=torch.float32).view(1, 1, h, 1)
    inside = (xs + 1 > x1) & (xs < x2) & (ys + 1 > y1) & (ys < y2) & real[..., None, None]
    return inside.any(1).float() if targets.shape[1] else targets.new_zeros(len(targets), h, w)


@register_term
class PKD(Term):
    name = "pkd"
    needs = frozenset({"features", "logits"})  # feature maps; the heads for the object mask
    tasks = ("detection",)
    summary = "PKD: Pearson-normalised feature imitation near objects (NeurIPS 2022)"
    search = {"threshold": (0.2, 0.6, "linear"), "background_weight": (0.0, 1.0, "linear")}
    global_denominator = True  # divides by the mask weight of the whole (global) batch

    def __init__(self, threshold: float = 0.3, background_weight: float = 0.1):
        super().__init__()
        self.threshold = check_open_unit("threshold", threshold, self.name)
        self.background_weight = float(background_weight)
        if not 0.0 <= self.background_weight <= 1.0:
            raise ConfigError(f"term pkd: background_weight must be in [0, 1], got {background_weight}")
        self.projector: nn.Module | None = None

    def setup(self, info: SetupInfo) -> None:
        if info.teacher_feature_dim == 0 or info.student_feature_dim == 0:
            who = "teacher" if info.teacher_feature_dim == 0 else "student"
            raise ConfigError(f"the pkd term needs feature maps and the {who} returns none: drop the pkd term")
        self.projector = nn.Conv2d(info.student_feature_dim, info.teacher_feature_dim, 1)

    def student_side(self, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return self.projector(features)  # (B, D_t, h, w)

    def loss(self, batch: TermInputs, slot: str) -> torch.Tensor:
        t = batch.teacher_features.detach().float()  # (B, D_t, h, w)
        s = batch.student_side[slot].float()
        if s.shape[-2:] != t.shape[-2:]:
            s = F.interpolate(s, size=t.shape[-2:], mode="bilinear", align_corners=False)
        h, w = t.shape[-2:]
        stride = OUTPUT_STRIDE * batch.teacher_logits.shape[-1] / w  # input px per feature cell
        near = torch.maximum(box_mask(teacher_boxes(batch.teacher_logits, self.threshold), h, w, stride),
                             box_mask(batch.labels.float(), h, w, stride))  # (B, h, w)
        weight = self.background_weight + (1.0 - self.background_weight) * near
        sq = (pearson_normalise(s) - pearson_normalise(t)).pow(2).mean(1)  # (B, h, w)
        return (weight * sq).sum() / 2 / global_count(weight.sum())
