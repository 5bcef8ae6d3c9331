"""Fifth hostile audit, teachers and weights: W1 (a teacher whose outputs are not finite was
measured and recorded), ST4/ST5 (a teacher file changed after train-teacher was distilled from
while the record kept the old file's metrics), SI_complex (a complex or integer tensor for a
floating weight was cast in silence) and SI_pickle/PK2 (torch's pickle warning before the one
error line). One `error:` line, exit 2, nothing changed. docs/reliability.md ("Sixth round")
lists them with these tests."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from _cli_checks import snapshot
from distill_export.cli import app
from distill_export.errors import CheckpointError
from distill_export.rundir import RunDir

runner = CliRunner()


def error_line(output: str, code: int) -> str:
    """Exit 2, no traceback, exactly one line, an `error:` one."""
    assert code == 2, (code, output)
    lines = [ln for ln in output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), lines
    return lines[0]


def forge(src, dst, change) -> None:
    """A copy of checkpoint `src` whose state_dict went through change(state_dict)."""
    payload = torch.load(src, weights_only=True)
    change(payload["state_dict"])
    torch.save(payload, dst)


def overflow(state) -> None:
    """Finite weights whose logits overflow to inf (NaN after the softmax) on most rows."""
    for key in ("head.weight", "head.bias"):
        state[key] = state[key] * 3e38


# ----- W1: outputs that are not finite are never measured ----------------------------------------


def test_a_loaded_teacher_whose_outputs_are_not_finite_is_refused_before_anything_is_recorded(
        tiny_run, tiny_config_file, tmp_path):
    """W1: train-teacher exited 0, report.json held accuracy, probe and pool scores of inf logits."""
    bad = tmp_path / "t_overflow.pt"
    forge(tiny_run / "teacher.pt", bad, overflow)
    before = snapshot(tmp_path)
    result = runner.invoke(app, ["train-teacher", "--config", str(tiny_config_file), "--teacher", str(bad),
                                 "--out", str(tmp_path / "W1"), "-q"])
    line = error_line(result.output, result.exit_code)
    assert line.startswith(f"error: teacher {bad}: its outputs are not finite (logits hold NaN or inf on "), line
    assert "test rows" in line and line.endswith("nothing was recorded"), line
    assert snapshot(tmp_path) == before and not (tmp_path / "W1").exists()


def test_a_trained_teacher_whose_outputs_are_not_finite_is_a_failed_training(
        tiny_run, tiny_config_file, tmp_path, monkeypatch):
    """W1, our own teacher: a training that ends with inf logits is named as failed, not recorded."""
    import distill_export.train_teacher as stage

    def diverged(config, data, device, out_path, *args, **kwargs):  # what a diverged training saves
        forge(tiny_run / "teacher.pt", out_path, overflow)
        return {"best_epoch": 1, "history": []}

    monkeypatch.setattr(stage, "train_teacher", diverged)
    result = runner.invoke(app, ["train-teacher", "--config", str(tiny_config_file), "--out", str(tmp_path / "T"), "-q"])
    line = error_line(result.output, result.exit_code)
    assert line.startswith(f"error: teacher {tmp_path / 'T' / 'teacher.pt'}: its outputs are not finite"), line
    assert "its training failed" in line and line.endswith("nothing was recorded"), line
    assert not (tmp_path / "T").exists()


# ----- ST4/ST5: the teacher file the stage measured is the one distilled from ------------------------


def negate_head(state) -> None:
    state["head.weight"] = -state["head.weight"]


def test_a_loaded_teacher_changed_after_train_teacher_is_refused(tiny_run, tiny_config_file, tmp_path):
    """ST4: distill used the new file; state.json kept train_teacher done and report.json the old
    file's teacher accuracy. Now: one line naming the file and the command that measures it again."""
    teacher = tmp_path / "mt.pt"
    shutil.copy(tiny_run / "teacher.pt", teacher)
    run = tmp_path / "ST4"
    result = runner.invoke(app, ["train-teacher", "--config", str(tiny_config_file), "--teacher", str(teacher),
                                 "--out", str(run), "-q"])
    assert result.exit_code == 0, result.output
    recorded = json.loads((run / "report.json").read_text())["teacher"]["file_sha256"]
    assert recorded and RunDir(run).outdated_output() is None
    forge(teacher, teacher, negate_head)
    before = snapshot(tmp_path)
    result = runner.invoke(app, ["distill", str(run), "-q"])
    line = error_line(result.output, result.exit_code)
    assert line == (f"error: {teacher} changed after train-teacher (the teacher stage measured another file: the "
                    f"run would mix two teachers), so `distill` cannot run; re-run `distill-export run --resume "
                    f"{run}` (or start a new run: `distill-export run --out NEW`)"), line
    assert snapshot(tmp_path) == before
    # `run --resume` runs the teacher stage (and every stage after it) again
    assert RunDir(run).outdated_stage() == ("train_teacher", f"{teacher} changed after train-teacher")
    # a run made before the hash was recorded still loads
    report = json.loads((run / "report.json").read_text())
    del report["teacher"]["file_sha256"]
    (run / "report.json").write_text(json.dumps(report))
    assert RunDir(run).outdated_output() is None


