"""Selective non-target KD with a rank-agreement mask, after C2KD (Huo et al., "C2KD: Bridging the
Modality Gap for Cross-Modal Knowledge Distillation", CVPR 2024).

Across modalities the teacher's confidence in the *target* class often rests on what the
student cannot see; its ranking of the *other* classes transfers better. So:

    τ_r  = Kendall rank correlation of row r's student and teacher logits (over the C classes)
    sel  = τ_r > 0          (only samples whose teacher and student already rank classes alike)
    loss = T² · Σ_r sel_r · KL(softmax over non-target classes of t_r/T ‖ same for s_r/T) / B

The target is the label on labeled rows and the teacher's top class on unlabeled ones.
The mask is a selection, so no gradient flows through τ.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill_export.methods.base import Term, TermInputs, check_temperature, register_term
from distill_export.methods.dkd import _MASK, target_classes


def kendall_tau(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B, C), (B, C) -> (B,): Kendall's τ-a between each row pair (O(B·C²), fine for C ≲ 1000)."""
    da = torch.sign(a.unsqueeze(-1) - a.unsqueeze(-2))  # (B, C, C)
    db = torch.sign(b.unsqueeze(-1) - b.unsqueeze(-2))
    c = a.shape[-1]
    return (da * db).sum(dim=(-1, -2)) / max(c * (c - 1), 1)  # each pair counted twice, so is the denominator


@register_term
class SelectiveNonTargetKD(Term):
    name = "selective_kd"
    needs = frozenset({"logits"})
    tasks = ("classification",)  # softmax over (B, C) class logits
    summary = "non-target KL on rows whose class rankings agree (C2KD-style, CVPR 2024)"
    search = {"temperature": (1.0, 8.0, "log")}

    def __init__(self, temperature: float = 4.0):
        super().__init__()
        self.temperature = check_temperature(temperature, self.name)

    def loss(self, batch: TermInputs, slot: str) -> torch.Tensor:
        T = self.temperature
        s, t = batch.student_logits.float(), batch.teacher_logits.detach().float()
        with torch.no_grad():
            selected = kendall_tau(s, t) > 0  # (B,)
        gt = F.one_hot(target_classes(batch), s.shape[1]).bool()
        log_q_s = F.log_softmax(s / T - _MASK * gt, dim=-1)
        log_q_t = F.log_softmax(t / T - _MASK * gt, dim=-1)
        rows = (log_q_t.exp() * (log_q_t - log_q_s)).sum(-1)  # (B,)
        return T**2 * torch.where(selected, rows, torch.zeros_like(rows)).sum() / max(s.shape[0], 1)
