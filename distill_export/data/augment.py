"""Training-time augmentation of the student's input (distill.augment).

"shift" translates each image/spectrogram by up to ±2 pixels (edge-replicated); "crop" takes
a random resized crop. `distill.mix` (below) blends pairs of rows: mixup and cutmix. With augmentation on, the teacher must see each augmented batch, so
its outputs are computed online and the teacher-output cache is not used.
"""

from __future__ import annotations

from dataclasses import dataclass
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


# "crop": a random crop of 70-100% of the area, aspect 3:4 to 4:3, resized back (Inception-style,
# the crop Beyer et al. pair with mixup; milder than ImageNet's 8% floor, since a digit fills its frame).
CROP_SCALE = (0.7, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)


def crop_transform(size: tuple[int, int]):
    """The per-sample crop (torchvision.transforms.v2), also what streaming's workers run."""
    from torchvision.transforms import v2

    return v2.RandomResizedCrop(tuple(size), scale=CROP_SCALE, ratio=CROP_RATIO, antialias=True)


def random_crop(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H, W), each sample its own crop (v2 on a batch would crop all alike)."""
    crop = crop_transform(x.shape[-2:])
    return torch.stack([crop(img) for img in x])


def make_augment(name: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """None for "none" (the teacher-output cache applies), else a batch transform."""
    if name in ("none", "", None):
        return None
    if name == "shift":
        return random_shift
    if name == "crop":
        return random_crop
    raise ValueError(f"unknown augmentation {name!r} (none, shift, crop)")


# ----- batch mixing (distill.mix): mixup and cutmix -------------------------------------------
# "Consistent teaching" (Beyer et al., "Knowledge distillation: a good teacher is patient and
# consistent", CVPR 2022): the student and the teacher see the same mixed image, so the teacher
# answers for the very input the student is trained on (function matching) and every batch is a
# new point of the teacher's function. The baseline gets the same mixing with mixed labels.
MIXES = ("none", "mixup", "cutmix", "mixup_cutmix")


@dataclass
class Mix:
    """How a batch was mixed: row i became lam * row i + (1 - lam) * row perm[i] (cutmix: lam is
    the share of the image left unpasted, and `box` the pasted (y0, y1, x0, x1))."""

    perm: torch.Tensor  # (B,) int64
    lam: float
    box: tuple[int, int, int, int] | None = None
    size: tuple[int, int] | None = None  # (H, W) of the image the box was cut from

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """The same mix on any modality of the batch (B, ...): the box pasted into an image of
        the cut image's size, else a mixup with weight lam (an audio clip, a caption's vector)."""
        other = x[self.perm]
        if self.box is not None and x.dim() == 4 and tuple(x.shape[-2:]) == self.size:
            y0, y1, x0, x1 = self.box
            out = x.clone()
            out[..., y0:y1, x0:x1] = other[..., y0:y1, x0:x1]
            return out
        return self.lam * x + (1 - self.lam) * other


def mix_batch(x: torch.Tensor, kind: str, alpha: float) -> tuple[torch.Tensor, Mix]:
    """(B, C, H, W) -> (mixed batch, Mix): lam ~ Beta(alpha, alpha), one partner per row (a random
    permutation). mixup_cutmix picks one of the two per batch, as timm does by default."""
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(x.shape[0], device=x.device)
    if kind == "mixup_cutmix":
        kind = "cutmix" if torch.rand(()) < 0.5 else "mixup"
    if kind == "mixup":
        mix = Mix(perm, lam)
    elif kind == "cutmix":
        h, w = x.shape[-2:]
        cut_h, cut_w = int(h * (1 - lam) ** 0.5), int(w * (1 - lam) ** 0.5)
        cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
        y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
        x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
        # lam from the box actually pasted (clipped at the border), so the labels mix in proportion
        mix = Mix(perm, 1 - (y1 - y0) * (x1 - x0) / (h * w), (y0, y1, x0, x1), (h, w))
    else:
        raise ValueError(f"unknown mix {kind!r} ({', '.join(MIXES)})")
    return mix.apply(x), mix


def mixed_loss(loss_fn: Callable, outputs, targets: torch.Tensor, mix: Mix | None) -> torch.Tensor:
    """loss_fn(outputs, targets) under a mix: lam * loss(targets) + (1 - lam) * loss(targets[perm]).
    Exact for losses linear in the target (cross-entropy); a term that ignores the targets gives
    its own value back."""
    if mix is None:
        return loss_fn(outputs, targets)
    return mix.lam * loss_fn(outputs, targets) + (1 - mix.lam) * loss_fn(outputs, targets[mix.perm])
