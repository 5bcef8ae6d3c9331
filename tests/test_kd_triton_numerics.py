"""The fused KD loss's numerics against an fp64 oracle, its torch.library op, and the objective's
weight folded into the kernel (issue 22).

The rule (flash-attention's tests use it): for fp16/bf16 logits, the fused gradient's error
against the fp64 gradient is at most the PyTorch reference's error plus one ulp of the dtype,
element by element. Both compute in fp32 and round once to the dtype; the fused kernel takes
the term's weight as an fp32 scale, so nothing rounds the gradient a second time when
grad_output is 1 (training's case). Runs natively on CUDA and under Triton's interpreter
(tests/_kd_interpret.py). Under the interpreter bf16 stores truncate instead of rounding to
nearest; the rule still holds there (a truncation is under one ulp), so no case is skipped.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from _kd_interpret import DEVICES, FILTERS, HAS_CUDA, INTERPRET, enter, kd_triton, run_file_in_subprocess
from distill_export.losses.kd import kd_loss_reference

pytestmark = FILTERS
LOWP = [torch.float16, torch.bfloat16]
REGIMES = {"single": {"regime": "single"}, "looped": {"regime": "looped", "block_size": 64},
           "split": {"regime": "split", "chunk_size": 128, "block_size": 64}}
WEIGHT = 0.3  # fp16(0.3) = 0.30005, bf16(0.3) = 0.30078: the weight the objective used to apply after rounding


@pytest.fixture(autouse=True)
def _interpret_env(request, monkeypatch):
    enter(request, monkeypatch)
    yield


def test_interpreter_subprocess():
    run_file_in_subprocess(__file__)


def _inputs(n_rows, n_classes, device, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = (torch.randn(n_rows, n_classes, generator=g) * 3).to(device=device, dtype=dtype)
    t = (torch.randn(n_rows, n_classes, generator=g) * 3).to(device=device, dtype=dtype)
    y = torch.randint(0, n_classes, (n_rows,), generator=g)
    y[1] = -100
    return s, t, y.to(device)


def kd_fp64(s, t, y, temperature, alpha, reduction):
    """The oracle: Hinton's loss written out again, in float64 (independent of losses/kd.py)."""
    s, t = s.double(), t.double()
    log_q = F.log_softmax(s / temperature, -1)
    log_p = F.log_softmax(t / temperature, -1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1) * (1 - alpha) * temperature**2  # (N,)
    ce = torch.zeros_like(kl)
    n_lab = torch.ones(())
    if y is not None and alpha > 0:
        lab = y != -100
        ce = torch.where(lab, -F.log_softmax(s, -1).gather(1, torch.where(lab, y, 0)[:, None])[:, 0], 0.0) * alpha
        n_lab = lab.sum().clamp(min=1)
    if reduction == "none":
        return ce + kl
    if reduction == "sum":
        return ce.sum() + kl.sum()
    return ce.sum() / n_lab + kl.sum() / s.shape[0]


def _grads(s, t, y, temperature, alpha, reduction, scale, grad_output, **launch):
    """(fused, reference, fp64 oracle) gradients of scale·loss, the first two in s's dtype."""
    out = []
    for impl in ("fused", "reference", "oracle"):
        x = (s.double() if impl == "oracle" else s.clone()).requires_grad_(True)
        if impl == "fused":
            loss = kd_triton.kd_loss_fused(x, t, y, temperature=temperature, alpha=alpha, reduction=reduction,
                                           scale=scale, **launch)
        elif impl == "reference":  # the reference path: its fp32 loss times the weight, in fp32
            loss = scale * kd_loss_reference(x, t, y, temperature, alpha, -100, reduction)
        else:
            loss = scale * kd_fp64(x, t, y, temperature, alpha, reduction)
        loss.backward(grad_output(loss))
        out.append(x.grad)
    return out


def _ulp(x: torch.Tensor, dtype) -> torch.Tensor:
    """The dtype's spacing at |x| (x rounded to the dtype; subnormals included), as float64."""
    w = x.abs().to(dtype)
    return (torch.nextafter(w, torch.full_like(w, float("inf"))) - w).double()


