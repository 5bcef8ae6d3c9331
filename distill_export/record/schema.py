"""The JSON Schema of report.json, generated from the models (docs/report.schema.json).

    python -m distill_export.record.schema            # rewrite docs/report.schema.json
    python -m distill_export.record.schema --check    # exit 1 if the checked-in file is stale

tests/test_record.py fails when the checked-in file differs from what the models generate.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from distill_export.record.models import SCHEMA_VERSION, RunRecord

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "docs" / "report.schema.json"


def json_schema() -> dict:
    schema = RunRecord.model_json_schema(mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://distill-export.invalid/report.schema.v{SCHEMA_VERSION}.json",
        "title": "distill-export report.json",
        "description": (f"A run record, schema_version {SCHEMA_VERSION}. Files without schema_version are version 0 "
                        "(read by distill_export.record.migrate). Generated from distill_export/record/models.py."),
        **{k: v for k, v in schema.items() if k not in ("title", "description")},
    }


def render() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=False, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    text = render()
    if "--check" in argv:
        current = SCHEMA_FILE.read_text(encoding="utf-8") if SCHEMA_FILE.is_file() else ""
        if current != text:
            print(f"{SCHEMA_FILE} is stale: run `python -m distill_export.record.schema`", file=sys.stderr)
            return 1
        return 0
    SCHEMA_FILE.parent.mkdir(parents=True, exist_ok=True)
    SCHEMA_FILE.write_text(text, encoding="utf-8")
    print(f"wrote {SCHEMA_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
