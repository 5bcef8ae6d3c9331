"""Behaviour-level tests of issue 25's training-side promises:

- held-out data: the best epoch (and so tune's trial scores, which are best_val_accuracy) is
  picked on validation; the test split is never scored during training;
- resume: the weights a resumed training returns as "best" are the best epoch's, whichever epoch
  the interruption came after;
- streaming: the teacher cache's fingerprint of streamed rows changes with every keyed thing (a
  cell, a file's size or time, the row order, the normalisation stats) and with nothing else.
"""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch

from _byo_fixtures import make_manifest, read_rows, synthetic_dataset, write_rows
from distill_export.config import DataConfig, RunConfig
from distill_export.data import load_dataset
from distill_export.distill import train_baseline, train_student
from distill_export.tasks.classification.task import ClassificationTask
from distill_export.teacher_cache import inputs_fingerprint
from distill_export.train import Checkpoint, TrainSpec, train_loop
from distill_export.train_teacher import train_teacher

CPU = torch.device("cpu")

# ----- held-out data -------------------------------------------------------------------------


def _config() -> RunConfig:
    cfg = RunConfig()
    cfg.device = "cpu"
    cfg.distill.epochs, cfg.distill.batch_size = 3, 6
    cfg.teacher.epochs, cfg.teacher.batch_size, cfg.teacher.width = 3, 6, 8
    cfg.teacher.lr = 0.01
    return cfg


def _poisoned(data):
    """The same dataset with a test split that would change any score computed on it."""
    bad = copy.deepcopy(data)
    bad.test.labels = (bad.test.labels + 1) % len(bad.target_names)
    for m, x in bad.test.inputs.items():
        bad.test.inputs[m] = torch.randn_like(x) * 10
    return bad


def _trainings(tmp_path, data, only_baseline: bool = False):
    cfg = _config()
    teacher_logits = torch.randn(len(data.train), data.num_outputs, generator=torch.Generator().manual_seed(1)) * 3
    out = {}
    _, out["baseline"] = train_baseline(cfg, data, CPU, quiet=True)
    if only_baseline:
        return out["baseline"]["best_epoch"], [h["val_accuracy"] for h in out["baseline"]["history"]]
    _, out["student"] = train_student(cfg, data, teacher_logits, None, CPU, quiet=True)
    out["teacher"] = train_teacher(cfg, data, CPU, tmp_path / "teacher.pt", quiet=True)
    return {k: (v["best_epoch"], [h["val_accuracy"] for h in v["history"]]) for k, v in out.items()}


def test_best_epoch_is_picked_on_validation_never_on_test(tmp_path, monkeypatch):
    """Scrambling the test split changes nothing a training picks or reports (best epoch, the
    per-epoch scores tune's trials and pruner read), and every score computed during training is
    on the validation targets."""
    data = synthetic_dataset(n=30, seed=3)
    order = torch.randperm(len(data.test), generator=torch.Generator().manual_seed(0))
    data.test.labels = data.test.labels[order]  # test targets in another order than val's
    data.test.inputs = {m: x[order] for m, x in data.test.inputs.items()}
    assert not torch.equal(data.test.labels, data.val.labels)
    scored: list[np.ndarray] = []
    score = ClassificationTask.score

    def spy(self, outputs, targets):
        scored.append(np.asarray(targets).copy())
        return score(self, outputs, targets)

    monkeypatch.setattr(ClassificationTask, "score", spy)
    clean = _trainings(tmp_path / "a", data)
    assert scored and all(np.array_equal(t, data.val.labels.numpy()) for t in scored)
    assert len(set(clean["teacher"][1])) > 1  # the teacher learns: its val scores are not all equal
    poisoned = _trainings(tmp_path / "b", _poisoned(data))
    assert poisoned == clean
    val_changed = copy.deepcopy(data)  # control: the validation split does matter
    val_changed.val.labels = (val_changed.val.labels + 1) % len(data.target_names)
    assert _trainings(tmp_path / "c", val_changed, only_baseline=True) != clean["baseline"]


# ----- resume returns the best epoch's weights -----------------------------------------------

SCORES = {"early": [0.3, 0.9, 0.5, 0.4, 0.2], "late": [0.1, 0.2, 0.3, 0.8, 0.35], "middle": [0.2, 0.3, 0.7, 0.6, 0.6]}


