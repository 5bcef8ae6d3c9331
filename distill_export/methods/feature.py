"""Feature distillation, FitNets-style (Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015):
a learned linear projector maps the student's penultimate features onto the teacher's fused
features, which the distill stage standardises per dimension with training-set statistics, so
the weight is scale-free:

    feature = mean over rows and dims of (W·f_s + b − standardise(f_t))²

The projector is part of the trainable module (it runs in its forward), so DDP syncs it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distill_export.errors import ConfigError
from distill_export.methods.base import SetupInfo, Term, TermInputs, register_term


@register_term
class FeatureMSE(Term):
    name = "feature"
    needs = frozenset({"features"})
    tasks = ("classification",)  # (B, D) feature vectors; detection maps: pkd
    summary = "MSE between projected student features and the teacher's features"

    def __init__(self):
        super().__init__()
        self.projector: nn.Module | None = None

    def setup(self, info: SetupInfo) -> None:
        if info.teacher_feature_dim == 0 or info.student_feature_dim == 0:
            who = "teacher" if info.teacher_feature_dim == 0 else "student"
            raise ConfigError(f"the feature term needs features and the {who} returns logits only: "
                              "drop the feature term (or set --beta 0)")
        self.projector = nn.Linear(info.student_feature_dim, info.teacher_feature_dim)

    def student_side(self, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return self.projector(features)  # (B, D_t)

    def loss(self, batch: TermInputs, slot: str) -> torch.Tensor:
        return F.mse_loss(batch.student_side[slot].float(), batch.teacher_features.float())
