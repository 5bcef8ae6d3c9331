"""Tiny manifest fixtures the bring-your-own-data tests write themselves: PNGs, WAVs, text.

Each class k gets a bright square at its own place in an 8x8 image, a tone at 400·(k+1) Hz
and a sentence with its own word, so a model can tell the classes apart from any modality.
"""

from __future__ import annotations

import csv
import json
import math
import wave
from pathlib import Path

import numpy as np

CLASSES = ("cat", "dog", "owl")
WORDS = {"cat": "meow purr", "dog": "woof bark", "owl": "hoot night"}


def write_png(path: Path, pixels: np.ndarray) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path


def write_wav(path: Path, samples: np.ndarray, sample_rate: int = 8000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(sample_rate)
        f.writeframes(pcm.tobytes())
    return path


def tone(freq: float, sample_rate: int = 8000, seconds: float = 0.3, seed: int = 0) -> np.ndarray:
    t = np.arange(int(sample_rate * seconds)) / sample_rate
    noise = np.random.default_rng(seed).normal(0, 0.05, t.shape)
    return 0.6 * np.sin(2 * math.pi * freq * t) + noise


def class_image(k: int, seed: int = 0, rgb: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 40, (8, 8)).astype(np.float64)
    img[2 * k : 2 * k + 3, 2 * k : 2 * k + 3] = 250
    return np.stack([img, img * 0.5, img * 0.2], axis=-1) if rgb else img


def make_manifest(
    root: Path,
    per_class: int = 6,
    classes=CLASSES,
    fmt: str = "csv",
    modalities=("image", "audio", "text"),
    split_column: bool = True,
    unlabeled: int = 0,
) -> Path:
    """Write files and a manifest under root; with split_column, rows 0-3 of a class are
    train, 4 val, 5+ test. `unlabeled` extra train rows have an empty label."""
    rows = []
    for k, name in enumerate(classes):
        for i in range(per_class + (unlabeled if k == 0 else 0)):
            labeled = i < per_class
            row = {}
            if "image" in modalities:
                row["image"] = f"img/{name}_{i}.png"
                write_png(root / row["image"], class_image(k, seed=i))
            if "audio" in modalities:
                row["audio"] = f"wav/{name}_{i}.wav"
                write_wav(root / row["audio"], tone(400 * (k + 1), seed=i))
            if "text" in modalities:
                row["text"] = f"the {WORDS[name]} sample {i}"
            row["label"] = name if labeled else ""
            if split_column:
                row["split"] = "train" if (i < 4 or not labeled) else "val" if i == 4 else "test"
            rows.append(row)
    return write_rows(root / f"manifest.{fmt}", rows)


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return path


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def synthetic_dataset(n: int = 24, num_classes: int = 3, seed: int = 0, image_hw: int = 8):
    """An in-memory Dataset (image (1, hw, hw) + audio (1, 8, 8)), no files."""
    import torch

    from distill_export.data.dataset import Dataset, ModalitySpec, Split

    gen = torch.Generator().manual_seed(seed)

    def split(rows):
        y = torch.arange(rows) % num_classes
        return Split({"image": torch.randn(rows, 1, image_hw, image_hw, generator=gen) + y.view(-1, 1, 1, 1),
                      "audio": torch.randn(rows, 1, 8, 8, generator=gen) - y.view(-1, 1, 1, 1)}, y)

    return Dataset(
        name="synthetic", train=split(n), val=split(n // 2), test=split(n // 2),
        target_names=[str(i) for i in range(num_classes)],
        modalities={"image": ModalitySpec("image", (1, image_hw, image_hw), 0.0, 1.0),
                    "audio": ModalitySpec("audio", (1, 8, 8), 0.0, 1.0)},
    )
