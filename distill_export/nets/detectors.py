"""Detection students: CenterNet-style ("Objects as Points", Zhou et al. 2019) one-stage
detectors, registered in the student registry with task "detection".

Every detector follows the SplitNet protocol with a spatial output (nets/centernet.py):
``forward(x)`` -> raw heads (B, C+4, H/4, W/4) at OUTPUT_STRIDE 4; ``forward_features(x)`` ->
(features (B, D, H/4, W/4), heads), the map feature imitation reads; ``feature_dim`` = D.
``with_decode(model, C)`` appends the in-graph decode (boxes, scores, classes): what ONNX exports.

- centernet_tiny: ~88k parameters of plain Conv-BN-ReLU down to stride 4, a stride-8 stage
  added back (nearest upsample + 1x1) for context; for the 64x64 grayscale demo.
- centernet_mnv3: torchvision's MobileNetV3-Small features (ImageNet weights through
  --student-init, as mobilenet_v3_small) and a light FPN-style neck (1x1 laterals, nearest
  upsampling, one depthwise-separable 3x3) down to stride 4; for real images.
Heads: per head a 3x3 conv, ReLU and a 1x1 (heatmap: C channels, bias -2.19 so every cell
starts at p = 0.1, as CenterNet does; regression: box w, h and centre offset x, y).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from distill_export.nets.centernet import OUTPUT_STRIDE, decode, head_channels
from distill_export.nets.layers import bn_momentum, conv_bn, shared_keys, stem_conv
from distill_export.nets.student_registry import DETECTION, register_student

HEAT_PRIOR = 0.1  # initial centre probability of every cell (CenterNet: bias -2.19)


def _dw_separable(cin: int, cout: int, bn: bool = True) -> nn.Sequential:
    """Depthwise 3x3 then pointwise 1x1 (with BN+ReLU after each, or plain convs with bias)."""
    if bn:
        return nn.Sequential(
            nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU(inplace=True),
            nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        )
    return nn.Sequential(nn.Conv2d(cin, cin, 3, padding=1, groups=cin), nn.Conv2d(cin, cout, 1))


class CenterNetHeads(nn.Module):
    """(B, D, h, w) features -> (B, C+4, h, w): heatmap logits, then box size and centre offset
    (in cells). Each head: a 3x3 conv (depthwise-separable when `depthwise`), ReLU, a 1x1."""

    def __init__(self, in_dim: int, num_classes: int, mid: int, depthwise: bool = False):
        super().__init__()

        def branch(out: int) -> nn.Sequential:
            first = _dw_separable(in_dim, mid, bn=False) if depthwise else nn.Conv2d(in_dim, mid, 3, padding=1)
            return nn.Sequential(first, nn.ReLU(inplace=True), nn.Conv2d(mid, out, 1))

        self.heat = branch(num_classes)
        self.box = branch(4)  # w, h, offset x, offset y
        nn.init.constant_(self.heat[-1].bias, -math.log((1 - HEAT_PRIOR) / HEAT_PRIOR))  # -2.197
        self.num_classes = num_classes

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.heat(feats), self.box(feats)], 1)


class CenterNet(nn.Module):
    """body: (B, Cin, H, W) -> (B, D, H/4, W/4) features; heads -> (B, C+4, H/4, W/4).

    init_ignore: key prefixes of a torchvision file this net does not use (its classifier);
    init_fresh: our key prefixes no such file provides (neck, heads): --student-init leaves
    them as initialised (nets/student_init.py)."""

    task = DETECTION
    output_stride = OUTPUT_STRIDE

    def __init__(self, body: nn.Module, heads: CenterNetHeads, feature_dim: int, source: nn.Module | None = None,
                 init_ignore: tuple[str, ...] = (), init_fresh: tuple[str, ...] = ()):
        super().__init__()
        self.body = body
        self.heads = heads
        self.feature_dim = feature_dim
        self.num_classes = heads.num_classes
        self.torchvision_keys: dict[str, str] = shared_keys(source, self) if source is not None else {}
        self.init_ignore = init_ignore
        self.init_fresh = init_fresh

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.body(x)
        return feats, self.heads(feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads(self.body(x))


def upsample2x(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest 2x upsampling cropped to `size` (B, C, h, w) -> (B, C, *size), as Unsqueeze, Expand
    and Reshape (a stride-2 conv makes h = ceil(H / 2), so 2h >= H). Not ONNX's Resize:
    onnxconverter_common's FP16 pass keeps Resize in FP32 and mistypes the casts around it."""
    B, C, h, w = x.shape
    up = x[:, :, :, None, :, None].expand(B, C, h, 2, w, 2).reshape(B, C, 2 * h, 2 * w)
    return up if (2 * h, 2 * w) == tuple(size) else up[:, :, : size[0], : size[1]]


def _up_add(top: torch.Tensor, lateral: torch.Tensor) -> torch.Tensor:
    """Nearest-upsample `top` (half `lateral`'s resolution) to `lateral`'s size and add."""
    return lateral + upsample2x(top, lateral.shape[-2:])


