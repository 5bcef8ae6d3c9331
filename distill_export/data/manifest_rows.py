"""Manifest rows: read a CSV/JSONL manifest into rows, check each row's cells, and draw the
train/val/test split when the manifest has no `split` column (data/manifest.py builds the
Dataset from them). A bad row is a Problem (its line and what is wrong), never an exception.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console

from distill_export.data.column_names import (  # noqa: F401 (RESERVED: manifest_rows.RESERVED for its readers)
    RESERVED, column_problem, column_shown, read_alike, shown, visible,
)
from distill_export.errors import DataError
from distill_export.files import unusable_path

SPLITS = ("train", "val", "test")
CALIBRATION = "calibration"  # optional split: unlabeled rows the INT8 export calibrates on, never trained on
HELD_OUT_FRACTION = {"val": 0.1, "test": 0.1}  # per class, when there is no split column
_EXTRA = "\0extra"  # DictReader's key for fields beyond the header

console = Console(stderr=True, highlight=False, soft_wrap=True, markup=False, emoji=False)


@dataclass
class Row:
    line: int
    cells: dict[str, str]  # modality column -> path or text, stripped
    label: str | None  # None: unlabeled
    split: str | None  # None: drawn with the seed
    id: str | None = None  # the `id` cell (matches a COCO image id, data/coco.py)
    size: tuple[int, int] | None = None  # box labels: the (H, W) of the frame the boxes are in
    slots: dict[str, int] = field(default_factory=dict)  # modality -> its row in the split's storage
    # box labels from a COCO file: (its name, the annotation id of each box in order), for messages
    sources: tuple[str, list] | None = None
    # the COCO image id as the annotation file gives it (int, float or str): "007" stays "007" (35th audit B4)
    coco_id: int | float | str | None = None


@dataclass
class Problem:
    line: int
    message: str


# ----- parsing -------------------------------------------------------------------------------
def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _read_csv(path: Path, problems: list[Problem]) -> tuple[list[str], list[tuple[int, dict]]]:
    records = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, restkey=_EXTRA)
        raw = list(reader.fieldnames or [])
        columns = [c.strip() for c in raw]
        if len(set(columns)) != len(columns):
            twice = next(c for c in columns if columns.count(c) > 1)
            spelled = [r for r, c in zip(raw, columns) if c == twice]  # "label" and "label\xa0" (42nd audit A3)
            how = "" if len(set(spelled)) == 1 else f", written {' and '.join(map(repr, spelled))}"
            raise DataError(f"{path}:1: duplicate column names in the header: {twice!r} is given twice{how} "
                            "(names are read without surrounding spaces)")
        reader.fieldnames = columns
        for rec in _csv_records(reader, problems):
            line = reader.line_num
            if _EXTRA in rec:
                n = len(columns) + len(rec[_EXTRA])
                problems.append(Problem(line, f"{n} fields, the header has {len(columns)}"))
                continue
            if any(v is None for v in rec.values()):
                problems.append(Problem(line, f"fewer fields than the header's {len(columns)}"))
                continue
            records.append((line, rec))
    return columns, records


def _csv_records(reader: csv.DictReader, problems: list[Problem]):
    """The reader's records; a record csv cannot parse (a cell over its 131,072-character limit) is
    a bad row named by its line, skippable like any other, not the whole manifest refused in
    csv's words (thirty-fifth audit A3). The reader has read `line_num` lines before the bad one."""
    failed_at = None
    while True:
        try:
            yield next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            if failed_at == reader.line_num:  # no progress: the rest cannot be read
                raise
            failed_at = reader.line_num
            problems.append(Problem(reader.line_num + 1, f"cannot be read as CSV ({exc})"))


_JSON_TYPES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean", list: "a list (JSON array)",
               dict: "an object (JSON dict)"}


def _field_problem(rec: dict) -> str | None:
    """A JSONL row's fields by type: a modality cell and `split` are strings, `id` a string or an
    integer, `label` a string, an integer or an integer-valued number (3.0 reads as 3; 1.5 is
    refused); null is an empty cell. Anything else is refused, never turned into its repr."""
    for key, value in rec.items():
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:  # a JSON "\ud800" escape: no character (thirty-eighth audit B3)
                return f"field {key!r} holds {value[exc.start]!r}, a lone surrogate escape that is no character"
            continue
        if value is None:
            continue
        kind = _JSON_TYPES.get(type(value), type(value).__name__)
        if key == "label" and type(value) is int:
            continue
        if key == "label" and type(value) is float:
            if value.is_integer() and abs(value) < 2**53:  # past 2**53 a float is no exact integer (40th B5)
                continue
            if value.is_integer():
                return (f"field 'label' is {value!r}, a number past 2**53, which a float does not hold exactly: write "
                        "it as an integer or a string")
            return f"field 'label' is {value!r}, a non-integer number: a label is a string or an integer"
        if key == "id" and type(value) is int:
            continue
        want = {"label": "a string or an integer", "id": "a string or an integer"}.get(key, "a string")
        return f"field {key!r} is {kind}: it must be {want}"
    return None


class _Duplicate:
    """A JSON object with a key given twice (json.loads would keep the last one in silence)."""

    def __init__(self, key: str):
        self.key = key


def _pairs(pairs: list[tuple[str, object]]):
    seen = set()
    for key, value in pairs:
        if key in seen:
            return _Duplicate(key)
        if isinstance(value, _Duplicate):  # a nested object with a duplicate: the row is refused all the same
            return value
        seen.add(key)
    return dict(pairs)