def excess_ulps(fused, ref, oracle) -> torch.Tensor:
    """Per element: (|fused − oracle| − |ref − oracle| − floor) / ulp(oracle); the rule is ≤ 1.
    floor = 4·fp32 eps·max|oracle|: both codes accumulate a row in fp32, so an element far below
    the row's largest is known to a few fp32 ulps of that largest, in either code."""
    o = oracle.double()
    floor = 4 * torch.finfo(torch.float32).eps * o.abs().max()
    return ((fused.double() - o).abs() - (ref.double() - o).abs() - floor) / _ulp(o, fused.dtype)


def _assert_rule(fused, ref, oracle, ulps=1.0):
    excess = excess_ulps(fused, ref, oracle)
    bad = ~(excess <= ulps)
    assert not bool(bad.any()), (f"{int(bad.sum())} of {bad.numel()} elements: fused error > reference error + "
                                 f"{ulps} ulp (worst {float(excess.max()):.2f})")


def _ones(loss):
    return torch.ones_like(loss)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", LOWP)
@pytest.mark.parametrize("regime", list(REGIMES))
@pytest.mark.parametrize("reduction,alpha,temperature,labels", [
    # every reduction with every (alpha, T, labels) case; the quick tier runs the diagonal (each
    # reduction once, each case once), the slow tier (--slow) the other six pairs
    pytest.param(reduction, *case, marks=() if i == j else pytest.mark.slow)
    for i, reduction in enumerate(["mean", "sum", "none"])
    for j, case in enumerate([(0.0, 4.0, False), (0.5, 2.0, True), (0.3, 1.0, True)])
])
def test_weighted_gradient_obeys_the_fp64_oracle_rule(device, dtype, regime, reduction, alpha, temperature, labels):
    """grad_output = 1, the weight in the kernel: rounded once, within the reference's error + 1 ulp.
    (0.0, 4.0, no labels) is the objective's Hinton term; the others add CE, at T = 1 too."""
    s, t, y = _inputs(4, 300, device, dtype, seed=int(alpha * 10) + len(reduction))
    fused, ref, oracle = _grads(s, t, y if labels else None, temperature, alpha, reduction, WEIGHT, _ones,
                                **REGIMES[regime])
    assert fused.dtype == dtype
    _assert_rule(fused, ref, oracle)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", LOWP)
def test_power_of_two_grad_output_stays_within_the_rule(device, dtype):
    """A loss scaler's grad_output (2^k) scales the stored gradient exactly, so the rule holds, with
    one known exception: fp16 elements that were subnormal before the scale (|g| < 6.1e-5) were
    stored with fp16's absolute spacing (6e-8), which loss scaling exists to avoid. The fused
    gradient is computed in forward, before the scale is known: fp16 with a GradScaler keeps
    the precision of an unscaled fp16 gradient there. (Training here is fp32 or bf16 autocast,
    without a GradScaler; bf16 has fp32's exponent range.)"""
    s, t, y = _inputs(4, 300, device, dtype, seed=5)
    fused, ref, oracle = _grads(s, t, y, 2.0, 0.5, "mean", WEIGHT, lambda loss: torch.full_like(loss, 1024.0))
    normal = (oracle / 1024.0).abs() >= torch.finfo(dtype).tiny
    _assert_rule(fused[normal], ref[normal], oracle[normal])
    if dtype == torch.float16:  # the rest: within half fp16's subnormal spacing, times the scale
        sub_err = (fused[~normal].double() - oracle[~normal]).abs()
        assert bool((sub_err <= 1024.0 * 2.0**-25 * 1.01 + 2 * _ulp(oracle[~normal], dtype)).all())
    else:
        assert bool(normal.all())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", LOWP)
