"""Tiny video and box fixtures the detection-data tests write themselves (PyAV, in tmp_path).

Each clip is a dark noisy 16x16 video whose frame t holds a bright square that moves one pixel
to the right per frame; the square's box on the target frame is the row's label.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from _byo_fixtures import write_png, write_rows
from distill_export.data.video import write_video

SIZE = 16


def clip_frames(n: int = 5, seed: int = 0, rgb: bool = False) -> np.ndarray:
    """uint8 (n, SIZE, SIZE) (or (..., 3)): frame t has a 6x6 square at x = 2 + t, y = 4."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 40, (n, SIZE, SIZE)).astype(np.uint8)
    for t in range(n):
        frames[t, 4:10, 2 + t : 8 + t] = 200 + t  # the frame's index is in its brightness
    if rgb:
        frames = np.stack([frames, frames // 2, frames // 3], axis=-1)
    return frames


def square_box(t: int) -> tuple[int, int, int, int]:
    return 2 + t, 4, 8 + t, 10


def make_video_manifest(root: Path, per_split=(6, 2, 2), frames: int = 5, classes=("a", "b"),
                        boxes: bool = False, index: int | None = None, unlabeled: int = 0,
                        calibration: int = 0, column: str = "video") -> Path:
    """A manifest of videos: `per_split` rows of train/val/test (+ unlabeled train rows and
    calibration rows). Labels are a class each, or with boxes=True 'class x1 y1 x2 y2' of the
    square on the target frame (one box; a second for every third row)."""
    rows = []
    splits = ["train"] * per_split[0] + ["val"] * per_split[1] + ["test"] * per_split[2]
    splits += ["train"] * unlabeled + ["calibration"] * calibration
    for i, split in enumerate(splits):
        name = f"clips/{i:03d}.mkv"
        write_video(root / name, clip_frames(frames, seed=i))
        t = frames // 2 if index is None else index
        cls = classes[i % len(classes)]
        if boxes:
            label = f"{cls} {' '.join(map(str, square_box(t)))}" + ("; b 0 0 3 3" if i % 3 == 0 else "")
        else:
            label = cls
        labeled = i < sum(per_split)
        rows.append({column: name + ("" if index is None else f"#{index}"),
                     "label": label if labeled else "", "split": split})
    return write_rows(root / "manifest.csv", rows)


def write_frame_folder(folder: Path, frames: np.ndarray, ext: str = "png") -> Path:
    for t, f in enumerate(frames):
        write_png(folder / f"frame_{t:03d}.{ext}", f)
    return folder
