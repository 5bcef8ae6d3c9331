"""Each distillation term (distill_export/methods/) on its own.

For every term there are two kinds of check:

* **by hand**: a 2–4 row, 3–4 class batch whose logits are ``T·ln p`` for chosen
  probabilities p, so softmax(logits / T) = p exactly and the expected loss can be
  written out with ``math`` step by step (and, where short, its gradient too);
* **against the authors' code**: the formula re-implemented here in the style of
  the official repository (named in each section), compared with the term in value
  *and* gradient w.r.t. the student logits, on random seeded inputs.

Tolerances (fp32, C ≤ 7): every implementation computes the same O(C) sums in fp32
with a different operation order, so they agree to a few ulps of the O(1) result
(fp32 ε ≈ 1.2e-7); ``ATOL = RTOL = 1e-5`` leaves a ~10–50× margin and still catches any
wrong constant, mask or reduction. Hand-computed values are float64 math against a
fp32 implementation whose inputs ``ln p`` are themselves rounded to fp32, hence
``HAND_ATOL = 2e-6``.
"""

from __future__ import annotations

import importlib
import math
import os
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.stats import kendalltau

from distill_export.errors import ConfigError
from distill_export.methods import SetupInfo, TermInputs, term_class
from distill_export.methods.selective_kd import kendall_tau

from _methods_helpers import IGNORE, _close, _random

HAND_ATOL = 2e-6
SLOT = "0_term"


# --- helpers ------------------------------------------------------------------------------------


def _logits(probs, temperature=1.0):
    """Rows of probabilities -> fp32 logits z with softmax(z / T) == probs (up to fp32 rounding)."""
    return torch.tensor([[temperature * math.log(p) for p in row] for row in probs], dtype=torch.float32)


def _batch(s, t=None, y=None, **kwargs):
    if y is None:
        y = torch.zeros(s.shape[0], dtype=torch.long)
    return TermInputs(student_logits=s, labels=torch.as_tensor(y, dtype=torch.long), teacher_logits=t, **kwargs)


def _term_value_grad(name, s, t, y, **params):
    """(loss, d loss / d student logits) of a freshly built term."""
    term = term_class(name)(**params)
    s = s.detach().clone().requires_grad_(True)
    loss = term.loss(_batch(s, t, y), SLOT)
    (grad,) = torch.autograd.grad(loss, s)
    return loss.detach(), grad


def _ref_value_grad(fn, s, *args, **kwargs):
    s = s.detach().clone().requires_grad_(True)
    loss = fn(s, *args, **kwargs)
    (grad,) = torch.autograd.grad(loss, s)
    return loss.detach(), grad


def _kl(p, q):
    """KL(p ‖ q) of two plain lists of probabilities."""
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def _softmax(row):
    m = max(row)
    e = [math.exp(v - m) for v in row]
    return [v / sum(e) for v in e]


def _pearson(x, y):
    mx, my = sum(x) / len(x), sum(y) / len(y)
    dx, dy = [v - mx for v in x], [v - my for v in y]
    return sum(a * b for a, b in zip(dx, dy)) / math.sqrt(sum(a * a for a in dx) * sum(b * b for b in dy))


# ================================================================================================
# ce: cross-entropy on labeled rows only
# ================================================================================================


def test_ce_hand_computed_value_and_gradient():
    # Row 0: p = [.5, .25, .25], y = 0 -> CE = −ln .5 = ln 2 = 0.693147
    # Row 1: unlabeled, extreme logits that must not matter
    # Row 2: p = [.2, .2, .6],  y = 2 -> CE = −ln .6 = 0.510826
    s = torch.cat([_logits([[0.5, 0.25, 0.25]]), torch.tensor([[30.0, -30.0, 0.0]]), _logits([[0.2, 0.2, 0.6]])])
    y = [0, IGNORE, 2]
    loss, grad = _term_value_grad("ce", s, None, y)
    expected = (math.log(2.0) + -math.log(0.6)) / 2  # mean over the 2 labeled rows, not the 3 rows
    assert expected == pytest.approx(0.601986, abs=1e-6)
    assert loss.item() == pytest.approx(expected, abs=HAND_ATOL)
    # d CE / d z = softmax(z) − onehot(y), divided by the 2 labeled rows; the unlabeled row gets 0.
    want = torch.tensor([[(0.5 - 1) / 2, 0.25 / 2, 0.25 / 2], [0.0, 0.0, 0.0], [0.2 / 2, 0.2 / 2, (0.6 - 1) / 2]])
    _close(grad, want, atol=HAND_ATOL, rtol=0)


def test_ce_matches_torch_cross_entropy_ignore_index():
    """The reference here is PyTorch's own CE with ignore_index=-100 (mean over non-ignored rows)."""
    s, _, y = _random(8, 5, seed=1, unlabeled=(0, 3, 7))
    got = _term_value_grad("ce", s, None, y)
    want = _ref_value_grad(lambda z: F.cross_entropy(z, y, ignore_index=IGNORE), s)
    _close(got[0], want[0])
    _close(got[1], want[1])


