"""Twentieth round (issue 24): a hand edit of config.yaml is noticed by the stage commands too.

The eighteenth round made `run --resume` refuse a key edited after the stage that reads it was
done. `export`, `validate`, `profile`, `distill` and `tune` on a run read the same config.yaml and
did not: `export RUN` after `distill.epochs` 1 -> 2 exported the 1-epoch student and wrote
config.yaml (and report.json's record of it) saying 2. Now every stage command refuses an edit
for a done stage before the one it runs again, and runs with an edit for its own stage or a later one."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from _cli_checks import one_line_error, snapshot
from distill_export.cli import app

runner = CliRunner()


def _edit(run, section: str, key: str, value) -> None:
    config = yaml.safe_load((run / "config.yaml").read_text())
    config[section][key] = value
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


@pytest.mark.parametrize(("command", "section", "key", "value", "stage", "again"), [
    ("export", "distill", "epochs", 7, "distill", "run `distill-export distill {run}` first, which runs it with the edit"),
    ("export", "data", "label_fraction", 0.5, "train_teacher", "start a new run with `--out NEW`"),
    ("validate", "export", "opset", 17, "export", "run `distill-export export {run}` first, which runs it with the edit"),
    ("distill", "teacher", "width", 12, "train_teacher", "start a new run with `--out NEW`"),
    ("tune", "teacher", "epochs", 9, "train_teacher", "start a new run with `--out NEW`"),
    ("profile", "student", "name", "resnet18", "distill", "run `distill-export distill {run}` first, which runs it with the edit"),
])
def test_a_stage_command_refuses_an_edit_of_what_an_earlier_done_stage_ran_with(
        run_copy, command, section, key, value, stage, again):
    _edit(run_copy, section, key, value)
    before = snapshot(run_copy)
    line = one_line_error(runner.invoke(app, [command, str(run_copy)]), 2)
    assert line == (f"error: {run_copy}: {section}.{key} in its config.yaml was edited after the {stage} stage ran "
                    "with the value it had, so the run would record a setting that did not run; restore it, or "
                    + again.format(run=run_copy)), line
    assert snapshot(run_copy) == before


def test_an_edit_for_the_stage_a_command_runs_is_what_it_runs_with(run_copy):
    from distill_export.launch import open_run

    _edit(run_copy, "distill", "epochs", 2)
    _edit(run_copy, "export", "opset", 17)  # a later stage: distill makes it stale, the edit is for its re-run
    assert open_run(run_copy, None, command="distill")[1].distill.epochs == 2
    with pytest.raises(Exception, match="distill.epochs in its config.yaml was edited after the distill stage"):
        open_run(run_copy, None, command="export")


def test_validate_runs_with_edited_gates_and_a_resume_then_accepts_them(run_copy):
    config = yaml.safe_load((run_copy / "config.yaml").read_text())
    gates = config["validate"]
    name = next(k for k, v in gates.items() if isinstance(v, float))
    _edit(run_copy, "validate", name, gates[name] * 2)  # a looser gate: validate runs with it
    result = runner.invoke(app, ["validate", str(run_copy), "-q"])
    assert result.exit_code == 0, result.output
    written = json.loads((run_copy / "state.json").read_text())["written_config"]
    assert written["validate"][name] == gates[name] * 2  # what ran is now what the product wrote
    from distill_export.config_edits import check_hand_edits
    from distill_export.rundir import RunDir

    run = RunDir.existing(run_copy)
    check_hand_edits(run, run_copy, run.load_config().to_dict())  # `run --resume`: nothing to refuse


def test_no_edit_no_refusal_and_out_or_device_are_not_edits(run_copy):
    from distill_export.config_edits import check_hand_edits, differences
    from distill_export.rundir import RunDir

    run = RunDir.existing(run_copy)
    config = run.load_config().to_dict()
    for command in (None, "distill", "export", "validate", "profile"):
        check_hand_edits(run, run_copy, config, command)
    assert differences({"out": "a", "seed": 0}, {"out": "b", "seed": 0}) == []
    assert differences({"a": {"b": [1, 2]}}, {"a": {"b": (1, 2)}}) == []
    assert differences({"a": {"b": 1}}, {"a": {"b": 2, "c": 3}}) == ["a.b", "a.c"]
