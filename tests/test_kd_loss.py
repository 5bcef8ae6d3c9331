"""Hand-computed checks of the reference KD loss (losses/kd.py).

Hinton, Vinyals, Dean (2015): loss = α·CE(s, y) + (1−α)·T²·KL(softmax(t/T) ‖ softmax(s/T)).
These pin the *reference* against numbers worked out by hand and against the
formulas as most users write them, so the fused kernel (tests/test_kd_triton.py)
can be compared with something known to be right.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from distill_export.errors import LossInputError
from distill_export.losses.kd import kd_loss, kd_loss_reference, soft_targets

ATOL = 1e-6  # fp32, small C: the reference is exact to rounding


def _inputs(n_rows=6, n_classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n_rows, n_classes, generator=g) * 2
    t = torch.randn(n_rows, n_classes, generator=g) * 2
    y = torch.randint(0, n_classes, (n_rows,), generator=g)
    y[1] = -100
    y[4] = -100
    return s, t, y


# --- temperature: the often-misquoted worked example ------------------------------------


@pytest.mark.parametrize(
    "temperature,expected",
    [(1.0, [0.5017, 0.2491, 0.2491]), (5.0, [0.3651, 0.3174, 0.3174])],
)
def test_soft_targets_worked_example(temperature, expected):
    probs = soft_targets(torch.tensor([[0.8, 0.1, 0.1]]), temperature)  # (1, 3)
    torch.testing.assert_close(probs, torch.tensor([expected]), atol=1e-4, rtol=0)
    # By hand: e^{0.8/T} / (e^{0.8/T} + 2·e^{0.1/T})
    a, b = math.exp(0.8 / temperature), math.exp(0.1 / temperature)
    assert probs[0, 0].item() == pytest.approx(a / (a + 2 * b), abs=1e-6)


# --- a two-class example worked by hand --------------------------------------------------


def test_two_class_hand_computed():
    """s = [0, 0] (q = ½, ½), t = [ln 3, 0] (p = ¾, ¼ at T=1), y = 0."""
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[math.log(3.0), 0.0]])
    y = torch.tensor([0])
    ce = math.log(2.0)  # −ln ½ = 0.693147
    kl_t1 = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # 0.130812
    assert kl_t1 == pytest.approx(0.130812, abs=1e-6)
    got = kd_loss_reference(s, t, y, temperature=1.0, alpha=0.5)
    assert got.item() == pytest.approx(0.5 * ce + 0.5 * kl_t1, abs=ATOL)  # 0.411980
    # T = 2: p = [√3, 1]/(√3 + 1) = [0.633975, 0.366025]; q stays [½, ½].
    p0 = math.sqrt(3.0) / (math.sqrt(3.0) + 1.0)
    kl_t2 = p0 * math.log(p0 / 0.5) + (1 - p0) * math.log((1 - p0) / 0.5)  # 0.036341
    assert kl_t2 == pytest.approx(0.036341, abs=1e-6)
    got = kd_loss_reference(s, t, y, temperature=2.0, alpha=0.25)
    assert got.item() == pytest.approx(0.25 * ce + 0.75 * 4.0 * kl_t2, abs=ATOL)  # T² = 4


# --- limits: α = 1 is cross-entropy, α = 0 is T²·KLDivLoss(batchmean) ----------------------


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_alpha_one_equals_cross_entropy(reduction):
    s, t, y = _inputs()
    got = kd_loss_reference(s, t, y, temperature=3.0, alpha=1.0, reduction=reduction)
    want = F.cross_entropy(s, y, ignore_index=-100, reduction=reduction)  # 0 on ignored rows
    torch.testing.assert_close(got, want, atol=ATOL, rtol=1e-6)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0, 4.0])
def test_alpha_zero_equals_t2_kldiv_batchmean(temperature):
    s, t, y = _inputs()
    got = kd_loss_reference(s, t, y, temperature=temperature, alpha=0.0)
    kl = nn.KLDivLoss(reduction="batchmean")(
        F.log_softmax(s / temperature, dim=-1), F.softmax(t / temperature, dim=-1)
    )
    torch.testing.assert_close(got, temperature**2 * kl, atol=ATOL, rtol=1e-6)


def test_mixed_alpha_is_the_weighted_sum():
    s, t, y = _inputs()
    T, a = 2.0, 0.3
    ce = F.cross_entropy(s, y, ignore_index=-100)
    kl = F.kl_div(F.log_softmax(s / T, dim=-1), F.softmax(t / T, dim=-1), reduction="batchmean")
    got = kd_loss_reference(s, t, y, temperature=T, alpha=a)
    torch.testing.assert_close(got, a * ce + (1 - a) * T**2 * kl, atol=ATOL, rtol=1e-6)


# --- unlabeled rows ---------------------------------------------------------------------


def test_unlabeled_rows_keep_kd_and_drop_ce():
    s, t, y = _inputs()
    T, a = 2.0, 0.5
    rows = kd_loss_reference(s, t, y, temperature=T, alpha=a, reduction="none")  # (N,)
    kd_rows = kd_loss_reference(s, t, None, temperature=T, alpha=a, reduction="none")
    unlabeled = y == -100
    torch.testing.assert_close(rows[unlabeled], kd_rows[unlabeled])  # KD only
    assert (rows[~unlabeled] > kd_rows[~unlabeled]).all()  # CE added
    # mean: CE over the 4 labeled rows, KD over all 6.
    mean = kd_loss_reference(s, t, y, temperature=T, alpha=a)
    want = (rows - kd_rows).sum() / 4 + kd_rows.sum() / 6
    torch.testing.assert_close(mean, want, atol=ATOL, rtol=1e-6)


def test_all_rows_unlabeled_gives_kd_only_and_no_nan():
    s, t, _ = _inputs()
    y = torch.full((6,), -100)
    s = s.requires_grad_(True)
    got = kd_loss_reference(s, t, y, temperature=2.0, alpha=0.5)
    got.backward()
    want = kd_loss_reference(s.detach(), t, None, temperature=2.0, alpha=0.5)
    torch.testing.assert_close(got.detach(), want)
    assert torch.isfinite(got) and torch.isfinite(s.grad).all()


def test_teacher_masked_classes_do_not_give_nan():
    s, t, y = _inputs()
    t[:, 0] = float("-inf")  # teacher prob exactly 0: term is 0, not 0·(−inf)
    assert torch.isfinite(kd_loss_reference(s, t, y, temperature=2.0, alpha=0.5))


# --- the gradient the fused kernel stores -------------------------------------------------


def _closed_form_grad(s, t, y, T, a, reduction):
    """(1−α)·T·(softmax(s/T) − softmax(t/T))·w_kd + α·(softmax(s) − onehot(y))·w_ce (labeled rows)."""
    n_rows = s.shape[0]
    labeled = y != -100
    n_lab = max(int(labeled.sum()), 1)
    w_kd, w_ce = (1.0 / n_rows, 1.0 / n_lab) if reduction == "mean" else (1.0, 1.0)
    soft = (1 - a) * T * (F.softmax(s / T, -1) - F.softmax(t / T, -1)) * w_kd
    onehot = F.one_hot(y.clamp(min=0), s.shape[1]).float()
    hard = a * (F.softmax(s, -1) - onehot) * w_ce * labeled[:, None]
    return soft + hard


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("temperature,alpha", [(1.0, 0.5), (4.0, 0.0), (0.5, 1.0), (2.0, 0.7)])
def test_autograd_matches_closed_form_gradient(reduction, temperature, alpha):
    s, t, y = _inputs(seed=3)
    s = s.requires_grad_(True)
    loss = kd_loss_reference(s, t, y, temperature=temperature, alpha=alpha, reduction=reduction)
    grad_out = torch.linspace(0.5, 2.0, 6) if reduction == "none" else torch.tensor(1.3)
    loss.backward(grad_out)
    want = _closed_form_grad(s.detach(), t, y, temperature, alpha, reduction)
    want = want * (grad_out[:, None] if reduction == "none" else grad_out)
    torch.testing.assert_close(s.grad, want, atol=1e-6, rtol=1e-5)


def test_teacher_gets_no_gradient():
    s, t, y = _inputs()
    s.requires_grad_(True)
    t.requires_grad_(True)
    kd_loss_reference(s, t, y).backward()
    assert t.grad is None


# --- dispatcher on CPU --------------------------------------------------------------------


def test_auto_on_cpu_is_the_reference():
    s, t, y = _inputs()
    torch.testing.assert_close(
        kd_loss(s, t, y, temperature=2.0, alpha=0.4),
        kd_loss_reference(s, t, y, temperature=2.0, alpha=0.4),
    )


def test_fused_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    s, t, y = _inputs()
    with pytest.raises(LossInputError, match="CUDA"):
        kd_loss(s, t, y, impl="fused")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"temperature": 0.0}, "temperature"),
        ({"alpha": 1.01}, "alpha"),
        ({"reduction": "batchmean"}, "reduction"),
        ({"impl": "cuda"}, "impl"),
    ],
)
def test_bad_options_raise(kwargs, match):
    s, t, y = _inputs()
    with pytest.raises(LossInputError, match=match):
        kd_loss(s, t, y, **kwargs)


def test_label_out_of_range_names_the_label():
    s, t, _ = _inputs()
    y = torch.tensor([0, 1, 2, 9, -100, 3])
    with pytest.raises(LossInputError, match="label 9 is out of range for 5 classes"):
        kd_loss(s, t, y)
