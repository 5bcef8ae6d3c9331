"""data.max_train_rows on the built-in AV-Digits demo (issue 25): the same share of each
digit, the same rows whatever the run's seed, validation and test left whole."""

from __future__ import annotations

import numpy as np
import torch

from distill_export.config import DataConfig
from distill_export.data.avdigits import PER_CLASS, build_avdigits, subsample_per_class


def test_max_train_rows_keeps_each_digits_share_and_the_held_out_splits():
    config = DataConfig(max_train_rows=205)
    data, again = build_avdigits(config, seed=0), build_avdigits(config, seed=7)
    counts = np.bincount(data.train.labels.numpy(), minlength=10)
    assert len(data.train) == 205 and counts.max() - counts.min() <= 1  # 20 or 21 of each digit
    assert torch.equal(data.train.labels, again.train.labels)  # fixed whatever the run's seed
    assert torch.equal(data.train.inputs["image"], again.train.inputs["image"])
    assert len(data.val) == 10 * PER_CLASS["val"] and len(data.test) == 10 * PER_CLASS["test"]
    assert data.info["sizes"]["train"] == 205 and data.info["train_rows_subsampled_from"] == 10 * PER_CLASS["train"]


def test_subsample_is_a_subset_in_order_and_zero_keeps_everything():
    labels = np.repeat(np.arange(3), [60, 30, 10])
    idx = np.random.default_rng(1).permutation(100)
    kept = subsample_per_class(idx, labels, 10)
    assert list(np.bincount(labels[kept], minlength=3)) == [6, 3, 1]  # each class its share
    positions = [list(idx).index(i) for i in kept]
    assert positions == sorted(positions)  # the split's order is kept
    assert subsample_per_class(idx, labels, 0) is idx and subsample_per_class(idx, labels, 100) is idx
