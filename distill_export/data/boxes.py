"""Box targets for detection: the codec that reads a manifest's `label` cells as boxes.

A label cell holds boxes in the pixels of the target frame (the image, or the video's target
frame, as the file holds it, before any resize), one per ``;``::

    3 10 12 30 34; 7 40 5 60 27        class x1 y1 x2 y2 (x1 < x2 <= width, y1 < y2 <= height)

Fields are separated by spaces (or commas); a class is a name without spaces (digits sort in
numeric order, as class labels do). ``none`` (or ``[]``) is a labeled image with no object; an
empty cell is an unlabeled image. A COCO annotation file (data/coco.py) gives the rows cells of
the form ``[["name", x1, y1, x2, y2], ...]`` (JSON), so category names may hold spaces.

Targets are (N, M, 5) float32 rows ``[class_index, x1, y1, x2, y2]`` in the pixels of the decoded
frame (scaled when data.image_size resizes it), M the most boxes any image has (>= 1); padding
rows are ``[-1, 0, 0, 0, 0]`` and an unlabeled image's rows are all IGNORE_INDEX, the layout
tasks/detection/centernet.py trains on.
"""

from __future__ import annotations

import json
import math
import re

import torch

from distill_export.data.dataset import IGNORE_INDEX, check_fraction_keeps
from distill_export.errors import DataError

BOX_PAD = (-1.0, 0.0, 0.0, 0.0, 0.0)  # a padding row: class -1
EDGE_TOLERANCE = 0.5  # px a coordinate may overshoot the image (rounding); clipped to the edge
NO_BOXES = ("none", "[]")
Box = tuple[str, float, float, float, float]  # class name, x1, y1, x2, y2


# A plain decimal number (ASCII digits, an optional exponent). Python's float() also takes "1_0"
# (10), non-ASCII digits and surrounding spaces, which a manifest's writer never means.
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[+-]?(?:inf|infinity|nan)", re.IGNORECASE)


def _num(text, what: str) -> float:
    if not isinstance(text, str) or not _DECIMAL.fullmatch(text):
        raise DataError(f"{what}: {text!r} is not a number")
    v = float(text)
    if not math.isfinite(v):
        raise DataError(f"{what}: {text!r} is not finite")
    return v


def parse_boxes(label: str) -> list[Box]:
    """A label cell -> its boxes. DataError names what is malformed (not the row)."""
    text = label.strip()
    if text.lower() in NO_BOXES:
        return []
    if text.startswith("["):  # COCO-derived cells (data/coco.py)
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"box label is not valid JSON: {exc.msg}") from None
        fields = [list(map(str, item)) if isinstance(item, list) else [] for item in items]
    else:
        fields = [re.split(r"[\s,]+", part.strip()) for part in text.split(";") if part.strip()]
    boxes = []
    for i, f in enumerate(fields, 1):
        if len(f) != 5:
            raise DataError(f"box {i} {' '.join(f)!r} has {len(f)} fields; a box is 'class x1 y1 x2 y2'")
        x1, y1, x2, y2 = (_num(v, f"box {i}") for v in f[1:])
        if x2 <= x1 or y2 <= y1:
            raise DataError(f"box {i} ({f[0]} {x1:g} {y1:g} {x2:g} {y2:g}) has zero or negative size "
                            "(x2 must exceed x1 and y2 exceed y1)")
        boxes.append((f[0], x1, y1, x2, y2))
    return boxes


def check_inside(boxes: list[Box], size: tuple[int, int]) -> list[Box]:
    """The boxes clipped to an (H, W) image; DataError for one outside it (beyond EDGE_TOLERANCE)."""
    h, w = size
    out = []
    for i, (c, x1, y1, x2, y2) in enumerate(boxes, 1):
        t = EDGE_TOLERANCE
        if x1 < -t or y1 < -t or x2 > w + t or y2 > h + t:
            raise DataError(f"box {i} ({c} {x1:g} {y1:g} {x2:g} {y2:g}) lies outside the {w}x{h} image "
                            f"(coordinates must be within 0-{w} and 0-{h})")
        x1, y1, x2, y2 = max(x1, 0.0), max(y1, 0.0), min(x2, float(w)), min(y2, float(h))
        if x2 <= x1 or y2 <= y1:
            raise DataError(f"box {i} ({c}) has no area inside the {w}x{h} image")
        out.append((c, x1, y1, x2, y2))
    return out


