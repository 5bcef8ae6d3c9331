"""Knowledge-distillation loss: the plain PyTorch reference and the dispatcher.

Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network" (2015):

    loss = α·CE(s, y) + (1−α)·T²·KL(softmax(t/T) ‖ softmax(s/T))

The T² factor keeps the soft term's gradient scale independent of T.
Rows whose label equals ``ignore_index`` are unlabeled: they keep the KD term
and drop the CE term. With ``reduction="mean"`` the CE term is averaged over
labeled rows only and the KD term over all rows (KL's ``batchmean``).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from distill_export.errors import LossInputError
from distill_export.losses.checks import check_kd_inputs

IMPLS = ("auto", "fused", "reference")


def kd_loss_reference(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    temperature: float = 4.0,
    alpha: float = 0.5,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    """Plain PyTorch KD loss, computed in fp32. Gradient flows to the student only."""
    s = student_logits.float()  # (N, C)
    t = teacher_logits.detach().float()  # (N, C)
    n_rows = s.shape[0]
    log_p_s = F.log_softmax(s / temperature, dim=-1)
    log_p_t = F.log_softmax(t / temperature, dim=-1)
    p_t = log_p_t.exp()
    # Classes the teacher gives zero probability (−inf logits) contribute 0, not 0·(−inf)=NaN.
    kl_terms = torch.where(p_t > 0, p_t * (log_p_t - log_p_s), torch.zeros_like(p_t))
    kl_rows = kl_terms.sum(dim=-1)  # (N,)
    soft_rows = (1.0 - alpha) * temperature**2 * kl_rows

    if labels is None or alpha == 0.0:
        ce_rows = torch.zeros_like(kl_rows)
        n_labeled = torch.zeros((), device=s.device)
    else:
        labeled = labels != ignore_index
        safe_labels = torch.where(labeled, labels, torch.zeros_like(labels)).long()
        log_p = F.log_softmax(s, dim=-1)
        picked = log_p.gather(1, safe_labels[:, None]).squeeze(1)
        # where() (not multiply) so a −inf logit on an unlabeled row cannot leak NaN.
        ce_rows = torch.where(labeled, -picked, torch.zeros_like(picked))
        n_labeled = labeled.sum().float()

    if reduction == "none":
        return alpha * ce_rows + soft_rows
    if reduction == "sum":
        return alpha * ce_rows.sum() + soft_rows.sum()
    ce_mean = ce_rows.sum() / n_labeled.clamp(min=1.0)
    return alpha * ce_mean + soft_rows.sum() / max(n_rows, 1)


def _fused_available(device: torch.device) -> bool:
    if device.type == "cuda":
        return True
    return os.environ.get("TRITON_INTERPRET") == "1"


def takes_fused_path(impl: str, device: torch.device) -> bool:
    """Whether kd_loss(impl=impl) on this device runs the fused kernel (which folds ``scale``
    into its gradient, rounding it once) rather than the reference."""
    return impl == "fused" or (impl == "auto" and device.type == "cuda")


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    temperature: float = 4.0,
    alpha: float = 0.5,
    ignore_index: int = -100,
    reduction: str = "mean",
    impl: str = "auto",
    check_label_range: bool = True,
    scale: float = 1.0,
) -> torch.Tensor:
    """The one KD loss the trainer calls; returns scale × the loss.

    impl="auto" uses the fused Triton kernel on CUDA and the reference elsewhere;
    "fused" on CPU is only allowed under TRITON_INTERPRET=1 (for tests).
    scale: the objective's weight of the term. The fused kernel multiplies the gradient by it
    in fp32 before its one rounding to the logits' dtype; the reference multiplies its fp32
    loss (and scale=1 leaves the reference exactly as it was).
    """
    if impl not in IMPLS:
        raise LossInputError(f"impl must be one of {IMPLS}, got {impl!r}")
    check_kd_inputs(
        student_logits, teacher_logits, labels, temperature, alpha, ignore_index, reduction,
        check_label_range=check_label_range,
    )
    device = student_logits.device
    if takes_fused_path(impl, device):
        if not _fused_available(device):
            raise LossInputError(
                "impl='fused' needs CUDA tensors (or TRITON_INTERPRET=1 to run the kernel "
                "on CPU for testing); use impl='reference' or 'auto' on CPU"
            )
        from distill_export.losses.kd_triton import kd_loss_fused

        return kd_loss_fused(
            student_logits, teacher_logits, labels,
            temperature=temperature, alpha=alpha, ignore_index=ignore_index, reduction=reduction, scale=scale,
        )
    loss = kd_loss_reference(
        student_logits, teacher_logits, labels, temperature, alpha, ignore_index, reduction
    )
    return loss if scale == 1.0 else loss * scale


def soft_targets(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(logits / T): the teacher's soft labels."""
    return F.softmax(logits.float() / temperature, dim=-1)
