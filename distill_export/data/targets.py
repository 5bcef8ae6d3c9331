"""How a data source's `label` cells become the target tensor a task trains on.

The task owns this (Task.targets): the data layer only calls a codec. The default codec,
``CategoricalTargets``, reads each cell as one category of a vocabulary drawn from the training
rows; a task with other targets (several tags per row, boxes, a number) brings its own.

An unlabeled row (an empty cell) gets a target filled with IGNORE_INDEX, whatever its shape,
so ``Split.labeled`` finds it without knowing the task.

A codec may also be *spatial* (``spatial = True``; ``BoxTargets`` in data/boxes.py): its cells
hold several classes in the pixels of a frame. The manifest reader (data/manifest_targets.py)
then calls these hooks as well, and passes ``names`` the set of class names instead of cells:

- ``classes(label) -> set[str]``: the class names one cell holds (DataError if malformed);
- ``check(label, size)``: DataError if the cell does not fit a frame of (H, W) source pixels;
- ``count(label) -> int``: how many rows of the target the cell fills (boxes);
- ``encode(labels, names, sizes=, size=, width=)``: sizes, each row's source (H, W); size, the
  decoded (H, W) to scale to; width, the rows per target over the whole dataset;
- ``keep_fraction(labels, fraction, seed)``: which labeled training rows keep their target
  (data.label_fraction);
- ``fixed_names`` (None or a list) and ``with_names(names)``: a vocabulary given up front
  (COCO's categories, data.annotations).

A codec without them (CategoricalTargets, a task's own) reads one class per cell and hides
labels stratified per distinct target (dataset.keep_label_fraction), as before.
"""

from __future__ import annotations

from typing import Protocol

import torch

from distill_export.data.boxes import BoxTargets
from distill_export.data.dataset import IGNORE_INDEX
from distill_export.errors import DataError

__all__ = ["BoxTargets", "CategoricalTargets", "TargetCodec"]


class TargetCodec(Protocol):
    def names(self, labels: set[str], where: str) -> list[str]:
        """The vocabulary the head predicts, from the labels of the training rows."""

    def encode(self, labels: list[str | None], names: list[str]) -> torch.Tensor:
        """(N, ...) targets; a None label gives a row filled with IGNORE_INDEX."""


class CategoricalTargets:
    """One category per row: a (N,) int64 index into the sorted vocabulary."""

    def names(self, labels: set[str], where: str) -> list[str]:
        try:
            names = sorted(labels, key=lambda s: (float(s), s))  # numeric labels in numeric order
        except ValueError:
            names = sorted(labels)
        if len(names) < 2:
            found = f"only {names[0]!r}" if names else "none"
            raise DataError(f"{where}: the labeled training rows hold one class only ({found}); "
                            "a classifier needs two or more")
        return names

    def encode(self, labels: list[str | None], names: list[str]) -> torch.Tensor:
        index = {c: i for i, c in enumerate(names)}
        return torch.tensor([index[v] if v is not None else IGNORE_INDEX for v in labels], dtype=torch.int64)
