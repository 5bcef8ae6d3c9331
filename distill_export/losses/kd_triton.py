"""Fused knowledge-distillation loss: loss *and* gradient in one pass of Triton kernels.

Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network" (2015):

    loss = scale·[α·CE(s, y) + (1−α)·T²·KL(softmax(t/T) ‖ softmax(s/T))]

Forward writes each row's loss contribution and, in the same pass, the gradient w.r.t. s,
already multiplied by ``scale`` (the objective's weight of the term, times any DDP share) in
fp32 and rounded once to s's dtype. Backward (``kd_scale_grad_``) returns that buffer and
scales it in fp32 only where grad_output ≠ 1, a test made on the device; in training the
weight is in ``scale``, grad_output is 1 and backward moves no gradient byte. (Multiplying a
stored fp16 gradient by a weight cast to fp16, 0.3 -> 0.3008, was a second rounding: 2 ulp
off an fp64 oracle on an H200.)

Regimes (the kernels are in kd_kernels.py):

* ``single``, C ≤ ROW_MAX_C: a persistent grid over tiles of several rows, each row in one
  block: s and t are read once, the gradient written once.
* ``looped``, ROW_MAX_C < C ≤ SPLIT_MIN_C: one row per tile, a statistics loop (online
  softmax at T and 1, pipelined loads) and a gradient loop over blocks, the second mostly
  from L2.
* ``split``, C > SPLIT_MIN_C: each row split into chunks across programs: one kernel writes
  each chunk's statistics, a second combines a row's chunks and writes the gradient. (A
  one-kernel scheme needs programs to wait on each other, which Triton's interpreter cannot
  run; this two-kernel form reads s and t twice.)

Under ``torch.compile`` it is a ``torch.library`` custom op (``distill_export::kd_loss_rows``)
with a fake (meta) implementation and a registered backward, traced as one opaque node; eager
calls run the same forward and backward as a plain ``autograd.Function`` (``_FusedKD``), whose
dispatch costs half as much host time. On CUDA each kernel is autotuned per (C's power-of-two bucket, the
dtypes, CE on/off); under ``TRITON_INTERPRET=1`` (CPU tests) a fixed configuration runs.
No host synchronisation: n_labeled is counted on the device and read through a pointer.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Optional

import torch
import triton

from distill_export.errors import LossInputError
from distill_export.losses import kd_kernels as K
from distill_export.losses.checks import check_kd_inputs

ROW_MAX_C = 8192  # the whole row in one block (issue 8: no spills at 8192 on sm_90a); tune on a GPU
SPLIT_MIN_C = 65536  # above: rows split across programs
LOOP_BLOCK = 4096  # block width of the looped regime
SPLIT_CHUNK = 16384  # classes per program in the split regime
TILE_ELEMS = 8192  # single regime: rows per tile = TILE_ELEMS // BLOCK (fixed config; autotuned on CUDA)
MAX_TILE_ROWS = 64
PROGRAMS_PER_SM = 4  # persistent grid: this many programs per SM
REGIMES = ("single", "looped", "split")
_LOG2E = 1.4426950408889634
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _autotuning(device: torch.device) -> bool:
    """On CUDA, unless DISTILL_KD_AUTOTUNE=0 (the kernel tests: hundreds of launches, each key
    would time up to 16 configs) or under the interpreter."""
    return device.type == "cuda" and not _interpreting() and os.environ.get("DISTILL_KD_AUTOTUNE", "1") != "0"


def _pow2(name: str, value: int) -> int:
    if value < 2 or value & (value - 1):
        raise LossInputError(f"{name} must be a power of two >= 2, got {value}")
    return value


def plan(n_classes: int, regime: str = "", block_size: int = 0, chunk_size: int = 0,
         rows_per_tile: int = 0) -> dict:
    """The launch of one call: regime, BLOCK, CHUNK, ROWS (0 = the defaults; tests force them)."""
    if regime and regime not in REGIMES:
        raise LossInputError(f"regime must be one of {REGIMES}, got {regime!r}")
    regime = regime or ("single" if n_classes <= ROW_MAX_C else "looped" if n_classes <= SPLIT_MIN_C else "split")
    if regime == "single":
        block = max(triton.next_power_of_2(n_classes), 2)
        if block_size:
            if block_size < n_classes:
                raise LossInputError(f"single-block block_size {block_size} is smaller than the row ({n_classes} classes)")
            block = _pow2("block_size", block_size)
        rows = rows_per_tile or max(1, min(MAX_TILE_ROWS, TILE_ELEMS // block))
    else:
        block = _pow2("block_size", block_size) if block_size else LOOP_BLOCK
        rows = rows_per_tile or 1
    chunk = 0
    if regime == "split":
        chunk = _pow2("chunk_size", chunk_size) if chunk_size else SPLIT_CHUNK
        block = min(block, chunk)
    return {"regime": regime, "BLOCK": block, "CHUNK": chunk, "ROWS": _pow2("rows_per_tile", rows) if rows > 1 else 1}


def _warps(elems: int) -> int:
    return 4 if elems <= 1024 else 8 if elems <= 4096 else 16


@lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _max_programs(device: torch.device) -> int:
    if device.type != "cuda":
        return 4  # the interpreter: few programs, so the persistent loop takes several tiles each
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device()) * PROGRAMS_PER_SM


# --- autotuning (CUDA only) ---------------------------------------------------------------------


def _rows_configs() -> list:
    return [triton.Config({"ROWS": r, "NUM_STAGES": st}, num_warps=w, num_stages=st)
            for r in (1, 2, 4, 8, 16, 32, 64) for w in (4, 8, 16) for st in (2, 3)]


def prune_rows_configs(configs, named_args, **kwargs) -> list:
    """Single: tiles of 2K-16K elements (all 64 rows when even those are smaller); looped: one or
    two rows a tile. Warps: the tile's own count (see _warps) or half of it."""
    block = kwargs["BLOCK"]
    if kwargs["SINGLE"]:
        low = min(2048, MAX_TILE_ROWS * block)
        keep = [c for c in configs if low <= c.kwargs["ROWS"] * block <= max(16384, block)]
    else:
        keep = [c for c in configs if c.kwargs["ROWS"] <= 2]
    keep = [c for c in keep if c.num_warps in {_warps(c.kwargs["ROWS"] * block), max(4, _warps(c.kwargs["ROWS"] * block) // 2)}]
    return keep or configs[:1]


def _split_configs() -> list:
    return [triton.Config({"BLOCK": b, "NUM_STAGES": st}, num_warps=w, num_stages=st)
            for b in (1024, 2048, 4096) for w in (4, 8) for st in (2, 3)]


def prune_split_configs(configs, named_args, **kwargs) -> list:
    keep = [c for c in configs if c.kwargs["BLOCK"] <= kwargs["CHUNK"]]
    return keep or [triton.Config({"BLOCK": kwargs["CHUNK"], "NUM_STAGES": 2}, num_warps=4, num_stages=2)]


_KEY = ["C_BUCKET", "HAS_CE", "COMPUTE_GRAD"]


@lru_cache(maxsize=None)
def _tuned(name: str):
    """The autotuned wrapper of kd_kernels.<name> (built once, on first CUDA use)."""
    fn = getattr(K, name)
    if name == "_kd_rows_kernel":
        return triton.autotune(_rows_configs(), key=_KEY + ["SINGLE"],
                               prune_configs_by={"early_config_prune": prune_rows_configs})(fn)
    return triton.autotune(_split_configs(), key=_KEY, prune_configs_by={"early_config_prune": prune_split_configs})(fn)


# --- the custom op ------------------------------------------------------------------------------


def _rows(s: torch.Tensor, t: torch.Tensor, labels: Optional[torch.Tensor], temperature: float, alpha: float,
          ignore_index: int, mean: bool, scale: float, compute_grad: bool, regime: str = "",
          block_size: int = 0, chunk_size: int = 0, rows_per_tile: int = 0,
          max_programs: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-row losses (N,) fp32, scale·∂(Σ rows)/∂s (N, C) in s's dtype, or (0,) without grad).
    mean: the rows carry 1/N (KD) and 1/n_labeled (CE), so their sum is the mean reduction.
    The body of the op kd_loss_rows and of the eager _FusedKD."""
    n_rows, n_classes = s.shape
    if s.stride(1) != 1:  # the class axis must be unit-stride for vector loads; the row stride is free
        s = s.contiguous()
    if t.stride(1) != 1:
        t = t.contiguous()
    p = plan(n_classes, regime, block_size, chunk_size, rows_per_tile)
    loss = torch.empty(n_rows, dtype=torch.float32, device=s.device)
    grad = torch.empty((n_rows, n_classes) if compute_grad else (0,), dtype=s.dtype, device=s.device)
    if n_rows == 0:
        return loss, grad
    has_ce = labels is not None and alpha > 0.0
    ce_mean = has_ce and mean
    # 1/n_labeled on the device: the kernel reads it through a pointer (no host sync).
    inv_n_lab = (labels != ignore_index).sum(dtype=torch.float32).clamp_(min=1.0).reciprocal_() if ce_mean else loss
    kd_w = (1.0 - alpha) * scale / (n_rows if mean else 1)
    consts = dict(HAS_CE=has_ce, CE_MEAN=ce_mean, COMPUTE_GRAD=compute_grad, SAME_T=temperature == 1.0)
    scalars = (_LOG2E / temperature, kd_w * temperature**2, kd_w * temperature, alpha * scale, int(ignore_index))
    y = labels if has_ce else s
    g = grad if compute_grad else s  # not written (dead constexpr branch)
    g_stride = grad.stride(0) if compute_grad else 0
    bucket = triton.next_power_of_2(n_classes)
    tune = _autotuning(s.device) and not (regime or block_size or chunk_size or rows_per_tile)  # forced: as given
    cap = max_programs or _max_programs(s.device)
    if p["regime"] != "split":
        consts.update(SINGLE=p["regime"] == "single", BLOCK=p["BLOCK"])
        args = (s, t, y, g, loss, inv_n_lab, n_rows, n_classes, bucket, s.stride(0), t.stride(0), g_stride, *scalars)
        if tune:
            _tuned("_kd_rows_kernel")[lambda meta: (min(triton.cdiv(n_rows, meta["ROWS"]), cap),)](*args, **consts)
        else:
            grid = (min(triton.cdiv(n_rows, p["ROWS"]), cap),)
            K._kd_rows_kernel[grid](*args, **consts, ROWS=p["ROWS"], NUM_STAGES=2,
                                    num_warps=_warps(p["ROWS"] * p["BLOCK"]))
        return loss, grad
    n_chunks = triton.cdiv(n_classes, p["CHUNK"])
    ws = torch.empty((n_rows, n_chunks, K.N_STATS), dtype=torch.float32, device=s.device)
    fixed = {} if tune else {"BLOCK": p["BLOCK"], "NUM_STAGES": 2, "num_warps": _warps(p["BLOCK"])}
    stats = _tuned("_kd_split_stats_kernel") if tune else K._kd_split_stats_kernel
    stats[(n_rows, n_chunks)](s, t, ws, n_classes, bucket, s.stride(0), t.stride(0), n_chunks, scalars[0],
                              HAS_CE=has_ce, SAME_T=consts["SAME_T"], CHUNK=p["CHUNK"], **fixed)
    finish = _tuned("_kd_split_grad_kernel") if tune else K._kd_split_grad_kernel
    finish[(n_rows, n_chunks if compute_grad else 1)](
        s, t, y, g, loss, inv_n_lab, ws, n_classes, bucket, s.stride(0), t.stride(0), g_stride, n_chunks, *scalars,
        **consts, CHUNK=p["CHUNK"], N_CHUNKS_P2=max(triton.next_power_of_2(n_chunks), 2), **fixed)
    return loss, grad


@torch.library.custom_op("distill_export::kd_loss_rows", mutates_args=())
def kd_loss_rows(s: torch.Tensor, t: torch.Tensor, labels: Optional[torch.Tensor], temperature: float, alpha: float,
                 ignore_index: int, mean: bool, scale: float, compute_grad: bool, regime: str = "",
                 block_size: int = 0, chunk_size: int = 0, rows_per_tile: int = 0,
                 max_programs: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """_rows as a torch.library op: what torch.compile traces (one opaque node)."""
    return _rows(s, t, labels, temperature, alpha, ignore_index, mean, scale, compute_grad, regime, block_size,
                 chunk_size, rows_per_tile, max_programs)


@kd_loss_rows.register_fake
def _(s, t, labels, temperature, alpha, ignore_index, mean, scale, compute_grad, regime="", block_size=0,
      chunk_size=0, rows_per_tile=0, max_programs=0):
    loss = s.new_empty(s.shape[0], dtype=torch.float32)
    return loss, s.new_empty(s.shape if compute_grad else (0,))


def _scale_grad(grad: torch.Tensor, grad_rows: torch.Tensor) -> None:
    """grad (N, C) *= grad_rows (N,) in fp32, per row, only where grad_rows ≠ 1 (decided on the device)."""
    if grad.numel() == 0:
        return
    block = min(4096, max(triton.next_power_of_2(grad.shape[1]), 2))
    K._kd_scale_grad_kernel[(grad.shape[0], triton.cdiv(grad.shape[1], block))](
        grad, grad_rows, grad.shape[1], grad.stride(0), grad_rows.stride(0), BLOCK=block, num_warps=4)


@torch.library.custom_op("distill_export::kd_scale_grad_", mutates_args=("grad",))
def kd_scale_grad_(grad: torch.Tensor, grad_rows: torch.Tensor) -> None:
    """_scale_grad as a torch.library op (declaring that it writes grad)."""
    _scale_grad(grad, grad_rows)


@kd_scale_grad_.register_fake
def _(grad, grad_rows):
    return None


def _setup_context(ctx, inputs, output):
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(output[1])
    ctx.used = False


def _scaled_grad(ctx, grad_rows, scale_grad) -> tuple:
    if not torch.compiler.is_compiling():  # (the saved buffer's version check would also refuse, less clearly)
        if ctx.used:
            raise RuntimeError("fused KD loss: backward can run once per forward (its gradient buffer is scaled "
                               "in place); use impl='reference' for retain_graph or double backward")
        ctx.used = True
    (grad,) = ctx.saved_tensors
    scale_grad(grad, grad_rows)  # (N, C) · (N,): a no-op where grad_rows == 1
    return (grad,) + (None,) * 13


def _backward(ctx, grad_rows, _grad_of_grad):
    return _scaled_grad(ctx, grad_rows, kd_scale_grad_)


torch.library.register_autograd("distill_export::kd_loss_rows", _backward, setup_context=_setup_context)


class _FusedKD(torch.autograd.Function):
    """The same forward and backward as the op, for eager calls. torch.library's dispatch (schema
    defaults, the ADInplaceOrView and autograd wrappers) was half the host time of a fused call
    on an H100 (tools/profile_host.py, 2026-12-06); a small-C loss is bound by that time."""

    @staticmethod
    def forward(ctx, *args):
        loss, grad = _rows(*args)
        _setup_context(ctx, args, (loss, grad))
        return loss, grad

    @staticmethod
    def backward(ctx, grad_rows, _grad_of_grad):
        return _scaled_grad(ctx, grad_rows, _scale_grad)


def kd_loss_fused(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    temperature: float = 4.0,
    alpha: float = 0.5,
    ignore_index: int = -100,
    reduction: str = "mean",
    scale: float = 1.0,
    regime: str = "",
    block_size: int = 0,
    chunk_size: int = 0,
    rows_per_tile: int = 0,
    max_programs: int = 0,
) -> torch.Tensor:
    """scale × the Hinton et al. (2015) KD loss, forward and gradient in one Triton pass.

    Same semantics as ``kd_loss_reference`` (times ``scale``); returns an fp32 scalar
    (mean/sum) or (N,) tensor (none).

    student_logits, teacher_logits: (N, C), fp32/fp16/bf16, any row stride.
    labels: (N,) integers or None; rows equal to ``ignore_index`` keep only the KD term.
    scale: the term's weight (× a DDP share), folded into the kernel in fp32 so that the
        low-precision gradient is rounded once.
    regime, block_size, chunk_size, rows_per_tile, max_programs: force the launch (tests, tuning).

    The label range is not checked here (that needs a host sync; ``kd_loss`` does it): an
    out-of-range label gives a NaN loss, never an out-of-bounds read.
    """
    check_kd_inputs(student_logits, teacher_logits, labels, temperature, alpha, ignore_index, reduction,
                    check_label_range=False)
    s, t = student_logits, teacher_logits
    if s.device != t.device or (labels is not None and labels.device != s.device):
        raise LossInputError(f"student, teacher and labels must be on one device, got {s.device}, {t.device}"
                             + (f", {labels.device}" if labels is not None else ""))
    if s.device.type != "cuda" and not _interpreting():
        raise LossInputError("the fused KD kernel needs CUDA tensors (or TRITON_INTERPRET=1 to run it on CPU "
                             "for testing); use impl='reference' on CPU")
    if s.shape[1] == 0:
        raise LossInputError("logits have 0 classes")
    if not (scale >= 0.0 and scale < float("inf")):
        raise LossInputError(f"scale must be a finite number >= 0, got {scale}")
    plan(s.shape[1], regime, block_size, chunk_size, rows_per_tile)  # a bad forced launch fails here, in one line
    if s.dtype not in _FLOAT_DTYPES:  # fp64 and friends: computed in fp32 (the cast is differentiable)
        s = s.float()
    if t.dtype not in _FLOAT_DTYPES:
        t = t.float()
    compute_grad = torch.is_grad_enabled() and s.requires_grad
    # torch.compile traces the op (one opaque node); eager calls skip its dispatch (_FusedKD)
    op = kd_loss_rows if torch.compiler.is_compiling() else _FusedKD.apply
    rows, _ = op(s, t.detach(), labels, float(temperature), float(alpha), int(ignore_index), reduction == "mean",
                 float(scale), compute_grad, regime, block_size, chunk_size, rows_per_tile, max_programs)
    return rows if reduction == "none" else rows.sum()


__all__ = ["kd_loss_fused", "kd_loss_rows", "plan", "ROW_MAX_C", "SPLIT_MIN_C"]
