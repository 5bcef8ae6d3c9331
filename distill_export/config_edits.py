"""Hand edits of a run's config.yaml, told apart from what its stages ran with.

state.json keeps the config the product last wrote (written_config). A key edited by hand after
the stage that reads it was done would be recorded beside what that stage made (a width-8
teacher recorded as width 12), or used by a later stage against it (export loading other data
than distill trained on). So such an edit is refused, by `run --resume` (which re-runs no done
stage) and by every stage command, for the stages before the one the command runs again; an edit
for the stage a command runs, or a later one, is what it runs with (seventeenth audit B2; the
stage commands since the twentieth)."""

from __future__ import annotations

from pathlib import Path

from distill_export.errors import DistillExportError
from distill_export.stage_graph import RUN_STAGES

# The stage whose work a config section shapes (`out` is where, `device` where it runs: neither
# shapes an artifact).
SECTION_STAGE = {"data": "train_teacher", "teacher": "train_teacher", "seed": "train_teacher",
                 "task": "train_teacher", "student": "distill", "distill": "distill", "export": "export",
                 "validate": "validate", "profile": "profile"}

# Keys that say how a stage's data loader runs, not what it makes: editing them after the stage
# changes nothing it recorded (twenty-second audit A1, twenty-third B2).
NOT_SHAPING = {"data.num_workers", "data.pin_memory", "data.persistent_workers"}


def differences(saved, wanted, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts (`out` is where, not what)."""
    if isinstance(saved, dict) and isinstance(wanted, dict):
        keys = [k for k in dict.fromkeys([*saved, *wanted]) if not (prefix == "" and k == "out")]
        return [d for k in keys for d in differences(saved.get(k), wanted.get(k), f"{prefix}{k}.")]
    if saved == wanted or (isinstance(saved, (list, tuple)) and isinstance(wanted, (list, tuple))
                           and list(saved) == list(wanted)):
        return []
    return [prefix[:-1]]


def _shown(config: dict, key: str) -> str:
    from distill_export.config_checks import _show

    for part in key.split("."):
        config = config.get(part) if isinstance(config, dict) else None
    return _show(config, 40)


def check_hand_edits(run, run_dir: Path, config_yaml: dict, command: str | None = None,
                     written: dict | None = None, flag: bool = False) -> None:
    """Refuse a key of config.yaml (`config_yaml`, as read) edited by hand after a done stage
    that `command` does not run again. command: the stage a stage command runs (its own edits and
    later stages' are what it runs with); None for `run --resume`, which runs no done stage again.
    written (default: state.json's written_config) and flag=True: the same check for a stage
    command's flags, against config.yaml as read (twenty-first audit B1: `distill RUN --seed 5`)."""
    written = written if written is not None else run.written_config()
    if written is None:  # a run made before written_config was kept
        return
    stages = run.stages() or {}
    first_rerun = RUN_STAGES.index(command) if command else len(RUN_STAGES)
    for key in differences(written, config_yaml):
        stage = None if key in NOT_SHAPING else SECTION_STAGE.get(key.split(".")[0])
        if stage is None or RUN_STAGES.index(stage) >= first_rerun or stages.get(stage, {}).get("status") != "done":
            continue
        who = f"--resume {run_dir}" if command is None else f"{run_dir}"
        again = ("start a new run with `--out NEW`" if command is None or stage == "train_teacher"
                 else f"pass it to `distill-export {stage} {run_dir}`" if flag
                 else f"run `distill-export {stage} {run_dir}` first, which runs it with the edit")
        # both values, and where the first is kept: a hand edit of state.json was blamed on config.yaml (54th B10)
        what, undo = ((f"a flag sets {key}, which the {stage} stage ran with another value", "drop the flag") if flag
                      else (f"{key} in its config.yaml ({_shown(config_yaml, key)}) is not the value the {stage} stage "
                            f"ran with ({_shown(written, key)}, as state.json records it)", "restore it"))
        raise DistillExportError(f"{who}: {what}, so the run would record a setting that did not run; {undo}, or {again}")


def accept_hand_edits(run, config_yaml: dict, sections: tuple[str, ...]) -> None:
    """A stage that ran again with config.yaml's `sections` as edited: they are what ran now."""
    written = run.written_config()
    if written is not None:
        run.record_written_config({**written, **{s: config_yaml[s] for s in sections if s in config_yaml}})
