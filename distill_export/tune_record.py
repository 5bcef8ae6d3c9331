"""tune.json as `run --resume` reuses it: checked before anything is recorded from it.

A run killed after its search resumes from tune.json instead of searching again. The file is the
run's own, but a run directory is the user's to edit: a missing decision was a KeyError
traceback, a NaN weight was blamed on report.json, and an unknown term was written into
config.yaml and report.json before anything refused it, leaving the run stuck (twenty-fourth
audit B4-B6). Now any of these is one line naming tune.json, before anything is written."""

from __future__ import annotations

import copy
from pathlib import Path

from distill_export.errors import ConfigError


def resumed_summary(path: Path, config) -> dict:
    """tune.json's summary, refused in one line naming it when it is not what tune wrote."""
    from distill_export.methods import term_specs
    from distill_export.record.store import _first_nan, read_json

    summary = read_json(path)  # invalid JSON: named in one line
    decision = summary.get("decision")
    try:
        if not isinstance(decision, dict) or not isinstance(decision.get("terms"), list) \
                or not isinstance(decision.get("distill"), bool):
            raise ConfigError("it has no decision with terms and distill")
        if (nan := _first_nan(summary)) is not None:
            raise ConfigError(f"{nan[0]} is NaN")
        trial = copy.deepcopy(config)
        trial.distill.terms = decision["terms"]
        term_specs(trial.distill)  # an unknown term or a bad weight, as tune itself checks its choice
    except (ConfigError, TypeError, ValueError, KeyError, AttributeError) as exc:
        raise ConfigError(f"{path} is not the tune.json tune wrote ({exc}); restore it, or delete it and tuned.yaml "
                          "so that `run --resume` searches again") from None
    return summary
