"""The fused KD kernel (losses/kd_triton.py) against the PyTorch reference (losses/kd.py).

Loss *and* gradient are compared, with explicit per-dtype tolerances.

How the kernel runs here
------------------------
* No CUDA: under Triton's interpreter, on CPU tensors. Triton decides
  interpreted-vs-compiled for every ``@triton.jit`` function when it is
  decorated, reading TRITON_INTERPRET at that moment; that includes triton's own
  ``tl.max``/``tl.sum``, decorated when ``triton`` is first imported. So:
  - if triton is not imported yet (the usual case: torch does not import it),
    this module sets TRITON_INTERPRET=1, imports ``kd_triton`` (and triton with
    it), and restores the variable; an autouse fixture sets it again for each
    test, so other test modules never see it (kd.py refuses impl="fused" on CPU
    without it, and tests elsewhere may check that);
  - if something imported triton *without* the variable before this module was
    collected, the kernel cannot be interpreted in this process: every case here
    is skipped and ``test_interpreter_subprocess`` re-runs this file in a fresh
    ``python -m pytest`` with TRITON_INTERPRET=1, failing if that run fails.
* CUDA present: the same tests run natively on ``device="cuda"`` (the CPU
  parameter is skipped), unless TRITON_INTERPRET=1 was set by the caller.

Runtime: the interpreter is slow, so N is tiny (≤ 6 rows) and the two-pass
regime is forced at small C with a small block (``single_pass=False,
block_size=...``) instead of using huge rows. The whole file takes well under
a minute on 2 CPU cores.
"""

from __future__ import annotations

import importlib
import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from distill_export.errors import LossInputError
from distill_export.losses.kd import kd_loss, kd_loss_reference

_ENV = "TRITON_INTERPRET"
HAS_CUDA = torch.cuda.is_available()
INTERPRET = (not HAS_CUDA) or os.environ.get(_ENV) == "1"


def _is_interpreted(fn) -> bool:
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(fn, InterpretedFunction)


def _can_interpret_in_process() -> bool:
    """False when triton was already imported in compiled mode (its tl.* helpers are not interpretable)."""
    if "triton" not in sys.modules:
        return True
    import triton.language.standard as tl_standard

    return _is_interpreted(tl_standard.max)


def _load_kernel_module():
    """Import kd_triton with its kernel interpreted iff INTERPRET (see module docstring)."""
    saved = os.environ.get(_ENV)
    if INTERPRET:
        os.environ[_ENV] = "1"
    try:
        module = importlib.import_module("distill_export.losses.kd_triton")
        if _is_interpreted(module._kd_fwd_bwd_kernel) != INTERPRET:
            module = importlib.reload(module)  # re-runs @triton.jit with the env now set
    finally:
        if saved is None:
            os.environ.pop(_ENV, None)
        else:
            os.environ[_ENV] = saved
    assert _is_interpreted(module._kd_fwd_bwd_kernel) == INTERPRET, "kernel in the wrong interpreter mode"
    return module


# Decide before anything here imports triton.
IN_PROCESS = (not INTERPRET) or _can_interpret_in_process()
if IN_PROCESS:
    kd_triton = _load_kernel_module()
    kd_loss_fused = kd_triton.kd_loss_fused
else:  # placeholders; every case but the subprocess one is skipped
    kd_triton = kd_loss_fused = None

DEVICES = [
    pytest.param(
        "cpu",
        marks=pytest.mark.skipif(
            not INTERPRET, reason="CUDA present: the fused kernel is tested natively on cuda"
        ),
    ),
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(
                not HAS_CUDA or INTERPRET, reason="needs a CUDA device (and TRITON_INTERPRET unset)"
            ),
        ],
    ),
]

pytestmark = [
    # Masked lanes compute (−inf) − (−inf) before a where() discards it; numpy warns.
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
]


@pytest.fixture(autouse=True)
def _interpret_env(request, monkeypatch):
    """kd.py's dispatcher accepts CPU tensors for impl='fused' only under TRITON_INTERPRET=1."""
    if not IN_PROCESS and request.node.originalname != "test_interpreter_subprocess":
        pytest.skip("triton was imported without TRITON_INTERPRET=1: run by test_interpreter_subprocess")
    if INTERPRET:
        monkeypatch.setenv(_ENV, "1")
    yield


