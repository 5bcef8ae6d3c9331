"""Stale stages, run locks and honest messages in a run directory (issue 24).

- A stage that runs again makes the stages built on its output stale: they leave the done set in
  state.json, their report sections and rendered reports are dropped, a stage command that needs
  one is refused in one line naming the stage to run, and `run --resume` runs them again.
- Every stage command takes the run's lock: a second command is refused while a real second
  process holds it.
- A full disk while a run file is written, `--teacher-fusion` with a loaded teacher, `run --resume`
  after a config edit, `tune` on a killed run and SIGTERM during `tune`: one line each.
docs/reliability.md lists each case with its test."""

from __future__ import annotations

import errno
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from _cli_checks import one_line_error, snapshot
from distill_export.cli import app

runner = CliRunner()
LATER = ("export", "validate", "profile", "report")



def _status(run: Path) -> dict[str, str]:
    return {s: v["status"] for s, v in json.loads((run / "state.json").read_text())["stages"].items()}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----- stale stages -------------------------------------------------------------------------------
@pytest.mark.slow  # distill, export, validate, profile and report on the tiny run (~40 s on one busy core)
def test_distill_again_then_validate_never_passes_the_old_onnx(run_copy):
    old_onnx = _sha(run_copy / "student.onnx")
    result = runner.invoke(app, ["distill", str(run_copy), "--epochs", "2", "--quiet"])  # another student
    assert result.exit_code == 0, result.output
    assert _status(run_copy) == {"train_teacher": "done", "distill": "done", **{s: "stale" for s in LATER}}
    report = json.loads((run_copy / "report.json").read_text())
    for section in ("exports", "teacher_exports", "latency", "speedups", "profile", "recommended"):
        assert section not in report, section  # old parity and latency are not presented as current
    assert {"teacher", "student", "baseline"} <= set(report["metrics"])  # the new metrics stay
    for name in ("report.md", "report.html", "latency.csv"):  # rendered from the old results
        assert not (run_copy / name).exists(), name

    before = snapshot(run_copy)
    for command, stage in [("validate", "export"), ("profile", "export"), ("report", "export")]:
        line = one_line_error(runner.invoke(app, [command, str(run_copy)]), 2)
        assert f"{stage} is stale" in line or f"{stage}, " in line, line
        assert "distill ran again" in line and f"distill-export export {run_copy}" in line, line
    assert snapshot(run_copy) == before

    # export, then validate: the parity is the new student's
    assert runner.invoke(app, ["export", str(run_copy), "--quiet"]).exit_code == 0
    assert _sha(run_copy / "student.onnx") != old_onnx
    assert runner.invoke(app, ["validate", str(run_copy), "--quiet"]).exit_code in (0, 1)
    import numpy as np

    with np.load(run_copy / "parity_data.npz") as parity:
        assert str(parity["checkpoint_sha256"]) == _sha(run_copy / "student.pt")
    assert _status(run_copy)["profile"] == "stale"  # it measured the old export
    # run --resume runs what is still stale (profile, then the report) and nothing before it
    result = runner.invoke(app, ["run", "--resume", str(run_copy), "--quiet"])
    assert result.exit_code in (0, 1), result.output
    assert "validate done (reused)" in result.output and "running profile" in result.output
    assert set(_status(run_copy).values()) == {"done"}
    assert (run_copy / "report.md").is_file() and "latency" in json.loads((run_copy / "report.json").read_text())


@pytest.mark.slow
def test_validate_again_keeps_the_latency_and_renders_the_report_again(run_copy):
    (run_copy / "report.md").write_text("old report")
    result = runner.invoke(app, ["validate", str(run_copy), "--quiet"])
    assert result.exit_code == 0, result.output
    assert set(_status(run_copy).values()) == {"done"}  # profile read the same export: still current
    assert (run_copy / "report.md").read_text() != "old report"


