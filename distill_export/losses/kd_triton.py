"""Fused knowledge-distillation loss: one Triton kernel computes loss *and* gradient.

Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network" (2015):

    loss = α·CE(s, y) + (1−α)·T²·KL(softmax(t/T) ‖ softmax(s/T))

Per row r of the student logits s (N, C) and teacher logits t (N, C) the kernel
writes the row's (already normalised) loss contribution and, in the same pass,
the gradient w.r.t. s:

    ∂loss/∂s_i = (1−α)·T·(softmax(s/T)_i − softmax(t/T)_i)·w_kd
               + α·(softmax(s)_i − 1[i=y])·w_ce            (labeled rows only)

with w_kd = 1/N, w_ce = 1/n_labeled for ``reduction="mean"`` and 1 for "sum"
and "none". The gradient is stored (optionally over s itself) so that backward
only multiplies it by grad_output. The teacher gets no gradient.

Why fused: the loss is memory-bound. Eager PyTorch reads and writes N×C
intermediates a dozen times (log_softmax, softmax, KL, CE, and their
backwards); this kernel reads s and t once and writes the gradient once:
bytes ≈ N·C·(b_s + b_t + b_g).

Two regimes (``SINGLE_PASS_MAX_C`` is the boundary, to tune on a GPU):

* C ≤ SINGLE_PASS_MAX_C: one block holds the whole row in registers; s and t
  are each loaded once, the gradient stored once.
* C > SINGLE_PASS_MAX_C: pass 1 walks the row in blocks of ``MULTI_PASS_BLOCK``
  with an online softmax (running max + rescaled sum, Milakov & Gimelshein
  2018); pass 2 walks the blocks in *reverse* order, so the blocks loaded last
  in pass 1 are the ones most likely still in L2, and computes KL, CE and the
  gradient with the final statistics.

Numerics: everything is accumulated in fp32 (inputs are cast right after
``tl.load``, which also sidesteps the Triton interpreter's broken bf16
arithmetic); exponentials are ``exp2`` with log2(e)/T folded into one constant;
row offsets are int64 (N·C can pass 2³¹). There is no host synchronisation:
n_labeled is counted on the device with torch ops and handed to the kernel as
a pointer, and the final reduction is a device ``sum``.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from distill_export.errors import LossInputError
from distill_export.losses.checks import check_kd_inputs

# Rows up to this many classes are held on chip in one block (2 reads + 1 write
# per element). Above it, the two-pass online-softmax kernel runs (pass 2
# re-reads s and t, mostly from L2). Why 8192: compiled offline for sm_90a
# (ptxas -v), BLOCK=8192 at 16 warps uses ~104 registers and no spills, while
# BLOCK=16384 spills at 16 and at 32 warps. Tune on a GPU with
# tools/bench_kd_loss.py --shapes (try 4096 … 16384).
SINGLE_PASS_MAX_C = 8192
# Block width of the two-pass regime: big enough for 16-byte vector loads and
# many loads in flight, small enough that a block's temporaries stay in registers.
MULTI_PASS_BLOCK = 4096

_LOG2E = 1.4426950408889634  # log2(e): exp(x) == exp2(x·log2e)
# Kernel-side constants (module-level tl.constexpr, the form Triton resolves in jit code).
_K_LOG2E = tl.constexpr(1.4426950408889634)
_K_LN2 = tl.constexpr(0.6931471805599453)  # ln(x) == log2(x)·ln2
_K_NEG_INF = tl.constexpr(float("-inf"))
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _kd_fwd_bwd_kernel(
    s_ptr, t_ptr, y_ptr, g_ptr, loss_ptr, n_lab_ptr,
    C, stride_s, stride_t, stride_g,
    k_soft,  # log2(e)/T: exp(x/T) == exp2(x·k_soft)
    w_kd,  # weight of the per-row KL in the loss: (1−α)·T² (·1/N for mean)
    g_kd,  # weight of (q − p) in the gradient:   (1−α)·T  (·1/N for mean)
    alpha,
    ignore_index,
    HAS_CE: tl.constexpr,  # labels given and α > 0
    CE_MEAN: tl.constexpr,  # divide the CE term by n_labeled (read from n_lab_ptr)
    COMPUTE_GRAD: tl.constexpr,
    SINGLE: tl.constexpr,  # whole row in one block
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # int64 so row·stride cannot overflow
    s_row = s_ptr + row * stride_s
    t_row = t_ptr + row * stride_t
    g_row = g_ptr + row * stride_g
    cols = tl.arange(0, BLOCK)

    # CE weight for this row: α (·1/n_labeled for mean), 0 for unlabeled rows.
    w_ce = 0.0
    y = 0
    s_y = 0.0
    if HAS_CE:
        y = tl.load(y_ptr + row).to(tl.int64)
        labeled = y != ignore_index
        in_range = (y >= 0) & (y < C)
        w_ce = tl.where(labeled, alpha, 0.0)
        if CE_MEAN:
            w_ce = w_ce / tl.load(n_lab_ptr)  # device scalar: no host sync
        y = tl.where(labeled & in_range, y, 0)  # safe gather index
        s_y = tl.load(s_row + y).to(tl.float32)
        # An out-of-range label (only reachable with check_label_range=False)
        # poisons the loss with NaN rather than reading out of bounds.
        s_y = tl.where(labeled & ~in_range, float("nan"), s_y)

    if SINGLE:
        # ---- regime 1: the row lives in registers --------------------------
        mask = cols < C
        s = tl.load(s_row + cols, mask=mask, other=_K_NEG_INF).to(tl.float32)  # (BLOCK,)
        t = tl.load(t_row + cols, mask=mask, other=_K_NEG_INF).to(tl.float32)  # (BLOCK,)
        m_s = tl.max(s, axis=0)
        m_t = tl.max(t, axis=0)
        d_s = s - m_s  # ≤ 0, −inf on masked/−inf classes
        d_t = t - m_t
        e_q = tl.exp2(d_s * k_soft)  # softmax(s/T) numerator
        e_p = tl.exp2(d_t * k_soft)  # softmax(t/T) numerator
        z_q = tl.sum(e_q, axis=0)
        z_p = tl.sum(e_p, axis=0)
        p = e_p / z_p
        # log2 p − log2 q, computed from centred logits (no large-number cancellation).
        log2_ratio = (d_t - d_s) * k_soft - tl.log2(z_p) + tl.log2(z_q)
        # where(), not multiply: p == 0 (teacher −inf) must give 0, not 0·(−inf).
        kl = tl.sum(tl.where(p > 0.0, p * log2_ratio, 0.0), axis=0) * _K_LN2
        loss = w_kd * kl
        if HAS_CE:
            e_1 = tl.exp2(d_s * _K_LOG2E)  # softmax(s) numerator, for CE at T=1
            z_1 = tl.sum(e_1, axis=0)
            ce = tl.log2(z_1) * _K_LN2 - (s_y - m_s)
            # where() so an unlabeled row's CE (maybe inf) cannot leak a NaN.
            loss += tl.where(w_ce != 0.0, w_ce * ce, 0.0)
        if COMPUTE_GRAD:
            g = g_kd * (e_q / z_q - p)
            if HAS_CE:
                g += w_ce * (e_1 / z_1 - tl.where(cols == y, 1.0, 0.0))
            tl.store(g_row + cols, g.to(g_ptr.dtype.element_ty), mask=mask)
    else:
        # ---- regime 2, pass 1: online max/sum over blocks -------------------
        # Scalars per row; the rescale factor exp2((m_old − m_new)·k) is one
        # exp2 per block, not per element.
        m_s = float("-inf")
        m_t = float("-inf")
        z_q = 0.0
        z_p = 0.0
        z_1 = 0.0
        n_blocks = tl.cdiv(C, BLOCK)
        for b in range(0, n_blocks):
            offs = b * BLOCK + cols
            mask = offs < C
            s = tl.load(s_row + offs, mask=mask, other=_K_NEG_INF).to(tl.float32)
            t = tl.load(t_row + offs, mask=mask, other=_K_NEG_INF).to(tl.float32)
            m_s_new = tl.maximum(m_s, tl.max(s, axis=0))
            m_t_new = tl.maximum(m_t, tl.max(t, axis=0))
            # While a row has seen only −inf, m is −inf and (−inf) − (−inf) is NaN:
            # keep the sums at 0 until a finite value arrives.
            s_ok = m_s_new > _K_NEG_INF
            t_ok = m_t_new > _K_NEG_INF
            d_s = tl.where(s_ok, s - m_s_new, _K_NEG_INF)
            d_t = tl.where(t_ok, t - m_t_new, _K_NEG_INF)
            r_s = tl.where(s_ok, m_s - m_s_new, 0.0)  # ≤ 0 (−inf on the first finite block)
            r_t = tl.where(t_ok, m_t - m_t_new, 0.0)
            z_q = z_q * tl.exp2(r_s * k_soft) + tl.sum(tl.exp2(d_s * k_soft), axis=0)
            z_p = z_p * tl.exp2(r_t * k_soft) + tl.sum(tl.exp2(d_t * k_soft), axis=0)
            if HAS_CE:
                z_1 = z_1 * tl.exp2(r_s * _K_LOG2E) + tl.sum(tl.exp2(d_s * _K_LOG2E), axis=0)
            m_s = m_s_new
            m_t = m_t_new

        # ---- regime 2, pass 2: KL, CE and gradient, blocks in reverse -------
        log2_z_ratio = tl.log2(z_q) - tl.log2(z_p)
        kl_acc = tl.zeros([BLOCK], dtype=tl.float32)
        for i in range(0, n_blocks):
            b = n_blocks - 1 - i  # reverse: the last blocks of pass 1 are still in L2
            offs = b * BLOCK + cols
            mask = offs < C
            s = tl.load(s_row + offs, mask=mask, other=_K_NEG_INF).to(tl.float32)
            t = tl.load(t_row + offs, mask=mask, other=_K_NEG_INF).to(tl.float32)
            d_s = s - m_s
            d_t = t - m_t
            p = tl.exp2(d_t * k_soft) / z_p
            log2_ratio = (d_t - d_s) * k_soft + log2_z_ratio
            kl_acc += tl.where(p > 0.0, p * log2_ratio, 0.0)
            if COMPUTE_GRAD:
                g = g_kd * (tl.exp2(d_s * k_soft) / z_q - p)
                if HAS_CE:
                    g += w_ce * (tl.exp2(d_s * _K_LOG2E) / z_1 - tl.where(offs == y, 1.0, 0.0))
                tl.store(g_row + offs, g.to(g_ptr.dtype.element_ty), mask=mask)
        loss = w_kd * tl.sum(kl_acc, axis=0) * _K_LN2
        if HAS_CE:
            ce = tl.log2(z_1) * _K_LN2 - (s_y - m_s)
            loss += tl.where(w_ce != 0.0, w_ce * ce, 0.0)

    tl.store(loss_ptr + row, loss)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _launch_config(n_classes: int, block_size: int | None, single_pass: bool | None) -> tuple[bool, int, int]:
    """(single, BLOCK, num_warps) for a row of n_classes; block_size/single_pass force them (tests)."""
    if block_size is not None and (block_size < 2 or block_size & (block_size - 1)):
        raise LossInputError(f"block_size must be a power of two >= 2, got {block_size}")
    single = n_classes <= SINGLE_PASS_MAX_C if single_pass is None else single_pass
    if single:
        block = triton.next_power_of_2(n_classes)
        if block_size is not None:
            if block_size < n_classes:
                raise LossInputError(
                    f"single-pass block_size {block_size} is smaller than the row ({n_classes} classes)"
                )
            block = block_size
        block = max(block, 2)
    else:
        block = block_size if block_size is not None else MULTI_PASS_BLOCK
    # ~16-32 fp32 elements per thread: enough work per thread, few spills.
    num_warps = 4 if block <= 1024 else 8 if block <= 4096 else 16
    return single, block, num_warps


class FusedKDLoss(torch.autograd.Function):
    """autograd.Function around ``_kd_fwd_bwd_kernel``: forward stores the gradient,
    backward scales it by grad_output (in place, so backward may run once)."""

    @staticmethod
    def forward(ctx, s, t, labels, temperature, alpha, ignore_index, reduction,
                compute_grad, inplace_grad, block_size, single_pass):
        n_rows, n_classes = s.shape  # (N, C)
        # Row stride is free; the class axis must be unit-stride for vector loads.
        if s.stride(1) != 1:
            s = s.contiguous()
        if t.stride(1) != 1:
            t = t.contiguous()
        single, block, num_warps = _launch_config(n_classes, block_size, single_pass)

        has_ce = labels is not None and alpha > 0.0
        ce_mean = has_ce and reduction == "mean"
        if ce_mean:
            # n_labeled stays on the device: the kernel reads it through a pointer.
            n_lab = (labels != ignore_index).sum(dtype=torch.float32).clamp_(min=1.0)  # ()
        else:
            n_lab = s  # unused (dead constexpr branch)
        kd_scale = 1.0 / n_rows if reduction == "mean" else 1.0
        w_kd = (1.0 - alpha) * temperature**2 * kd_scale
        g_kd = (1.0 - alpha) * temperature * kd_scale

        if compute_grad:
            # Overwrite s only if it is a dense row-major view we can write row by row.
            can_alias = inplace_grad and s.stride(1) == 1 and s.stride(0) >= n_classes
            grad = s if can_alias else torch.empty((n_rows, n_classes), dtype=s.dtype, device=s.device)
        else:
            grad = s  # unused (dead constexpr branch): nothing is written
        loss_rows = torch.empty(n_rows, dtype=torch.float32, device=s.device)  # (N,)

        _kd_fwd_bwd_kernel[(n_rows,)](
            s, t, labels if has_ce else s, grad, loss_rows, n_lab,
            n_classes, s.stride(0), t.stride(0), grad.stride(0),
            _LOG2E / temperature, w_kd, g_kd, float(alpha), int(ignore_index),
            HAS_CE=has_ce, CE_MEAN=ce_mean, COMPUTE_GRAD=compute_grad,
            SINGLE=single, BLOCK=block, num_warps=num_warps,
        )
        ctx.grad = grad if compute_grad else None
        ctx.reduction = reduction
        # mean: rows already carry 1/N and 1/n_labeled, so the mean is a plain sum.
        return loss_rows if reduction == "none" else loss_rows.sum()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        grad = ctx.grad
        if grad is None:
            raise RuntimeError(
                "fused KD loss: backward can run once per forward (its gradient buffer is "
                "scaled in place); use impl='reference' for retain_graph or double backward"
            )
        ctx.grad = None
        if ctx.reduction == "none":
            grad.mul_(grad_output[:, None])  # (N, C) · (N, 1)
        else:
            # Always multiply: testing grad_output == 1 would need a host sync.
            grad.mul_(grad_output)
        return grad, None, None, None, None, None, None, None, None, None, None


def kd_loss_fused(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    temperature: float = 4.0,
    alpha: float = 0.5,
    ignore_index: int = -100,
    reduction: str = "mean",
    inplace_grad: bool = False,
    block_size: int | None = None,
    single_pass: bool | None = None,
) -> torch.Tensor:
    """Hinton et al. (2015) KD loss, forward and gradient in one Triton kernel.

    Same semantics as ``kd_loss_reference``; returns an fp32 scalar (mean/sum)
    or (N,) tensor (none).

    student_logits, teacher_logits: (N, C), fp32/fp16/bf16, any row stride.
    labels: (N,) integers or None; rows equal to ``ignore_index`` keep only the KD term.
    inplace_grad: write the gradient over ``student_logits`` (saves N·C memory).
        Only safe when nothing else needs the logits afterwards (e.g. they come
        straight from an nn.Linear, whose backward does not read its output);
        autograd cannot detect the overwrite.
    block_size, single_pass: force the regime/block (for tests and tuning).

    The label range is not checked here (that needs a host sync; ``kd_loss``
    does it): an out-of-range label gives a NaN loss, never an out-of-bounds read.
    """
    check_kd_inputs(
        student_logits, teacher_logits, labels, temperature, alpha, ignore_index, reduction,
        check_label_range=False,
    )
    s, t = student_logits, teacher_logits
    if s.device != t.device or (labels is not None and labels.device != s.device):
        raise LossInputError(
            f"student, teacher and labels must be on one device, got {s.device}, {t.device}"
            + (f", {labels.device}" if labels is not None else "")
        )
    if s.device.type != "cuda" and not _interpreting():
        raise LossInputError(
            "the fused KD kernel needs CUDA tensors (or TRITON_INTERPRET=1 to run it on CPU "
            "for testing); use impl='reference' on CPU"
        )
    n_rows, n_classes = s.shape
    if n_classes == 0:
        raise LossInputError("logits have 0 classes")
    # fp64 and friends: compute in fp32 (the cast is differentiable).
    if s.dtype not in _FLOAT_DTYPES:
        s = s.float()
    if t.dtype not in _FLOAT_DTYPES:
        t = t.float()
    t = t.detach()
    compute_grad = torch.is_grad_enabled() and s.requires_grad
    if n_rows == 0:  # no program to launch; keep the graph connected
        zero = s.float().sum(dim=-1) * 0.0  # (0,)
        return zero if reduction == "none" else zero.sum()
    return FusedKDLoss.apply(
        s, t, labels, float(temperature), float(alpha), int(ignore_index), reduction,
        compute_grad, inplace_grad, block_size, single_pass,
    )


__all__ = ["kd_loss_fused", "FusedKDLoss", "SINGLE_PASS_MAX_C", "MULTI_PASS_BLOCK"]
