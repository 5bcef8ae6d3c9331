"""Twenty-first round (issue 24): what the twenty-first fresh audit found in the run's identity,
its settings and its signals (the weights and decoding cases are in test_audit21_weights.py)."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from _cli_checks import guarded_stderr, one_line_error, snapshot
from distill_export.cli import app

runner = CliRunner()


def _teacher_run(tmp_path, monkeypatch, killed: bool = False) -> None:
    """In tmp_path (the cwd from here): m/manifest.csv and run R of its teacher stage (1 epoch);
    killed: state.json as if the process died in that stage."""
    from _byo_fixtures import make_manifest

    monkeypatch.chdir(tmp_path)
    make_manifest(tmp_path / "m", per_class=6, modalities=("image", "audio"))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"teacher": {"epochs": 1}, "distill": {"epochs": 1}}))
    result = runner.invoke(app, ["train-teacher", "--data", "m/manifest.csv", "--config", "c.yaml", "--out", "R", "-q"])
    assert result.exit_code == 0, result.output
    if killed:
        state = json.loads((tmp_path / "R" / "state.json").read_text())
        state["stages"]["train_teacher"] = {"status": "pending"}  # as if killed in its teacher stage
        (tmp_path / "R" / "state.json").write_text(json.dumps(state))


@pytest.mark.parametrize(("flag", "key"), [(["--seed", "5"], "seed"), (["--task", "detection"], "task")])
def test_b1_a_stage_commands_flag_for_a_done_earlier_stage_is_refused(run_copy, flag, key):
    """`distill RUN --seed 5` ran (cache hit on the seed-0 teacher) and recorded seed 5, where the
    same edit typed into config.yaml is refused: the seed picks the labeled rows the teacher saw.
    `distill RUN --task detection` said 'set --teacher-fusion late (or teacher.fusion in --config)':
    distill takes neither. The task is the teacher stage's: named as such first (twenty-second audit B1)."""
    before = snapshot(run_copy)
    line = one_line_error(runner.invoke(app, ["distill", str(run_copy), *flag, "-q"]), 2)
    assert line == (f"error: {run_copy}: a flag sets {key}, which the train_teacher stage ran with another value, so "
                    "the run would record a setting that did not run; drop the flag, or start a new run with "
                    "`--out NEW`"), line
    assert snapshot(run_copy) == before


def test_b1_a_flag_for_the_commands_own_stage_is_what_it_runs_with(run_copy):
    from distill_export.launch import open_run

    assert open_run(run_copy, {"distill.epochs": 2}, command="distill")[1].distill.epochs == 2


def test_b2_resume_refuses_a_manifest_changed_after_the_teacher_stage_began(tmp_path, monkeypatch):
    """A run killed in its teacher stage, the manifest's labels then swapped: `run --resume`
    continued the teacher from its epoch checkpoint on the new labels, and recorded only the new
    manifest's hash. Now refused, naming the manifest."""
    _teacher_run(tmp_path, monkeypatch, killed=True)
    manifest = tmp_path / "m" / "manifest.csv"
    manifest.write_bytes(manifest.read_bytes().replace(b"cat", b"dog", 1))
    before = snapshot(tmp_path / "R")
    result = runner.invoke(app, ["run", "--resume", "R", "-q"])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert result.output.strip().splitlines()[-1].startswith(
        "error: R: its manifest m/manifest.csv changed after the teacher stage read it (sha256 "), result.output
    assert snapshot(tmp_path / "R") == before


def test_b6_a_dataloader_worker_killed_by_sigterm_is_the_users_sigterm(capsys):
    """torchrun passes SIGTERM to the whole group: a streaming rank's DataLoader worker could die
    first, and its SIGCHLD handler raised 'DataLoader worker (pid N) is killed by signal:
    Terminated.', printed as a traceback per rank before the launcher's one line."""
    killed = RuntimeError("DataLoader worker (pid 4242) is killed by signal: Terminated. ")
    assert guarded_stderr(capsys, killed) == (143, "terminated (SIGTERM)\n")
    interrupted = RuntimeError("DataLoader worker (pid 4242) is killed by signal: Interrupt. ")
    assert guarded_stderr(capsys, interrupted) == (130, "interrupted\n")
    with pytest.raises(RuntimeError):  # a worker that crashed stays a bug, with its traceback
        guarded_stderr(capsys, RuntimeError("DataLoader worker (pid 4242) is killed by signal: Segmentation fault. "))


@pytest.mark.parametrize("run_id", [None, "absent"])
def test_b7_a_report_json_without_a_run_id_beside_a_state_with_one_is_named(run_copy, run_id):
    """Another run's report.json with its run_id removed (or null) was blamed on teacher.pt."""
    state = json.loads((run_copy / "state.json").read_text())
    record = json.loads((run_copy / "report.json").read_text())
    if run_id == "absent":
        del record["run_id"]
    else:
        record["run_id"] = None
    (run_copy / "report.json").write_text(json.dumps(record))
    before = snapshot(run_copy)
    for command in ("report", "validate"):
        line = one_line_error(runner.invoke(app, [command, str(run_copy)]), 2)
        assert line == (f"error: {run_copy / 'report.json'} is from another run (it has no run_id, where this run's "
                        f"state.json has '{state['run_id']}'): restore this run's report.json, or start a new run "
                        "with `--out NEW`"), line
    assert snapshot(run_copy) == before


@pytest.mark.parametrize("spaces", [",", "", "terms,,mix", "mix,"])
def test_b8_a_tune_search_with_an_empty_item_is_refused(tmp_path, monkeypatch, spaces):
    """`run --tune 2 --tune-search ","` ran (searching the terms) and recorded ','."""
    monkeypatch.chdir(tmp_path)
    line = one_line_error(runner.invoke(app, ["run", "--tune", "2", "--tune-search", spaces, "--out", "R"]), 2)
    assert line.startswith(f"error: tune search spaces {spaces!r} has an empty item: name each space once"), line
    assert list(tmp_path.iterdir()) == []


def test_a3_a_run_opened_from_another_folder_says_where_its_manifest_is(tmp_path, monkeypatch):
    """config.yaml keeps data.source as given (relative to where the run began): from another
    folder `export RUN` said only 'manifest d1/manifest.csv does not exist'."""
    _teacher_run(tmp_path, monkeypatch)
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    line = one_line_error(runner.invoke(app, ["distill", "../R", "-q"]), 2)
    assert line == ("error: ../R: its manifest m/manifest.csv does not exist from this folder: config.yaml names it "
                    "relative to the folder the run was made in, so run the command from there (or restore the "
                    "manifest)"), line


def test_a4_resume_takes_the_same_manifest_written_another_way(tmp_path, monkeypatch):
    """`run --resume R --data ./m/manifest.csv` was refused ("data.source: run 'm/manifest.csv',
    given './m/manifest.csv'"): the same file. Another file is still a change."""
    from pathlib import Path

    from distill_export.errors import DistillExportError
    from distill_export.launch import resume_config

    _teacher_run(tmp_path, monkeypatch, killed=True)
    for spelling in ("./m/manifest.csv", str(tmp_path / "m" / "manifest.csv")):
        assert resume_config(Path("R"), None, None, {"data.source": spelling})[1].data.source == "m/manifest.csv"
    (tmp_path / "other.csv").write_bytes((tmp_path / "m" / "manifest.csv").read_bytes())
    with pytest.raises(DistillExportError, match="data.source: run 'm/manifest.csv', given 'other.csv'"):
        resume_config(Path("R"), None, None, {"data.source": "other.csv"})