def test_a_stage_that_starts_drops_what_it_and_its_dependents_wrote(run_copy):
    from distill_export.rundir import RunDir

    run = RunDir(run_copy)
    assert run.begin_stage("export") == ["validate", "profile", "report"]
    report = run.load_report()
    assert "exports" not in report and "latency" not in report and "recommended" not in report
    assert "export" not in report["timings"] and "train_teacher" in report["timings"]
    assert _status(run_copy)["export"] == "pending"
    assert json.loads((run_copy / "state.json").read_text())["stages"]["validate"] == {"status": "stale",
                                                                                      "after": "export"}


# ----- locks ----------------------------------------------------------------------------------------
HOLDER = ("import sys, time\nfrom distill_export.rundir import RunDir\n"
          "with RunDir(sys.argv[1]).lock():\n    print('locked', flush=True)\n    time.sleep(120)\n")


@pytest.fixture
def locked(run_copy):
    """run_copy while a second, real process holds its lock (as a running command does)."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_copy)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield run_copy
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("args", [["distill", "--method", "hinton", "-T", "2"], ["export"], ["validate"], ["profile"],
                                  ["report"], ["tune", "--trials", "1"]], ids=lambda a: a[0])
def test_a_second_command_on_a_locked_run_is_refused(locked, args):
    before = snapshot(locked)
    line = one_line_error(runner.invoke(app, [args[0], str(locked), *args[1:]]), 2)
    assert str(locked) in line and "in use by another distill-export process" in line, line
    assert snapshot(locked) == before


# ----- a full disk ------------------------------------------------------------------------------------
@pytest.mark.slow  # the data loads and one teacher epoch trains before the checkpoint (~15 s)
def test_a_full_disk_at_the_teacher_checkpoint_names_the_file(tmp_path, monkeypatch, tiny_config_file):
    import torch

    def full(obj, f, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    out = tmp_path / "r"
    line = one_line_error(runner.invoke(app, ["train-teacher", "--config", str(tiny_config_file), "--out", str(out),
                                              "--quiet"]), 2)
    assert "no space left" in line and str(out / "checkpoints" / "teacher.pt") in line, line
    assert not out.exists()  # train-teacher leaves no folder behind


def test_a_full_disk_while_a_stage_writes_leaves_the_run_as_it_was(run_copy, monkeypatch):
    real = Path.write_text

    def full(self, *args, **kwargs):
        if self.name.endswith(".tmp"):  # every run file is written to a temporary file first
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **kwargs)

    before = snapshot(run_copy)
    monkeypatch.setattr(Path, "write_text", full)
    line = one_line_error(runner.invoke(app, ["validate", str(run_copy), "--quiet"]), 2)
    assert "no space left" in line and str(run_copy / "state.json") in line, line
    assert snapshot(run_copy) == before


# ----- --teacher-fusion with a loaded teacher -------------------------------------------------------
@pytest.mark.parametrize("command", ["run", "train-teacher"])
def test_teacher_fusion_that_cannot_apply_is_refused(run_copy, tmp_path, command):
    out = tmp_path / "new"
    before = snapshot(run_copy)
    line = one_line_error(runner.invoke(app, [command, "--teacher", str(run_copy / "teacher.pt"),
                                              "--teacher-fusion", "late", "--out", str(out), "--quiet"]), 2)
    assert "--teacher-fusion late" in line and "a concat teacher" in line, line
    assert not out.exists() and snapshot(run_copy) == before


def test_a_loaded_teacher_decides_the_recorded_fusion(tmp_path):
    from distill_export.config import RunConfig
    from distill_export.errors import ConfigError
    from distill_export.nets.checkpoint import save_checkpoint
    from distill_export.nets.teacher import LateFusionTeacher
    from distill_export.preflight import settle_teacher_fusion

    kwargs = {"modalities": {"image": 1}, "num_classes": 10, "width": 2, "kinds": {"image": "image"}}
    late = tmp_path / "late.pt"
    save_checkpoint(late, LateFusionTeacher(**kwargs), "teacher", "late_fusion_teacher", kwargs, {})
    config = RunConfig()
    config.teacher.path = str(late)
    settle_teacher_fusion(config, given=False)
    assert config.teacher.fusion == "late"  # config.yaml and the report say what ran
    config.teacher.fusion = "concat"
    with pytest.raises(ConfigError, match="--teacher-fusion concat .* a late teacher"):
        settle_teacher_fusion(config, given=True)
    config.teacher.path = "mypkg.teachers:make"  # a factory: its fusion is its own
    with pytest.raises(ConfigError, match="fusion is its own"):
        settle_teacher_fusion(config, given=True)


# ----- run --resume after a config edit ------------------------------------------------------------
@pytest.fixture
def killed_in_distill(tmp_path):
    """A run killed at the student's epoch 1 of 3 (state, config and checkpoint as `run` leaves them)."""
    import torch

    from distill_export.config import load_config
    from distill_export.distill_runs import training_checkpoint
    from distill_export.rundir import RUN_STAGES, RunDir
    from distill_export.train import CHECKPOINT_FORMAT

    rd = RunDir.create(tmp_path / "run", fresh=True, stages=RUN_STAGES)
    cfg = load_config("avdigits", None, {"distill.epochs": 3})
    rd.save_config(cfg)
    rd.mark_stage("train_teacher")
    rd.begin_stage("distill", cfg)
    rd.checkpoint_path("student").parent.mkdir()
    torch.save({"format": CHECKPOINT_FORMAT, "key": training_checkpoint(cfg, rd, "student").key + "|spec",
                "epoch": 1, "epochs": 3}, rd.checkpoint_path("student"))
    return rd.path


