"""Read any report.json this project ever wrote: one `migrate()` to the current typed record.

Versions (`schema_version`; a file without it is version 0):

0 (up to 8898fbc) -> 1:
  - `stages` (stage state) leaves the record: rundir keeps it in state.json. `upgrade` hands it
    back so rundir can move it there before the report is rewritten.
  - `speedups[*]`: the oldest files named the ratio `speedup_vs_teacher`: it becomes `speedup`;
    files from before `like_for_like` get it from the reference's label ("teacher (<backend>)").
  - `schema_version: 1` is added first; every other key is kept as it was.

A file from a newer version than this one is refused (upgrade distill-export to read it).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from distill_export.errors import ConfigError
from distill_export.record.models import SCHEMA_VERSION, RunRecord


class RecordError(ConfigError):
    """A report.json that cannot be read as a run record (exit 2, one line)."""


def version_of(raw: dict) -> int:
    version = raw.get("schema_version", 0)
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise RecordError(f"schema_version must be a whole number >= 0, got {version!r}")
    return version


def _v0_to_v1(raw: dict) -> tuple[dict, dict | None]:
    stages = raw.get("stages")
    data: dict[str, Any] = {"schema_version": 1}
    data.update((k, v) for k, v in raw.items() if k not in ("stages", "schema_version"))
    speedups = data.get("speedups")
    if isinstance(speedups, list):
        data["speedups"] = [_speedup_v1(s) if isinstance(s, dict) else s for s in speedups]
    return data, stages if isinstance(stages, dict) else None


def _speedup_v1(s: dict) -> dict:
    s = dict(s)
    if "speedup" not in s and "speedup_vs_teacher" in s:
        s["speedup"] = s.pop("speedup_vs_teacher")
    if "like_for_like" not in s:
        s["like_for_like"] = str(s.get("reference", "")).endswith(f"({s.get('backend')})")
    return s


_STEPS = {0: _v0_to_v1}  # version -> its upgrade to version + 1


def upgrade(raw: dict) -> tuple[dict, dict | None]:
    """(the file's JSON in the current version's shape, the stage state it held or None)."""
    version = version_of(raw)
    if version > SCHEMA_VERSION:
        raise RecordError(f"written by a newer distill-export (schema_version {version}; this one reads up to "
                          f"{SCHEMA_VERSION}): upgrade distill-export to read it")
    data, stages = dict(raw), None
    while version < SCHEMA_VERSION:
        data, found = _STEPS[version](data)
        stages = found if found is not None else stages
        version += 1
    return data, stages


def validate(data: dict) -> RunRecord:
    """The current-version JSON as a RunRecord; RecordError names the first bad key."""
    try:
        return RunRecord.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        message = first["msg"].removeprefix("Value error, ")  # our validators' words name their keys
        raise RecordError(f"{where}: {message}{more}" if where else f"{message}{more}") from None


def migrate(raw: dict) -> RunRecord:
    """Any version's report.json (parsed JSON) -> the current typed record."""
    return validate(upgrade(raw)[0])