def test_ce_is_zero_without_labeled_rows_and_finite():
    s, _, _ = _random(4, 3, seed=2)
    loss, grad = _term_value_grad("ce", s, None, [IGNORE] * 4)
    assert loss.item() == 0.0
    assert torch.equal(grad, torch.zeros_like(grad))  # no NaN from a 0/0


def test_ce_ignores_unlabeled_rows_logits():
    s, _, y = _random(5, 4, seed=3, unlabeled=(1, 2))
    s2 = s.clone()
    s2[1] = torch.tensor([1e4, -1e4, 3.0, 0.0])
    s2[2] = -s2[2] * 50
    assert _term_value_grad("ce", s, None, y)[0].item() == _term_value_grad("ce", s2, None, y)[0].item()


# ================================================================================================
# kd: Hinton et al. (2015)
# ================================================================================================


def test_kd_hand_computed_value_and_gradient():
    T = 2.0
    # Row 0: t/T = [ln 2, 0, 0] -> p = [2, 1, 1]/4 = [.5, .25, .25]; s = 0 -> q = [1/3, 1/3, 1/3]
    #        KL(p‖q) = .5·ln(.5·3) + 2·.25·ln(.25·3) = .5·(ln 1.5 + ln .75) = .5·ln 1.125
    # Row 1: s == t -> KL = 0. Its label (and row 0's missing one) play no part in kd.
    t = torch.tensor([[2 * math.log(2.0), 0.0, 0.0], [1.0, 2.0, 3.0]])
    s = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]])
    kl0 = 0.5 * math.log(1.5) + 0.5 * math.log(0.75)
    assert kl0 == pytest.approx(0.5 * math.log(1.125), abs=1e-12)
    expected = T**2 * (kl0 + 0.0) / 2  # T² · batchmean = ln 1.125 = 0.117783
    assert expected == pytest.approx(0.117783, abs=1e-6)
    for y in ([IGNORE, 1], [0, 2]):
        loss, grad = _term_value_grad("kd", s, t, y, temperature=T)
        assert loss.item() == pytest.approx(expected, abs=HAND_ATOL)
        # d/ds T²·KL(p ‖ softmax(s/T)) = T·(q − p); batchmean divides by B = 2.
        want = torch.tensor([[T * (1 / 3 - 0.5) / 2, T * (1 / 3 - 0.25) / 2, T * (1 / 3 - 0.25) / 2],
                             [0.0, 0.0, 0.0]])
        _close(grad, want, atol=HAND_ATOL, rtol=0)


def _ls_kd_loss_reference(logits_student_in, logits_teacher_in, temperature, logit_stand):
    """sunshangquan/logit-standardization-KD, mdistiller/distillers/KD.py: kd_loss (+ normalize)."""

    def normalize(logit):
        mean = logit.mean(dim=-1, keepdims=True)
        stdv = logit.std(dim=-1, keepdims=True)
        return (logit - mean) / (1e-7 + stdv)

    logits_student = normalize(logits_student_in) if logit_stand else logits_student_in
    logits_teacher = normalize(logits_teacher_in) if logit_stand else logits_teacher_in
    log_pred_student = F.log_softmax(logits_student / temperature, dim=1)
    pred_teacher = F.softmax(logits_teacher / temperature, dim=1)
    loss_kd = F.kl_div(log_pred_student, pred_teacher, reduction="none").sum(1).mean()
    return loss_kd * temperature**2


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0])
def test_kd_matches_reference_formulas(temperature):
    s, t, y = _random(6, 7, seed=4)
    got = _term_value_grad("kd", s, t, y, temperature=temperature)
    # The LS authors' kd_loss without standardisation is Hinton's.
    want = _ref_value_grad(_ls_kd_loss_reference, s, t, temperature, False)
    _close(got[0], want[0])
    _close(got[1], want[1])
    # And as most users write it: nn.KLDivLoss(batchmean) · T².
    want2 = _ref_value_grad(
        lambda z: nn.KLDivLoss(reduction="batchmean")(F.log_softmax(z / temperature, 1),
                                                      F.softmax(t / temperature, 1)) * temperature**2, s)
    _close(got[0], want2[0])
    _close(got[1], want2[1])


# ================================================================================================
# ls_kd: logit standardisation (Sun et al., CVPR 2024)
# ================================================================================================


