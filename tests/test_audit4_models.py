"""Fourth hostile audit, B1 and B2: a checkpoint's arch, arch_kwargs and meta are data. A file
never names code to import (os:abort, this:s), and a forged size (num_classes 10**9, a
60000x60000 input, a teacher width of 10**6, a missing key) is one line, exit 2, refused before
anything is allocated. docs/reliability.md ("Fifth round") lists them with these tests."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from typer.testing import CliRunner

from _cli_checks import forget_student_hash, one_line_error, snapshot
from distill_export.cli import app
from distill_export.errors import CheckpointError
from distill_export.nets.model_io import load_student

runner = CliRunner()
ZEN = "Beautiful is better than ugly"


def _forged(src, dst, edit):
    payload = torch.load(src, weights_only=True)
    edit(payload)
    torch.save(payload, dst)
    return dst


def _set(key, value, sub=None):
    def edit(p):
        (p[sub] if sub else p)[key] = value
    return edit


def _profile(path, out):
    return runner.invoke(app, ["profile", str(path), "--out", str(out), "-q", "--batch", "1", "--threads", "1"])


@pytest.mark.parametrize("arch", ["this:s", "os:getpid", "distill_export.cli.main:app", "no_such_student"])
def test_a_student_arch_is_never_imported(tiny_run, tmp_path, arch, capfd):
    """B1: `profile FILE.pt` imported the arch's module and called it (the Zen of Python printed,
    os.getpid called). Now only registered names build a student from a file."""
    path = _forged(tiny_run / "student.pt", tmp_path / "s.pt", _set("arch", arch))
    before = snapshot(tmp_path)
    line = one_line_error(_profile(path, tmp_path / "o"), 2)
    assert str(path) in line and repr(arch) in line and "known students: " in line and "tiny_cnn" in line
    assert ZEN not in line + capfd.readouterr().out and "returned a" not in line
    assert snapshot(tmp_path) == before and not (tmp_path / "o").exists()


def test_os_abort_in_a_run_student_does_not_kill_export(run_copy):
    """B1: `export RUN` with a student.pt whose arch is os:abort died by SIGABRT (rc 134), leaving
    the export pending. In a fresh process, so an abort would show as rc 134, not kill pytest."""
    _forged(run_copy / "student.pt", run_copy / "student.pt", _set("arch", "os:abort"))
    forget_student_hash(run_copy)  # past the 'changed after distill' refusal: the loader's own check
    before = snapshot(run_copy)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "distill_export", "export", str(run_copy), "-q"],
                          capture_output=True, text=True, timeout=120, env=env)
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    assert proc.returncode == 2, (proc.returncode, lines)
    assert len(lines) == 1 and lines[0].startswith("error: ") and "'os:abort'" in lines[0], lines
    assert "student.pt" in lines[0] and "known students" in lines[0]
    assert snapshot(run_copy) == before


def test_a_users_factory_student_loads_only_when_the_user_names_it(tmp_path, monkeypatch):
    """The product's package.module:factory students still load, from the run's own student.name."""
    (tmp_path / "f4a_students.py").write_text(textwrap.dedent("""
        from torch import nn
        def student(num_classes, in_channels=1):
            return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 16, num_classes))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    from distill_export.nets.checkpoint import save_checkpoint
    from distill_export.nets.students import create_student

    spec = "f4a_students:student"
    path = tmp_path / "s.pt"
    save_checkpoint(path, create_student(spec, 3, 1), kind="student", arch=spec,
                    arch_kwargs={"num_classes": 3, "in_channels": 1, "input_size": 4},
                    meta={"input_shape": [1, 4, 4]})
    model, _ = load_student(path, factory=spec)
    assert model(torch.zeros(2, 1, 4, 4)).shape == (2, 3)
    for other in (None, "tiny_cnn", "f4a_students:other"):
        with pytest.raises(CheckpointError, match="never names code to import"):
            load_student(path, factory=other)


def _huge_input(p):
    p["meta"]["input_shape"] = [1, 50000, 50000]


def _no_classes(p):
    del p["arch_kwargs"]["num_classes"]


def _teacher_shape(p):
    p["meta"]["input_shapes"]["image"] = [1, 60000, 60000]


@pytest.mark.parametrize("model,edit,says", [
    # B2, students: a missing num_classes was a KeyError traceback; num_classes 10**9 or a
    # 50000x50000 input tried to allocate 128 GB / 10 GB
    ("student", _set("num_classes", 10**9, "arch_kwargs"), ["num_classes=1000000000", "'head.weight' is (1000000000, 32)"]),
    ("student", _no_classes, ["arch_kwargs num_classes is 'None'", "integer >= 1"]),
    ("student", _set("in_channels", "1", "arch_kwargs"), ["arch_kwargs in_channels is '1'"]),
    ("student", _huge_input, ["meta input_shape [1, 50000, 50000]", "2,500,000,000 values", "536,870,912"]),
    ("student", _set("input_shape", [1, -28, 28], "meta"), ["meta input_shape is [1, -28, 28]", "positive integers"]),
    # B2, teachers: width 10**6 (36 TB of conv weights) or a 60000^2 input shape (14 GB)
    ("teacher", _set("width", 10**6, "arch_kwargs"), ["width=1000000", "is (1000000,", "the file holds (8,"]),
    ("teacher", _teacher_shape, ["meta input_shapes 'image' [1, 60000, 60000]", "3,600,000,000 values"]),
    ("teacher", _set("command", "touch x", "arch_kwargs"), ["do not build a teacher fusion_teacher", "TypeError", "command"]),
])
def test_forged_sizes_are_refused_before_allocating(tiny_run, tmp_path, model, edit, says):
    path = _forged(tiny_run / f"{model}.pt", tmp_path / f"{model[0]}.pt", edit)
    before = snapshot(tmp_path)
    line = one_line_error(_profile(path, tmp_path / "o"), 2)
    assert str(path) in line and all(s in line for s in says), line
    assert snapshot(tmp_path) == before and not (tmp_path / "o").exists()


def test_a_run_student_with_forged_classes_stops_export(run_copy):
    """The same check on `export RUN`: nothing in the run changes."""
    _forged(run_copy / "student.pt", run_copy / "student.pt", _set("num_classes", 10**9, "arch_kwargs"))
    forget_student_hash(run_copy)  # past the 'changed after distill' refusal: the loader's own check
    before = snapshot(run_copy)
    line = one_line_error(runner.invoke(app, ["export", str(run_copy), "-q"]), 2)
    assert "student.pt" in line and "num_classes=1000000000" in line
    assert snapshot(run_copy) == before


def test_unchanged_checkpoints_still_load(tiny_run):
    model, meta = load_student(tiny_run / "student.pt")
    assert copy.deepcopy(meta)["input_shape"] and model(torch.zeros(1, *meta["input_shape"])).shape[1] == 10
