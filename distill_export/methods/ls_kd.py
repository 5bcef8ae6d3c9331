"""Logit standardisation, Sun et al., "Logit Standardization in Knowledge Distillation", CVPR 2024.

Each row of logits is z-scored before the softmax, Z(z) = (z − mean(z)) / std(z), so the student
matches the teacher's *ranking and relative gaps* rather than its logit scale:

    ls_kd = T² · KL(softmax(Z(t)/T) ‖ softmax(Z(s)/T))

std is the unbiased row standard deviation with 1e-7 added, as in the authors' code. The KL runs
through kd_loss, so on CUDA the fused kernel serves it (autograd carries the gradient back
through the standardisation).
"""

from __future__ import annotations

import torch

from distill_export.losses import kd_loss
from distill_export.methods.base import Term, TermInputs, check_temperature, register_term


def standardise(logits: torch.Tensor) -> torch.Tensor:
    """(B, C) -> (B, C): each row z-scored."""
    logits = logits.float()
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True)
    return (logits - mean) / (std + 1e-7)


@register_term
class LogitStandardisedKD(Term):
    name = "ls_kd"
    needs = frozenset({"logits"})
    tasks = ("classification",)  # softmax over (B, C) class logits
    summary = "KD on z-scored logits (logit standardisation, CVPR 2024)"
    search = {"temperature": (1.0, 8.0, "log")}
    impl = "auto"

    def __init__(self, temperature: float = 2.0):
        super().__init__()
        self.temperature = check_temperature(temperature, self.name)

    def loss(self, batch: TermInputs, slot: str) -> torch.Tensor:
        return kd_loss(standardise(batch.student_logits), standardise(batch.teacher_logits), None,
                       temperature=self.temperature, alpha=0.0, impl=self.impl)
