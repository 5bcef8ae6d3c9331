"""COCO-format detection labels: read an annotation file onto a manifest's rows, and write
predictions as a COCO results file.

Reading (data.annotations: a COCO ``instances.json``, relative to the manifest's folder):

- an image matches a manifest row by ``id`` when the manifest has an ``id`` column (compared as
  text), else by ``file_name``, which must equal the row's cell of the box column as the
  manifest writes it (``images/0001.png``, ``clips/0001.mkv#2``; ``./`` and doubled slashes are
  normalised), or be a bare file name (``0001.png``) that ends exactly one row's cell;
- the image's ``width`` and ``height``, when given, must be those of the row's file;
- a row whose image is in the file is labeled with that image's annotations (none: a labeled
  image without objects); a row not in it is unlabeled (train only, as an empty label cell);
- ``bbox`` is ``[x, y, width, height]`` in the image's pixels; ``iscrowd: 1`` annotations are
  skipped (COCO's evaluation ignores them too);
- the classes are the ``categories``' names in category-id order (all of them, used or not);
  Dataset.info["coco"] keeps the category ids and each split's image ids for the results file.

An image that matches no row, an annotation whose image_id is not among the images, or a
category_id not in the categories is a one-line DataError (the last names the row, file:line).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from distill_export.data.manifest_rows import Problem, Row
from distill_export.errors import DataError
from distill_export.files import atomic_path, read_regular


def _norm(name: str) -> str:
    return os.path.normpath(str(name).replace("\\", "/")) if name else ""


def _finite_number(value) -> bool:
    """A coordinate: a finite int or float (10**400 overflowed float() in a traceback: B3)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _scalar(value) -> bool:
    """An id COCO can hold: a number or a string (a list or an object is no id, and unhashable)."""
    return isinstance(value, (int, float, str))


