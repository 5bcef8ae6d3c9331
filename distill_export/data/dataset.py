"""In-memory multimodal dataset: one tensor per modality, split into train/val/test."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

IGNORE_INDEX = -100  # label of an unlabeled row (kd_loss's ignore_index)


@dataclass
class ModalitySpec:
    name: str
    shape: tuple[int, ...]  # one sample, e.g. (1, 28, 28)
    mean: float  # normalisation already applied to the tensors; exported as metadata
    std: float
    layout: str = "NCHW"
    # image | audio (conv encoders), text (int64 token ids, embedding bag), vector (MLP).
    # Empty: the name if it is a kind, else "image".
    kind: str = ""

    def __post_init__(self):
        if not self.kind:
            self.kind = self.name if self.name in ("image", "audio", "text", "vector") else "image"


@dataclass
class Split:
    inputs: dict[str, torch.Tensor]  # modality -> (N, *shape) float32, normalised
    labels: torch.Tensor  # (N,) int64; IGNORE_INDEX marks an unlabeled row

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: torch.Tensor) -> "Split":
        return Split({k: v[index] for k, v in self.inputs.items()}, self.labels[index])

    @property
    def labeled(self) -> torch.Tensor:
        return self.labels != IGNORE_INDEX


@dataclass
class Dataset:
    name: str
    train: Split
    val: Split
    test: Split
    class_names: list[str]
    modalities: dict[str, ModalitySpec]
    info: dict = field(default_factory=dict)  # free-form facts for the report

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def fingerprint(self) -> str:
        """Content hash of the training inputs and labels (keys the teacher-output cache)."""
        h = hashlib.sha256()
        for name in sorted(self.train.inputs):
            h.update(name.encode())
            x = self.train.inputs[name]
            # a streamed column (data/streaming.py) hashes its rows' cells and files, not decoded bytes
            h.update(x.fingerprint().encode() if hasattr(x, "fingerprint") else x.contiguous().numpy().tobytes())
        h.update(self.train.labels.numpy().tobytes())
        return h.hexdigest()


def keep_label_fraction(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Hide all but `fraction` of the labels, stratified per class (at least one per class)."""
    if fraction >= 1.0:
        return labels.clone()
    gen = torch.Generator().manual_seed(seed)
    out = torch.full_like(labels, IGNORE_INDEX)
    for cls in labels.unique():
        idx = (labels == cls).nonzero().squeeze(1)
        keep = max(1, round(fraction * len(idx)))
        chosen = idx[torch.randperm(len(idx), generator=gen)[:keep]]
        out[chosen] = labels[chosen]
    return out