def test_ls_kd_hand_computed():
    T = 2.0
    # Row 0: s = [1, 2, 3]:  mean 2, unbiased std √((1+0+1)/2) = 1        -> Z(s) = [−1, 0, 1]
    #        t = [0, 0, 3]:  mean 1, deviations [−1, −1, 2], std √(6/2) = √3 -> Z(t) = [−1, −1, 2]/√3
    # Row 1: s = [30, 20, 10] = −10·(row 0) + 40 -> Z(s) = [1, 0, −1]
    #        t = [5, 5, 35]   = 10·(row 0) + 5   -> Z(t) = [−1, −1, 2]/√3  (scale and shift do not matter)
    s = torch.tensor([[1.0, 2.0, 3.0], [30.0, 20.0, 10.0]])
    t = torch.tensor([[0.0, 0.0, 3.0], [5.0, 5.0, 35.0]])
    r3 = math.sqrt(3.0)
    zt = [-1 / r3, -1 / r3, 2 / r3]
    p = _softmax([v / T for v in zt])
    q0 = _softmax([-1 / T, 0.0, 1 / T])
    q1 = _softmax([1 / T, 0.0, -1 / T])
    expected = T**2 * (_kl(p, q0) + _kl(p, q1)) / 2
    assert expected == pytest.approx(0.696616, abs=1e-6)  # also scipy.stats.entropy(p, q) by hand
    loss, _ = _term_value_grad("ls_kd", s, t, [0, IGNORE], temperature=T)
    # 1e-7 is added to the std (as in the authors' code): a relative change of 1e-7 in Z, far below HAND_ATOL.
    assert loss.item() == pytest.approx(expected, abs=HAND_ATOL)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_ls_kd_matches_authors_code(temperature):
    s, t, y = _random(6, 7, seed=5, scale=3.0)
    got = _term_value_grad("ls_kd", s, t, y, temperature=temperature)
    want = _ref_value_grad(_ls_kd_loss_reference, s, t, temperature, True)
    _close(got[0], want[0])
    _close(got[1], want[1])


def test_ls_kd_is_invariant_to_affine_student_logits():
    s, t, y = _random(5, 6, seed=6)
    a = _term_value_grad("ls_kd", s, t, y, temperature=2.0)[0]
    b = _term_value_grad("ls_kd", 7.5 * s - 3.0, t, y, temperature=2.0)[0]
    _close(a, b)


# ================================================================================================
# dkd: Decoupled KD (Zhao et al., CVPR 2022)
# ================================================================================================


@pytest.mark.parametrize("T", [1.0, 2.0])
def test_dkd_hand_computed(T):
    # Logits are T·ln p, so softmax(z/T) = p; NCKD's distribution is p over the non-target classes, renormalised.
    # Row 0 (labeled y = 1; the teacher's top class is 0, so the label must win):
    #   p_t = [.5, .25, .25], p_s = [1/3, 1/3, 1/3]
    #   TCKD: b_t = [.25, .75], b_s = [1/3, 2/3]     -> .25·ln(.25·3) + .75·ln(.75·3/2)
    #   NCKD: classes {0, 2}: t [2/3, 1/3], s [1/2, 1/2] -> 2/3·ln(4/3) + 1/3·ln(2/3)
    # Row 1 (unlabeled: target = teacher's top class = 1):
    #   p_t = [2, 4, 1]/7, p_s = [.2, .5, .3]
    #   TCKD: b_t = [4/7, 3/7], b_s = [.5, .5]       -> 4/7·ln(8/7) + 3/7·ln(6/7)
    #   NCKD: classes {0, 2}: t [2/3, 1/3], s [.4, .6] -> 2/3·ln(5/3) + 1/3·ln(5/9)
    t = _logits([[0.5, 0.25, 0.25], [2 / 7, 4 / 7, 1 / 7]], T)
    s = _logits([[1 / 3, 1 / 3, 1 / 3], [0.2, 0.5, 0.3]], T)
    y = [1, IGNORE]
    tckd0 = 0.25 * math.log(0.75) + 0.75 * math.log(1.125)
    nckd0 = 2 / 3 * math.log(4 / 3) + 1 / 3 * math.log(2 / 3)
    tckd1 = 4 / 7 * math.log(8 / 7) + 3 / 7 * math.log(6 / 7)
    nckd1 = 2 / 3 * math.log(5 / 3) + 1 / 3 * math.log(5 / 9)
    assert tckd0 == pytest.approx(_kl([0.25, 0.75], [1 / 3, 2 / 3]), abs=1e-12)
    assert nckd1 == pytest.approx(_kl([2 / 3, 1 / 3], [0.4, 0.6]), abs=1e-12)
    for alpha, beta in [(1.0, 8.0), (0.5, 0.0), (0.0, 2.0)]:
        expected = T**2 * (alpha * (tckd0 + tckd1) / 2 + beta * (nckd0 + nckd1) / 2)
        loss, _ = _term_value_grad("dkd", s, t, y, temperature=T, tckd_weight=alpha, nckd_weight=beta)
        assert loss.item() == pytest.approx(expected, abs=HAND_ATOL * max(1.0, beta * T**2))


