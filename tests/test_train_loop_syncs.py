"""train_loop keeps its per-step loss sums on the device and reads them once an epoch (issue 22):
no step waits for the device to hand a loss to the host, and the history holds the same numbers
as the Python-float sums it used to keep."""

from __future__ import annotations

import torch

from distill_export.train import TrainSpec, train_loop

LOSSES = [0.1, 0.7, 1.3, 0.3333333, 2.5, 0.05, 0.9]  # one per step, any fp32 values


def _train(epochs: int, parts: bool):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    step = iter(range(10**6))

    def batch_loss(rows):
        i = next(step)
        value = torch.tensor(LOSSES[i % len(LOSSES)]) + 0.0 * model.weight.sum()  # fp32, with a gradient
        if not parts:
            return value
        return value, {"kd": value.detach() * 0.5, "ce": torch.tensor(0.25 * (i + 1)), "float_part": 0.125 * i}

    spec = TrainSpec(epochs=epochs, lr=1e-3, batch_size=4)
    return train_loop([model], batch_loss, 14, lambda: 0.5, spec, "test", quiet=True)  # steps of 4, 4, 4, 2 rows


def _expected(epochs: int) -> list[dict]:
    """What the loop logged before: Python floats, float(loss)·rows added step by step."""
    out, i = [], 0
    for _ in range(epochs):
        total = kd = ce = fl = 0.0
        count = 0
        for rows in (4, 4, 4, 2):
            v = float(torch.tensor(LOSSES[i % len(LOSSES)]))
            total += v * rows
            kd += float(torch.tensor(LOSSES[i % len(LOSSES)]) * 0.5) * rows
            ce += float(torch.tensor(0.25 * (i + 1))) * rows
            fl += 0.125 * i * rows
            count += rows
            i += 1
        out.append({"train_loss": total / count, "parts": {"kd": kd / count, "ce": ce / count, "float_part": fl / count}})
    return out


def test_history_holds_the_same_numbers_bit_for_bit():
    result = _train(epochs=2, parts=True)
    for got, want in zip(result.history, _expected(2)):
        assert got["train_loss"] == want["train_loss"]
        assert got["train_loss_parts"] == want["parts"]  # == on floats: bit for bit
        assert all(type(v) is float for v in got["train_loss_parts"].values())
    assert _train(epochs=1, parts=False).history[0]["train_loss"] == _expected(1)[0]["train_loss"]


def test_no_step_reads_a_loss_on_the_host(monkeypatch):
    """float(tensor) is never called; the epoch's sums come back in one tolist() an epoch."""
    floats, lists = [], []
    real_tolist = torch.Tensor.tolist

    def no_float(self):
        floats.append(self)
        raise AssertionError("a loss was read on the host during the epoch")

    def counting_tolist(self):
        lists.append(self.shape)
        return real_tolist(self)

    monkeypatch.setattr(torch.Tensor, "__float__", no_float)
    monkeypatch.setattr(torch.Tensor, "tolist", counting_tolist)
    _train(epochs=3, parts=True)
    assert floats == [] and lists == [torch.Size([3])] * 3  # total, kd, ce: one read an epoch
