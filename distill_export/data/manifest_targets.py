"""The manifest reader's side of targets: check each row's label cell with the task's codec
(data/targets.py), find the known classes, encode the splits and hide labels (label_fraction).

A plain codec (CategoricalTargets, a task's own) reads one category per cell: a cell's class is
the cell itself, as it always was. A spatial codec (``spatial = True``: BoxTargets, data/boxes.py)
holds several classes per cell in the pixels of a frame: each labeled row is also checked
against the size of its frame (the box modality's file), and the targets are scaled to the
decoded size.
"""

from __future__ import annotations

from pathlib import Path

import torch

from distill_export.data.dataset import keep_label_fraction, labeled_rows
from distill_export.data.manifest_rows import Problem, Row
from distill_export.errors import DataError


def is_spatial(codec) -> bool:
    return bool(getattr(codec, "spatial", False))


def label_classes(codec, label: str) -> set[str]:
    classes = getattr(codec, "classes", None)
    return {label} if classes is None else classes(label)


def box_modality(config, decoders: dict) -> str:
    """The modality whose pixels box labels are in: the student's when it is an image (a video
    column's target frame is one), else the first image modality."""
    student = getattr(config, "student_modality", "image")
    if student in decoders and decoders[student].kind == "image":
        return student
    for m, dec in decoders.items():
        if dec.kind == "image":
            return m
    raise DataError("box labels need an image or video column (none in the manifest)")


def apply_annotations(config, path: Path, rows: list[Row], decoders: dict, codec, problems: list[Problem]):
    """data.annotations (a COCO file): label the rows from it (data/coco.py). Returns the codec
    with COCO's categories as its classes and the facts for Dataset.info, or (codec, None)."""
    name = str(getattr(config, "annotations", "") or "")
    if not name:
        return codec, None
    if not is_spatial(codec):
        raise DataError(f"data.annotations ({name}) holds boxes: it needs a task whose targets are boxes "
                        "(task: detection)")
    from distill_export.data.coco import apply_annotations as read_coco

    file = Path(name).expanduser()
    file = file if file.is_absolute() else path.parent / file
    cat_ids, names = read_coco(file, rows, decoders[box_modality(config, decoders)].cell_column, problems)
    return codec.with_names(names), {"annotations": str(file), "category_ids": cat_ids}


def _check_coco_boxes(codec, row: Row) -> None:
    """A COCO row's boxes against its frame, named as the COCO file writes them (annotation id,
    [x, y, width, height]): the row holds no box, and its x1 y1 x2 y2 is in no file (thirtieth audit
    B4). After the declared size was compared with the file's, so a wrong width is named as such."""
    from distill_export.data.boxes import check_inside

    name, ids = row.sources
    for (c, x1, y1, x2, y2), annotation in zip(codec.boxes(row.label), ids):
        try:
            check_inside([(c, x1, y1, x2, y2)], row.size)
        except DataError:
            shown = ", ".join(f"{v:g}" for v in (x1, y1, x2 - x1, y2 - y1))
            raise DataError(f"COCO annotation id {annotation} in {name}: bbox [{shown}] lies "
                            f"outside its {row.size[1]}x{row.size[0]} image ([x, y, width, height], in pixels)") from None


def check_labels(codec, rows: list[Row], sampled_out: set[str], config, decoders: dict,
                 problems: list[Problem]) -> tuple[list[Row], set[str]]:
    """(the rows whose label cells are good and name known classes, the known classes). Known:
    the classes of the training rows (sampled_out: labels of training rows left out by
    max_train_rows), or a spatial codec's fixed_names (COCO's categories)."""
    spatial = is_spatial(codec)
    column = box_modality(config, decoders) if spatial else None
    good = []
    for row in rows:
        if spatial and row.label is not None:
            try:
                codec.classes(row.label)  # parses the cell
                size = decoders[column].source_size(row.cells[column])
                if row.size is not None and row.size != size:  # the size a COCO file declares
                    raise DataError(f"the COCO image (id {row.id}) is {row.size[1]}x{row.size[0]}, its file "
                                    f"{decoders[column].path(row.cells[column])} is {size[1]}x{size[0]}")
                row.size = size
                if row.sources is not None:  # named by annotation id; the same check_inside as codec.check
                    _check_coco_boxes(codec, row)
                else:
                    codec.check(row.label, row.size)
            except DataError as exc:
                problems.append(Problem(row.line, str(exc)))
                continue
        good.append(row)
    trained = set().union(*(label_classes(codec, r.label) for r in good if r.split == "train" and r.label is not None))
    for label in sampled_out:
        try:
            trained |= label_classes(codec, label)
        except DataError:  # a malformed cell of a row left out: not read
            pass
    fixed = getattr(codec, "fixed_names", None)
    # COCO's classes are all its categories (the results file's ids), but a box of one no training
    # row has a box of is as bad a row as in a label cell (66th audit B2: it was trained on nothing)
    known = set(fixed) if fixed is not None else trained
    ok = []
    for row in good:
        missing = sorted(label_classes(codec, row.label) - trained) if row.label is not None else []
        if not missing:
            ok.append(row)
        elif fixed is not None:
            problems.append(Problem(row.line, f"COCO category {missing[0]!r} in its boxes: no training row has a "
                                              "box of it"))
        elif spatial:
            problems.append(Problem(row.line, f"unknown class {missing[0]!r} in its boxes: no training row has "
                                              "a box of it"))
        else:
            problems.append(Problem(row.line, f"unknown label {row.label!r}: no training row has it"))
    train = [r for r in ok if r.split == "train" and r.label is not None]
    if spatial and train and not any(codec.count(r.label) for r in train):
        # every COCO annotation iscrowd: a teacher trained on no object, reported as done (twenty-sixth audit B5)
        raise DataError(f"none of the {len(train)} training rows has a box to learn from"
                        + (" (COCO annotations marked iscrowd are not trained on)" if fixed is not None else ""))
    return ok, known


def classes_of(codec, rows: list[Row]) -> set[str]:
    return set().union(*(label_classes(codec, r.label) for r in rows if r.label is not None))


def encoder(codec, rows: list[Row], config, decoders: dict):
    """rows of one split -> their (N, ...) targets; a spatial codec's are scaled to the decoded
    frame size and padded to the most boxes of any row (`rows`: every split's)."""
    if not is_spatial(codec):
        return lambda split_rows, names: codec.encode([r.label for r in split_rows], names)
    column = box_modality(config, decoders)
    width = max([1] + [codec.count(r.label) for r in rows])
    size = decoders[column].frame_size
    return lambda split_rows, names: codec.encode([r.label for r in split_rows], names,
                                                  sizes=[r.size for r in split_rows], size=size, width=width)


def hide_labels(codec, labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """label_fraction applies to the labeled training rows; unlabeled rows stay unlabeled. The
    codec's keep_fraction picks the rows that keep theirs (default: stratified per target)."""
    if fraction >= 1.0:
        return labels
    keep = getattr(codec, "keep_fraction", None) or keep_label_fraction
    labeled = labeled_rows(labels).nonzero().squeeze(1)
    out = labels.clone()
    out[labeled] = keep(labels[labeled], fraction, seed)
    return out
