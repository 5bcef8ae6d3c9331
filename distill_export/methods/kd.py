"""Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network" (2015).

    kd = T² · KL(softmax(t/T) ‖ softmax(s/T)),   averaged over every row (KL's batchmean)

The T² factor keeps the gradient's scale independent of T. On CUDA it runs as the fused
Triton kernel (losses/kd_triton.py: loss and gradient in one pass); elsewhere the reference.
On the fused path the objective hands the term's weight to the kernel (``folds_weight``), which
rounds weight·gradient once to the logits' dtype.
"""

from __future__ import annotations

import torch

from distill_export.losses import kd_loss
from distill_export.losses.kd import takes_fused_path
from distill_export.methods.base import Term, TermInputs, check_temperature, register_term


@register_term
class HintonKD(Term):
    name = "kd"
    needs = frozenset({"logits"})
    tasks = ("classification",)  # softmax over (B, C) class logits
    summary = "Hinton KD: T²·KL(teacher ‖ student) at temperature T, every row"
    search = {"temperature": (1.0, 8.0, "log")}
    impl = "auto"  # kd_loss's dispatch: the fused kernel on CUDA (distill.kd_impl)

    def __init__(self, temperature: float = 4.0):
        super().__init__()
        self.temperature = check_temperature(temperature, self.name)

    def loss(self, batch: TermInputs, slot: str, scale: float = 1.0) -> torch.Tensor:
        """scale × the term (scale: the objective's weight, on the fused path only)."""
        # alpha=0: kd_loss's CE part is off; the objective weighs this term and `ce` itself.
        return kd_loss(batch.student_logits, batch.teacher_logits, None, temperature=self.temperature,
                       alpha=0.0, impl=self.impl, scale=scale)

    def folds_weight(self, batch: TermInputs) -> bool:
        """True when the fused kernel serves this batch: the objective then passes its weight in."""
        return takes_fused_path(self.impl, batch.student_logits.device)