def _image_id(value) -> bool:
    """An image id a results file can give back: a string, an integer or a whole finite float (5.0
    is 5); NaN, inf or 2.5 cannot be written as COCO's integer id (thirty-fifth audit)."""
    if isinstance(value, float):
        return math.isfinite(value) and value.is_integer()
    return _scalar(value)


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object whose key is given twice is refused: the last "images" won in silence, and the
    annotations were blamed (thirty-seventh audit A3)."""
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"the key {key[:80]!r} is given twice in one object")
        out[key] = value
    return out


def _load(path: Path) -> dict:
    if not path.exists():
        raise DataError(f"COCO annotation file {path} does not exist (data.annotations)")
    try:  # read_regular: a FIFO or a folder is named as what it is, never waited on
        coco = json.loads(read_regular(path, f"COCO annotation file {path}").decode("utf-8-sig"),
                          object_pairs_hook=_unique_keys)
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON, an integer of 4,300+ digits;
        # RecursionError: arrays nested 100,000 deep (twenty-sixth audit B4)
        raise DataError(f"cannot read COCO annotation file {path}: {str(exc).splitlines()[0][:200] or type(exc).__name__}") from None
    if not isinstance(coco, dict) or not all(isinstance(coco.get(k), list) for k in ("images", "annotations", "categories")):
        raise DataError(f"{path} is not a COCO annotation file: it needs lists 'images', 'annotations' and 'categories'")
    return coco


def categories(coco: dict, path: Path) -> tuple[list[int], list[str]]:
    """(category ids sorted, their names): the class vocabulary, in category-id order."""
    cats = {}
    for n, c in enumerate(coco["categories"]):
        if not isinstance(c, dict):  # null was "category None needs an integer 'id'" (thirty-eighth audit A7)
            raise DataError(f"{path}: categories[{n}] is {json.dumps(c)[:80]}, not an object")
        name = c.get("name", "")
        # a list or an object as a name became its Python repr as a class name (thirty-fourth audit B2)
        if not isinstance(c.get("id"), int) or not isinstance(name, (str, int, float)) \
                or isinstance(name, bool) or not str(name).strip():
            raise DataError(f"{path}: category {c!r} needs an integer 'id' and a 'name' (a string)")
        if c["id"] in cats:
            raise DataError(f"{path}: category id {c['id']} appears twice")
        cats[c["id"]] = str(c["name"]).strip()
    if not cats:
        raise DataError(f"{path}: no categories")
    ids = sorted(cats)
    names = [cats[i] for i in ids]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise DataError(f"{path}: category name {dup!r} appears twice")
    return ids, names


def apply_annotations(path: Path, rows: list[Row], column: str, problems: list[Problem]) -> tuple[list[int], list[str]]:
    """Set each matched row's label from the COCO file (a JSON box cell, data/boxes.py) and its
    row.id to the COCO image id. Returns (category ids, category names)."""
    coco = _load(path)
    cat_ids, names = categories(coco, path)
    cat_name = dict(zip(cat_ids, names))
    by_id = any(r.id is not None for r in rows)
    key_of_row = (lambda r: r.id) if by_id else (lambda r: _norm(r.cells[column]))
    row_index: dict[str, list[Row]] = {}
    for r in rows:
        row_index.setdefault(key_of_row(r) or "", []).append(r)
    by_base: dict[str, list[Row]] = {}  # a bare file name matches the row whose cell ends in it, when only one does
    for key, matched in row_index.items():
        by_base.setdefault(os.path.basename(key), []).extend(matched)
    images: dict = {}  # COCO image id -> matched rows
    claimed: dict = {}  # id(row) -> the COCO image id that describes it
    for n, im in enumerate(coco["images"]):
        if not isinstance(im, dict):  # null was "has no 'id'" (thirty-eighth audit A7)
            raise DataError(f"{path}: images[{n}] is {json.dumps(im)[:80]}, not an object")
        if "id" not in im:
            raise DataError(f"{path}: images[{n}] has no 'id'")
        if not _image_id(im["id"]):  # [1] was a traceback: unhashable (thirty-third audit B1)
            raise DataError(f"{path}: images[{n}] has the id {im['id']!r}, not a whole number or a string")
        key = str(im["id"]) if by_id else _norm(im.get("file_name", ""))
        matched = row_index.get(key, [])
        if not matched and not by_id and "/" not in key and len({id(r) for r in by_base.get(key, [])}) == 1:
            matched = by_base[key]
        if not matched:
            how = f"id {im['id']} (the manifest's 'id' column)" if by_id else \
                f"file_name {im.get('file_name')!r} (the manifest's {column!r} cells)"
            raise DataError(f"{path}: image {how} matches no manifest row; data.annotations must describe "
                            "the manifest's images")
        images[im["id"]] = matched
        for side in ("width", "height"):  # 0, -4 or 16.5 blamed every box as outside (thirty-first audit B2)
            value = im.get(side)
            whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())  # 32.0 is 32
            if side in im and (isinstance(value, bool) or not whole or value <= 0):
                raise DataError(f"{path}: image id {im['id']}: {side} {value!r} is not a positive whole number of "
                                "pixels (COCO gives each image's width and height)")
        for r in matched:  # two images naming one file were blamed as 'a label cell and COCO' (32nd audit B5)
            if id(r) in claimed:
                raise DataError(f"{path}: images id {claimed[id(r)]} and id {im['id']} both describe the manifest's "
                                f"{r.cells.get(column, r.id)!r} (line {r.line}); each image must be listed once")
            claimed[id(r)] = im["id"]
        if "width" in im and "height" in im:
            for r in matched:
                r.size = (int(im["height"]), int(im["width"]))  # checked against the file (check_labels)
    boxes: dict = {i: [] for i in images}
    annotation_ids: dict = {}  # image id -> the annotation id of each of its boxes, in order
    for n, a in enumerate(coco["annotations"]):
        if not isinstance(a, dict):  # null was "annotation id None: image_id None is not among..." (37th A2)
            raise DataError(f"{path}: annotations[{n}] is {json.dumps(a)[:80]}, not an object")
        if not _scalar(a.get("image_id")) or a.get("image_id") not in images:
            raise DataError(f"{path}: annotation id {a.get('id')}: image_id {a.get('image_id')!r} is not among the "
                            "file's images")
        row = images[a["image_id"]][0]
        crowd = a.get("iscrowd", 0)
        if isinstance(crowd, str) or crowd not in (0, 1):  # "0" is true in Python: its box was dropped (33rd B4)
            problems.append(Problem(row.line, f"COCO annotation id {a.get('id')}: iscrowd {crowd!r} is not 0 or 1"))
            boxes[a["image_id"]] = None
            continue
        if crowd:
            continue
        if not _scalar(a.get("category_id")) or a.get("category_id") not in cat_name:
            problems.append(Problem(row.line, f"COCO annotation id {a.get('id')}: category_id {a.get('category_id')!r} "
                                              f"is not in the file's categories ({', '.join(map(str, cat_ids))})"))
            boxes[a["image_id"]] = None
            continue
        bbox = a.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_finite_number(v) for v in bbox)):
            problems.append(Problem(row.line, f"COCO annotation id {a.get('id')}: bbox {bbox!r} is not [x, y, width, height]"))
            boxes[a["image_id"]] = None
            continue
        if not (float(bbox[2]) > 0 and float(bbox[3]) > 0):  # named as COCO writes it (thirtieth audit B4)
            problems.append(Problem(row.line, f"COCO annotation id {a.get('id')} in {path.name}: bbox {bbox!r} has "
                                              "zero or negative width or height"))
            boxes[a["image_id"]] = None
            continue
        if boxes[a["image_id"]] is not None:
            x, y, w, h = (float(v) for v in bbox)
            boxes[a["image_id"]].append([cat_name[a["category_id"]], x, y, x + w, y + h])
            annotation_ids.setdefault(a["image_id"], []).append(a.get("id"))
    bad = {p.line for p in problems}
    for image_id, matched in images.items():
        for r in matched:
            if r.label is not None:
                problems.append(Problem(r.line, "has both a label cell and COCO annotations (data.annotations); keep one"))
            elif boxes[image_id] is not None and r.line not in bad:
                r.label = json.dumps(boxes[image_id])
                r.id, r.coco_id = str(image_id), image_id
                r.sources = (path.name, annotation_ids.get(image_id, []))
    return cat_ids, names


# ----- writing ---------------------------------------------------------------------------
def _numpy(a) -> np.ndarray:
    return a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)


def _check_results_args(boxes, scores, classes, image_ids, category_ids, min_score) -> None:
    """One ValueError naming the argument, before anything is written: scores or classes shorter
    than the boxes were cut by zip (74th audit B2), and other shapes or ids were raw TypeErrors."""
    if boxes.ndim != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"write_coco_results: boxes must be (N, K, 4), got shape {boxes.shape}")
    for name, array in (("scores", scores), ("classes", classes)):
        if array.shape != boxes.shape[:2]:
            raise ValueError(f"write_coco_results: {name} must be (N, K) = {boxes.shape[:2]} like the boxes, "
                             f"got shape {array.shape}")
    if len(image_ids) != len(boxes):
        raise ValueError(f"write_coco_results: {len(image_ids)} image ids for {len(boxes)} images")
    for name, ids in (("image id", image_ids), ("category id", category_ids)):
        bad = [i for i in ids if not _is_id(i, allow_str=name == "image id")]
        if bad:  # a string image id is COCO's too (thirty-fourth audit B3)
            raise ValueError(f"write_coco_results: {name} {bad[0]!r} is not a whole number" +
                             (" or a string" if name == "image id" else ""))
    if not (isinstance(min_score, (int, float)) and math.isfinite(min_score)):
        raise ValueError(f"write_coco_results: min_score must be a finite number, got {min_score!r}")


def _is_id(value, allow_str: bool) -> bool:
    if allow_str and isinstance(value, str):
        return True
    if isinstance(value, (bool, np.bool_)):
        return False
    try:
        return math.isfinite(float(value)) and float(value) == int(value)
    except (TypeError, ValueError, OverflowError):
        return False


def write_coco_results(path: str | Path, boxes, scores, classes, image_ids, category_ids, min_score: float = 0.0) -> Path:
    """Detections as a COCO results file, written atomically:
    ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}, ...]``.

    boxes (N, K, 4) x1 y1 x2 y2 px, scores (N, K), classes (N, K) class indices (torch or numpy);
    image_ids (N,) the COCO image id of each image; category_ids: class index -> category id.
    Detections scoring below min_score, with a box, width, height or score that is not finite,
    or with a class that is not an index into category_ids (-1 pads a fixed number of
    detections) are left out. image_ids must give one id per image."""
    boxes, scores, classes = (_numpy(a) for a in (boxes, scores, classes))
    _check_results_args(boxes, scores, classes, image_ids, category_ids, min_score)
    out = []
    for n, image_id in enumerate(image_ids):
        for (x1, y1, x2, y2), s, c in zip(boxes[n].astype(np.float64), scores[n], classes[n]):
            with np.errstate(over="ignore", invalid="ignore"):
                size = np.array([x1, y1, x2 - x1, y2 - y1, s], dtype=np.float64)
            if not (float(s) >= min_score and np.isfinite(size).all()):
                continue  # NaN, inf, or a width past float's range: no detection, and not JSON (35th A4, 42nd B7)
            if not (np.isfinite(c) and float(c) == int(c) and 0 <= int(c) < len(category_ids)):
                continue  # -1 had named the last category, 0.5 category 0 (41st audit A1, 42nd A5)
            # an image id as the file gives it: a string id is COCO's too (thirty-fourth audit B3)
            out.append({"image_id": image_id if isinstance(image_id, str) else int(image_id),
                        "category_id": int(category_ids[int(c)]),
                        "bbox": [round(float(x1), 3), round(float(y1), 3), round(float(x2 - x1), 3),
                                 round(float(y2 - y1), 3)],
                        "score": round(float(s), 6)})
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(out, allow_nan=False))  # strict JSON, as every COCO tool reads it
    return path


def coco_ground_truth(targets, names: list[str], size: tuple[int, int], image_ids=None, category_ids=None) -> dict:
    """(N, M, 5) box targets -> a COCO annotation dict (for faster-coco-eval's COCO(...)).
    size: the (H, W) of every image; ids default to 1.. for images and categories. Unlabeled
    images (all IGNORE_INDEX) are left out; padding rows (class -1) are not boxes."""
    t = _numpy(targets).astype(np.float64)
    image_ids = list(range(1, len(t) + 1)) if image_ids is None else [int(i) for i in image_ids]
    category_ids = list(range(1, len(names) + 1)) if category_ids is None else [int(i) for i in category_ids]
    h, w = size
    images, anns = [], []
    for n, rows in enumerate(t):
        if (rows[:, 0] < -1).all():  # IGNORE_INDEX: unlabeled
            continue
        images.append({"id": image_ids[n], "width": int(w), "height": int(h), "file_name": str(image_ids[n])})
        for c, x1, y1, x2, y2 in rows[rows[:, 0] >= 0]:
            anns.append({"id": len(anns) + 1, "image_id": image_ids[n], "category_id": category_ids[int(c)],
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    return {"images": images, "annotations": anns,
            "categories": [{"id": i, "name": nm} for i, nm in zip(category_ids, names)]}
