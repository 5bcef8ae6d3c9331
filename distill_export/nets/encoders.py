"""Per-kind teacher encoders: convolutional for images and spectrograms, text, embedding vectors.

FusionTeacher picks one per modality kind: ConvEncoder for image/audio, TextEncoder for
hashed n-gram ids (data/loaders.py), VectorEncoder for precomputed sentence embeddings.
Each maps a batch to (B, out_dim).
"""

from __future__ import annotations

import torch
from torch import nn

from distill_export.nets.students import conv_bn

CONV_KINDS = ("image", "audio")
TEACHER_KINDS = (*CONV_KINDS, "text", "vector")  # the kinds encoder_for builds an encoder for


class ConvEncoder(nn.Module):
    """(B, C, H, W) -> (B, 4·width): three conv stages, each twice as wide."""

    def __init__(self, in_channels: int, width: int):
        super().__init__()
        w = width
        self.net = nn.Sequential(
            conv_bn(in_channels, w), conv_bn(w, w), nn.MaxPool2d(2),
            conv_bn(w, 2 * w), conv_bn(2 * w, 2 * w), nn.MaxPool2d(2),
            conv_bn(2 * w, 4 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.out_dim = 4 * w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TextEncoder(nn.Module):
    """(B, L) int64 bucket ids, 0 = padding -> (B, 4·width): mean of n-gram embeddings, MLP."""

    def __init__(self, num_buckets: int, width: int, embed_dim: int = 64):
        super().__init__()
        self.bag = nn.EmbeddingBag(num_buckets, embed_dim, mode="mean", padding_idx=0)
        self.proj = nn.Sequential(nn.Linear(embed_dim, 4 * width), nn.ReLU(inplace=True))
        self.out_dim = 4 * width

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.proj(self.bag(ids.long()))  # an all-padding row embeds to zeros


class VectorEncoder(nn.Module):
    """(B, D) float features -> (B, 4·width)."""

    def __init__(self, in_dim: int, width: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, 4 * width), nn.ReLU(inplace=True))
        self.out_dim = 4 * width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def encoder_for(kind: str, size: int, width: int) -> nn.Module:
    """size: input channels (image/audio), hash buckets (text) or vector length (vector)."""
    if kind in CONV_KINDS:
        return ConvEncoder(size, width)
    if kind == "text":
        return TextEncoder(size, width)
    if kind == "vector":
        return VectorEncoder(size, width)
    raise ValueError(f"no teacher encoder for modality kind {kind!r}")


def encoder_input_size(spec) -> int:
    """The `size` encoder_for needs, from a ModalitySpec."""
    if spec.kind == "text":
        from distill_export.data.loaders import TEXT_BUCKETS

        return TEXT_BUCKETS
    return int(spec.shape[0])
