"""report.json on disk: read (naming a corrupt file in one line), merge sections, write atomically.

RunDir.update_report is the one writer and calls `write_sections`; nothing else writes the file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from distill_export.errors import ConfigError
from distill_export.files import _jsonable, read_regular, write_json
from distill_export.record.migrate import RecordError, upgrade, validate
from distill_export.record.models import SECTIONS, RunRecord

# Every stage command reads the run's records before it writes them, so re-running one cannot mend
# a corrupt file (65th audit B2: that advice was refused by the stage it named).
RESTORE = "restore it from a copy or start a new run"


def read_json(path: Path) -> dict:
    """The file's JSON object ({} when there is no file), as written (any version)."""
    if not path.exists():
        return {}
    try:
        data = json.loads(read_regular(path).decode("utf-8"))  # a FIFO state.json: refused, not waited on
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        where = f" at line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise ConfigError(f"{path} is corrupt (not valid JSON{where}); {RESTORE}") from None
    except RecursionError:
        raise ConfigError(f"{path} is corrupt (nested too deeply); {RESTORE}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is corrupt: expected a JSON object, got {type(data).__name__}; {RESTORE}")
    return data


def load(path: Path) -> tuple[dict, RunRecord, dict | None]:
    """(current-version JSON, its typed record, stage state found in an old file or None)."""
    data, stages = upgrade_named(read_json(path), path)
    try:
        record = validate(data)
    except RecordError as exc:
        raise RecordError(f"{path} is corrupt: {exc}; {RESTORE}") from None
    try:
        where = _first_nan(data)  # in a section the typed models leave open
    except RecursionError:
        raise ConfigError(f"{path} is corrupt (nested too deeply); {RESTORE}") from None
    if where is not None:
        raise RecordError(f"{path} is corrupt: {where[0]}: {where[1]} (the product never writes NaN); "
                          f"{RESTORE}")
    return data, record, stages


def _first_nan(value, where: str = "") -> tuple[str, float] | None:
    """(dotted key, value) of the first NaN in parsed JSON (json.loads reads NaN); None if there is
    none. A hand-edited NaN parity difference was drawn PASS. (An infinity can be the product's:
    an FP16 export that overflows is infinitely far from its reference; the typed sections refuse
    one where it cannot be.)"""
    if isinstance(value, float) and math.isnan(value):
        return where or "(top)", value
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        if (found := _first_nan(child, f"{where}.{key}" if where else str(key))) is not None:
            return found
    return None


def upgrade_named(raw: dict, path: Path) -> tuple[dict, dict | None]:
    try:
        return upgrade(raw)
    except RecordError as exc:
        raise RecordError(f"{path}: {exc}") from None


def plain(value):
    """A section as plain JSON (a typed model as its set keys; numpy values as lists/numbers)."""
    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json", exclude_unset=True)
    elif isinstance(value, list):
        value = [v.model_dump(mode="json", exclude_unset=True) if hasattr(v, "model_dump") else v for v in value]
    elif isinstance(value, dict):
        value = {k: v.model_dump(mode="json", exclude_unset=True) if hasattr(v, "model_dump") else v
                 for k, v in value.items()}
    return json.loads(json.dumps(value, default=_jsonable))


def merge(data: dict, sections: dict, replace: bool = False) -> dict:
    """Sections merged into the record: a dict section merges one level deep into the one on
    file (replace=True: each section replaces the one on file)."""
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise ValueError(f"not a report.json section: {', '.join(unknown)} (record/models.py lists them)")
    out = dict(data)
    for key, value in sections.items():
        value = plain(value)
        if not replace and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def write_sections(path: Path, sections: dict, replace: bool = False,
                   keep_stages=None) -> tuple[dict, RunRecord]:
    """Merge `sections` into the file and write it atomically, checked against the models first
    (a section of the wrong shape is a bug: ValueError, and the file is left as it was).
    keep_stages(stages) is called with an old file's stage state before that file is rewritten."""
    data, _, stages = load(path)
    if stages is not None and keep_stages is not None:
        keep_stages(stages)
    merged = merge(data, sections, replace)
    try:
        record = validate(merged)
    except RecordError as exc:
        raise ValueError(f"report.json would not match its schema: {exc}") from None
    write_json(path, merged)
    return merged, record


def rewrite(path: Path, change) -> dict:
    """report.json with `change(data)` applied to the whole record (e.g. a stale stage's sections
    dropped, RunDir.begin_stage), checked against the models and written atomically."""
    data, _, _ = load(path)
    changed = change(data)
    if changed == data:  # nothing to drop: the file stays as written (an old version stays old)
        return data
    try:
        validate(changed)
    except RecordError as exc:
        raise ValueError(f"report.json would not match its schema: {exc}") from None
    write_json(path, changed)
    return changed