def test_other_grad_output_costs_a_second_rounding(device, dtype):
    """grad_output 1.7 (not training's case): backward scales the stored gradient in fp32 and
    rounds again: within the reference's error + 2 ulp (3 under the interpreter, whose bf16
    stores truncate)."""
    s, t, y = _inputs(4, 300, device, dtype, seed=6)
    fused, ref, oracle = _grads(s, t, y, 2.0, 0.5, "none", WEIGHT, lambda loss: torch.full_like(loss, 1.7))
    _assert_rule(fused, ref, oracle, ulps=3.0 if INTERPRET and dtype == torch.bfloat16 else 2.0)


@pytest.mark.parametrize("dtype", LOWP)
def test_rule_is_not_vacuous(dtype):
    """The rule rejects the reference's own gradient with one median element moved 2 ulp further
    from the oracle, and the whole gradient 2 eps (2-4 ulp) too large."""
    s, t, y = _inputs(4, 300, "cpu", dtype, seed=7)
    ref = s.clone().requires_grad_(True)
    (WEIGHT * kd_loss_reference(ref, t, y, 2.0, 0.5)).backward()
    oracle = s.double().requires_grad_(True)
    (WEIGHT * kd_fp64(oracle, t, y, 2.0, 0.5, "mean")).backward()
    ref, oracle = ref.grad, oracle.grad
    _assert_rule(ref.clone(), ref, oracle)
    bumped = ref.clone().flatten()
    i = int((ref.double().abs().flatten() - ref.double().abs().median()).abs().argmin())
    away = float("inf") if float(ref.flatten()[i]) >= float(oracle.flatten()[i]) else float("-inf")
    for _ in range(2):  # 2 ulp further from the oracle
        bumped[i] = torch.nextafter(bumped[i], torch.tensor(away, dtype=dtype))
    with pytest.raises(AssertionError, match="1 of 1200"):
        _assert_rule(bumped.view_as(ref), ref, oracle)
    coarse = (ref.float() * (1 + 2 * torch.finfo(dtype).eps)).to(dtype)  # 2-4 ulp larger
    with pytest.raises(AssertionError):
        _assert_rule(coarse, ref, oracle)


@pytest.mark.parametrize("device", DEVICES)
def test_backward_scales_only_rows_whose_grad_output_is_not_one(device):
    """kd_scale_grad_: per row, in fp32; rows with grad_output 1 are left exactly as they are."""
    g = torch.randn(4, 37, device=device).to(torch.bfloat16)
    go = torch.tensor([1.0, 0.5, 1.0, -3.0], device=device)
    want = (g.float() * go[:, None]).to(torch.bfloat16)
    got = g.clone()
    torch.ops.distill_export.kd_scale_grad_(got, go)
    assert torch.equal(got[0], g[0]) and torch.equal(got[2], g[2])
    torch.testing.assert_close(got[[1, 3]].float(), want[[1, 3]].float(), atol=0, rtol=2 ** -7)
    got = g.clone()
    torch.ops.distill_export.kd_scale_grad_(got, torch.ones(()).to(device).expand(4))  # a sum's expanded 1
    assert torch.equal(got, g)


@pytest.mark.parametrize("device", DEVICES)
def test_no_host_sync_in_forward_and_backward(device, monkeypatch):
    """Nothing reads a device value on the host: CUDA's sync debug mode errors on a sync; on CPU,
    Tensor.item/__bool__/tolist are made to raise while the loss runs forward and backward."""
    s, t, y = _inputs(8, 300, device, torch.float32, seed=8)
    s.requires_grad_(True)
    if device == "cuda":
        torch.cuda.set_sync_debug_mode("error")
    else:
        def refuse(*args, **kwargs):
            raise AssertionError("host sync")
        for name in ("item", "__bool__", "tolist"):
            monkeypatch.setattr(torch.Tensor, name, refuse)
    try:
        kd_triton.kd_loss_fused(s, t, y, temperature=2.0, alpha=0.5, scale=WEIGHT).backward()
    finally:
        if device == "cuda":
            torch.cuda.set_sync_debug_mode(0)
        monkeypatch.undo()
    assert s.grad is not None and torch.isfinite(s.grad).all()