def _sort_names(names) -> list[str]:
    try:
        return sorted(names, key=lambda s: (float(s), s))  # numeric class names in numeric order
    except ValueError:
        return sorted(names)


class BoxTargets:
    """Boxes per image: (N, M, 5) float32 ``[class_index, x1, y1, x2, y2]`` (module docstring).

    The manifest reader calls the spatial hooks of data/targets.py: ``classes`` (one cell's class
    names), ``check`` (against the source frame's size), ``encode(..., sizes=, size=, width=)``
    and ``keep_fraction`` (which labeled images keep their boxes). ``fixed_names`` (COCO's
    categories, in category-id order) replaces the vocabulary drawn from the training rows."""

    spatial = True

    def __init__(self, fixed_names: list[str] | None = None):
        self.fixed_names = list(fixed_names) if fixed_names is not None else None
        self._parsed: dict[str, list[Box]] = {}

    def with_names(self, names: list[str]) -> "BoxTargets":
        return BoxTargets(names)

    def boxes(self, label: str) -> list[Box]:
        if label not in self._parsed:
            self._parsed[label] = parse_boxes(label)
        return self._parsed[label]

    def classes(self, label: str) -> set[str]:
        return {b[0] for b in self.boxes(label)}

    def count(self, label: str | None) -> int:
        return 0 if label is None else len(self.boxes(label))

    def check(self, label: str, size: tuple[int, int]) -> None:
        check_inside(self.boxes(label), size)

    def names(self, labels: set[str], where: str) -> list[str]:
        """labels: the class names of the training rows' boxes (the manifest reader passes classes)."""
        if self.fixed_names is not None:
            return list(self.fixed_names)
        if not labels:
            raise DataError(f"{where}: the labeled training rows hold no box; a detector needs boxes to learn from")
        return _sort_names(labels)

    def encode(self, labels: list[str | None], names: list[str], sizes: list[tuple[int, int] | None] | None = None,
               size: tuple[int, int] | None = None, width: int | None = None) -> torch.Tensor:
        """(N, M, 5) float32. sizes: each row's source (H, W) (None: not scaled); size: the decoded
        (H, W) the boxes are scaled to; width: M (default: the most boxes of these rows, >= 1)."""
        index = {c: i for i, c in enumerate(names)}
        m = max(1, width or 0, *(self.count(v) for v in labels)) if labels else max(1, width or 0)
        out = torch.full((len(labels), m, 5), float(IGNORE_INDEX))
        for r, label in enumerate(labels):
            if label is None:
                continue
            out[r] = torch.tensor(BOX_PAD)
            boxes = self.boxes(label)
            src = sizes[r] if sizes is not None else None
            if src is not None:
                boxes = check_inside(boxes, src)
            sx = size[1] / src[1] if src is not None and size is not None else 1.0
            sy = size[0] / src[0] if src is not None and size is not None else 1.0
            for j, (c, x1, y1, x2, y2) in enumerate(boxes):
                out[r, j] = torch.tensor([index[c], x1 * sx, y1 * sy, x2 * sx, y2 * sy])
        return out

    def keep_fraction(self, labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
        """Hide the boxes of all but a random `fraction` of the images (seeded, at least one).
        labels: (N, M, 5) targets of labeled images."""
        if fraction >= 1.0:
            return labels.clone()
        check_fraction_keeps(fraction, len(labels), 1, "one image")
        keep = max(1, round(fraction * len(labels)))
        chosen = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:keep]
        out = torch.full_like(labels, IGNORE_INDEX)
        out[chosen] = labels[chosen]
        return out