# mdistiller/distillers/DKD.py (megvii-research/mdistiller), in its own style. size_average=False is
# reduction="sum" in today's PyTorch; the /target.shape[0] makes it a batch mean.
def _get_gt_mask(logits, target):
    target = target.reshape(-1)
    return torch.zeros_like(logits).scatter_(1, target.unsqueeze(1), 1).bool()


def _get_other_mask(logits, target):
    target = target.reshape(-1)
    return torch.ones_like(logits).scatter_(1, target.unsqueeze(1), 0).bool()


def _cat_mask(t, mask1, mask2):
    t1 = (t * mask1).sum(dim=1, keepdims=True)
    t2 = (t * mask2).sum(1, keepdims=True)
    return torch.cat([t1, t2], dim=1)


def _mdistiller_dkd_loss(logits_student, logits_teacher, target, alpha, beta, temperature):
    gt_mask = _get_gt_mask(logits_student, target)
    other_mask = _get_other_mask(logits_student, target)
    pred_student = F.softmax(logits_student / temperature, dim=1)
    pred_teacher = F.softmax(logits_teacher / temperature, dim=1)
    pred_student = _cat_mask(pred_student, gt_mask, other_mask)
    pred_teacher = _cat_mask(pred_teacher, gt_mask, other_mask)
    log_pred_student = torch.log(pred_student)
    tckd_loss = F.kl_div(log_pred_student, pred_teacher, reduction="sum") * (temperature**2) / target.shape[0]
    pred_teacher_part2 = F.softmax(logits_teacher / temperature - 1000.0 * gt_mask, dim=1)
    log_pred_student_part2 = F.log_softmax(logits_student / temperature - 1000.0 * gt_mask, dim=1)
    nckd_loss = (F.kl_div(log_pred_student_part2, pred_teacher_part2, reduction="sum")
                 * (temperature**2) / target.shape[0])
    return alpha * tckd_loss + beta * nckd_loss


@pytest.mark.parametrize("T,alpha,beta", [(4.0, 1.0, 8.0), (1.0, 1.0, 8.0), (2.0, 0.5, 2.0)])
def test_dkd_matches_mdistiller(T, alpha, beta):
    s, t, y = _random(6, 7, seed=7)
    target = torch.where(y != IGNORE, y, t.argmax(-1))  # the project's semi-supervised target
    got = _term_value_grad("dkd", s, t, y, temperature=T, tckd_weight=alpha, nckd_weight=beta)
    want = _ref_value_grad(_mdistiller_dkd_loss, s, t, target, alpha, beta, T)
    _close(got[0], want[0])
    _close(got[1], want[1])


def test_dkd_fully_labeled_batch_uses_labels_not_teacher():
    s, t, y = _random(5, 4, seed=8, unlabeled=())
    y = (t.argmax(-1) + 1) % 4  # never the teacher's top class
    got = _term_value_grad("dkd", s, t, y, temperature=4.0)[0]
    _close(got, _mdistiller_dkd_loss(s, t, y, 1.0, 8.0, 4.0))
    wrong = _mdistiller_dkd_loss(s, t, t.argmax(-1), 1.0, 8.0, 4.0)
    assert abs(got.item() - wrong.item()) > 1e-3


# ================================================================================================
# dist: DIST (Huang et al., NeurIPS 2022)
# ================================================================================================


def test_dist_hand_computed():
    ys = [[0.5, 0.3, 0.2], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]]
    yt = [[0.6, 0.3, 0.1], [0.3, 0.3, 0.4], [0.2, 0.2, 0.6]]
    # Row 2: ys = .1 + .7·[0, 0, 1], yt = .2 + .4·[0, 0, 1]: perfectly correlated, ρ = 1.
    assert _pearson(ys[2], yt[2]) == pytest.approx(1.0, abs=1e-12)
    # Row 0 step by step: means 1/3; ys − 1/3 = [1/6, −1/30, −2/15], yt − 1/3 = [4/15, −1/30, −7/30]
    dot = (1 / 6) * (4 / 15) + (1 / 30) * (1 / 30) + (2 / 15) * (7 / 30)
    n_s = math.sqrt((1 / 6) ** 2 + (1 / 30) ** 2 + (2 / 15) ** 2)
    n_t = math.sqrt((4 / 15) ** 2 + (1 / 30) ** 2 + (7 / 30) ** 2)
    assert _pearson(ys[0], yt[0]) == pytest.approx(dot / (n_s * n_t), abs=1e-12)
    inter = 1 - sum(_pearson(a, b) for a, b in zip(ys, yt)) / 3  # class ranking per sample
    cols_s, cols_t = list(zip(*ys)), list(zip(*yt))
    intra = 1 - sum(_pearson(a, b) for a, b in zip(cols_s, cols_t)) / 3  # sample ranking per class
    # Pinned (also np.corrcoef): row ρ = [0.997176, −0.188982, 1], column ρ = [1, 0.866025, 0.885892].
    assert inter == pytest.approx(0.397269, abs=1e-6)
    assert intra == pytest.approx(0.082694, abs=1e-6)
    for T in (1.0, 4.0):
        for w_inter, w_intra in [(1.0, 1.0), (2.0, 0.5)]:
            loss, _ = _term_value_grad("dist", _logits(ys, T), _logits(yt, T), [0, IGNORE, 2],
                                       temperature=T, inter_weight=w_inter, intra_weight=w_intra)
            expected = T**2 * (w_inter * inter + w_intra * intra)
            assert loss.item() == pytest.approx(expected, abs=HAND_ATOL * T**2)


