"""Training-time augmentation of the student's input (distill.augment).

Kept deliberately small: "shift" translates each image/spectrogram by up to ±2 pixels
(edge-replicated). With augmentation on, the teacher must see each augmented batch, so
its outputs are computed online and the teacher-output cache is not used.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

MAX_SHIFT = 2


def random_shift(x: torch.Tensor, max_shift: int = MAX_SHIFT) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H, W), each sample shifted by its own (dy, dx) in [-m, m]."""
    b, c, h, w = x.shape
    m = max_shift
    padded = F.pad(x, (m, m, m, m), mode="replicate")  # (B, C, H+2m, W+2m)
    dy = torch.randint(0, 2 * m + 1, (b,), device=x.device)
    dx = torch.randint(0, 2 * m + 1, (b,), device=x.device)
    rows = torch.arange(h, device=x.device)[None, :] + dy[:, None]  # (B, H)
    cols = torch.arange(w, device=x.device)[None, :] + dx[:, None]  # (B, W)
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    ci = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


def make_augment(name: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """None for "none" (the teacher-output cache applies), else a batch transform."""
    if name in ("none", "", None):
        return None
    if name == "shift":
        return random_shift
    raise ValueError(f"unknown augmentation {name!r} (none, shift)")