def test_interpreter_subprocess():
    """Fallback: this file in a fresh interpreter with TRITON_INTERPRET=1 set before triton's import."""
    if IN_PROCESS:
        pytest.skip("kernel cases ran in this process")
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, _ENV: "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(Path(__file__).resolve()), "-q", "-p", "no:cacheprovider",
         "-p", "no:xdist", "-o", "addopts=", "-o", "required_plugins="],  # one process: no workers for one file
        cwd=repo, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]


# Loss tolerances (atol, rtol) per input dtype. Both implementations upcast the logits and
# accumulate in fp32, so even for fp16/bf16 inputs the losses (O(1)-O(10)) differ only by fp32
# summation order: observed <= 2e-6. fp32: 1e-5 (5x margin); fp16/bf16: 1e-4 (50x margin, kept
# loose only because a GPU's fast exp/log differ from CPU ones by a few fp32 ulps more).
LOSS_TOL = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (1e-4, 1e-4),
    torch.bfloat16: (1e-4, 1e-4),
}
# fp32 gradients (atol, rtol). Gradient values here are 1e-8..0.3 (median ~2e-4); the kernel and
# the reference sum each row in different orders, so a small element, being a difference of
# O(max) terms, is known only to a few fp32 ulps of the row's largest term (observed |diff|
# <= 6e-8, relative error up to 0.2% on elements ~1e-8). atol 1e-5 bounds that with margin; it is
# larger than the smallest ~6% of the values, which fp32 cannot resolve better in either code.
FP32_GRAD_TOL = (1e-5, 1e-5)
# fp16/bf16 gradients: both implementations compute the gradient in fp32 and round it once to
# the input dtype (the reference through autograd's cast back through `.float()`), so they are
# compared in units of the dtype's own spacing at each reference value (its ulp, subnormals
# included): |fused - ref| <= GRAD_ULPS·ulp(ref) + floor, floor = fp32 eps·max|ref| (the fp32
# cancellation bound above, which matters only for elements far below max|ref|).
# fp16: one ulp, two roundings of nearly equal fp32 values land on the same or adjacent values
#   (observed max 1.0 ulp).
# bf16: two ulps, because Triton's interpreter converts fp32 -> bf16 by truncation, not
#   round-to-nearest (observed max 2.0 ulp; compiled on a GPU, 1).
GRAD_ULPS = {torch.float16: 1, torch.bfloat16: 2}
# No tolerance may be loose for most of the values it checks: at least MIN_TIGHT of the nonzero
# reference elements must get a tolerance within TIGHT_REL of their own magnitude. (The old
# bf16 atol of 2e-3 exceeded ~93% of the values; fp16 subnormals, below 6.1e-5, have an
# absolute spacing of 6e-8, so the smallest of them cannot be checked relatively by anything.)
TIGHT_REL = 0.05
MIN_TIGHT = 0.9
TEMPERATURES = (0.5, 1.0, 2.0, 4.0)
ALPHAS = (0.0, 0.5, 1.0)
T_ALPHA_GRID = list(itertools.product(TEMPERATURES, ALPHAS))  # 12 pairs
# Forced two-pass block per C: several blocks, a partial last block.
MULTI_BLOCK = {1: 2, 7: 4, 1000: 128, 1271: 256}


def _regime_kwargs(regime: str, n_classes: int) -> dict:
    if regime == "single":
        return {"single_pass": True}
    return {"single_pass": False, "block_size": MULTI_BLOCK.get(n_classes, 256)}