def _read_jsonl(path: Path, problems: list[Problem]) -> tuple[list[str], list[tuple[int, dict]]]:
    records, columns = [], {}
    with open(path, encoding="utf-8-sig") as f:
        for line, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                rec = json.loads(text, object_pairs_hook=_pairs)
            except json.JSONDecodeError as exc:
                problems.append(Problem(line, f"not valid JSON: {exc.msg}"))
                continue
            except (ValueError, RecursionError) as exc:  # a 5,000-digit integer (39th audit B5), nesting
                problems.append(Problem(line, f"not readable JSON: {(str(exc).splitlines() or [''])[0][:120]}"))
                continue
            if isinstance(rec, _Duplicate):
                problems.append(Problem(line, f"field {rec.key!r} appears twice (which one is meant?)"))
                continue
            if not isinstance(rec, dict):
                problems.append(Problem(line, "not a JSON object"))
                continue
            names = [str(k).strip() for k in rec]  # stripped as a CSV header is: "image " is image (40th B2, B3)
            if len(set(names)) != len(names):
                same = next(n for n in names if names.count(n) > 1)
                problems.append(Problem(line, f"two fields name the column {same!r} (names are read without "
                                              "surrounding spaces)"))
                continue
            rec = dict(zip(names, rec.values()))
            wrong = _field_problem(rec)
            if wrong:
                problems.append(Problem(line, wrong))
                continue
            columns.update(dict.fromkeys(rec))
            records.append((line, rec))
    return list(columns), records


def read_rows(path: Path, need_label: bool = True) -> tuple[list[str], list[str], list[Row], list[Problem]]:
    """Parse the manifest: (modality columns, all columns, rows, format problems). need_label:
    refuse a manifest without a `label` column (not when a COCO file holds the labels)."""
    problems: list[Problem] = []
    try:
        reader = _read_jsonl if path.suffix.lower() == ".jsonl" else _read_csv
        columns, records = reader(path, problems)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read manifest {path}: {exc}") from None
    if not records and problems:  # JSONL columns come from good rows: no good row is no column (B4)
        first = min(problems, key=lambda p: p.line)
        raise DataError(f"manifest {path} has no usable row: all {len(problems)} rows are bad (first: line "
                        f"{first.line}: {first.message})")
    if not records and not columns:  # an empty file (or blank lines): no header, no row (tenth audit)
        raise DataError(f"manifest {path} is empty: no header and no rows")
    if "label" not in columns and need_label:
        near = next((c for c in columns if visible(c) == "label"), None)  # "\ufefflabel" read as "label"
        hint = f"; the column {near!r} holds an invisible character" if near is not None else ""
        raise DataError(f"manifest {path} has no 'label' column (columns: {', '.join(map(column_shown, columns)) or 'none'})"
                        f"{hint}")
    modalities = [c for c in columns if c not in RESERVED]
    if not modalities:
        raise DataError(f"manifest {path} has no modality column, only {', '.join(columns)}")
    for m in modalities:  # a column names the teacher's encoder, its ONNX input and report keys
        if why := column_problem(m):  # "caption.en" or "" was a KeyError traceback (thirty-ninth audit B1-B4)
            raise DataError(f"manifest {path}: the column {m!r} cannot name a modality: {why}; rename it")
    if pair := read_alike(modalities):  # "image" beside fullwidth "ｉｍａｇｅ" (43rd audit A3, 44th B1)
        raise DataError(f"manifest {path}: the columns {shown(pair[0])} and {shown(pair[1])} read as one name; "
                        "rename one")
    rows = []
    for line, rec in records:
        label = _cell(rec.get("label"))
        split = _cell(rec.get("split")).lower() if "split" in columns else None
        rows.append(Row(line, {m: _cell(rec.get(m)) for m in modalities}, label or None, split,
                        id=_cell(rec.get("id")) or None))
    return modalities, columns, rows, problems


# ----- checks --------------------------------------------------------------------------------
def check_cells(row: Row, path_columns=()) -> str | None:
    """What is wrong with a row's split, label or cells (None: nothing); `path_columns` hold file
    paths (not text), which must be names the OS can take (files.py unusable_path)."""
    if row.split is not None and row.split not in (*SPLITS, CALIBRATION):
        known = "train, val, test or calibration"
        return f"unknown split {row.split!r} ({known})" if row.split else f"empty split ({known})"
    if row.label is None and row.split in ("val", "test"):
        return f"missing label in the {row.split} split (unlabeled rows serve distillation only, so belong to train)"
    for col, value in row.cells.items():
        if not value:
            return f"empty {col!r} cell"  # every row's cells feed the teacher (targets, scores)
        problem = unusable_path(value) if col in path_columns else None
        if problem:
            return f"{col} path {_shown(value)} {problem}"
    return None


def _shown(value: str, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def draw_splits(rows: list[Row], seed: int) -> None:
    """Per label, shuffle and put 10% in val and 10% in test; unlabeled rows go to train."""
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[Row]] = {}
    for row in rows:
        if row.label is None:
            row.split = "train"
        else:
            by_label.setdefault(row.label, []).append(row)
    for label in sorted(by_label):
        group = [by_label[label][i] for i in rng.permutation(len(by_label[label]))]
        n_val = int(round(HELD_OUT_FRACTION["val"] * len(group)))
        n_test = int(round(HELD_OUT_FRACTION["test"] * len(group)))
        for i, row in enumerate(group):
            row.split = "val" if i < n_val else "test" if i < n_val + n_test else "train"


def report_problems(path: Path, problems: list[Problem], skipping: bool) -> None:
    verb = "skipping" if skipping else "bad row"
    for p in sorted(problems, key=lambda p: p.line):
        console.print(f"{path}:{p.line}: {verb}: {p.message}")