# hunto/DIST_KD, segmentation/losses/dist_kd.py (and the classification DIST with tau, tau**2 as
# copied into huofushuo/C2KD ave/utils/loss.py), in its own style.
def _dist_cosine_similarity(x, y, eps=1e-8):
    return (x * y).sum(1) / (x.norm(dim=1) * y.norm(dim=1) + eps)


def _dist_pearson_correlation(x, y, eps=1e-8):
    return _dist_cosine_similarity(x - x.mean(1).unsqueeze(1), y - y.mean(1).unsqueeze(1), eps)


def _dist_inter_class_relation(y_s, y_t):
    return 1 - _dist_pearson_correlation(y_s, y_t).mean()


def _dist_intra_class_relation(y_s, y_t):
    return _dist_inter_class_relation(y_s.transpose(0, 1), y_t.transpose(0, 1))


def _dist_reference(z_s, z_t, beta, gamma, tau):
    y_s = (z_s / tau).softmax(dim=1)
    y_t = (z_t / tau).softmax(dim=1)
    inter_loss = tau**2 * _dist_inter_class_relation(y_s, y_t)
    intra_loss = tau**2 * _dist_intra_class_relation(y_s, y_t)
    return beta * inter_loss + gamma * intra_loss


@pytest.mark.parametrize("tau,beta,gamma", [(1.0, 1.0, 1.0), (4.0, 2.0, 2.0), (2.0, 1.0, 0.0)])
def test_dist_matches_authors_code(tau, beta, gamma):
    # Scale 1: softmax columns then vary by ~0.1, so the authors' "+ eps" and cosine_similarity's
    # clamp at eps differ by ~eps/‖x‖‖y‖ ≈ 1e-6 relative, under RTOL.
    s, t, y = _random(8, 5, seed=9, scale=1.0)
    got = _term_value_grad("dist", s, t, y, temperature=tau, inter_weight=beta, intra_weight=gamma)
    want = _ref_value_grad(_dist_reference, s, t, beta, gamma, tau)
    _close(got[0], want[0])
    _close(got[1], want[1])


# ================================================================================================
# selective_kd: non-target KL on rank-agreeing rows (after C2KD, Huo et al., CVPR 2024)
# ================================================================================================


def test_kendall_tau_matches_scipy_without_ties():
    g = torch.Generator().manual_seed(10)
    a, b = torch.randn(40, 7, generator=g), torch.randn(40, 7, generator=g)
    b[:10] = a[:10] + 0.3 * b[:10]  # some strongly agreeing rows too
    got = kendall_tau(a, b)
    want = torch.tensor([kendalltau(a[i].numpy(), b[i].numpy()).statistic for i in range(40)], dtype=torch.float32)
    _close(got, want, atol=1e-6, rtol=0)


def test_kendall_tau_hand_counted_and_sign_agrees_with_scipy_under_ties():
    # τ-a = (concordant − discordant) / (C(C−1)/2). [.4,.3,.2,.1] vs [.2,.4,.3,.1]: pairs (0,1), (0,2)
    # discordant; (0,3), (1,2), (1,3), (2,3) concordant -> (4 − 2)/6 = 1/3.
    a = torch.tensor([[0.4, 0.3, 0.2, 0.1], [0.4, 0.3, 0.2, 0.1], [1.0, 2.0, 3.0, 4.0]])
    b = torch.tensor([[0.2, 0.4, 0.3, 0.1], [0.1, 0.4, 0.3, 0.2], [4.0, 3.0, 2.0, 1.0]])
    _close(kendall_tau(a, b), torch.tensor([1 / 3, 0.0, -1.0]), atol=1e-7, rtol=0)
    # With ties the project's τ-a and scipy's τ-b (used by C2KD) differ in size but share the numerator,
    # so the selection τ > 0 is the same; a constant row gives τ-a = 0 and scipy NaN, both unselected.
    g = torch.Generator().manual_seed(11)
    x = torch.randint(0, 3, (60, 5), generator=g).float()
    z = torch.randint(0, 3, (60, 5), generator=g).float()
    x[0] = 1.0  # constant row
    sel = kendall_tau(x, z) > 0
    ref = torch.tensor([bool(kendalltau(x[i].numpy(), z[i].numpy()).statistic > 0.0) for i in range(60)])
    assert torch.equal(sel, ref)