def test_the_runs_own_teacher_changed_after_train_teacher_is_refused(run_copy):
    """ST5: the cache said "cache miss (the teacher changed)", train_teacher stayed done with the
    old teacher's metrics."""
    forge(run_copy / "teacher.pt", run_copy / "teacher.pt", negate_head)
    before = snapshot(run_copy)
    for command in (["distill", str(run_copy), "-q"], ["export", str(run_copy), "-q"], ["report", str(run_copy)]):
        result = runner.invoke(app, command)
        line = error_line(result.output, result.exit_code)
        assert line.startswith(f"error: {run_copy / 'teacher.pt'} changed after train-teacher"), line
        assert f"distill-export run --resume {run_copy}" in line, line
    assert snapshot(run_copy) == before


# ----- SI_complex: a weight is a real floating tensor ----------------------------------------------


def test_a_complex_student_init_is_refused_naming_the_key_and_dtype(run_copy, tmp_path):
    """SI_complex: rc 0 with torch's "discards the imaginary part" warning."""
    state = dict(torch.load(run_copy / "student.pt", weights_only=True)["state_dict"])
    key = next(k for k, v in state.items() if v.dim() == 4)
    state[key] = state[key].to(torch.complex64)
    path = tmp_path / "si_complex.pt"
    torch.save(state, path)
    before = snapshot(tmp_path)
    result = runner.invoke(app, ["distill", str(run_copy), "--student-init", str(path), "-q"])
    line = error_line(result.output, result.exit_code)
    assert line == (f"error: --student-init {path}: tensor {key!r} is complex64, the model's is float32: a weight "
                    "must be a real floating tensor (a cast would drop its imaginary part), refused"), line
    assert snapshot(tmp_path) == before


def test_a_complex_teacher_weight_is_refused(tiny_run, tiny_config_file, tmp_path):
    bad = tmp_path / "t_complex.pt"
    forge(tiny_run / "teacher.pt", bad, lambda s: s.update({"head.weight": s["head.weight"].to(torch.complex64)}))
    before = snapshot(tmp_path)
    result = runner.invoke(app, ["train-teacher", "--config", str(tiny_config_file), "--teacher", str(bad),
                                 "--out", str(tmp_path / "T"), "-q"])
    line = error_line(result.output, result.exit_code)
    assert f"{bad}: tensor 'head.weight' is complex64, the model's is float32" in line, line
    assert snapshot(tmp_path) == before and not (tmp_path / "T").exists()


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.complex128])
def test_an_integer_bool_or_complex_weight_is_refused_an_integer_buffer_is_not(dtype, tmp_path):
    from torch import nn

    from distill_export.nets.checkpoint import load_state

    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    good = {k: v.clone() for k, v in model.state_dict().items()}  # num_batches_tracked: int64, as it should be
    load_state(model, good, tmp_path / "ok.pt")
    with pytest.raises(CheckpointError) as info:
        load_state(model, {**good, "0.weight": good["0.weight"].to(dtype)}, tmp_path / "bad.pt")
    assert str(info.value).startswith(f"{tmp_path / 'bad.pt'}: tensor '0.weight' is "
                                      f"{str(dtype).removeprefix('torch.')}, the model's is float32"), info.value


# ----- SI_pickle / PK2: a plain pickle is refused in exactly one line --------------------------------


def test_a_plain_pickle_is_refused_in_one_line_without_torchs_warning(run_copy, tiny_config_file, tmp_path):
    """PK2: torch's "Detected pickle protocol 4 ... please file an issue" and its source line came
    first. In subprocesses: a warning shown once in this process would not show again."""
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "si_pickle.pt"
    path.write_bytes(pickle.dumps({"state_dict": Evil()}, protocol=4))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    before = snapshot(run_copy)
    for command in (["distill", str(run_copy), "--student-init", str(path)],
                    ["train-teacher", "--config", str(tiny_config_file), "--teacher", str(path),
                     "--out", str(tmp_path / "PK2")]):
        proc = subprocess.run([sys.executable, "-m", "distill_export", *command, "-q"], capture_output=True,
                              text=True, timeout=120, env=env)
        assert proc.stdout == "", proc.stdout
        line = error_line(proc.stderr, proc.returncode)
        assert str(path) in line and "not a plain tensor file" in line and "warn" not in line.lower(), line
    assert not marker.exists() and not (tmp_path / "PK2").exists()
    assert snapshot(run_copy) == before