def _train(scores, ckpt=None, stop_at=None, start=0):
    """A 5-epoch training whose validation scores are scripted; returns (result, returned weights,
    the weights at each epoch's end). `start`: the epoch a resumed run's first score is for."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    x, y = torch.randn(20, 4, generator=torch.Generator().manual_seed(1)), torch.arange(20) % 3
    calls = iter(scores[start:])
    epochs: dict[int, dict] = {}

    def on_epoch(epoch, acc):
        epochs[epoch] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if epoch == stop_at:
            raise KeyboardInterrupt

    result = train_loop([model], lambda rows: torch.nn.functional.cross_entropy(model(x[rows]), y[rows]), 20,
                        lambda: next(calls), TrainSpec(5, 0.05, 6), "m", quiet=True, on_epoch=on_epoch,
                        checkpoint=ckpt)
    return result, {k: v.detach().clone() for k, v in model.state_dict().items()}, epochs


@pytest.mark.parametrize("shape", list(SCORES))
@pytest.mark.parametrize("stop_at", [1, 2, 3, 4])
def test_resumed_training_returns_the_best_epochs_weights(tmp_path, shape, stop_at):
    scores = SCORES[shape]
    best_epoch = int(np.argmax(scores)) + 1
    plain, plain_weights, plain_epochs = _train(scores)
    assert plain.best_epoch == best_epoch
    for k, v in plain_epochs[best_epoch].items():
        assert torch.equal(plain_weights[k], v), k
    assert any(not torch.equal(plain_epochs[best_epoch][k], plain_epochs[5][k]) for k in plain_weights)
    ckpt = Checkpoint(tmp_path / "m.pt", "k")
    with pytest.raises(KeyboardInterrupt):
        _train(scores, ckpt, stop_at=stop_at)
    resumed, weights, _ = _train(scores, ckpt, start=stop_at)
    assert (resumed.best_epoch, resumed.best_val_accuracy) == (best_epoch, scores[best_epoch - 1])
    assert [h["val_accuracy"] for h in resumed.history] == scores
    for k, v in plain_weights.items():
        assert torch.equal(weights[k], v), (shape, stop_at, k)


# ----- the streamed rows' fingerprint --------------------------------------------------------


def _streamed_key(manifest) -> str:
    data = load_dataset(DataConfig(source=str(manifest), streaming="on"), seed=0)
    names = sorted(data.modalities)
    assert all(hasattr(data.train.inputs[m], "fingerprint") for m in names)
    return inputs_fingerprint(data.train.inputs, names)


@pytest.fixture
def manifest(tmp_path):
    return make_manifest(tmp_path, per_class=6, modalities=("image", "audio"))


def _image_paths(manifest):
    rows = read_rows(manifest)
    return rows, [manifest.parent / r["image"] for r in rows]


def test_streamed_fingerprint_is_stable(manifest):
    assert _streamed_key(manifest) == _streamed_key(manifest)


@pytest.mark.parametrize("change", ["cell", "file_size", "file_time", "file_bytes", "row_order", "row_more"])
def test_streamed_fingerprint_changes_with_every_keyed_thing(manifest, change):
    before = _streamed_key(manifest)
    rows, paths = _image_paths(manifest)
    train_file = paths[0]
    st = os.stat(train_file)
    if change == "cell":  # another name for the same bytes
        copy_path = train_file.with_name("copy_" + train_file.name)
        copy_path.write_bytes(train_file.read_bytes())
        os.utime(copy_path, ns=(st.st_atime_ns, st.st_mtime_ns))
        for r in rows:
            r["image"] = r["image"].replace(train_file.name, copy_path.name) if r["image"].endswith(train_file.name) else r["image"]
        write_rows(manifest, rows)
    elif change == "file_size":  # longer file, same modification time
        with open(train_file, "ab") as f:
            f.write(b"\0" * 16)
        os.utime(train_file, ns=(st.st_atime_ns, st.st_mtime_ns))
    elif change == "file_time":
        os.utime(train_file, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    elif change == "file_bytes":  # rewritten in place: new bytes, same size, a new time
        raw = bytearray(train_file.read_bytes())
        raw[-5] ^= 0xFF
        train_file.write_bytes(bytes(raw))
        os.utime(train_file, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    elif change == "row_order":
        rows = rows[1:] + rows[:1]
        write_rows(manifest, rows)
    elif change == "row_more":  # one training row more (and so other normalisation stats)
        rows.append(dict(rows[0]))
        write_rows(manifest, rows)
    assert _streamed_key(manifest) != before, change


def test_streamed_column_fingerprint_keys_the_row_selection(manifest):
    data = load_dataset(DataConfig(source=str(manifest), streaming="on"), seed=0)
    col = data.train.inputs["image"]
    n = len(col)
    same = col.take(torch.arange(n))
    assert same.fingerprint() == col.fingerprint()
    assert col.take(torch.arange(n).flip(0)).fingerprint() != col.fingerprint()  # row order
    assert col.take(torch.arange(n - 1)).fingerprint() != col.fingerprint()  # a row fewer
    assert data.train.inputs["audio"].fingerprint() != col.fingerprint()  # the modality
    source = copy.copy(col.source)
    mean, std = source.stats["image"]
    source.stats = {**source.stats, "image": (mean, std * 1.01)}  # other normalisation, same files
    assert type(col)(source, "image", col.index).fingerprint() != col.fingerprint()