def _inputs(n_rows, n_classes, device, dtype=torch.float32, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    s = (torch.randn(n_rows, n_classes, generator=g) * scale).to(device=device, dtype=dtype)
    t = (torch.randn(n_rows, n_classes, generator=g) * scale).to(device=device, dtype=dtype)
    y = torch.randint(0, n_classes, (n_rows,), generator=g)
    if n_rows > 2:
        y[1] = -100  # an unlabeled row in every case
    return s, t, y.to(device)


def _compare(s, t, y, *, temperature, alpha, reduction="mean", grad_output=None, **fused_kwargs):
    """Run fused and reference on copies of s; assert loss and grad agree; return both losses."""
    la, lr = LOSS_TOL[s.dtype]
    s_f = s.detach().clone().requires_grad_(True)
    s_r = s.detach().clone().requires_grad_(True)
    loss_f = kd_loss_fused(s_f, t, y, temperature=temperature, alpha=alpha, reduction=reduction, **fused_kwargs)
    loss_r = kd_loss_reference(s_r, t, y, temperature, alpha, -100, reduction)
    assert loss_f.dtype == torch.float32 and loss_f.shape == loss_r.shape
    torch.testing.assert_close(loss_f, loss_r, atol=la, rtol=lr)
    if grad_output is None:  # ≠ 1 on purpose: backward must scale the stored gradient
        grad_output = torch.full_like(loss_r, 1.7) if reduction != "none" else torch.linspace(
            -1.0, 2.0, loss_r.numel(), device=loss_r.device
        )
    loss_f.backward(grad_output)
    loss_r.backward(grad_output)
    assert s_f.grad.dtype == s.dtype
    _assert_grad_close(s_f.grad, s_r.grad)
    return loss_f.detach(), loss_r.detach()


def _assert_grad_close(got: torch.Tensor, want: torch.Tensor) -> None:
    """Fused vs reference gradient, both in the input dtype (see FP32_GRAD_TOL, GRAD_ULPS)."""
    if want.dtype == torch.float32:
        atol, rtol = FP32_GRAD_TOL
        torch.testing.assert_close(got, want, atol=atol, rtol=rtol)
        return
    w = want.abs()
    ulp = (torch.nextafter(w, torch.full_like(w, float("inf"))) - w).float()  # spacing at each value
    floor = torch.finfo(torch.float32).eps * w.float().max()
    tol = GRAD_ULPS[want.dtype] * ulp + floor
    diff = (got.float() - want.float()).abs()
    bad = ~(diff <= tol)  # NaN fails too
    assert not bool(bad.any()), (
        f"{int(bad.sum())} of {bad.numel()} gradient elements off by more than {GRAD_ULPS[want.dtype]} ulp "
        f"(+ floor {float(floor):.3g}); worst {float((diff / ulp)[bad].max()):.2f} ulp")
    nonzero = w != 0
    if bool(nonzero.any()):
        tight = float((tol <= TIGHT_REL * w.float())[nonzero].float().mean())
        assert tight >= MIN_TIGHT, f"only {tight:.1%} of the elements get a tolerance within {TIGHT_REL:.0%} of their value"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_gradient_check_is_not_vacuous(dtype):
    """The fp16/bf16 gradient check rejects what the old atol (2e-4 / 2e-3) let through: a 1%
    error everywhere, or one median-sized element off by GRAD_ULPS + 2 ulp."""
    s, t, y = _inputs(4, 1271, "cpu", dtype=dtype, seed=3)
    s = s.requires_grad_(True)
    kd_loss_reference(s, t, y, 2.0, 0.5, -100).backward(torch.tensor(1.7))
    want = s.grad
    _assert_grad_close(want.clone(), want)
    with pytest.raises(AssertionError):
        _assert_grad_close((want.float() * 1.01).to(dtype), want)
    i = int((want.float().abs() - want.float().abs().median()).abs().argmin())
    bumped = want.clone().flatten()
    for _ in range(GRAD_ULPS[dtype] + 2):
        bumped[i] = torch.nextafter(bumped[i], torch.tensor(float("inf"), dtype=dtype))
    with pytest.raises(AssertionError):
        _assert_grad_close(bumped.view_as(want), want)


# --- agreement with the reference -------------------------------------------------------


_SHAPE_CASES = list(itertools.product((1, 7, 1000, 1271), ("single", "multi"), ("mean", "sum", "none")))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "n_classes,regime,reduction,temperature,alpha",
    [case + T_ALPHA_GRID[i % len(T_ALPHA_GRID)] for i, case in enumerate(_SHAPE_CASES)],
)
def test_matches_reference_fp32(device, n_classes, regime, reduction, temperature, alpha):
    s, t, y = _inputs(5, n_classes, device, seed=n_classes)
    _compare(s, t, y, temperature=temperature, alpha=alpha, reduction=reduction,
             **_regime_kwargs(regime, n_classes))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("regime", ["single", "multi"])
