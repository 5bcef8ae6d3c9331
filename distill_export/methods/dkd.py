"""Decoupled KD, Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022.

The KL splits into a target-class part and a non-target part, weighted separately:

    TCKD = T² · KL([p_t^y, 1 − p_t^y] ‖ [p_s^y, 1 − p_s^y])            p = softmax(·/T)
    NCKD = T² · KL(softmax over the non-target classes of t/T ‖ same for s/T)
    dkd  = tckd_weight · TCKD + nckd_weight · NCKD                     (batchmean)

The paper's CIFAR-100 weights are 1 and 8. The target y is the label on labeled rows and
the teacher's top class on unlabeled ones (the semi-supervised reading; the paper had labels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill_export.methods.base import Term, TermInputs, check_non_negative, check_temperature, register_term

_MASK = 1000.0  # subtracted from the target logit (/T) to drop it from a softmax, as in the paper's code


def target_classes(batch: TermInputs) -> torch.Tensor:
    """(B,) the label where there is one, else the teacher's top class."""
    return torch.where(batch.labeled, batch.labels, batch.teacher_logits.argmax(dim=-1))


def dkd_parts(s: torch.Tensor, t: torch.Tensor, target: torch.Tensor, temperature: float):
    """(TCKD, NCKD), each a batchmean scalar. s, t: (B, C); target: (B,)."""
    s, t = s.float() / temperature, t.detach().float() / temperature
    gt = F.one_hot(target, s.shape[1]).bool()  # (B, C)
    p_s, p_t = s.softmax(-1), t.softmax(-1)
    # Binary (target, rest) distributions: (B, 2).
    b_s = torch.stack([(p_s * gt).sum(-1), (p_s * ~gt).sum(-1)], dim=-1).clamp(min=1e-12)
    b_t = torch.stack([(p_t * gt).sum(-1), (p_t * ~gt).sum(-1)], dim=-1).clamp(min=1e-12)
    tckd = (b_t * (b_t.log() - b_s.log())).sum(-1)
    log_q_s = F.log_softmax(s - _MASK * gt, dim=-1)  # non-target distribution of the student
    log_q_t = F.log_softmax(t - _MASK * gt, dim=-1)
    nckd = (log_q_t.exp() * (log_q_t - log_q_s)).sum(-1)
    scale = temperature**2
    return scale * tckd.mean(), scale * nckd.mean()


@register_term
class DecoupledKD(Term):
    name = "dkd"
    needs = frozenset({"logits"})
    tasks = ("classification",)  # softmax over (B, C) class logits
    summary = "decoupled KD: target-class + weighted non-target KL (CVPR 2022)"
    search = {"temperature": (1.0, 8.0, "log"), "nckd_weight": (0.5, 8.0, "log")}

    def __init__(self, temperature: float = 4.0, tckd_weight: float = 1.0, nckd_weight: float = 8.0):
        super().__init__()
        self.temperature = check_temperature(temperature, self.name)
        self.tckd_weight = check_non_negative("tckd_weight", tckd_weight, self.name)
        self.nckd_weight = check_non_negative("nckd_weight", nckd_weight, self.name)

    def loss(self, batch: TermInputs, slot: str) -> torch.Tensor:
        tckd, nckd = dkd_parts(batch.student_logits, batch.teacher_logits, target_classes(batch), self.temperature)
        return self.tckd_weight * tckd + self.nckd_weight * nckd
