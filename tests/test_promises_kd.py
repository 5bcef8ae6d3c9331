"""Behaviour-level tests of the KD loss dispatcher's promises (issue 25, the survivors of mutmut on
losses/kd.py); the formula itself is pinned by tests/test_kd_loss.py:

- kd_loss honours every option it is given (reduction, scale) on the reference path, and its
  defaults are the reference's;
- impl="auto" runs the fused kernel on CUDA and the reference elsewhere; "fused" on CPU is
  allowed only under TRITON_INTERPRET=1 and is otherwise a clear error naming the way out;
- the fused path receives exactly what the caller asked for (a stand-in kernel checks it, so
  this runs without a GPU; tests/test_kd_triton.py compares the real kernel);
- check_label_range=False skips the label check (the hot CUDA path's one host sync);
- no warnings, and soft targets are a distribution over the last axis for any leading shape.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from distill_export.errors import LossInputError
from distill_export.losses import kd
from distill_export.losses.kd import kd_loss, kd_loss_reference, soft_targets


def _inputs(n_rows=6, n_classes=5, seed=0, ignore_index=-100):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n_rows, n_classes, generator=g) * 2
    t = torch.randn(n_rows, n_classes, generator=g) * 2
    y = torch.randint(0, n_classes, (n_rows,), generator=g)
    y[1] = ignore_index
    return s, t, y


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_kd_loss_honours_the_reduction_and_the_scale(reduction):
    s, t, y = _inputs()
    rows = kd_loss(s, t, y, temperature=2.0, alpha=0.3, reduction="none", impl="reference")
    assert rows.shape == (6,)
    want = {"none": rows, "sum": rows.sum(),
            "mean": kd_loss_reference(s, t, y, 2.0, 0.3, reduction="mean")}[reduction]
    got = kd_loss(s, t, y, temperature=2.0, alpha=0.3, reduction=reduction, impl="reference")
    torch.testing.assert_close(got, want)
    for scale in (2.0, 0.25):
        scaled = kd_loss(s, t, y, temperature=2.0, alpha=0.3, reduction=reduction, impl="reference", scale=scale)
        torch.testing.assert_close(scaled, scale * want)


def test_the_dispatchers_defaults_are_the_references():
    s, t, y = _inputs(seed=1)
    torch.testing.assert_close(kd_loss(s, t, y), kd_loss_reference(s, t, y))
    torch.testing.assert_close(kd_loss(s, t), kd_loss_reference(s, t))


def test_auto_is_fused_exactly_on_cuda_and_fused_on_cpu_needs_the_interpreter(monkeypatch):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")  # device objects only: no GPU needed
    assert kd.takes_fused_path("auto", cuda) and kd.takes_fused_path("fused", cpu)
    assert not kd.takes_fused_path("auto", cpu) and not kd.takes_fused_path("reference", cuda)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert kd._fused_available(cuda) and not kd._fused_available(cpu)
    s, t, y = _inputs()
    with pytest.raises(LossInputError) as err:
        kd_loss(s, t, y, impl="fused")
    assert str(err.value) == ("impl='fused' needs CUDA tensors (or TRITON_INTERPRET=1 to run the kernel on CPU "
                              "for testing); use impl='reference' or 'auto' on CPU")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not kd._fused_available(cpu)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert kd._fused_available(cpu) and kd._fused_available(cuda)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_the_fused_path_gets_exactly_what_the_caller_asked_for(monkeypatch, reduction):
    kd_triton = pytest.importorskip("distill_export.losses.kd_triton")
    calls = []

    def stand_in(student_logits, teacher_logits, labels, *, temperature, alpha, ignore_index, reduction, scale):
        calls.append(1)
        return scale * kd_loss_reference(student_logits, teacher_logits, labels, temperature, alpha,
                                         ignore_index, reduction)

    monkeypatch.setattr(kd_triton, "kd_loss_fused", stand_in)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    s, t, y = _inputs(ignore_index=-1)
    y[3] = -100  # an ordinary label value once ignore_index is -1: out of range, so refused
    options = dict(temperature=3.0, alpha=0.7, ignore_index=-1, reduction=reduction, scale=0.5)
    with pytest.raises(LossInputError, match="label -100"):
        kd_loss(s, t, y, impl="fused", **options)
    y[3] = 2
    got = kd_loss(s, t, y, impl="fused", **options)
    assert calls == [1]
    torch.testing.assert_close(got, kd_loss(s, t, y, impl="reference", **options))
    torch.testing.assert_close(kd_loss(s, t, None, impl="fused", **options),
                               kd_loss(s, t, None, impl="reference", **options))


def test_check_label_range_false_skips_the_label_check():
    s, t, y = _inputs()
    y[0] = 99  # out of range for 5 classes
    with pytest.raises(LossInputError, match="label 99 is out of range"):
        kd_loss(s, t, y, alpha=0.0)
    # skipped (the caller vouches for its labels); with alpha=0 the labels are not read at all
    torch.testing.assert_close(kd_loss(s, t, y, alpha=0.0, check_label_range=False), kd_loss(s, t, None, alpha=0.0))


def test_no_warnings_and_soft_targets_are_over_the_last_axis():
    s, t, y = _inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for reduction in ("mean", "sum", "none"):
            kd_loss(s, t, y, reduction=reduction)
        kd_loss(s, t, None)
        for shape in ((5,), (6, 5), (2, 3, 5)):
            logits = torch.randn(shape)
            probs = soft_targets(logits, 2.0)
            assert probs.shape == shape
            torch.testing.assert_close(probs.sum(-1), torch.ones(shape[:-1]))
            torch.testing.assert_close(probs, torch.softmax(logits / 2.0, dim=-1))
