"""Seventeenth hostile audit (issue 24; docs/reliability.md, "Eighteenth round"): 4 bad cases.
- B1: rich turned ":fire:" in a path (and "csv:100:" in a row reference) into an emoji;
- B2: `run --resume` after a hand edit of config.yaml (teacher.width 12) reused the width-8
  teacher and recorded width 12;
- B3: another run's parity_data.npz was blamed on student.pt;
- B4: a NaN in parity_data.npz's inputs was reported as an export failure (exit 1), rewriting the report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from _cli_checks import guarded_stderr, one_line_error, snapshot
from distill_export.cli import app

runner = CliRunner()


@pytest.mark.parametrize("args, shown", [
    (["run", "--data", "no:fire:such.csv", "-q"], "manifest no:fire:such.csv does not exist"),
    (["validate", "x:thumbs_up:y"], "x:thumbs_up:y is not a run directory"),
    (["profile", "m:rocket:.onnx", "-q"], "profile target m:rocket:.onnx does not exist"),
])
def test_b1_a_shortcode_in_a_path_is_printed_as_typed(args, shown, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = one_line_error(runner.invoke(app, args), 2)
    assert shown in line, line


def test_b1_a_row_reference_keeps_its_number(capsys):
    from distill_export.errors import DataError

    assert guarded_stderr(capsys, DataError("m.csv:100: bad row")) == (2, "error: m.csv:100: bad row\n")


def _as_if_killed_after_the_teacher(run):
    state = json.loads((run / "state.json").read_text())
    for stage in ("distill", "export", "validate", "profile", "report"):
        state["stages"][stage] = {"status": "pending"}
    (run / "state.json").write_text(json.dumps(state))


def test_b2_resume_refuses_a_hand_edit_of_what_a_done_stage_ran_with(run_copy):
    _as_if_killed_after_the_teacher(run_copy)
    config = yaml.safe_load((run_copy / "config.yaml").read_text())
    config["teacher"]["width"] = 12
    (run_copy / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    before = snapshot(run_copy)
    line = one_line_error(runner.invoke(app, ["run", "--resume", str(run_copy), "-q"]), 2)
    assert line == (f"error: --resume {run_copy}: teacher.width in its config.yaml (12) is not the "
                    "value the train_teacher stage ran with (8, as state.json records it), so the run would record a setting that did not "
                    "run; restore it, or start a new run with `--out NEW`"), line
    assert snapshot(run_copy) == before


def test_b2_an_edit_for_a_stage_still_to_run_is_what_the_resume_runs_with(run_copy):
    from distill_export.launch import resume_config

    _as_if_killed_after_the_teacher(run_copy)
    config = yaml.safe_load((run_copy / "config.yaml").read_text())
    config["distill"]["epochs"] = 2  # distill is pending: the resume runs it with this
    (run_copy / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    assert resume_config(run_copy, None, None, {})[1].distill.epochs == 2


def test_b3_another_runs_parity_file_is_named_not_student_pt(run_copy, tmp_path):
    parity = run_copy / "parity_data.npz"
    data = dict(np.load(parity))
    data["checkpoint_sha256"] = np.array("0" * 64)  # as written by another run's export
    np.savez(tmp_path / "other.npz", **data)
    parity.write_bytes((tmp_path / "other.npz").read_bytes())
    before = snapshot(run_copy)
    line = one_line_error(runner.invoke(app, ["validate", str(run_copy)]), 2)
    assert line.startswith(f"error: {parity} is from another student.pt (its inputs and reference outputs were "
                           "computed from another checkpoint than this run's student.pt)"), line
    assert snapshot(run_copy) == before


def test_b4_non_finite_parity_inputs_are_bad_input_and_the_run_is_unchanged(run_copy, tmp_path):
    parity = run_copy / "parity_data.npz"
    data = dict(np.load(parity))
    data["x"] = data["x"].copy()
    data["x"].flat[0] = np.nan
    np.savez(tmp_path / "nan.npz", **data)
    parity.write_bytes((tmp_path / "nan.npz").read_bytes())
    before = snapshot(run_copy)
    line = one_line_error(runner.invoke(app, ["validate", str(run_copy)]), 2)
    assert line == (f"error: {parity} holds 1 NaN or inf values in its 'x' array (export writes finite ones: the "
                    "file changed after export); re-run `distill-export export`"), line
    assert snapshot(run_copy) == before
