"""Teacher-output cache: miss, hit, invalidation by teacher / data / preprocessing, labels not
in the key, the shared cache folder, and augmentation that bypasses it."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from _byo_fixtures import synthetic_dataset
from distill_export.config import RunConfig
from distill_export.data.augment import random_shift
from distill_export.rundir import RunDir
from distill_export.teacher_cache import CACHE_FILE, teacher_targets


class CountingTeacher:
    """forward(inputs) -> (features, logits), counting the rows it has seen."""

    def __init__(self, scale: float = 1.0):
        self.rows = 0
        self.scale = scale

    def __call__(self, inputs):
        x = torch.cat([v.flatten(1) for _, v in sorted(inputs.items())], 1)
        self.rows += x.shape[0]
        return x[:, :4] * self.scale, x[:, :3] * self.scale


@pytest.fixture
def run(tmp_path):
    rd = RunDir.create(tmp_path / "run")
    rd.file("teacher.pt").write_bytes(b"teacher v1")  # what the run's teacher hash is taken from
    return rd


def targets(run, data, teacher, config=None, view=()):
    config = config or RunConfig()
    return teacher_targets(config, run, data, teacher, torch.device("cpu"), ["audio", "image"], view)


def test_miss_then_hit(run):
    data = synthetic_dataset()
    t = CountingTeacher()
    first = targets(run, data, t)
    assert first.info["status"] == "miss" and t.rows == len(data.train)
    assert run.file(CACHE_FILE).is_file()
    second = targets(run, data, t)
    assert second.info["status"] == "hit" and t.rows == len(data.train)  # no second forward
    assert torch.equal(first.logits, second.logits) and torch.equal(first.feats, second.feats)
    assert first.online is None and first.augment is None


def test_invalidated_by_teacher(run):
    data = synthetic_dataset()
    targets(run, data, CountingTeacher())
    run.file("teacher.pt").write_bytes(b"teacher v2")
    again = targets(run, data, CountingTeacher(scale=2.0))
    assert again.info == {"status": "miss", "reason": "the teacher changed", "path": str(run.file(CACHE_FILE))}
    assert torch.equal(again.logits, CountingTeacher(2.0)(data.train.inputs)[1])


def test_invalidated_by_data(run):
    targets(run, synthetic_dataset(seed=0), CountingTeacher())
    again = targets(run, synthetic_dataset(seed=1), CountingTeacher())
    assert again.info["reason"] == "the data changed"


def test_invalidated_by_preprocessing(run):
    data = synthetic_dataset()
    targets(run, data, CountingTeacher())
    data.modalities["image"] = dataclasses.replace(data.modalities["image"], mean=0.5)  # other normalisation
    assert targets(run, data, CountingTeacher()).info["reason"] == "the preprocessing changed"
    assert targets(run, data, CountingTeacher(), view=("audio",)).info["reason"] == "the preprocessing changed"


def test_labels_are_not_part_of_the_key(run):
    data = synthetic_dataset()
    targets(run, data, CountingTeacher())
    data.train.labels[:5] = -100  # another label fraction: same teacher outputs
    assert targets(run, data, CountingTeacher()).info["status"] == "hit"


def test_shared_cache_dir_across_runs(tmp_path, run):
    data = synthetic_dataset()
    cfg = RunConfig()
    cfg.distill.teacher_cache_dir = str(tmp_path / "shared")
    targets(run, data, CountingTeacher(), cfg)
    other = RunDir.create(tmp_path / "run2")
    other.file("teacher.pt").write_bytes(b"teacher v1")  # the same teacher, another run
    t = CountingTeacher()
    assert targets(other, data, t, cfg).info["status"] == "hit" and t.rows == 0


def test_disabled_and_augmented(run):
    data = synthetic_dataset()
    cfg = RunConfig()
    cfg.distill.teacher_cache = False
    assert targets(run, data, CountingTeacher(), cfg).info == {"status": "disabled"}
    assert not run.file(CACHE_FILE).exists()
    cfg.distill.augment = "shift"
    t = CountingTeacher()
    out = targets(run, data, t, cfg)
    assert out.info["status"] == "not used" and out.logits is None and out.augment is random_shift
    rows = torch.tensor([0, 3])
    x = torch.zeros(2, 1, 8, 8)
    _, logits = out.online(rows, x)  # the teacher sees the student's (augmented) input
    expected = CountingTeacher()({"audio": data.train.inputs["audio"][rows], "image": x})[1]
    assert torch.equal(logits, expected)


def test_random_shift_moves_pixels_only():
    torch.manual_seed(0)
    x = torch.zeros(16, 1, 9, 9)
    x[:, :, 4, 4] = 1.0
    y = random_shift(x)
    assert y.shape == x.shape and torch.equal(y.sum((1, 2, 3)), x.sum((1, 2, 3)))
    moved = [tuple(int(i) for i in (img[0] == 1).nonzero()[0]) for img in y]
    assert all(2 <= r <= 6 and 2 <= c <= 6 for r, c in moved) and len(set(moved)) > 1


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_cache_file_is_a_miss_with_its_reason(run, damage):
    data = synthetic_dataset()
    first = targets(run, data, CountingTeacher())
    path = run.file(CACHE_FILE)
    blob = path.read_bytes()
    path.write_bytes(b"\x00not a safetensors file" if damage == "garbage" else blob[: len(blob) // 2])
    t = CountingTeacher()
    again = targets(run, data, t)
    assert again.info["status"] == "miss" and again.info["reason"].startswith("unreadable cache"), again.info
    assert t.rows == len(data.train) and torch.equal(again.logits, first.logits)  # recomputed, and rewritten
    assert targets(run, data, CountingTeacher()).info["status"] == "hit"


def test_cache_with_the_wrong_row_count_is_a_miss_with_its_reason(run):
    """A file whose key matches but that holds one row fewer (written by hand: the key hashes
    the inputs, so only a damaged or hand-made file can get here)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    data = synthetic_dataset()
    targets(run, data, CountingTeacher())
    path = run.file(CACHE_FILE)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k)[:-1].contiguous() for k in f.keys()}
    save_file(tensors, str(path), metadata=meta)
    t = CountingTeacher()
    again = targets(run, data, t)
    n = len(data.train)
    assert again.info["status"] == "miss"
    assert again.info["reason"] == f"cache holds {n - 1} rows, the training set has {n}"
    assert t.rows == n and again.logits.shape[0] == n