def _resume_summary(run: Path, monkeypatch) -> str:
    from distill_export.errors import ConfigError

    def stop(*args, **kwargs):
        raise ConfigError("stopped before any work")

    monkeypatch.setattr("distill_export.pipeline.run_all", stop)
    result = runner.invoke(app, ["run", "--resume", str(run)])
    assert result.exit_code == 2 and "stopped before any work" in result.output, result.output
    return result.output.split("error:")[0]


def test_resume_says_it_continues_only_from_a_checkpoint_of_the_same_settings(killed_in_distill, monkeypatch):
    (killed_in_distill / "teacher.pt").write_bytes(b"x")  # the done teacher stage's output (a gone one runs again)
    assert "running distill from checkpoints (student at epoch 1/3)" in _resume_summary(killed_in_distill, monkeypatch)
    config = yaml.safe_load((killed_in_distill / "config.yaml").read_text())
    config["distill"]["temperature"] = 2.0  # a hand edit after the kill
    (killed_in_distill / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    summary = " ".join(_resume_summary(killed_in_distill, monkeypatch).split())
    assert "student at epoch 1/3 restarts from epoch 1" in summary and "distill.temperature" in summary, summary
    assert "from checkpoints (" not in summary


# ----- tune: a killed run, and SIGTERM -------------------------------------------------------------
def test_tune_on_a_killed_run_says_resume(killed_in_distill):
    (killed_in_distill / "checkpoints" / "student.pt").unlink()
    from distill_export.rundir import RunDir

    RunDir(killed_in_distill).set_stages({"train_teacher": {"status": "pending"}})  # killed in the teacher
    before = snapshot(killed_in_distill)
    line = one_line_error(runner.invoke(app, ["tune", str(killed_in_distill), "--trials", "1"]), 2)
    assert f"distill-export run --resume {killed_in_distill}" in line, line
    assert snapshot(killed_in_distill) == before


SIGTERM_IN_A_TRIAL = """
import os, signal, sys
import distill_export.distill as distill
def terminated(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)  # as `kill PID` during the first trial
    raise AssertionError("SIGTERM was not delivered")
distill.train_student = terminated
from distill_export.cli import app
app(sys.argv[1:], prog_name="distill-export")
"""


@pytest.mark.slow
def test_sigterm_during_tune_is_one_line_and_exit_143(run_copy):
    proc = subprocess.run([sys.executable, "-c", SIGTERM_IN_A_TRIAL, "tune", str(run_copy), "--trials", "3",
                           "--confirm-seeds", "0", "--quiet"], capture_output=True, text=True, timeout=300)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert proc.returncode == 143, proc.stdout + proc.stderr
    assert lines[-1] == "terminated (SIGTERM)", lines
    assert not any("Trial" in line or "Traceback" in line for line in lines), lines  # no optuna log
    assert len(lines) <= 2, lines  # at most the teacher cache's progress line before it
