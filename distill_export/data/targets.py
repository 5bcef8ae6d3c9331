"""How a data source's `label` cells become the target tensor a task trains on.

The task owns this (Task.targets): the data layer only calls a codec. The default codec,
``CategoricalTargets``, reads each cell as one category of a vocabulary drawn from the training
rows; a task with other targets (several tags per row, boxes, a number) brings its own.

An unlabeled row (an empty cell) gets a target filled with IGNORE_INDEX, whatever its shape,
so ``Split.labeled`` finds it without knowing the task.
"""

from __future__ import annotations

from typing import Protocol

import torch

from distill_export.data.dataset import IGNORE_INDEX
from distill_export.errors import DataError


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
