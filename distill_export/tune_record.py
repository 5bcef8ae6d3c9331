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

# What tune_before_distill records from the summary into report.json.
_RECORDED = ("trials", "completed", "pruned", "seconds", "baseline_val_accuracy", "best")


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
        _check_rest(summary, decision, trial)
    except (ConfigError, TypeError, ValueError, KeyError, AttributeError) as exc:
        raise ConfigError(f"{path} is not the tune.json tune wrote ({exc}); restore it, or delete it and tuned.yaml "
                          "so that `run --resume` searches again") from None
    return summary


def _check_rest(summary: dict, decision: dict, trial) -> None:
    """Everything else `run --resume` reads from tune.json (twenty-fifth audit: the mixing, the
    rounds, the line and the trial counts were read unchecked): as the config checks it."""
    from distill_export.config import apply_overrides
    from distill_export.config_checks import validate_config

    if missing := [key for key in _RECORDED if key not in summary]:
        raise ConfigError(f"it has no {', '.join(missing)}")
    if not isinstance(decision.get("line"), str):
        raise ConfigError("its decision has no line")
    if not decision["distill"] and any(isinstance(t, dict) and t.get("name") != "ce" for t in decision["terms"]):
        # tune writes labels only as CE alone; kd here trained a KD student under a labels-only record (T1)
        raise ConfigError("its decision is labels only (distill: false) yet names distillation terms")
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in decision["line"]):  # escape codes reach the terminal
        raise ConfigError("its decision line holds control characters")
    _check_types(summary, decision)
    if summary["best"] is not None:
        _check_preset("best trial", summary["best"])
    _check_preset("decision", decision)
    chosen = {}
    if augment := decision.get("augment"):  # a mapping: _check_types
        chosen.update({"distill.mix": augment["mix"], "distill.mix_alpha": augment["mix_alpha"]})
    if decision.get("rounds") is not None:
        chosen["distill.rounds"] = decision["rounds"]
    if decision.get("teacher_fusion") is not None:
        chosen["teacher.fusion"] = decision["teacher_fusion"]
    validate_config(apply_overrides(trial, chosen, origin="its decision"))


def _check_preset(where: str, chosen: dict) -> None:
    """A distilling choice is a preset and its terms, as tune.suggest_terms builds them: method
    'bogus' with ce + ls_kd trained a KD student recorded three ways (fifty-fourth audit B8)."""
    from distill_export.methods import PRESETS

    method = chosen.get("method")
    if method not in PRESETS:
        raise ConfigError(f"its {where}'s method {str(method)[:40]!r} is not a preset ({', '.join(PRESETS)})")
    names = sorted({t["name"] for t in chosen["terms"]} - {"ce"})
    if names != sorted(PRESETS[method][0]):
        raise ConfigError(f"its {where}'s terms ({', '.join(names) or 'ce alone'}) are not method {method}'s "
                          f"({', '.join(PRESETS[method][0])})")


def _check_types(summary: dict, decision: dict) -> None:
    """The values report.json's tune section will hold, as its model checks them (twenty-sixth
    audit B7: `"seconds": "forever"` was a schema traceback from update_report), and finite."""
    import math

    from pydantic import ValidationError

    from distill_export.record.models import Tune

    section = {key: summary[key] for key in _RECORDED}
    if "teachers" in summary:  # copied into report.json too (thirty-fifth audit B2)
        section["teachers"] = summary["teachers"]
    try:
        Tune.model_validate({**section, "decision": decision})
    except ValidationError as exc:
        first = exc.errors()[0]
        where, message = ".".join(map(str, first["loc"])), first["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{where}: {message}" if where else message) from None
    for key in ("seconds", "baseline_val_accuracy"):
        if isinstance(section[key], float) and not math.isfinite(section[key]):
            raise ConfigError(f"{key} is {section[key]}")
