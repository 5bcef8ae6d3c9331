"""Write a tiny synthetic 3-channel 96x96 manifest (PNG images + WAV clips) for a smoke test of
the real-size recipe (models/rgb96.yaml):

    python tools/make_rgb96_manifest.py --out /tmp/rgb96 --per-class 8
    distill-export run --recipe rgb96 --data /tmp/rgb96/manifest.csv --out runs/rgb96

Class k gets a colored square at its own place (its own hue) on a noisy background, and a tone
at 400·(k+1) Hz, so the classes can be told apart from either modality. Per class, 60% of the
rows are train, 20% val, 20% test (at least one each).
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import wave
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/toolargs.py, also when loaded by path
from toolargs import Parser, at_least, one_line_errors  # noqa: E402

SIZE = 96
COLORS = ((230, 40, 40), (40, 200, 60), (50, 80, 230), (220, 200, 40), (200, 60, 200), (40, 200, 210))


def class_image(k: int, rng: np.random.Generator) -> np.ndarray:
    """(96, 96, 3) uint8: noise, and a 32-px square of class k's color at class k's place."""
    img = rng.integers(0, 60, (SIZE, SIZE, 3))
    row, col = divmod(k % 4, 2)
    top, left = 8 + 48 * row + int(rng.integers(0, 8)), 8 + 48 * col + int(rng.integers(0, 8))
    img[top:top + 32, left:left + 32] = COLORS[k % len(COLORS)]
    return img.astype(np.uint8)


def write_wav(path: Path, freq: float, rng: np.random.Generator, rate: int = 8000, seconds: float = 0.3) -> None:
    t = np.arange(int(rate * seconds)) / rate
    samples = 0.6 * np.sin(2 * math.pi * freq * t) + rng.normal(0, 0.05, t.shape)
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())


def make_manifest(out: Path, classes: int = 3, per_class: int = 8, seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    (out / "img").mkdir(parents=True, exist_ok=True)
    (out / "wav").mkdir(parents=True, exist_ok=True)
    n_val = n_test = max(1, round(0.2 * per_class))
    rows = []
    for k in range(classes):
        for i in range(per_class):
            image, audio = f"img/c{k}_{i}.png", f"wav/c{k}_{i}.wav"
            Image.fromarray(class_image(k, rng), mode="RGB").save(out / image)
            write_wav(out / audio, 400.0 * (k + 1), rng)
            split = "val" if i < n_val else "test" if i < n_val + n_test else "train"
            rows.append({"image": image, "audio": audio, "label": f"class{k}", "split": split})
    manifest = out / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return manifest


@one_line_errors
def main() -> None:
    ap = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--classes", type=at_least(2, 10), default=3)
    ap.add_argument("--per-class", type=at_least(3), default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from distill_export.output_paths import check_tool_output

    check_tool_output(args.out, folder=True, remove_on_failure=True)  # new or empty folder, outside any run: before any work
    print(make_manifest(args.out, args.classes, args.per_class, args.seed))


if __name__ == "__main__":
    main()
