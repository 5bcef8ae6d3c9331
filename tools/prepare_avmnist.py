"""Build AV-MNIST from the raw files, the way MultiBench / MFAS do, as a manifest dataset.

    python tools/prepare_avmnist.py --mnist ../shared/data/mnist \\
        --fsdd ../shared/data/fsdd/recordings --out ~/.cache/distill-export/avmnist

Writes OUT/manifest.csv (columns image, audio, label, split), the PNG images and WAV clips
it references, OUT/pairs.csv (which MNIST image and FSDD take each row came from) and
OUT/prepare.json (the settings and counts). OUT must lie outside the repository.

What it does:
  * Images: MNIST digits degraded by PCA: projected onto the top principal components that
    hold --pca-variance (25%) of the variance, fitted on the training images only
    (data/avdigits.py's pca_degrade), clipped to [0, 1] and saved as 8-bit PNG.
  * Audio: each image is paired with a spoken digit (FSDD) of the same class, and pink noise
    is mixed into the clip at --snr-db (power over the whole clip), a fresh draw per pair.
  * Splits: only the MNIST *test set* (10,000 images) is available, so it is split here,
    per digit with --seed: 10% test, 10% val, 80% train. Audio is speaker-disjoint for test:
    test images get clips of the test speaker (yweweler); val images get takes 0-4 of the
    other five speakers, train images takes 5-49 (FSDD's own train/test take split), so val
    and train share speakers but no recording. Clips are reused across images (500-2,250
    clips for 1,000-8,000 images), as in AV-MNIST, each time with other noise.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import re
import sys
import wave
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/toolargs.py, also when loaded by path
from toolargs import Parser, at_least, fail, finite, fraction, one_line_errors  # noqa: E402
DEFAULT_OUT = Path("~/.cache/distill-export/avmnist")
TEST_SPEAKER = "yweweler"
VAL_TAKES = range(0, 5)  # FSDD's conventional test takes, used here as val for train speakers
SPLIT_FRACTIONS = {"test": 0.1, "val": 0.1}  # of each digit's images; the rest is train
CLIP = re.compile(r"^(\d)_([a-z]+)_(\d+)\.wav$")


def read_idx(path: Path) -> np.ndarray:
    """An idx file (optionally .gz): MNIST's format, big-endian dims after a magic number."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def find(folder: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    fail(f"{folder} has no {stem}(.gz)")


def list_clips(folder: Path) -> list[tuple[Path, int, str, int]]:
    clips = []
    for p in sorted(folder.glob("*.wav")):
        m = CLIP.match(p.name)
        if m:
            clips.append((p, int(m.group(1)), m.group(2), int(m.group(3))))
    if not clips:
        fail(f"no FSDD clips ({{digit}}_{{speaker}}_{{index}}.wav) in {folder}")
    return clips


def split_images(labels: np.ndarray, rng) -> dict[str, np.ndarray]:
    parts = {"train": [], "val": [], "test": []}
    for digit in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == digit))
        n_test = int(round(SPLIT_FRACTIONS["test"] * len(idx)))
        n_val = int(round(SPLIT_FRACTIONS["val"] * len(idx)))
        parts["test"].append(idx[:n_test])
        parts["val"].append(idx[n_test : n_test + n_val])
        parts["train"].append(idx[n_test + n_val :])
    return {k: np.sort(np.concatenate(v)) for k, v in parts.items()}