@pytest.mark.parametrize("T", [1.0, 2.0])
def test_selective_kd_hand_computed(T):
    # 4 classes; logits T·ln p. Non-target distribution = p over the other classes, renormalised.
    # Row 0 (y=0): t ~ [.4,.3,.2,.1], s ~ [.1,.4,.3,.2]: 3 discordant (0,·) pairs, 3 concordant -> τ = 0: masked.
    # Row 1 (unlabeled, target = teacher top = 0): t ~ [.4,.3,.2,.1], s ~ [.2,.4,.3,.1]: τ = 1/3: kept.
    #   t non-target [.3,.2,.1]/.6 = [1/2, 1/3, 1/6]; s [.4,.3,.1]/.8 = [1/2, 3/8, 1/8]
    #   KL = 1/2·ln 1 + 1/3·ln(8/9) + 1/6·ln(4/3)
    # Row 2 (y=1, not the teacher's top class 3): t ~ [.1,.2,.3,.4], s ~ [.1,.3,.2,.4]: τ = 4/6: kept.
    #   t non-target {0,2,3}: [.1,.3,.4]/.8 = [1/8, 3/8, 1/2]; s [.1,.2,.4]/.7 = [1/7, 2/7, 4/7]
    #   KL = 1/8·ln(7/8) + 3/8·ln(21/16) + 1/2·ln(7/8)
    # Row 3 (unlabeled): t ~ [.1,.2,.3,.4], s ~ [.4,.3,.2,.1]: τ = −1: masked.
    t = _logits([[0.4, 0.3, 0.2, 0.1], [0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4]], T)
    s = _logits([[0.1, 0.4, 0.3, 0.2], [0.2, 0.4, 0.3, 0.1], [0.1, 0.3, 0.2, 0.4], [0.4, 0.3, 0.2, 0.1]], T)
    y = [0, IGNORE, 1, IGNORE]
    _close(kendall_tau(s, t), torch.tensor([0.0, 1 / 3, 2 / 3, -1.0]), atol=1e-6, rtol=0)
    kl1 = 1 / 3 * math.log(8 / 9) + 1 / 6 * math.log(4 / 3)
    kl2 = 1 / 8 * math.log(7 / 8) + 3 / 8 * math.log(21 / 16) + 1 / 2 * math.log(7 / 8)
    assert kl1 == pytest.approx(_kl([1 / 2, 1 / 3, 1 / 6], [1 / 2, 3 / 8, 1 / 8]), abs=1e-12)
    expected = T**2 * (kl1 + kl2) / 4  # divided by every row, selected or not
    loss, grad = _term_value_grad("selective_kd", s, t, y, temperature=T)
    assert loss.item() == pytest.approx(expected, abs=HAND_ATOL * T**2)
    # Masked rows get no gradient; neither does a kept row's target logit (it is out of the softmax).
    assert torch.equal(grad[0], torch.zeros(4)) and torch.equal(grad[3], torch.zeros(4))
    assert grad[1, 0].item() == 0.0 and grad[2, 1].item() == 0.0
    assert grad[1].abs().sum() > 0 and grad[2].abs().sum() > 0


def _c2kd_selective_reference(logits_student, logits_teacher, target, temperature, krc=0.0):
    """huofushuo/C2KD, ave/utils/helper.py: the kendalltau mask of train_network_distill and ntkl().

    Two adaptations, both stated in the report: (1) the target logit is dropped from the softmax with
    DKD's ``- 1000 * gt_mask`` where C2KD's ntkl multiplies it by 0 (``logits * (~gt_mask)``), i.e. keeps
    the target class in the softmax with logit 0; (2) T² scaling (DKD's convention; C2KD uses T = 1,
    where T² = 1 and the two agree).
    """
    kendall = np.empty(logits_teacher.size(0))
    for i in range(logits_teacher.size(0)):
        kendall[i] = kendalltau(logits_teacher[i, :].detach().numpy(), logits_student[i, :].detach().numpy())[0]
    kendall = torch.from_numpy(kendall)
    mask = torch.where(kendall > krc, 1, 0)
    gt_mask = _get_gt_mask(logits_student, target)
    pred_teacher_part2 = F.softmax(logits_teacher / temperature - 1000.0 * gt_mask, dim=1)
    log_pred_student_part2 = F.log_softmax(logits_student / temperature - 1000.0 * gt_mask, dim=1)
    criterion4 = nn.KLDivLoss(reduction="none")
    return temperature**2 * (mask * criterion4(log_pred_student_part2, pred_teacher_part2.detach()).sum(1)).mean()


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_selective_kd_matches_c2kd_code(T):
    s, t, y = _random(12, 6, seed=12)
    s[:4] = t[:4] + 0.5 * s[:4]  # make sure several rows agree in ranking
    target = torch.where(y != IGNORE, y, t.argmax(-1))
    got = _term_value_grad("selective_kd", s, t, y, temperature=T)
    want = _ref_value_grad(_c2kd_selective_reference, s, t, target, T)
    assert 0 < int((kendall_tau(s, t) > 0).sum()) < 12  # both kept and masked rows in the batch
    _close(got[0], want[0])
    _close(got[1], want[1])


