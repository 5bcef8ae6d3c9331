"""Fourth hostile audit, B8 and B9: the teacher-output cache writes only into a folder of its own
(RUN/teacher_outputs as a symlink to a user's folder had its files replaced), and a teacher
whose outputs are NaN is refused naming the teacher (it was cached, then distilled into nothing
or blamed on the student). One `error:` line, exit 2, nothing written. docs/reliability.md
("Fifth round") lists them with these tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from _cli_checks import snapshot
from distill_export.cli import app
from distill_export import preflight
from distill_export.errors import ConfigError
from distill_export.preflight import PROBE_ROWS
from distill_export.teacher_cache import FORMAT, check_own_folder

runner = CliRunner()


def error_line(output: str, code: int, expected: int = 2) -> str:
    """Exit `expected`, no traceback, exactly one `error:` line (info lines such as the cache's
    "cache miss" note may precede it)."""
    assert code == expected, (code, output)
    assert "Traceback" not in output, output
    errors = [ln for ln in output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, output
    return errors[0]


# ----- B8: a folder the cache did not make --------------------------------------------------------


def _user_folder(root):
    user = root / "user"
    user.mkdir()
    (user / "logits.npy").write_text("mine\n")
    (user / "index.json").write_text('{"mine": 1}\n')
    return user


@pytest.mark.parametrize("case", ["symlink", "foreign index", "foreign file"])
def test_a_teacher_outputs_folder_not_made_by_the_cache_is_never_written(run_copy, tmp_path, case):
    """B8: `distill RUN` with RUN/teacher_outputs -> a user's folder said "not a teacher cache",
    then replaced the user's index.json and logits.npy."""
    user = _user_folder(tmp_path)
    cache = run_copy / "teacher_outputs"
    for f in cache.iterdir():
        f.unlink()
    cache.rmdir()
    if case == "symlink":
        cache.symlink_to(user, target_is_directory=True)
    else:
        cache.mkdir()
        (cache / "index.json").write_text('{"mine": 1}\n')
        if case == "foreign file":
            (cache / "index.json").unlink()
            (cache / "notes.txt").write_text("mine\n")
    before = snapshot(tmp_path)
    result = runner.invoke(app, ["distill", str(run_copy), "-q"])
    line = error_line(result.output, result.exit_code)
    assert "teacher_outputs" in line, line
    assert {"symlink": "is a symbolic link", "foreign index": "index.json is not the index of a teacher cache",
            "foreign file": "holds 'notes.txt'"}[case] in line, line
    assert snapshot(tmp_path) == before


def test_the_caches_own_folders_are_accepted(tmp_path):
    """An older cache version, a folder left by a killed write, a damaged index and an empty
    folder are ours; a file, or another program's index.json, is not."""
    old = tmp_path / "old"
    old.mkdir()
    (old / "index.json").write_text(json.dumps({"format": FORMAT.rpartition("/")[0] + "/1"}))
    (old / "logits.npy").write_bytes(b"")
    (old / ".features.npy.abc123.tmp").write_bytes(b"")
    check_own_folder(old)
    check_own_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    check_own_folder(tmp_path / "empty")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is not a folder"):
        check_own_folder(tmp_path / "file")
    (old / "index.json").write_bytes(b"\x00damaged")  # our own index, damaged: a miss, rewritten (test_cache)
    check_own_folder(old)
    (old / "index.json").write_text("[1, 2]")  # another program's JSON
    with pytest.raises(ConfigError, match="not the index of a teacher cache"):
        check_own_folder(old)


# ----- B9: a teacher whose outputs are not finite --------------------------------------------------


class _NanFrom(nn.Module):
    """Logits NaN from row `start` of every batch on: rows 0-2 are finite, so the loader's check
    on batches of 2 and 3 passes and the cache fill (one batch of every row) meets the NaN."""

    def __init__(self, dims: dict[str, int], start: int):
        super().__init__()
        self.fc = nn.Linear(sum(dims.values()), 10)
        self.start = start

    def forward(self, image, audio):
        z = self.fc(torch.cat([image.flatten(1), audio.flatten(1)], 1))
        bad = torch.arange(z.shape[0], device=z.device) >= self.start  # (B,)
        return z + torch.where(bad, float("nan"), 0.0).unsqueeze(1)


