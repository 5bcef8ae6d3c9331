"""The exported detector's tail: the decode the graph ends with (Task.export_tail), appended
after the student's raw heads by export/common.py append_tail and kept in FP32 there."""

from __future__ import annotations

import torch
from torch import nn

from distill_export.nets.centernet import MAX_DETECTIONS, OUTPUT_STRIDE, decode


class DecodeTail(nn.Module):
    """forward(heads (B, C+4, h, w)) -> boxes (B, K, 4) x1y1x2y2 input px, scores (B, K),
    classes (B, K) int64, in float32 whatever the heads' dtype."""

    def __init__(self, num_classes: int, k: int = MAX_DETECTIONS, stride: int = OUTPUT_STRIDE):
        super().__init__()
        self.num_classes = num_classes
        self.k = k
        self.stride = stride

    def forward(self, heads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return decode(heads.float(), self.num_classes, self.stride, self.k)
