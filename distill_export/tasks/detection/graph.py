"""The exported detector: the student's raw heads, then the decode, in one graph."""

from __future__ import annotations

import torch
from torch import nn

from distill_export.nets.centernet import MAX_DETECTIONS, OUTPUT_STRIDE, decode


class DecodedDetector(nn.Module):
    """forward(x) -> boxes (B, K, 4) x1y1x2y2 input px, scores (B, K), classes (B, K) int64: the
    decode runs in float32 whatever the heads' dtype (an FP16 export keeps it there)."""

    def __init__(self, model: nn.Module, k: int = MAX_DETECTIONS, stride: int = OUTPUT_STRIDE):
        super().__init__()
        self.model = model
        self.k = k
        self.stride = stride

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.model(x).float()  # (B, C+4, h, w)
        return decode(out, out.shape[1] - 4, self.stride, self.k)