@pytest.mark.parametrize("temperature,alpha", T_ALPHA_GRID)
def test_temperature_alpha_grid(device, regime, temperature, alpha):
    s, t, y = _inputs(4, 1000, device, seed=1)
    _compare(s, t, y, temperature=temperature, alpha=alpha, **_regime_kwargs(regime, 1000))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_large_vocabulary_default_regime(device, reduction):
    """C=70000 > SINGLE_PASS_MAX_C: the default launch takes the two-pass path."""
    assert 70000 > kd_triton.SINGLE_PASS_MAX_C
    s, t, y = _inputs(3, 70000, device, seed=7)
    _compare(s, t, y, temperature=2.0, alpha=0.5, reduction=reduction)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("regime", ["single", "multi"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_low_precision_inputs(device, dtype, regime, reduction):
    s, t, y = _inputs(4, 1271, device, dtype=dtype, seed=3)
    _compare(s, t, y, temperature=2.0, alpha=0.5, reduction=reduction, **_regime_kwargs(regime, 1271))


@pytest.mark.parametrize("device", DEVICES)
def test_mixed_student_teacher_dtypes(device):
    s, _, y = _inputs(4, 1000, device, dtype=torch.bfloat16, seed=4)
    _, t, _ = _inputs(4, 1000, device, dtype=torch.float32, seed=5)
    _compare(s, t, y, temperature=4.0, alpha=0.5)


# --- unlabeled rows ---------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("regime", ["single", "multi"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_rows_unlabeled(device, regime, reduction):
    """No labeled row: CE term is 0 (not 0/0), the KD term remains, nothing is NaN."""
    s, t, _ = _inputs(4, 1000, device, seed=6)
    y = torch.full((4,), -100, device=device)
    loss_f, _ = _compare(s, t, y, temperature=2.0, alpha=0.5, reduction=reduction,
                         **_regime_kwargs(regime, 1000))
    kd_only = kd_loss_reference(s, t, None, 2.0, 0.5, -100, reduction)
    torch.testing.assert_close(loss_f, kd_only, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(loss_f).all() and (loss_f > 0).all()


@pytest.mark.parametrize("device", DEVICES)
def test_all_unlabeled_with_alpha_one_gives_zero(device):
    s, t, _ = _inputs(3, 7, device)
    y = torch.full((3,), -100, device=device)
    s = s.requires_grad_(True)
    loss = kd_loss_fused(s, t, y, temperature=2.0, alpha=1.0)
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(s.grad).item() == 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("regime", ["single", "multi"])
def test_labels_none_and_custom_ignore_index(device, regime):
    s, t, y = _inputs(5, 1000, device, seed=8)
    _compare(s, t, None, temperature=2.0, alpha=0.5, **_regime_kwargs(regime, 1000))
    y = y.clone()
    y[1] = 3  # labeled now …
    y[3] = -1  # … and this one ignored via ignore_index=-1
    s_f = s.clone().requires_grad_(True)
    s_r = s.clone().requires_grad_(True)
    loss_f = kd_loss_fused(s_f, t, y, temperature=2.0, alpha=0.5, ignore_index=-1, **_regime_kwargs(regime, 1000))
    loss_r = kd_loss_reference(s_r, t, y, 2.0, 0.5, -1)
    loss_f.backward()
    loss_r.backward()
    torch.testing.assert_close(loss_f, loss_r, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s_f.grad, s_r.grad, atol=1e-5, rtol=1e-5)


# --- layouts, extreme values, autograd plumbing -----------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("regime", ["single", "multi"])
def test_non_contiguous_rows(device, regime):
    """Row strides ≠ C (column slices of wider buffers), int32 labels, and a transposed view."""
    s_wide, t_wide, y = _inputs(5, 3000, device, seed=9)
    y = torch.where(y == -100, y, y % 1271)
    s = s_wide[:, 1000:2271]  # (5, 1271), row stride 3000
    t = t_wide[:, :1271]
    assert not s.is_contiguous() and s.stride(0) == 3000
    _compare(s, t, y.int(), temperature=2.0, alpha=0.5, **_regime_kwargs(regime, 1271))
    s_cols, t_cols, _ = _inputs(1271, 5, device, seed=10)
    _compare(s_cols.t(), t_cols.t(), y, temperature=4.0, alpha=0.5, **_regime_kwargs(regime, 1271))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("regime", ["single", "multi"])
def test_extreme_logits(device, dtype, regime):
    """±1e4 logits and −inf masked classes: finite loss and gradient, equal to the reference."""
    s, t, y = _inputs(4, 1000, device, seed=11)
    s[:, ::3] = 1e4
    s[:, 1::3] = -1e4
    t[:, ::5] = -1e4
    t[:, 2::7] = 1e4
    s[:, 10:20] = float("-inf")  # masked classes in both
    t[:, 10:20] = float("-inf")
    t[:, 900:] = float("-inf")  # teacher-only mask: p = 0 there, must not give 0·(−inf)
    s[0, :64] = float("-inf")  # a row whose first blocks are all −inf (online-softmax guard)
    t[0, :64] = float("-inf")
    y = torch.tensor([100, -100, 33, 999], device=device)
    s, t = s.to(dtype), t.to(dtype)
    for temperature in (0.5, 4.0):
        loss_f, _ = _compare(s, t, y, temperature=temperature, alpha=0.5, **_regime_kwargs(regime, 1000))
        assert torch.isfinite(loss_f).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("regime", ["single", "multi"])
def test_inplace_grad_overwrites_student_buffer(device, regime):
    """Each block is read before its gradient overwrites it, in both regimes."""
    s, t, y = _inputs(4, 1000, device, seed=12)
    leaf = s.clone().requires_grad_(True)
    logits = leaf * 1.0  # a non-leaf buffer the kernel may overwrite
    loss = kd_loss_fused(logits, t, y, temperature=2.0, alpha=0.5, inplace_grad=True,
                         **_regime_kwargs(regime, 1000))
    loss.backward()
    ref = s.clone().requires_grad_(True)
    kd_loss_reference(ref, t, y, 2.0, 0.5).backward()
    torch.testing.assert_close(leaf.grad, ref.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits.detach(), ref.grad, atol=1e-5, rtol=1e-5)  # buffer holds the grad


@pytest.mark.parametrize("device", DEVICES)
def test_teacher_gets_no_grad_and_no_grad_mode(device):
    s, t, y = _inputs(4, 7, device)
    s.requires_grad_(True)
    t.requires_grad_(True)
    loss = kd_loss_fused(s, t, y, temperature=2.0, alpha=0.5)
    loss.backward()
    assert t.grad is None and s.grad is not None
    with torch.no_grad():
        loss_ng = kd_loss_fused(s, t, y, temperature=2.0, alpha=0.5)
    assert not loss_ng.requires_grad
    torch.testing.assert_close(loss_ng, loss.detach())


@pytest.mark.parametrize("device", DEVICES)
def test_second_backward_is_a_clear_error(device):
    s, t, y = _inputs(3, 7, device)
    loss = kd_loss_fused(s.requires_grad_(True), t, y)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="once per forward"):
        loss.backward()


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch(device):
    s, t, _ = _inputs(0, 7, device)
    s.requires_grad_(True)
    loss = kd_loss_fused(s, t, None)
    loss.backward()
    assert loss.item() == 0.0 and s.grad.shape == (0, 7)


@pytest.mark.parametrize("device", DEVICES)
def test_unchecked_out_of_range_label_poisons_with_nan(device):
    """With check_label_range=False (no host sync) a bad label must not read out of bounds."""
    s, t, _ = _inputs(3, 7, device)
    y = torch.tensor([1, 70, -100], device=device)
    loss = kd_loss(s, t, y, impl="fused", check_label_range=False)
    assert torch.isnan(loss)


# --- dispatch and input checks ----------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_dispatch_fused_matches_reference(device):
    s, t, y = _inputs(4, 1000, device, seed=13)
    fused = kd_loss(s, t, y, temperature=2.0, alpha=0.3, impl="fused")
    ref = kd_loss(s, t, y, temperature=2.0, alpha=0.3, impl="reference")
    torch.testing.assert_close(fused, ref, atol=1e-5, rtol=1e-5)
    auto = kd_loss(s, t, y, temperature=2.0, alpha=0.3)  # fused on cuda, reference on cpu
    torch.testing.assert_close(auto, ref, atol=1e-5, rtol=1e-5)


def test_auto_on_cpu_uses_reference(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("auto must not take the fused path on CPU")

    monkeypatch.setattr(kd_triton, "kd_loss_fused", boom)
    s, t, y = _inputs(3, 7, "cpu")
    torch.testing.assert_close(kd_loss(s, t, y), kd_loss_reference(s, t, y))


def test_fused_on_cpu_without_interpreter_is_refused(monkeypatch):
    monkeypatch.delenv(_ENV, raising=False)
    s, t, y = _inputs(3, 7, "cpu")
    with pytest.raises(LossInputError, match="TRITON_INTERPRET"):
        kd_loss(s, t, y, impl="fused")
    with pytest.raises(LossInputError, match="TRITON_INTERPRET"):
        kd_loss_fused(s, t, y)


@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize(
    "case,match",
    [
        ("shape", "differ in shape"),
        ("one_d", "2-D"),
        ("label_shape", "labels must have shape"),
        ("label_float", "integers"),
        ("label_high", "out of range"),
        ("label_negative", "out of range"),
        ("t_zero", "temperature"),
        ("t_negative", "temperature"),
        ("alpha_high", "alpha"),
        ("alpha_negative", "alpha"),
        ("reduction", "reduction"),
    ],
)
def test_bad_input_raises_loss_input_error(impl, case, match):
    s, t, y = _inputs(3, 7, "cpu")
    kwargs = {"temperature": 2.0, "alpha": 0.5}
    if case == "shape":
        t = t[:, :5]
    elif case == "one_d":
        s, t = s[0], t[0]
    elif case == "label_shape":
        y = y[:2]
    elif case == "label_float":
        y = y.float()
    elif case == "label_high":
        y = torch.tensor([0, 7, 1])
    elif case == "label_negative":
        y = torch.tensor([0, -3, 1])
    elif case == "t_zero":
        kwargs["temperature"] = 0.0
    elif case == "t_negative":
        kwargs["temperature"] = -1.0
    elif case == "alpha_high":
        kwargs["alpha"] = 1.5
    elif case == "alpha_negative":
        kwargs["alpha"] = -0.1
    elif case == "reduction":
        kwargs["reduction"] = "batchmean"
    with pytest.raises(LossInputError, match=match):
        kd_loss(s, t, y, impl=impl, **kwargs)


def test_bad_impl_and_block_size():
    s, t, y = _inputs(3, 7, "cpu")
    with pytest.raises(LossInputError, match="impl"):
        kd_loss(s, t, y, impl="triton")
    if INTERPRET:
        with pytest.raises(LossInputError, match="power of two"):
            kd_loss_fused(s, t, y, single_pass=False, block_size=48)
        with pytest.raises(LossInputError, match="smaller than the row"):
            kd_loss_fused(s, t, y, single_pass=True, block_size=4)


def test_fused_matches_closed_form_ce_when_alpha_one():
    """α=1 on the fused path is plain cross-entropy (an independent oracle, not the reference)."""
    if not INTERPRET:
        pytest.skip("CPU oracle test; the cuda variants above cover native runs")
    s, t, y = _inputs(5, 1271, "cpu", seed=14)
    loss = kd_loss_fused(s, t, y, temperature=4.0, alpha=1.0, single_pass=False, block_size=256)
    torch.testing.assert_close(loss, F.cross_entropy(s, y), atol=1e-5, rtol=1e-5)
