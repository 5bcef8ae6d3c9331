"""In-memory multimodal dataset: one tensor per modality, split into train/val/test."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

IGNORE_INDEX = -100  # fills the target of an unlabeled row (kd_loss's ignore_index)


def labeled_rows(targets: torch.Tensor) -> torch.Tensor:
    """(N,) bool: rows whose target is not filled with IGNORE_INDEX. targets: (N, ...)."""
    if targets.dim() == 1:
        return targets != IGNORE_INDEX
    return (targets != IGNORE_INDEX).reshape(len(targets), -1).any(1)


@dataclass
class ModalitySpec:
    name: str
    shape: tuple[int, ...]  # one sample, e.g. (1, 28, 28)
    mean: float  # normalisation already applied to the tensors; exported as metadata
    std: float
    layout: str = "NCHW"
    # image | audio (conv encoders), text (int64 token ids, embedding bag), vector (MLP),
    # video (a clip (T, C, H, W) around its target frame, layout NTCHW; data/video.py).
    # Empty: the name if it is a kind, else "image".
    kind: str = ""

    def __post_init__(self):
        if not self.kind:
            self.kind = self.name if self.name in ("image", "audio", "text", "vector", "video") else "image"


@dataclass
class Split:
    # modality -> (N, *shape) float32, normalised: a tensor, or a column that indexes like one
    # (a manifest's 8-bit images held as uint8, data/compact.py; streamed training rows, data/streaming.py)
    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor  # (N, ...) the task's targets, e.g. (N,) int64 classes; IGNORE_INDEX fills an unlabeled row
    # The true targets of the rows whose labels data.label_fraction hid (IGNORE_INDEX elsewhere):
    # only ever read to score the teachers' pseudo-labels on the unlabeled pool, never trained on.
    hidden: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: torch.Tensor) -> "Split":
        # a compact column's rows stay compact (data/compact.py); a tensor's are copied
        return Split({k: v[index] if isinstance(v, torch.Tensor) else v.take(index) for k, v in self.inputs.items()},
                     self.labels[index],
                     None if self.hidden is None else self.hidden[index])

    @property
    def labeled(self) -> torch.Tensor:  # (N,) bool
        return labeled_rows(self.labels)


@dataclass
class Dataset:
    name: str
    train: Split
    val: Split
    test: Split
    # What the task's head predicts, one name per output (classification: the class names), from
    # the task's target codec (data/targets.py).
    target_names: list[str]
    modalities: dict[str, ModalitySpec]
    info: dict = field(default_factory=dict)  # free-form facts for the report
    # Rows the INT8 export calibrates on, never trained on (a manifest's `calibration` split);
    # None: the export takes the first training rows.
    calibration: Split | None = None

    @property
    def num_outputs(self) -> int:
        """Width of the student's and teacher's head."""
        return len(self.target_names)

    def calibration_rows(self, modality: str, limit: int) -> torch.Tensor:
        """Up to `limit` rows of one modality for INT8 calibration: the calibration split when the
        data has one, else the first training rows (decoded when streamed)."""
        source = self.calibration if self.calibration is not None and len(self.calibration) else self.train
        return source.inputs[modality][: min(limit, len(source))]

    def fingerprint(self) -> str:
        """Content hash of the training inputs and labels (keys the teacher-output cache)."""
        h = hashlib.sha256()
        for name in sorted(self.train.inputs):
            h.update(name.encode())
            x = self.train.inputs[name]
            # a streamed column (data/streaming.py) hashes its rows' cells and files, not decoded bytes
            # (the array's buffer, not a bytes copy: a video column is hundreds of MB)
            h.update(x.fingerprint().encode() if hasattr(x, "fingerprint") else x.contiguous().numpy())
        h.update(self.train.labels.numpy().tobytes())
        return h.hexdigest()


def keep_label_fraction(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Hide all but `fraction` of the labels, stratified per distinct target (at least one each).
    labels: (N, ...) targets of labeled rows."""
    if fraction >= 1.0:
        return labels.clone()
    gen = torch.Generator().manual_seed(seed)
    out = torch.full_like(labels, IGNORE_INDEX)
    flat = labels.reshape(len(labels), -1)  # (N, K): a row's target as one key
    keys = torch.unique(flat, dim=0)
    check_fraction_keeps(fraction, len(labels), len(keys), "one per class")  # 1e-300: the floor, not it, would decide
    for key in keys:
        idx = (flat == key).all(1).nonzero().squeeze(1)
        keep = max(1, round(fraction * len(idx)))
        chosen = idx[torch.randperm(len(idx), generator=gen)[:keep]]
        out[chosen] = labels[chosen]
    return out


def label_fraction_kept(split: Split) -> float | None:
    """The fraction of the labelled training rows that kept their label: what trained, which
    data.label_fraction asks for only up to whole rows per class and the one-row-per-class floor
    (0.005 of 1000 rows over 10 classes keeps 10 rows: 0.01). None: no labelled row at all."""
    kept = int(split.labeled.sum())
    hidden = 0 if split.hidden is None else int(labeled_rows(split.hidden).sum())
    return kept / (kept + hidden) if kept + hidden else None


def kept_differs(asked: float | None, kept: float | None) -> bool:
    """Is the kept label fraction another than the one asked, beyond per-class rounding? Whole
    rows per class move it a little (0.05 of the demo's 3,500 rows keeps 180: 5.1%), the
    one-per-class floor a lot (0.005 of 1,000 rows over 10 classes keeps 1%): only the latter,
    more than 10% off, is worth a note and both numbers in the report."""
    return asked is not None and kept is not None and asked > 0 and abs(kept / asked - 1) > 0.1


def check_fraction_keeps(fraction: float, rows: int, floor: int, why: str) -> None:
    """A fraction of `rows` labelled rows that rounds to no row at all (1e-300) is refused: the
    floor of `floor` rows ("one per class") would be what trains, not the fraction recorded."""
    import math

    from distill_export.errors import ConfigError

    if rows and fraction < 1.0 and round(fraction * rows) == 0:
        # the smallest fraction taken is the one that rounds to one row (3 significant digits, rounded
        # up); the floor then keeps `floor` rows. "keeps 3 rows is 0.25: pass at least that" was no
        # lower bound: 0.042 of 12 rows ran (thirty-eighth audit B5)
        digits = 2 - math.floor(math.log10(0.5 / rows))
        least = math.ceil(0.5 / rows * 10**digits) / 10**digits
        if round(least * rows) == 0:  # exactly half a row rounds to even: 0
            least += 10**-digits
        raise ConfigError(f"--label-fraction {fraction:g} (data.label_fraction) keeps no row of the {rows} labelled "
                          f"training rows ({fraction:g} x {rows} rounds to 0); the smallest fraction it takes is "
                          f"{least:g}, and any fraction keeps at least {floor} row{'s' * (floor > 1)} ({why}): "
                          "pass at least that, or 1 for every label")