class TinyBody(nn.Module):
    """Conv-BN-ReLU to stride 4, a stride-8 stage upsampled back and added (context), one fusing conv."""

    def __init__(self, in_channels: int, widths: tuple[int, int, int, int] = (16, 24, 32, 48)):
        super().__init__()
        w1, w2, w4, w8 = widths
        self.stem = nn.Sequential(conv_bn(in_channels, w1, 2), conv_bn(w1, w2))  # /2
        self.stage4 = nn.Sequential(conv_bn(w2, w4, 2), conv_bn(w4, w4))  # /4
        self.stage8 = nn.Sequential(conv_bn(w4, w8, 2), conv_bn(w8, w8))  # /8
        self.lateral = nn.Conv2d(w8, w4, 1)
        self.fuse = conv_bn(w4, w4)
        self.out_dim = w4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c4 = self.stage4(self.stem(x))  # (B, w4, H/4, W/4)
        c8 = self.stage8(c4)  # (B, w8, H/8, W/8)
        return self.fuse(_up_add(self.lateral(c8), c4))


@register_student(task=DETECTION)
def centernet_tiny(num_classes: int, in_channels: int = 1, small_input: bool = True) -> CenterNet:
    """~88k parameters at 10 classes: the moving-digits demo's detector (64x64 grayscale)."""
    body = TinyBody(in_channels)
    return CenterNet(body, CenterNetHeads(body.out_dim, num_classes, mid=32), body.out_dim)


# MobileNetV3-Small's feature blocks that end a resolution, and their channels: block i's output
# is at stride stem * 2**k (stem = 2 with torchvision's stride-2 stem, 1 for small inputs).
_MNV3_LAST_AT_STRIDE = ((1, 16, 2), (3, 24, 4), (8, 48, 8), (12, 576, 16))  # (block, channels, stride / stem)


class MobileNetV3Body(nn.Module):
    """MobileNetV3-Small features, taps at strides 4..32 (4..16 for small inputs), 1x1 laterals
    (conv + BN) to `width`, top-down nearest upsampling and adds, one depthwise-separable 3x3."""

    def __init__(self, features: nn.Sequential, stem_stride: int, width: int):
        super().__init__()
        self.features = features
        taps = [(i, c) for i, c, s in _MNV3_LAST_AT_STRIDE if s * stem_stride >= OUTPUT_STRIDE]
        self.taps = [i for i, _ in taps]
        self.laterals = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, width, 1, bias=False), nn.BatchNorm2d(width)) for _, c in taps)
        self.smooth = _dw_separable(width, width)
        self.out_dim = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for i, block in enumerate(self.features[: self.taps[-1] + 1]):
            x = block(x)
            if i in self.taps:
                outs.append(x)
        p = self.laterals[-1](outs[-1])  # coarsest first, down to stride 4
        for lateral, c in zip(reversed(self.laterals[:-1]), reversed(outs[:-1])):
            p = _up_add(p, lateral(c))
        return self.smooth(p)  # (B, width, H/4, W/4)


@register_student(task=DETECTION)
def centernet_mnv3(num_classes: int, in_channels: int = 3, small_input: bool = False) -> CenterNet:
    """MobileNetV3-Small backbone, 64-wide neck and depthwise-separable heads; for real images."""
    from torchvision.models import mobilenet_v3_small as tv

    net = bn_momentum(tv(weights=None))
    net.features[0][0] = stem_conv(net.features[0][0], in_channels, small_input)
    body = MobileNetV3Body(net.features, stem_stride=1 if small_input else 2, width=64)
    heads = CenterNetHeads(body.out_dim, num_classes, mid=64, depthwise=True)
    return CenterNet(body, heads, body.out_dim, source=net, init_ignore=("classifier.",),
                     init_fresh=("body.laterals.", "body.smooth.", "heads."))


class DecodedDetector(nn.Module):
    """A detector with the decode appended: x -> boxes (B, K, 4) x1y1x2y2 in input px, scores
    (B, K), classes (B, K) int64. What the ONNX export traces (standard operators only)."""

    def __init__(self, model: nn.Module, num_classes: int, stride: int = OUTPUT_STRIDE):
        super().__init__()
        self.model = model
        self.num_classes = num_classes
        self.stride = stride

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return decode(self.model(x), self.num_classes, self.stride)  # decode casts to float32 if need be


def with_decode(model: nn.Module, num_classes: int) -> DecodedDetector:
    return DecodedDetector(model, num_classes)


def check_heads(out: torch.Tensor, num_classes: int, x: torch.Tensor) -> None:
    """A detector's raw output must be (B, C+4, H/4, W/4); a ValueError says what it is instead."""
    want = (x.shape[0], head_channels(num_classes), x.shape[2] // OUTPUT_STRIDE, x.shape[3] // OUTPUT_STRIDE)
    if tuple(out.shape) != want:
        raise ValueError(f"a detector's output for input {tuple(x.shape)} must be {want} (C+4 heads at stride "
                         f"{OUTPUT_STRIDE}); it is {tuple(out.shape)}")