def pink_noise(n: int, rng) -> np.ndarray:
    """Unit-power noise whose power falls as 1/f (speech-like masking)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spec), dtype=np.float64)
    f[0] = 1.0
    x = np.fft.irfft(spec / np.sqrt(f), n)
    return x / np.sqrt(np.mean(x**2) + 1e-12)


def mix(clip: np.ndarray, snr_db: float, rng) -> np.ndarray:
    power = float(np.mean(clip.astype(np.float64) ** 2)) + 1e-12
    noisy = clip + pink_noise(len(clip), rng) * np.sqrt(power / 10 ** (snr_db / 10))
    peak = np.abs(noisy).max()
    return noisy / peak * 0.99 if peak > 0.99 else noisy  # no clipping in 16-bit


def write_wav(path: Path, samples: np.ndarray, sample_rate: int) -> None:
    pcm = (np.clip(samples, -1, 1) * 32767).round().astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(sample_rate)
        f.writeframes(pcm.tobytes())


@one_line_errors
def main(argv=None) -> Path:
    ap = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mnist", type=Path, required=True, help="folder with t10k-images-idx3-ubyte(.gz) and labels")
    ap.add_argument("--fsdd", type=Path, required=True, help="FSDD recordings folder (WAV files)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    ap.add_argument("--pca-variance", type=fraction, default=0.25, help="image variance kept by PCA")
    ap.add_argument("--snr-db", type=finite, default=-5.0, help="pink noise mixed into each clip")
    ap.add_argument("--limit", type=at_least(0), default=0, help="use only this many images (tests); 0 = all")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    sys.path.insert(0, str(REPO))
    from distill_export.data.audio import read_wav
    from distill_export.data.avdigits import pca_degrade
    from PIL import Image

    out = args.out.expanduser().resolve()
    if out == REPO or REPO in out.parents:
        fail(f"--out {out} is inside the repository; the dataset must live outside it")
    from distill_export.output_paths import check_tool_output

    check_tool_output(out, folder=True, remove_on_failure=True)  # new or empty, outside any run: nothing of the user's overwritten
    images = read_idx(find(args.mnist, "t10k-images-idx3-ubyte")).astype(np.float32) / 255.0  # (N, 28, 28)
    labels = read_idx(find(args.mnist, "t10k-labels-idx1-ubyte")).astype(np.int64)
    rng = np.random.default_rng(args.seed)
    if args.limit:
        keep = np.sort(rng.permutation(len(labels))[: args.limit])
        images, labels = images[keep], labels[keep]
        source_index = keep
    else:
        source_index = np.arange(len(labels))
    parts = split_images(labels, rng)
    if empty := [split for split in ("train", "val", "test") if len(parts[split]) == 0]:  # the product refused it after
        fail(f"--limit {args.limit} leaves the {' and '.join(empty)} split{'s' * (len(empty) > 1)} empty (10% of each "
             "digit's images, rounded, for val and test): give a larger --limit")  # (58th audit A1)

    flat = images.reshape(len(images), -1)
    train_img, (val_img, test_img), n_components = pca_degrade(
        flat[parts["train"]], [flat[parts["val"]], flat[parts["test"]]], args.pca_variance)
    degraded = {"train": train_img, "val": val_img, "test": test_img}

    clips = list_clips(args.fsdd)
    speakers = sorted({c[2] for c in clips})
    if TEST_SPEAKER not in speakers:
        fail(f"FSDD speaker {TEST_SPEAKER} (the test speaker) not in {args.fsdd}")
    pool_of = {
        "test": [c for c in clips if c[2] == TEST_SPEAKER],
        "val": [c for c in clips if c[2] != TEST_SPEAKER and c[3] in VAL_TAKES],
        "train": [c for c in clips if c[2] != TEST_SPEAKER and c[3] not in VAL_TAKES],
    }
    cache: dict[Path, tuple[np.ndarray, int]] = {}
    rows, pairs = [], []
    for split in ("train", "val", "test"):
        (out / "image" / split).mkdir(parents=True, exist_ok=True)
        (out / "audio" / split).mkdir(parents=True, exist_ok=True)
        by_digit = {d: [c for c in pool_of[split] if c[1] == d] for d in range(10)}
        for j, i in enumerate(parts[split]):
            digit = int(labels[i])
            if not by_digit[digit]:
                fail(f"no FSDD clip of digit {digit} for the {split} split")
            path, _, speaker, take = by_digit[digit][rng.integers(len(by_digit[digit]))]
            if path not in cache:
                cache[path] = read_wav(path)
            samples, sr = cache[path]
            stem = f"{split}/{j:05d}"
            pixels = np.clip(degraded[split][j].reshape(28, 28) * 255.0, 0, 255).round().astype(np.uint8)
            Image.fromarray(pixels).save(out / "image" / f"{stem}.png")
            write_wav(out / "audio" / f"{stem}.wav", mix(samples, args.snr_db, rng), sr)
            rows.append({"image": f"image/{stem}.png", "audio": f"audio/{stem}.wav", "label": digit, "split": split})
            pairs.append({"image": f"image/{stem}.png", "mnist_test_index": int(source_index[i]),
                          "fsdd_clip": path.name, "speaker": speaker, "take": take})
    for name, table in (("manifest.csv", rows), ("pairs.csv", pairs)):
        with open(out / name, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(table[0]))
            w.writeheader()
            w.writerows(table)
    info = {
        "pca_variance": args.pca_variance, "pca_components": n_components, "snr_db": args.snr_db,
        "noise": "pink (1/f power), a fresh draw per pair, power relative to the whole clip",
        "seed": args.seed, "limit": args.limit, "test_speaker": TEST_SPEAKER,
        "val_takes": [VAL_TAKES.start, VAL_TAKES.stop - 1],
        "sizes": {s: int(len(p)) for s, p in parts.items()},
        "clips": {s: len(p) for s, p in pool_of.items()},
    }
    (out / "prepare.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"wrote {out / 'manifest.csv'}: {len(rows)} rows {info['sizes']}, PCA keeps {n_components} "
          f"components ({args.pca_variance:.0%} of the variance), audio at {args.snr_db:+.0f} dB SNR")
    return out / "manifest.csv"


if __name__ == "__main__":
    main()