# --- the torch.library op ---------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("grad_output", [1.0, 3.0])
def test_eager_path_equals_the_op(device, grad_output):
    """Eager calls run _FusedKD (no torch.library dispatch), torch.compile traces the op: the same
    kernels, so loss and gradient are bitwise equal, with grad_output 1 and with one to scale by."""
    s, t, y = _inputs(6, 70, device, torch.bfloat16, seed=12)
    eager_x, op_x = s.clone().requires_grad_(True), s.clone().requires_grad_(True)
    eager = kd_triton.kd_loss_fused(eager_x, t, y, temperature=2.0, alpha=0.5, scale=WEIGHT)
    (eager * grad_output).backward()
    rows, _ = torch.ops.distill_export.kd_loss_rows(op_x, t, y, 2.0, 0.5, -100, True, WEIGHT, True)
    op = rows.sum()
    (op * grad_output).backward()
    assert torch.equal(eager.detach(), op.detach())
    assert torch.equal(eager_x.grad, op_x.grad)
    assert eager.grad_fn is not None and "FusedKD" in type(eager.grad_fn).__name__ or any(
        "FusedKD" in type(f[0]).__name__ for f in eager.grad_fn.next_functions if f[0] is not None)



@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    """Schema, fake (meta) implementation and autograd registration, checked by torch. Not
    test_aot_dispatch_dynamic: opcheck calls the op alone, so its second output, the gradient
    buffer that its own backward scales in place (the no-op when grad_output is 1), is a
    user-visible output too, which AOT autograd cannot partition. kd_loss_fused drops that
    output, and torch.compile traces it whole (test_torch_compile_fullgraph)."""
    s, t, y = _inputs(4, 40, device, torch.float32, seed=9)
    for args in [(s.requires_grad_(True), t, y, 2.0, 0.5, -100, True, WEIGHT, True),
                 (s.detach(), t, None, 4.0, 0.0, -100, False, 1.0, False)]:
        torch.library.opcheck(torch.ops.distill_export.kd_loss_rows.default, args,
                              test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
    g = torch.randn(3, 5, device=device)
    torch.library.opcheck(torch.ops.distill_export.kd_scale_grad_.default, (g, torch.ones(3, device=device)),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_torch_compile_fullgraph(device, backend):
    """One graph (no break) around the op; loss and gradient equal eager's."""
    if device == "cpu" and backend == "inductor" and not INTERPRET:
        pytest.skip("CPU inductor only matters where the op runs on CPU (the interpreter)")
    s, t, y = _inputs(6, 50, device, torch.float32, seed=10)

    def step(x):
        return kd_triton.kd_loss_fused(x, t, y, temperature=2.0, alpha=0.5, scale=WEIGHT) * 2.0

    torch._dynamo.reset()
    compiled = torch.compile(step, backend=backend, fullgraph=True)
    results = []
    for fn in (step, compiled):
        x = s.clone().requires_grad_(True)
        loss = fn(x)
        loss.backward()
        results.append((loss.detach(), x.grad))
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(results[1][1], results[0][1], atol=1e-7, rtol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA or INTERPRET, reason="the autotuner times configs on a CUDA device")
@pytest.mark.parametrize("n_classes", [1000, 20000, 70000])  # single, looped, split by default
def test_autotuned_launch_matches_the_reference(n_classes, monkeypatch):
    """The default CUDA launch (autotuned per C bucket, dtypes and CE on/off) against the reference."""
    monkeypatch.setenv("DISTILL_KD_AUTOTUNE", "1")
    s, t, y = _inputs(64, n_classes, "cuda", torch.bfloat16, seed=13)
    for labels in (y, None):
        fused, ref, oracle = _grads(s, t, labels, 2.0, 0.5 if labels is not None else 0.0, "mean", WEIGHT, _ones)
        _assert_rule(fused, ref, oracle)


# --- the objective hands the weight to the kernel -----------------------------------------------


def _objective(impl: str):
    from distill_export.methods.objective import Objective, TermSpec

    return Objective([TermSpec("ce", 0.4), TermSpec("kd", 0.6, {"temperature": 4.0})], kd_impl=impl)


def _batch(s, t, y):
    from distill_export.methods.base import TermInputs

    return TermInputs(student_logits=s, labels=y, teacher_logits=t)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("share", [None, 0.75])
def test_objective_folds_the_weight_into_the_kernel(device, dtype, share, monkeypatch):
    """On the fused path the kd term gets weight (× DDP share) as the kernel's scale; the total,
    the logged unweighted parts and the gradient match the reference objective, and in bf16 the
    KD term's gradient obeys the fp64-oracle rule (grad_output is 1: backward is a no-op)."""
    from distill_export import distributed
    from distill_export.methods import ce as ce_module

    if share is not None:  # a rank holding a smaller shard: its rows' mean is worth `share` of the global one
        monkeypatch.setattr(distributed, "is_distributed", lambda: True)
        monkeypatch.setattr(distributed, "row_share", lambda n: share)
        monkeypatch.setattr(ce_module, "global_count", lambda c: c.clamp(min=1))
    s, t, y = _inputs(6, 300, device, dtype, seed=11)
    calls = []
    real = kd_triton.kd_loss_fused
    monkeypatch.setattr(kd_triton, "kd_loss_fused", lambda *a, **k: calls.append(k["scale"]) or real(*a, **k))
    out = {}
    for impl in ("fused", "reference"):
        x = s.clone().requires_grad_(True)
        total, parts = _objective(impl)(_batch(x, t, y))
        total.backward()
        out[impl] = (total.detach(), parts, x.grad)
    assert calls == [pytest.approx(0.6 * (share or 1.0))]  # once, by the fused objective, with weight·share
    (tot_f, parts_f, g_f), (tot_r, parts_r, g_r) = out["fused"], out["reference"]
    torch.testing.assert_close(tot_f, tot_r, atol=1e-5, rtol=1e-5)
    assert parts_f.keys() == parts_r.keys() == {"ce", "kd"}
    torch.testing.assert_close(parts_f["kd"], parts_r["kd"], atol=1e-5, rtol=1e-5)  # unweighted, for the log
    if dtype == torch.float32:
        torch.testing.assert_close(g_f, g_r, atol=1e-6, rtol=1e-5)
        return
    # The oracle rule for the KD term's gradient alone: with both terms, autograd sums two bf16
    # gradients (each rounded once) in bf16, and where they cancel, each one's rounding is many
    # ulps of the sum, in either objective.
    from distill_export.methods.objective import Objective, TermSpec

    grads = []
    for impl in ("fused", "reference"):
        x = s.clone().requires_grad_(True)
        Objective([TermSpec("kd", 0.6, {"temperature": 4.0})], kd_impl=impl)(_batch(x, t, y))[0].backward()
        grads.append(x.grad)
    x = s.double().requires_grad_(True)
    (0.6 * (share or 1.0) * kd_fp64(x, t, None, 4.0, 0.0, "mean")).backward()
    _assert_rule(grads[0], grads[1], x.grad)


def test_reference_objective_is_unchanged_in_fp32():
    """CPU default path (the reference): total = Σ weight·(value·share), in the order it always
    was, bit for bit; the weight is never handed to the reference loss."""
    from distill_export.losses.kd import kd_loss
    from distill_export.methods.ce import masked_cross_entropy

    s, t, y = _inputs(6, 10, "cpu", torch.float32, seed=12)
    total, parts = _objective("auto")(_batch(s, t, y))
    lab = y != -100
    ce = masked_cross_entropy(s, y, lab, lab.sum().clamp(min=1))
    kd = kd_loss(s, t, None, temperature=4.0, alpha=0.0)
    want = s.new_zeros((), dtype=torch.float32) + 0.4 * ce
    want = want + 0.6 * kd
    assert torch.equal(total, want) and torch.equal(parts["kd"], kd) and torch.equal(parts["ce"], ce)