def test_selective_kd_has_no_gradient_through_the_mask_and_handles_all_masked():
    s, t, y = _random(4, 5, seed=13)
    loss, grad = _term_value_grad("selective_kd", -t, t, y, temperature=2.0)  # τ = −1 on every row
    assert loss.item() == 0.0 and torch.equal(grad, torch.zeros_like(grad))


# ================================================================================================
# pseudo_label: CE on the teacher's confident top class, unlabeled rows (FixMatch-style threshold)
# ================================================================================================


def test_pseudo_label_hand_computed_value_and_gradient():
    # Row 0: labeled, teacher confident (.9): left to `ce`, ignored here.
    # Row 1: unlabeled, teacher [.8, .1, .1] ≥ .7 -> pseudo 0; student [.5, .25, .25]: CE = ln 2
    # Row 2: unlabeled, teacher [.5, .3, .2] < .7 -> dropped (but still counted in the denominator)
    # Row 3: unlabeled, teacher [.05, .05, .9] -> pseudo 2; student [.2, .2, .6]: CE = ln(5/3)
    t = _logits([[0.05, 0.9, 0.05], [0.8, 0.1, 0.1], [0.5, 0.3, 0.2], [0.05, 0.05, 0.9]])
    s = torch.cat([torch.tensor([[3.0, -1.0, 0.5]]), _logits([[0.5, 0.25, 0.25]]),
                   torch.tensor([[0.0, 1.0, 2.0]]), _logits([[0.2, 0.2, 0.6]])])
    y = [1, IGNORE, IGNORE, IGNORE]
    loss, grad = _term_value_grad("pseudo_label", s, t, y, threshold=0.7)
    expected = (math.log(2.0) + math.log(5 / 3)) / 3  # / 3 unlabeled rows, not / 2 confident ones
    assert expected == pytest.approx(0.401324, abs=1e-6)
    assert loss.item() == pytest.approx(expected, abs=HAND_ATOL)
    want = torch.tensor([[0.0, 0.0, 0.0], [(0.5 - 1) / 3, 0.25 / 3, 0.25 / 3],
                         [0.0, 0.0, 0.0], [0.2 / 3, 0.2 / 3, (0.6 - 1) / 3]])
    _close(grad, want, atol=HAND_ATOL, rtol=0)


def test_pseudo_label_threshold_is_inclusive():
    t = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    s = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    y = [IGNORE, IGNORE]
    conf = t.softmax(-1).max(-1).values[0].item()  # an fp32 value, exactly representable as a float
    at = _term_value_grad("pseudo_label", s, t, y, threshold=conf)[0].item()
    above = _term_value_grad("pseudo_label", s, t, y, threshold=float(np.nextafter(np.float32(conf), 1)))[0].item()
    ce_row0 = -F.log_softmax(s[0], -1)[0].item()
    assert at == pytest.approx(ce_row0 / 2, abs=1e-6)  # confidence ≥ threshold: kept (FixMatch's .ge)
    assert above == 0.0


def test_pseudo_label_no_unlabeled_rows_is_zero():
    s, t, _ = _random(3, 4, seed=14)
    loss, grad = _term_value_grad("pseudo_label", s, t, [0, 1, 2], threshold=0.1)
    assert loss.item() == 0.0 and torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize("threshold", [0.3, 0.6, 0.95])
def test_pseudo_label_matches_fixmatch(threshold):
    """kekmodel/FixMatch-pytorch train.py: Lu = (CE(logits_u_s, targets_u, 'none') * mask).mean() over
    the unlabeled batch, mask = max softmax(logits_u_w.detach() / T) ≥ threshold, T = 1; the teacher
    plays the weak view."""
    s, t, y = _random(10, 4, seed=15, scale=3.0, unlabeled=(0, 2, 3, 5, 6, 9))
    unl = y == IGNORE

    def fixmatch(z):
        logits_u_s, logits_u_w = z[unl], t[unl]
        pseudo_label = torch.softmax(logits_u_w.detach() / 1.0, dim=-1)
        max_probs, targets_u = torch.max(pseudo_label, dim=-1)
        mask = max_probs.ge(threshold).float()
        return (F.cross_entropy(logits_u_s, targets_u, reduction="none") * mask).mean()

    got = _term_value_grad("pseudo_label", s, t, y, threshold=threshold)
    want = _ref_value_grad(fixmatch, s)
    _close(got[0], want[0])
    _close(got[1], want[1])


# ================================================================================================
# feature: FitNets-style MSE through a learned projector
# ================================================================================================


