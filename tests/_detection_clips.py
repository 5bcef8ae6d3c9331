"""A tiny in-test clip generator for the detection nets' tests: moving shapes on noise.

Each clip: T frames of (1, size, size), 1-3 objects of `classes` shapes (0 filled square,
1 hollow square, 2 plus sign), moving 2-4 px a frame and bouncing; the target is the centre
frame (T // 2), and with probability `occlude` a noise patch hides part of one object there
(as moving digits does). Returns (video (N, T, 1, H, W), image (N, 1, H, W), targets (N, 3, 5)
rows [class, x1, y1, x2, y2] in px, padding rows class -1).
"""

from __future__ import annotations

import torch


def _draw(frame: torch.Tensor, cls: int, x: int, y: int, side: int) -> None:
    patch = frame[y : y + side, x : x + side]
    if cls == 0:
        patch[:] = 1.0
    elif cls == 1:
        patch[:2], patch[-2:], patch[:, :2], patch[:, -2:] = 1.0, 1.0, 1.0, 1.0
    else:
        mid = side // 2
        patch[mid - 2 : mid + 2], patch[:, mid - 2 : mid + 2] = 1.0, 1.0


def moving_shapes(n: int, frames: int = 5, size: int = 64, classes: int = 3, occlude: float = 0.6,
                  seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    rand = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=g))  # noqa: E731
    video = torch.rand(n, frames, 1, size, size, generator=g) * 0.15
    targets = torch.full((n, 3, 5), -1.0)
    targets[..., 1:] = 0
    centre = frames // 2
    for i in range(n):
        for j in range(rand(1, 3)):
            cls, side = rand(0, classes - 1), rand(12, 18)
            x, y = rand(0, size - side), rand(0, size - side)
            vx, vy = rand(2, 4) * (1 if rand(0, 1) else -1), rand(2, 4) * (1 if rand(0, 1) else -1)
            # positions at t = 0 .. T-1, with the centre frame at (x, y), bouncing off the edges
            for t in range(frames):
                px, py = x + vx * (t - centre), y + vy * (t - centre)
                px = abs(px) if px < 0 else (2 * (size - side) - px if px > size - side else px)
                py = abs(py) if py < 0 else (2 * (size - side) - py if py > size - side else py)
                _draw(video[i, t, 0], cls, int(px), int(py), side)
            targets[i, j] = torch.tensor([cls, x, y, x + side, y + side], dtype=torch.float32)
            if j == 0 and torch.rand(1, generator=g) < occlude:  # hide 50-70% of it on the centre frame
                h = int(side * (0.5 + 0.2 * float(torch.rand(1, generator=g))))
                video[i, centre, 0, y : y + h, x : x + side] = torch.rand(h, side, generator=g)
    video = (video - 0.2) / 0.3
    return video, video[:, centre].clone(), targets