@pytest.fixture(scope="module")
def nan_programs(tmp_path_factory, tiny_run):
    shapes = torch.load(tiny_run / "teacher.pt", weights_only=True)["meta"]["input_shapes"]
    example = {m: torch.randn(4, *s) for m, s in sorted(shapes.items())}
    dims = {m: int(torch.tensor(s).prod()) for m, s in shapes.items()}
    folder = tmp_path_factory.mktemp("nan_pt2")
    out = {}
    # "late": finite on the rows preflight tries (preflight.check_teacher_outputs), NaN after them
    for name, start in (("all", 0), ("rows", 3), ("late", PROBE_ROWS)):
        ep = torch.export.export(_NanFrom(dims, start), (), example,
                                 dynamic_shapes={m: {0: torch.export.Dim("b")} for m in example})
        torch.export.save(ep, str(folder / f"{name}.pt2"))
        out[name] = folder / f"{name}.pt2"
    return out


def test_a_teacher_with_nan_outputs_is_refused_when_loaded(nan_programs, tiny_config_file, tmp_path):
    """B9: train-teacher accepted it (teacher accuracy 10%, exit 0)."""
    before = snapshot(tmp_path)
    result = runner.invoke(app, ["train-teacher", "--config", str(tiny_config_file), "--teacher",
                                 str(nan_programs["all"]), "--out", str(tmp_path / "t"), "-q"])
    line = error_line(result.output, result.exit_code)
    assert str(nan_programs["all"]) in line and "outputs are not finite" in line, line
    assert snapshot(tmp_path) == before and not (tmp_path / "t").exists()


def test_nan_teacher_outputs_are_never_cached(nan_programs, tiny_config_file, tmp_path, monkeypatch):
    """B9: the cache fill (and the online pass with augmentation) refuses NaN logits naming the
    teacher, before anything is cached: pseudo_label distilled nothing and exited 0, hinton
    blamed the student's learning rate. train-teacher now refuses this teacher on its test rows
    (fifth audit W1, test_audit5_teachers.py); its check is switched off here to make the run the
    cache fill meets, as a run made before that check was."""
    import distill_export.train_teacher as stage

    run = tmp_path / "r"
    # preflight tries the teacher's first test rows too (sixth audit W3): off, for this test's every command
    monkeypatch.setattr(preflight, "check_teacher_outputs", lambda *args: None)
    with monkeypatch.context() as patch:
        patch.setattr(stage, "finite_outputs", lambda *args: None)
        result = runner.invoke(app, ["train-teacher", "--config", str(tiny_config_file), "--teacher",
                                     str(nan_programs["rows"]), "--out", str(run), "-q"])
    assert result.exit_code == 0, result.output
    before = snapshot(tmp_path)
    for extra in ([], ["--method", "hinton"], ["--augment", "shift"]):
        result = runner.invoke(app, ["distill", str(run), "-q", *extra])
        line = error_line(result.output, result.exit_code)
        assert f"teacher {nan_programs['rows']}: its outputs are not finite" in line, (extra, line)
        assert ("first at training row 3" in line) == (not extra or "hinton" in extra), line
        assert "student" not in line and "learning rate" not in line
        assert snapshot(tmp_path) == before, extra
        import torch
        # the stopped cache fill must not leave this thread in no_grad (later trainings failed)
        assert torch.is_grad_enabled(), extra


@pytest.mark.slow
def test_nan_teacher_outputs_under_torchrun(nan_programs, tiny_config_file, tmp_path):
    """B9 with --nproc 2: the ranks meet the NaN (past the rows preflight tries); one line, exit 2,
    no cache, and no run folder left (sixth audit W2: the refusal removes the folder rank 0 made)."""
    out = tmp_path / "r"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "distill_export", "run", "--config", str(tiny_config_file),
                           "--teacher", str(nan_programs["late"]), "--method", "hinton", "--nproc", "2",
                           "--out", str(out), "-q"], capture_output=True, text=True, timeout=300, env=env)
    line = error_line(proc.stdout + proc.stderr, proc.returncode)
    assert f"teacher {nan_programs['late']}: its outputs are not finite" in line, line
    assert not list(out.glob("teacher_outputs/*.npy")) and not (out / "teacher_outputs" / "index.json").exists()
    assert not out.exists()

