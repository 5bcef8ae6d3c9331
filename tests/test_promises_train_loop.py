"""Behaviour-level tests of train.py's promises (issue 25), fast enough to run per mutant:

- the loop is AdamW(lr, weight_decay) under a one-cycle schedule over seeded batches of row
  indices (rows_per_epoch rows an epoch), and it returns the best validation epoch's weights;
- its history is the row-weighted mean of the batch losses (and of each loss part) per epoch;
- a killed run resumed from its checkpoint ends with the history and weights of an
  uninterrupted one, RNG draws included; a checkpoint of another training, or a damaged one, is
  not resumed from (a damaged one is one warning line);
- a non-finite epoch loss stops the training with one message, before any checkpoint keeps it;
- predict runs over tensors or dicts in batches and concatenates.
"""

from __future__ import annotations

import copy
import math
import random

import numpy as np
import pytest
import torch

from distill_export.errors import TrainingDiverged
from distill_export.train import Checkpoint, TrainSpec, checkpoint_progress, predict, train_loop

N = 10
X = torch.randn(N, 4, generator=torch.Generator().manual_seed(1))
Y = torch.arange(N) % 3


def _model():
    torch.manual_seed(0)
    return torch.nn.Linear(4, 3)


def _reference(spec: TrainSpec, scores):
    """The documented loop written out: AdamW, OneCycleLR(max_lr=lr, pct_start=0.15) over
    epochs · ceil(rows_per_epoch / batch_size) steps, each epoch's order drawn from one generator
    seeded with spec.seed (whole permutations, cut to rows_per_epoch); the best epoch's weights."""
    model = _model()
    per = spec.rows_per_epoch or N
    steps = max(1, -(-per // spec.batch_size))
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=spec.lr, total_steps=spec.epochs * steps, pct_start=0.15)
    gen = torch.Generator().manual_seed(spec.seed)
    best, best_state, losses, lrs = -1.0, None, [], []
    for epoch in range(spec.epochs):
        order = torch.cat([torch.randperm(N, generator=gen) for _ in range(-(-per // N))])[:per]
        total = 0.0
        for s in range(0, per, spec.batch_size):
            rows = order[s : s + spec.batch_size]
            loss = torch.nn.functional.cross_entropy(model(X[rows]), Y[rows])
            opt.zero_grad()
            loss.backward()
            lrs.append(opt.param_groups[0]["lr"])  # the rate this step uses
            opt.step()
            sched.step()
            total += loss.item() * len(rows)
        losses.append(total / per)
        if scores[epoch] > best:
            best, best_state = scores[epoch], copy.deepcopy(model.state_dict())
    return best_state, losses, lrs


def _run(spec: TrainSpec, scores, ckpt=None, stop_at=None, start=0, noise=False, parts=False, told=None):
    model = _model()
    calls = iter(scores[start:])
    seen = []
    told = [] if told is None else told  # what on_epoch was told: (epoch, score)

    def batch_loss(rows):
        seen.append(rows.clone())
        loss = torch.nn.functional.cross_entropy(model(X[rows]), Y[rows])
        if noise:  # draws from every RNG a resumed run must continue: torch, numpy, python
            loss = loss + 1e-3 * (torch.rand(()) + float(np.random.rand()) + random.random())
        if parts:
            return loss, {"ce": loss.detach() * 2, "count": float(len(rows))}
        return loss

    def on_epoch(epoch, acc):
        told.append((epoch, acc))
        if epoch == stop_at:
            raise KeyboardInterrupt

    result = train_loop([model], batch_loss, N, lambda: next(calls), spec, " m ", quiet=True, on_epoch=on_epoch,
                        checkpoint=ckpt)
    return result, {k: v.detach().clone() for k, v in model.state_dict().items()}, seen


@pytest.mark.parametrize("spec", [TrainSpec(3, 0.05, 4), TrainSpec(2, 0.02, 3, weight_decay=0.5, seed=7, rows_per_epoch=25),
                                  TrainSpec(3, 0.05, 16)])  # the last: one step an epoch
def test_the_loop_is_adamw_one_cycle_over_seeded_batches_and_returns_the_best_epoch(spec):
    scores = [0.2, 0.6, 0.6][: spec.epochs]  # a tie: the first epoch with the best score is the best
    told = []
    result, weights, seen = _run(spec, scores, told=told)
    want, losses, _ = _reference(spec, scores)
    assert (result.best_epoch, result.best_val_accuracy) == (2, 0.6)
    assert told == [(e + 1, a) for e, a in enumerate(scores)]  # on_epoch hears every epoch's score
    for k, v in want.items():
        torch.testing.assert_close(weights[k], v, rtol=0, atol=1e-6)
    per = spec.rows_per_epoch or N
    assert [h["epoch"] for h in result.history] == list(range(1, spec.epochs + 1))
    assert [h["val_accuracy"] for h in result.history] == scores
    assert [h["train_loss"] for h in result.history] == losses  # summed in float64, as Python sums floats
    assert sum(len(r) for r in seen) == spec.epochs * per and max(len(r) for r in seen) == min(spec.batch_size, per)
    assert all("train_loss_parts" not in h for h in result.history)


def test_the_schedule_warms_up_then_anneals_to_near_zero(monkeypatch):
    spec = TrainSpec(4, 0.1, 3)
    _, _, want = _reference(spec, [0.0] * 4)
    model = _model()
    seen_lr = []
    step = torch.optim.AdamW.step

    def spy(self, *a, **kw):
        seen_lr.append(self.param_groups[0]["lr"])
        return step(self, *a, **kw)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    train_loop([model], lambda r: torch.nn.functional.cross_entropy(model(X[r]), Y[r]), N, lambda: 0.0, spec, "m",
               quiet=True)
    assert seen_lr == pytest.approx(want, rel=1e-9)  # ceil(10 / 3) = 4 steps an epoch, 16 in all
    assert len(seen_lr) == 16 and seen_lr[0] < 0.1 / 10 and max(seen_lr) == pytest.approx(0.1, rel=0.05)
    assert seen_lr[-1] < 1e-3 and 1 <= seen_lr.index(max(seen_lr)) <= 3  # the peak at 15% of the steps


def test_history_is_the_row_weighted_mean_of_the_losses_and_their_parts():
    spec = TrainSpec(2, 0.05, 4)  # batches of 4, 4, 2 rows
    result, _, seen = _run(spec, [0.5, 0.4], parts=True)
    _, losses, _ = _reference(spec, [0.5, 0.4])
    assert [len(r) for r in seen[:3]] == [4, 4, 2]
    for h, loss in zip(result.history, losses):
        assert h["train_loss"] == pytest.approx(loss, rel=1e-6)
        assert h["train_loss_parts"]["ce"] == pytest.approx(2 * loss, rel=1e-6)
        assert h["train_loss_parts"]["count"] == pytest.approx((4 * 4 + 4 * 4 + 2 * 2) / 10)
        assert all(type(v) is float for v in (h["train_loss"], *h["train_loss_parts"].values()))
    assert result.best_epoch == 1 and result.best_val_accuracy == 0.5


@pytest.mark.parametrize("stop_at", [1, 2])
def test_a_resumed_run_ends_as_an_uninterrupted_one(tmp_path, stop_at):
    spec, scores = TrainSpec(3, 0.05, 4), [0.3, 0.5, 0.4]
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    plain, plain_w, _ = _run(spec, scores, noise=True, parts=True)
    ckpt = Checkpoint(tmp_path / "m.pt", "k")
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    with pytest.raises(KeyboardInterrupt):
        _run(spec, scores, ckpt, stop_at=stop_at, noise=True, parts=True)
    assert checkpoint_progress(ckpt.path) == (stop_at, 3)
    state = torch.load(ckpt.path, weights_only=True)
    assert state["label"] == "m" and state["epoch"] == stop_at
    random.seed(99), np.random.seed(99), torch.manual_seed(99)  # resume restores the saved RNGs
    resumed, resumed_w, seen = _run(spec, scores, ckpt, start=stop_at, noise=True, parts=True)
    assert sum(len(r) for r in seen) == (3 - stop_at) * N  # only the epochs left
    assert resumed.history == plain.history
    assert (resumed.best_epoch, resumed.best_val_accuracy) == (plain.best_epoch, plain.best_val_accuracy) == (2, 0.5)
    for k, v in plain_w.items():
        assert torch.equal(resumed_w[k], v), k
    assert checkpoint_progress(ckpt.path) == (3, 3)


@pytest.mark.parametrize("other", ["key", "spec", "rows", "model"])
def test_a_checkpoint_of_another_training_is_not_resumed(tmp_path, other):
    spec, scores = TrainSpec(3, 0.05, 4), [0.3, 0.5, 0.4]
    ckpt = Checkpoint(tmp_path / "m.pt", "k")
    with pytest.raises(KeyboardInterrupt):
        _run(spec, scores, ckpt, stop_at=2)
    calls = []
    later = {"key": Checkpoint(ckpt.path, "other"), "spec": ckpt, "rows": ckpt, "model": ckpt}[other]
    spec2 = TrainSpec(3, 0.051, 4) if other == "spec" else spec
    model = torch.nn.Linear(4, 2) if other == "model" else _model()
    n = N - 1 if other == "rows" else N
    y = Y.clamp(max=1) if other == "model" else Y
    result = train_loop([model], lambda r: torch.nn.functional.cross_entropy(model(X[r]), y[r]), n,
                        lambda: scores[len(calls)], spec2, "m", quiet=True, on_epoch=lambda e, a: calls.append(e),
                        checkpoint=later)
    assert calls == [1, 2, 3] and len(result.history) == 3  # from the start


@pytest.mark.parametrize("content", [b"not a checkpoint", "foreign"])
def test_a_damaged_or_foreign_checkpoint_trains_from_the_start(tmp_path, content, capsys):
    spec, scores = TrainSpec(2, 0.05, 4), [0.3, 0.5]
    path = tmp_path / "m.pt"
    if content == "foreign":
        torch.save({"format": "something else", "key": "k", "epoch": 1}, path)
    else:
        path.write_bytes(content)
    plain, plain_w, _ = _run(spec, scores)
    capsys.readouterr()
    result, weights, seen = _run(spec, scores, Checkpoint(path, "k"))
    assert result.history == plain.history and sum(len(r) for r in seen) == 2 * N
    err = capsys.readouterr().err
    if content == "foreign":
        assert err == ""
    else:
        assert f"warning: {path} is unreadable" in err and "training from the start" in err
    assert checkpoint_progress(path) == (2, 2)
    assert checkpoint_progress(tmp_path / "absent.pt") is None
    (tmp_path / "bad.pt").write_bytes(b"xx")
    assert checkpoint_progress(tmp_path / "bad.pt") is None


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_non_finite_loss_stops_the_training_before_a_checkpoint_keeps_it(tmp_path, bad):
    model = _model()
    epochs = []
    ckpt = Checkpoint(tmp_path / "m.pt", "k")

    def batch_loss(rows):
        loss = torch.nn.functional.cross_entropy(model(X[rows]), Y[rows])
        return loss + torch.tensor(bad) if len(epochs) == 1 else loss  # a constant: the gradients stay finite

    with pytest.raises(TrainingDiverged) as info:
        train_loop([model], batch_loss, N, lambda: 0.5, TrainSpec(3, 0.05, 4), " student ", quiet=True,
                   on_epoch=lambda e, a: epochs.append(e), checkpoint=ckpt)
    message = str(info.value)
    assert message.startswith(f"training of 'student' stopped: its loss is {bad} (not finite) in epoch 2 of 3; ")
    assert "(now 0.05)" in message and message.endswith("or check its initial weights") and "\n" not in message
    assert epochs == [1] and checkpoint_progress(ckpt.path) == (1, 3)


def test_a_training_shows_its_progress_unless_quiet(capsys):
    model = _model()
    train_loop([model], lambda r: torch.nn.functional.cross_entropy(model(X[r]), Y[r]), N, lambda: 0.25,
               TrainSpec(2, 0.05, 5), "teacher")  # loud by default
    out = capsys.readouterr()
    text = out.out + out.err
    assert "teacher" in text and "epoch 2/2 val score 0.250" in text and "XX" not in text
    train_loop([model], lambda r: torch.nn.functional.cross_entropy(model(X[r]), Y[r]), N, lambda: 0.25,
               TrainSpec(2, 0.05, 5), "teacher", quiet=True)
    out = capsys.readouterr()
    assert out.out + out.err == ""


def test_fetched_payloads_reach_the_loss_with_their_rows():
    """fetch(batches) -> one payload per batch (a DataLoader's decoded rows); batch_loss(rows,
    payload) gets each with its rows, and the training is the one that indexes in memory."""
    spec, scores = TrainSpec(2, 0.05, 4), [0.3, 0.5]
    plain, plain_w, plain_seen = _run(spec, scores)
    model = _model()
    asked, got = [], []

    def fetch(batches):
        asked.append([b.clone() for b in batches])
        for b in batches:
            yield X[b] * 1.0

    def batch_loss(rows, payload):
        got.append((rows.clone(), payload))
        return torch.nn.functional.cross_entropy(model(payload), Y[rows])

    calls = iter(scores)
    result = train_loop([model], batch_loss, N, lambda: next(calls), spec, "m", quiet=True, fetch=fetch)
    assert result.history == plain.history
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), plain_w.values()))
    fetched = [b for epoch in asked for b in epoch]
    assert len(asked) == 2 and len(fetched) == len(got) and all(torch.equal(a, r) for a, (r, _) in zip(fetched, got))
    assert all(torch.equal(a, b) for a, b in zip([r for r, _ in got], plain_seen))
    assert all(torch.equal(p, X[r]) for r, p in got)


def test_autocast_wraps_each_batch_only_when_asked(monkeypatch):
    entered = []

    class FakeAutocast:
        def __init__(self, *args, **kwargs):
            self.args = (args, kwargs)

        def __enter__(self):
            entered.append(self.args)

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(torch, "autocast", FakeAutocast)
    _run(TrainSpec(1, 0.05, 4), [0.5])
    assert entered == []
    _run(TrainSpec(1, 0.05, 4, autocast=True), [0.5])
    assert entered == [(("cuda",), {"dtype": torch.bfloat16})] * 3  # one per batch: bf16 on CUDA


def test_small_and_odd_trainings():
    # one row: its loss is the epoch's loss; one parameter tensor
    model = torch.nn.Linear(4, 3, bias=False)
    losses = []

    def one_row(rows):
        loss = torch.nn.functional.cross_entropy(model(X[rows]), Y[rows])
        losses.append(loss.item())
        return loss

    result = train_loop([model], one_row, 1, lambda: 0.5, TrainSpec(2, 0.05, 4), "m", quiet=True)
    assert [h["train_loss"] for h in result.history] == losses and len(losses) == 2
    # validation never scores above -1 (NaN, say): no best epoch, the final weights stay
    model = _model()
    result = train_loop([model], lambda r: torch.nn.functional.cross_entropy(model(X[r]), Y[r]), N,
                        lambda: float("nan"), TrainSpec(2, 0.05, 4), "m", quiet=True)
    assert (result.best_epoch, result.best_val_accuracy) == (-1, -1.0) and len(result.history) == 2
    other = _model()
    first = train_loop([other], lambda r: torch.nn.functional.cross_entropy(other(X[r]), Y[r]), N,
                       lambda: -1.5, TrainSpec(1, 0.05, 4), "m", quiet=True)
    assert (first.best_epoch, first.best_val_accuracy) == (-1, -1.0)


@pytest.mark.parametrize("stop_at", [1, 2])
def test_a_resumed_run_whose_first_epoch_was_best_returns_it(tmp_path, stop_at):
    spec, scores = TrainSpec(3, 0.05, 4), [0.9, 0.5, 0.4]
    plain, plain_w, _ = _run(spec, scores)
    ckpt = Checkpoint(tmp_path / "m.pt", "k")
    with pytest.raises(KeyboardInterrupt):
        _run(spec, scores, ckpt, stop_at=stop_at)
    resumed, weights, _ = _run(spec, scores, ckpt, start=stop_at)
    assert resumed.best_epoch == plain.best_epoch == 1
    assert all(torch.equal(weights[k], v) for k, v in plain_w.items())


def test_predict_batches_tensors_and_dicts():
    x = torch.randn(7, 3, dtype=torch.float64)

    def fn(b):
        t = b["a"] + b["b"] if isinstance(b, dict) else b
        return t * 2, t.sum(1, keepdim=True)

    for inputs, whole in ((x, x), ({"a": x, "b": x}, 2 * x)):
        for bs in (1, 3, 7, 512):
            feats, logits = predict(fn, inputs, 7, batch_size=bs)
            assert feats.dtype == logits.dtype == torch.float32
            torch.testing.assert_close(feats, (whole * 2).float())
            torch.testing.assert_close(logits, whole.sum(1, keepdim=True).float())
    feats, _ = predict(fn, x, 7)  # the default batch holds them all
    assert feats.shape == (7, 3)


class _Pickled:
    """Not a tensor, number or string: a checkpoint holding it needs a full unpickler."""

    def __init__(self):
        self.epoch, self.epochs = 1, 3


@pytest.mark.parametrize("content", ["object", "list"])
def test_a_checkpoint_that_is_not_plain_state_is_never_unpickled_or_resumed(tmp_path, content, capsys):
    from distill_export.train import CHECKPOINT_FORMAT

    spec, scores = TrainSpec(2, 0.05, 4), [0.3, 0.5]
    path = tmp_path / "m.pt"
    if content == "object":  # the format and key right, but a pickled object inside
        torch.save({"format": CHECKPOINT_FORMAT, "key": "k", "epoch": 1, "epochs": 3, "x": _Pickled()}, path)
        assert checkpoint_progress(path) is None  # weights only: refused, not read
        torch.save(_Pickled(), tmp_path / "obj.pt")
        assert checkpoint_progress(tmp_path / "obj.pt") is None
    else:
        torch.save([1, 2, 3], path)
    plain, _, _ = _run(spec, scores)
    capsys.readouterr()
    result, _, seen = _run(spec, scores, Checkpoint(path, "k"))
    assert result.history == plain.history and sum(len(r) for r in seen) == 2 * N
    err = capsys.readouterr().err
    if content == "object":
        from distill_export.nets.checkpoint import load_failure

        try:
            torch.load(tmp_path / "obj.pt", weights_only=True)
        except Exception as exc:  # noqa: BLE001  the refusal the warning names
            reason = load_failure(exc)[:40]
        assert f"warning: {path} is unreadable (" in err and reason in " ".join(err.split())
    else:
        assert err == ""


def test_resume_restores_the_cuda_generators_when_the_gpus_are_the_same(tmp_path, monkeypatch):
    """With (faked) CUDA: the checkpoint keeps every GPU's generator state, and a resume on as
    many GPUs puts it back; on another GPU count it is left alone."""
    gpu_states = [torch.tensor([7, 7], dtype=torch.uint8), torch.tensor([9, 9], dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in gpu_states])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: restored.append([s.clone() for s in states]))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    # AdamW's check for a CUDA graph being captured would ask the (absent) driver
    monkeypatch.setattr(torch.optim.Optimizer, "_accelerator_graph_capture_health_check", lambda self: None)
    spec, scores = TrainSpec(3, 0.05, 4), [0.3, 0.5, 0.4]
    ckpt = Checkpoint(tmp_path / "m.pt", "k")
    with pytest.raises(KeyboardInterrupt):
        _run(spec, scores, ckpt, stop_at=1)
    saved = torch.load(ckpt.path, weights_only=True)["rng"]["cuda"]
    assert all(torch.equal(a, b) for a, b in zip(saved, gpu_states)) and len(saved) == 2
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # another machine: not restored
    with pytest.raises(KeyboardInterrupt):
        _run(spec, scores, ckpt, stop_at=2, start=1)
    assert restored == []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    _run(spec, scores, ckpt, start=2)
    assert len(restored) == 1 and all(torch.equal(a, b) for a, b in zip(restored[0], gpu_states))
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)  # CUDA never used: no state kept
    ckpt2 = Checkpoint(tmp_path / "n.pt", "k")
    with pytest.raises(KeyboardInterrupt):
        _run(spec, scores, ckpt2, stop_at=1)
    assert "cuda" not in torch.load(ckpt2.path, weights_only=True)["rng"]
    _run(spec, scores, ckpt2, start=1)
    assert len(restored) == 1
