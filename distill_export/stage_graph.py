"""The stages of a run and what ties them together: their order, the trainings each one
checkpoints, which stages are made from which (so a re-run stage makes its dependents stale),
and what each leaves in report.json and the run directory. rundir.RunDir keeps the state.

Stage state lives in one place, state.json: {"stages": {stage: {"status": "pending"|"done"|"stale",
"finished": time}}} (runs made before it kept this under report.json["stages"]: read from there,
and moved to state.json the first time the record is written). A stage that starts is "pending"
(a training stage's entry also holds the "config" it started with); when it starts again, every
stage made from its output (DEPENDENTS) recorded done becomes {"status": "stale", "after": stage},
and the report sections and files those stages wrote are dropped (STAGE_SECTIONS, STAGE_FILES):
a stage command refuses to build on a stale stage and `run --resume` runs it again.
"""

from __future__ import annotations

from distill_export.config_checks import value_range
from distill_export.errors import ConfigError


RUN_STAGES = ("train_teacher", "distill", "export", "validate", "profile", "report")
BACKUP_DIR = ".stage-backup"  # hard links of the files as they were before a stage command
STATE_FILE = "state.json"  # stage state: {"stages": {stage: {"status", "finished"}}}
PARITY_FILE = "parity_data.npz"  # export's reference for validate (validate.PARITY_FILE)
TEACHER_PARITY_FILE = "teacher_parity_data.npz"  # the same for the teacher's ONNX
CHECKPOINT_DIR = "checkpoints"  # per-epoch training state, <label>.pt, while a stage is unfinished
# The trainings each stage checkpoints (deleted when the stage is recorded done).
STAGE_CHECKPOINTS = {"train_teacher": ("teacher",),
                     "distill": ("student", "baseline", "control_teacher", "control_student",
                                 # each later round's student (distill.rounds), distill_runs.distill_rounds
                                 *(f"{who}_round{r}" for who in ("student", "control_student")
                                   for r in range(2, value_range("distill.rounds")[1] + 1)))}
# The stages whose results are made from a stage's output: when the stage runs again they describe
# what it made before, so they become stale (RunDir.begin_stage). Validate and profile both read the
# exported files, not each other's results (each re-derives the recommendation when the other's
# results are there), so re-running one leaves the other current; the report renders them all.
DEPENDENTS = {"train_teacher": ("distill", "export", "validate", "profile", "report"),
              "distill": ("export", "validate", "profile", "report"),
              "export": ("validate", "profile", "report"), "validate": ("report",), "profile": ("report",),
              "report": ()}
# What each stage leaves behind besides its artifacts (record/models.py says who writes what):
# dropped when the stage starts (it writes them again) and when it becomes stale. "validate" writes
# parity into the export entries and the recommendation; "distill" the student's metrics (metrics
# other than the teacher's, handled in _forget).
STAGE_SECTIONS = {"distill": ("kd_gain", "kd_gain_ci95", "kd_gain_p_value", "kd_verdict", "comparisons",
                              "distill", "figures"),
                  "export": ("exports", "teacher_exports"), "validate": ("recommended",),
                  "profile": ("latency", "speedups", "profile", "recommended"), "report": ()}
STAGE_TIMINGS = {"distill": ("distill", "baseline", "self_training_control"), "export": ("export", "export_teacher"),
                 "validate": ("validate",), "profile": ("profile",)}
# the report's plots go with it: a re-export left the old latency plots beside no report (thirtieth audit A3);
# plots/ also holds the distill stage's figures (Task.draw_examples), which stay
STAGE_FILES = {"profile": ("latency.csv",), "report": ("report.md", "report.html", *(
    f"plots/{name}.png" for name in ("latency_vs_batch", "accuracy_vs_latency", "training_curves")))}
# What to type when a stage is missing or stale (the teacher stage cannot be re-entered: start anew).
NEXT_COMMAND = {"train_teacher": "`distill-export run --resume {run}` (or start a new run: `distill-export run --out NEW`)",
                "distill": "`distill-export distill {run}`",
                "export": "`distill-export export {run}`", "validate": "`distill-export validate {run}`",
                "profile": "`distill-export profile {run}`", "report": "`distill-export report {run}`"}


STATUSES = ("pending", "done", "stale")


def checked_stages(stages, where) -> dict:
    """A run's stage record as the product writes it, {stage: {"status": one of STATUSES, ...}}.
    Any other shape is a hand edit, refused in one line naming the field: a string entry was an
    AttributeError traceback, and a list was read as a run of a version without stages, so that no
    stage was checked and validate dropped the other stages' records (fifty-fourth audit B2, B3)."""
    if not isinstance(stages, dict):
        raise ConfigError(f"{where} is corrupt: `stages` must be a mapping of stage name to its state, "
                          f"got {type(stages).__name__}; restore it from a copy or start a new run")
    for name, entry in stages.items():
        status = entry.get("status") if isinstance(entry, dict) else None
        if status not in STATUSES or not isinstance(name, str):
            got = f"status {status!r}" if isinstance(entry, dict) else type(entry).__name__
            raise ConfigError(f"{where} is corrupt: `stages.{str(name)[:40]}` must be a mapping with a status "
                              f"({', '.join(STATUSES)}), got {got[:80]}; restore it from a copy or start a new run")
    return stages


# state.json's other keys and their types (rundir, run_outputs, run_identity write them): another
# type is a hand edit. `written_config: "x"` turned the config-edit check off (fifty-fourth audit B9);
# `run_id: 5` was blamed on report.json (A2).
STATE_TYPES = {"schema_version": int, "run_id": str, "written_config": dict, "given_teacher_keys": list, "data": dict,
               "record_sha256": str, "record_edited": str, "parity_sha256": str, "teacher_parity_sha256": str}


def checked_state(state: dict, where) -> dict:
    """state.json as read (a JSON object), refused in one line naming a key of STATE_TYPES of another type."""
    for key, kind in STATE_TYPES.items():
        value = state.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)
                                  or (kind is list and not all(isinstance(v, str) for v in value))):
            raise ConfigError(f"{where} is corrupt: `{key}` must be a {'list of names' if kind is list else kind.__name__}"
                              f", got {type(value).__name__}; restore it from a copy or start a new run")
    return state


def _stale_why(entry: dict, them: str) -> str:
    """Why a stage is stale: a file changed after it (`changed`), or an earlier stage ran again."""
    if entry.get("why"):  # stale_if_outdated
        return entry["why"]
    if entry.get("changed"):
        return f"{entry['changed']} changed after validate"
    return f"{entry.get('after', 'an earlier stage')} ran again after {them}"