def test_feature_hand_computed():
    term = term_class("feature")()
    term.setup(SetupInfo(num_classes=3, student_feature_dim=4, teacher_feature_dim=2))
    with torch.no_grad():
        term.projector.weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0]]))
        term.projector.bias.copy_(torch.tensor([0.0, -1.0]))
    f_s = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 1.0, 0.0, 0.0]])
    # W f + b: row 0 -> [1, 2·2 − 1] = [1, 3]; row 1 -> [0, 2·1 − 1] = [0, 1]
    f_t = torch.tensor([[0.0, 1.0], [2.0, 1.0]])
    # differences [1, 2], [−2, 0] -> squares 1, 4, 4, 0 -> mean over rows and dims = 9/4
    side = term.student_side(f_s, torch.zeros(2, 3))
    batch = TermInputs(student_logits=torch.zeros(2, 3), labels=torch.tensor([0, IGNORE]),
                       teacher_features=f_t, student_side={SLOT: side})
    loss = term.loss(batch, SLOT)
    assert loss.item() == pytest.approx(2.25, abs=1e-6)
    loss.backward()
    # d/dW of mean((Wf + b − f_t)²) = 2·(Wf + b − f_t) fᵀ / 4
    want = torch.tensor([[2 * 1 * 1 + 2 * -2 * 0, 2 * 1 * 2 + 2 * -2 * 1, 2 * 1 * 3, 2 * 1 * 4],
                         [2 * 2 * 1, 2 * 2 * 2, 2 * 2 * 3, 2 * 2 * 4]]) / 4
    _close(term.projector.weight.grad, want.float(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("student_dim,teacher_dim,who", [(4, 0, "teacher"), (0, 3, "student"), (0, 0, "teacher")])
def test_feature_without_features_is_a_config_error(student_dim, teacher_dim, who):
    term = term_class("feature")()
    with pytest.raises(ConfigError, match=who) as info:
        term.setup(SetupInfo(num_classes=3, student_feature_dim=student_dim, teacher_feature_dim=teacher_dim))
    assert "\n" not in str(info.value)


# ================================================================================================
# The fused Triton kernel behind kd and ls_kd (impl="fused") against the reference impl
# ================================================================================================


def _is_interpreted(fn) -> bool:
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(fn, InterpretedFunction)


@pytest.fixture
def fused_device(monkeypatch):
    """'cuda' where there is a GPU; otherwise 'cpu' with the kernel under Triton's interpreter.

    Triton decides interpreted-or-compiled per @triton.jit function when it is decorated, reading
    TRITON_INTERPRET then (tests/_kd_interpret.py explains); so the variable is set before the first
    import, and kd_kernels is reloaded if it was imported compiled (kd_triton looks its kernels up
    there at each call, and is never reloaded: it registers torch.library ops).
    """
    if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.importorskip("triton", reason="triton is not installed")
        return "cuda"
    if "triton" not in sys.modules:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    try:
        import triton  # noqa: F401
        import triton.language.standard as tl_standard
    except Exception as exc:  # noqa: BLE001 - any import failure means "no kernel here"
        pytest.skip(f"triton cannot be imported: {exc}")
    if not _is_interpreted(tl_standard.max):
        pytest.skip("triton was imported in compiled mode in this process: "
                    "tests/test_kd_triton.py covers the kernel")
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # kd.py and kd_triton.py read it at call time
    module = importlib.import_module("distill_export.losses.kd_kernels")
    if not _is_interpreted(module._kd_rows_kernel):
        importlib.reload(module)
    return "cpu"


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning")  # a tile's rows past N
@pytest.mark.parametrize("name,T", [("kd", 1.0), ("kd", 4.0), ("ls_kd", 2.0)])
def test_fused_kernel_matches_reference_impl(fused_device, name, T, monkeypatch):
    s, t, y = _random(4, 5, seed=16, scale=3.0)
    s, t, y = s.to(fused_device), t.to(fused_device), y.to(fused_device)
    kd_triton = importlib.import_module("distill_export.losses.kd_triton")
    calls = []
    real = kd_triton.kd_loss_fused
    monkeypatch.setattr(kd_triton, "kd_loss_fused", lambda *a, **k: calls.append(1) or real(*a, **k))
    out = {}
    for impl in ("fused", "reference"):
        term = term_class(name)(temperature=T)
        term.impl = impl
        z = s.clone().requires_grad_(True)
        loss = term.loss(_batch(z, t, y), SLOT)
        loss.backward(torch.tensor(1.7, device=fused_device))  # ≠ 1: backward must scale the stored gradient
        out[impl] = (loss.detach(), z.grad)
    assert len(calls) == 1  # impl="fused" really ran the kernel, and "reference" did not
    # fp32 in both; the kernel sums in a different order: the tolerance of tests/test_kd_triton.py.
    _close(out["fused"][0], out["reference"][0], atol=1e-5, rtol=1e-5)
    _close(out["fused"][1], out["reference"][1], atol=1e-5, rtol=1e-5)
