"""Input checks shared by the KD losses (the reference in kd.py and the fused kernel in
kd_triton.py): both import them from here, so neither loss module imports the other's checks."""

from __future__ import annotations

import torch

from distill_export.errors import LossInputError

REDUCTIONS = ("mean", "sum", "none")


def check_kd_inputs(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None,
    temperature: float,
    alpha: float,
    ignore_index: int,
    reduction: str,
    check_label_range: bool = True,
) -> None:
    """Raise LossInputError for inputs that would otherwise give a silent wrong answer."""
    if student_logits.dim() != 2:
        raise LossInputError(f"student logits must be 2-D (N, C), got shape {tuple(student_logits.shape)}")
    if student_logits.shape != teacher_logits.shape:
        raise LossInputError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ in shape"
        )
    if not temperature > 0:
        raise LossInputError(f"temperature must be > 0, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise LossInputError(f"alpha must be in [0, 1], got {alpha}")
    if reduction not in REDUCTIONS:
        raise LossInputError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if labels is None:
        return
    if labels.shape != student_logits.shape[:1]:
        raise LossInputError(
            f"labels must have shape ({student_logits.shape[0]},), got {tuple(labels.shape)}"
        )
    if labels.dtype.is_floating_point:
        raise LossInputError(f"labels must be integers, got {labels.dtype}")
    if check_label_range:
        # One host sync; callers on a hot CUDA path may skip it with check_label_range=False.
        n_classes = student_logits.shape[1]
        bad = (labels != ignore_index) & ((labels < 0) | (labels >= n_classes))
        if bool(bad.any()):
            first = labels[bad][0].item()
            raise LossInputError(
                f"label {first} is out of range for {n_classes} classes "
                f"(use ignore_index={ignore_index} for unlabeled rows)"
            )
