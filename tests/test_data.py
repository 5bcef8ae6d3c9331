"""The AV-Digits demo dataset: shapes, determinism, disjoint splits, label hiding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distill_export.config import DataConfig
from distill_export.data import IGNORE_INDEX, load_dataset
from distill_export.data.avdigits import _load_mnist_5k, _split_indices, pca_degrade
from distill_export.data.dataset import keep_label_fraction


@pytest.fixture(scope="module")
def demo():
    return load_dataset(DataConfig(), seed=0)


def test_shapes_and_classes(demo):
    assert demo.num_outputs == 10
    assert demo.info["sizes"] == {"train": 3500, "val": 500, "test": 1000}
    for split in (demo.train, demo.val, demo.test):
        assert split.inputs["image"].shape[1:] == (1, 28, 28)
        assert split.inputs["audio"].shape[1:] == (1, 32, 32)
        assert split.inputs["image"].dtype == torch.float32
        assert torch.isfinite(split.inputs["audio"]).all()
    # Normalised with train statistics.
    assert abs(float(demo.train.inputs["image"].mean())) < 1e-3
    assert float(demo.train.inputs["image"].std()) == pytest.approx(1.0, abs=1e-3)


def test_deterministic(demo):
    again = load_dataset(DataConfig(), seed=0)
    for name in ("image", "audio"):
        assert torch.equal(demo.test.inputs[name], again.test.inputs[name])
    assert demo.fingerprint() == again.fingerprint()


def test_splits_are_disjoint_and_balanced():
    _, labels = _load_mnist_5k()
    idx = _split_indices(labels)
    sets = {k: set(v.tolist()) for k, v in idx.items()}
    assert not sets["train"] & sets["val"] and not sets["train"] & sets["test"] and not sets["val"] & sets["test"]
    assert np.bincount(labels[idx["test"]]).tolist() == [100] * 10


def test_pca_keeps_the_requested_variance():
    rng = np.random.default_rng(0)
    train = rng.standard_normal((200, 20)) * np.linspace(5, 0.1, 20)
    degraded, (other,), k = pca_degrade(train, [train[:5]], 0.5)
    assert 1 <= k < 20
    kept = np.var(degraded - train.mean(0), axis=0).sum() / np.var(train, axis=0).sum()
    assert kept >= 0.5 - 1e-6
    assert other.shape == (5, 20)


def test_test_audio_voices_are_held_out(demo):
    assert len(demo.info["test_voices"]) >= 5


def test_label_fraction_hides_labels_stratified():
    labels = torch.arange(10).repeat(100)
    kept = keep_label_fraction(labels, 0.1, seed=3)
    assert int((kept != IGNORE_INDEX).sum()) == 100
    for c in range(10):
        assert int((kept == c).sum()) == 10
    # Kept labels are the true ones; the seed picks which rows.
    mask = kept != IGNORE_INDEX
    assert torch.equal(kept[mask], labels[mask])
    assert not torch.equal(kept, keep_label_fraction(labels, 0.1, seed=4))


def test_label_fraction_in_dataset():
    data = load_dataset(DataConfig(label_fraction=0.1), seed=0)
    assert int(data.train.labeled.sum()) == 350
    assert int(data.test.labeled.sum()) == 1000  # evaluation always sees every label
