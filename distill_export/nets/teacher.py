"""The multimodal teachers, one per fusion (TEACHER_FUSIONS, config teacher.fusion):

  concat: one encoder per modality, embeddings concatenated, fused by an MLP (FusionTeacher);
  late:   a product of per-modality experts, log p(y|x) = Σ_m log p_m(y|x_m) + const
          (LateFusionTeacher), each expert trained on its own modality.

Detection's teachers (late | early over a clip, frame) are in nets/video_teacher.py
(DETECTION_TEACHER_FUSIONS); teacher_class finds either kind by its checkpoint arch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distill_export.nets.encoders import encoder_for
from distill_export.nets.video_teacher import DETECTION_TEACHER_FUSIONS


class FusionTeacher(nn.Module):
    """Concat fusion: concat(encoder_m(x_m) for m in modalities) -> MLP -> fused features -> logits.

    Modality dropout (training only) zeroes a whole modality's embedding for a random
    subset of samples, so the teacher cannot lean on one modality alone and its image
    pathway stays informative: that is the knowledge an image-only student can absorb.
    """

    fusion_name = "concat"  # teacher.fusion; named in the report

    def __init__(
        self,
        modalities: dict[str, int],  # name -> input channels (text: hash buckets)
        num_classes: int,
        width: int = 16,
        fused_dim: int = 256,
        modality_dropout: float = 0.0,
        kinds: dict[str, str] | None = None,  # name -> image|audio|text|vector; default conv
    ):
        super().__init__()
        self.modality_names = sorted(modalities)
        kinds = kinds or {}
        self.encoders = nn.ModuleDict(
            {m: encoder_for(kinds.get(m, "image"), modalities[m], width) for m in self.modality_names}
        )
        in_dim = sum(e.out_dim for e in self.encoders.values())
        self.fusion = nn.Sequential(
            nn.Linear(in_dim, fused_dim), nn.ReLU(inplace=True), nn.Dropout(0.2),
            nn.Linear(fused_dim, fused_dim), nn.ReLU(inplace=True),
        )
        self.head = nn.Linear(fused_dim, num_classes)
        self.feature_dim = fused_dim
        self.modality_dropout = modality_dropout

    def forward_features(
        self, inputs: dict[str, torch.Tensor], drop: tuple[str, ...] = ()
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`drop` names modalities whose embedding is zeroed, as modality dropout does in
        training: the teacher's view of the data through the remaining modalities."""
        embeds = [
            torch.zeros_like(e) if m in drop else e
            for m, e in ((m, self.encoders[m](inputs[m])) for m in self.modality_names)
        ]  # each (B, 4w)
        if self.training and self.modality_dropout > 0 and len(embeds) > 1:
            embeds = self._drop_modalities(embeds)
        feats = self.fusion(torch.cat(embeds, dim=1))  # (B, fused_dim)
        return feats, self.head(feats)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.forward_features(inputs)[1]

    def loss(self, inputs: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        """The training loss on labeled rows: CE of the fused logits."""
        return F.cross_entropy(self(inputs), labels)

    def _drop_modalities(self, embeds: list[torch.Tensor]) -> list[torch.Tensor]:
        batch = embeds[0].shape[0]
        drop = torch.rand(batch, device=embeds[0].device) < self.modality_dropout
        # Which modality each dropped sample loses; never both.
        which = torch.randint(len(embeds), (batch,), device=embeds[0].device)
        return [
            e * (~(drop & (which == i))).to(e.dtype).unsqueeze(1) for i, e in enumerate(embeds)
        ]


class LateFusionTeacher(nn.Module):
    """Late fusion, a product of experts: one classifier per modality (encoder -> linear head),
    logits = Σ_m log_softmax(expert_m(x_m) / T_m), so softmax(logits) ∝ Π_m p_m(y | x_m).

    Each expert is trained on its own modality (loss = Σ_m CE(expert_m)), then its temperature
    T_m is fitted on val (calibrate). The image expert keeps its own view of every sample and
    the text (or audio) expert only sharpens or re-ranks it: the soft targets do not carry the
    other modality's confusions in place of the image's. A dropped modality's expert is left
    out of the sum (a uniform factor).
    """

    fusion_name = "late"

    def __init__(self, modalities: dict[str, int], num_classes: int, width: int = 16,
                 kinds: dict[str, str] | None = None):
        super().__init__()
        self.modality_names = sorted(modalities)
        kinds = kinds or {}
        self.encoders = nn.ModuleDict(
            {m: encoder_for(kinds.get(m, "image"), modalities[m], width) for m in self.modality_names}
        )
        self.heads = nn.ModuleDict({m: nn.Linear(self.encoders[m].out_dim, num_classes) for m in self.modality_names})
        self.feature_dim = sum(e.out_dim for e in self.encoders.values())
        self.num_classes = num_classes
        # One temperature per expert (modality_names order), fitted on val after training
        # (calibrate); part of the state dict, so the checkpoint and the ONNX export carry it.
        self.register_buffer("temperatures", torch.ones(len(self.modality_names)))

    def expert(self, m: str, x: torch.Tensor) -> torch.Tensor:
        """(B, ...) input of modality m -> (B, C) raw logits of its expert (before the temperature)."""
        return self.heads[m](self.encoders[m](x))

    def expert_logits(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """modality -> (B, C) calibrated logits of that modality's expert."""
        return {m: self.expert(m, inputs[m]) / self.temperatures[i] for i, m in enumerate(self.modality_names)}

    @torch.no_grad()
    def calibrate(self, val_logits: dict[str, torch.Tensor], labels: torch.Tensor) -> None:
        """Temperature scaling (Guo et al., ICML 2017) per expert: the T (fit_temperature) that
        minimises the expert's NLL on the labeled validation rows."""
        for i, m in enumerate(self.modality_names):
            self.temperatures[i] = fit_temperature(val_logits[m], labels)

    def forward_features(
        self, inputs: dict[str, torch.Tensor], drop: tuple[str, ...] = ()
    ) -> tuple[torch.Tensor, torch.Tensor]:
        embeds = {m: self.encoders[m](inputs[m]) for m in self.modality_names}  # each (B, 4w)
        feats = torch.cat([torch.zeros_like(e) if m in drop else e for m, e in embeds.items()], dim=1)
        kept = [F.log_softmax(self.heads[m](e) / self.temperatures[i], dim=1)
                for i, (m, e) in enumerate(embeds.items()) if m not in drop]  # each (B, C)
        # Every expert dropped: no evidence, a uniform distribution (log-probs all equal).
        logits = torch.stack(kept).sum(0) if kept else feats.new_zeros(feats.shape[0], self.num_classes)
        return feats, logits

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.forward_features(inputs)[1]

    def loss(self, inputs: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        """Each expert learns alone: Σ_m CE(expert_m(x_m), y), not CE of the product.
        (train_teacher trains them one at a time, each with its own best epoch.)"""
        return sum(F.cross_entropy(self.expert(m, inputs[m]), labels) for m in self.modality_names)


@torch.no_grad()
def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Temperature scaling: the T on a fixed log grid (0.01 .. 20, 40 steps a decade) that
    minimises the NLL of logits (N, C) / T against labels (N,). A student trained on relations
    (DIST) has logits of small scale and wants T of about 0.02-0.06; an expert fitted to 50 rows
    is overconfident and wants T of 3-5."""
    # Two pieces so the 0.1 .. 20 points are bit-identical to the grid calibrate used before.
    grid = torch.cat([torch.logspace(-2, -1, 41)[:-1], torch.logspace(-1, 1.3, 93)])
    z, y = logits.float().cpu(), labels.cpu()
    nll = torch.stack([F.cross_entropy(z / t, y) for t in grid])
    return float(grid[int(nll.argmin())])


# fusion name -> (checkpoint arch, class). A checkpoint's arch picks the class when it is loaded.
TEACHER_FUSIONS = {"concat": ("fusion_teacher", FusionTeacher), "late": ("late_fusion_teacher", LateFusionTeacher)}


def teacher_archs() -> list[str]:
    """Every checkpoint arch a teacher can have: classification's, then detection's."""
    return [a for a, _ in (*TEACHER_FUSIONS.values(), *DETECTION_TEACHER_FUSIONS.values())]


def teacher_arch(teacher: nn.Module) -> str:
    """The checkpoint arch of a built-in teacher (its class's name for any other module)."""
    for name, cls in (*TEACHER_FUSIONS.values(), *DETECTION_TEACHER_FUSIONS.values()):
        if type(teacher) is cls:
            return name
    return type(teacher).__name__


def teacher_class(arch: str) -> type[nn.Module]:
    for name, cls in (*TEACHER_FUSIONS.values(), *DETECTION_TEACHER_FUSIONS.values()):
        if name == arch:
            return cls
    raise ValueError(f"unknown teacher architecture {arch!r}")
