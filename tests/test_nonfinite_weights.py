"""Loaded weights are checked and a training that goes non-finite stops (issue 24 item 6): a
state_dict with a non-string key or a NaN/inf tensor is refused in one line naming the file and
the first bad key; a loss that is NaN/inf at the end of an epoch stops the training in one line
naming the model and the epoch (exit 2), and nothing is saved under a final name.
docs/reliability.md lists each case with its test."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from _cli_checks import snapshot
from distill_export.cli import app
from distill_export.errors import CheckpointError, TrainingDiverged

runner = CliRunner()
NAN = float("nan")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    from _byo_fixtures import make_manifest

    return make_manifest(tmp_path_factory.mktemp("nonfinite_data"), per_class=6, modalities=("image",))


def error_line(text: str) -> str:
    errors = [ln for ln in text.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in text, text
    return errors[0]


BAD_FILES = {  # name: (file contents, what the one line must say)
    "all_nan.pt": ({"backbone.0.0.weight": torch.full((4, 1, 3, 3), NAN), "head.bias": torch.zeros(3)},
                   "tensor 'backbone.0.0.weight' holds 36 NaN or infinite values (of 36)"),
    "one_inf.pt": ({"backbone.0.0.weight": torch.zeros(4), "head.weight": torch.tensor([0.0, float("inf")])},
                   "tensor 'head.weight' holds 1 NaN or infinite value (of 2)"),
    "int_key.pt": ({1: torch.zeros(3), "head.bias": torch.zeros(3)},
                   "a state_dict key of type int (1) is not a tensor name (a string)"),
    "wrapped_nan.pt": ({"state_dict": {"module.head.bias": torch.full((3,), NAN)}},
                       "tensor 'module.head.bias' holds 3 NaN"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_a_bad_student_init_is_refused_in_one_line(tmp_path, manifest, name):
    contents, says = BAD_FILES[name]
    path = tmp_path / name
    torch.save(contents, path)
    before = snapshot(tmp_path)
    result = runner.invoke(app, ["run", "--data", str(manifest), "--student-init", str(path),
                                 "--out", str(tmp_path / "r"), "--quiet"])
    line = error_line(result.output)
    assert result.exit_code == 2 and line.startswith(f"error: --student-init {path}: {says}"), line
    assert snapshot(tmp_path) == before  # no run directory, the file untouched


def test_a_nan_safetensors_student_init_is_refused(tmp_path, manifest):
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({"head.weight": torch.full((3, 2), NAN)}, str(path))
    result = runner.invoke(app, ["run", "--data", str(manifest), "--student-init", str(path),
                                 "--out", str(tmp_path / "r"), "--quiet"])
    assert result.exit_code == 2 and "tensor 'head.weight' holds 6 NaN" in error_line(result.output)
    assert not (tmp_path / "r").exists()


def test_our_checkpoints_and_teacher_weights_are_checked_too(tmp_path):
    from distill_export.nets.checkpoint import load_state, save_checkpoint
    from distill_export.nets.model_io import load_student

    bad = nn.Linear(2, 3)
    with torch.no_grad():
        bad.bias[1] = NAN
    with pytest.raises(CheckpointError, match=r"^teacher.pt: tensor 'bias' holds 1 NaN or infinite value"):
        load_state(nn.Linear(2, 3), bad.state_dict(), "teacher.pt")  # a factory teacher's --teacher-weights too
    with pytest.raises(CheckpointError, match="key of type tuple"):
        load_state(nn.Linear(2, 3), {("weight",): torch.zeros(3, 2)}, "teacher.pt")
    from distill_export.nets.students import create_student

    student = create_student("tiny_cnn", 3, in_channels=1, input_size=16)
    with torch.no_grad():
        next(student.parameters()).fill_(NAN)
    path = tmp_path / "student.pt"
    save_checkpoint(path, student, kind="student", arch="tiny_cnn",
                    arch_kwargs={"num_classes": 3, "in_channels": 1, "input_size": 16}, meta={})
    with pytest.raises(CheckpointError, match=f"^{path}: tensor 'backbone"):
        load_student(path)  # export, validate and profile load a student this way


NAN_TEACHER = '''
import torch
from torch import nn


class Teacher(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.register_buffer("scale", torch.tensor([1.0, float("inf")]))

    def forward(self, image):
        return self.fc(image.flatten(1)[:, :4])


def make():
    return Teacher()


def plain():
    return nn.Linear(4, 3)
'''


def test_a_factory_teachers_weights_are_checked(tmp_path, monkeypatch):
    from distill_export.nets.model_io import load_teacher

    (tmp_path / "nan_teacher.py").write_text(NAN_TEACHER)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(CheckpointError, match=r"^teacher nan_teacher:make: tensor '.*scale' holds 1 NaN"):
        load_teacher("nan_teacher:make")  # the factory's own tensors (a .pt2's are checked the same way)
    weights = tmp_path / "w.pt"
    torch.save({"weight": torch.full((3, 4), NAN), "bias": torch.zeros(3)}, weights)
    with pytest.raises(CheckpointError, match=f"^{weights}: tensor 'weight' holds 12 NaN"):
        load_teacher("nan_teacher:plain", weights=str(weights))  # --teacher-weights


def test_a_non_finite_loss_stops_the_training_before_its_checkpoint(tmp_path):
    from distill_export.train import Checkpoint, TrainSpec, train_loop

    model = nn.Linear(2, 2)
    ckpt = Checkpoint(tmp_path / "ckpt.pt", "k")
    losses = iter([1.0, 1.0, NAN, 1.0])  # epoch 1: finite; epoch 2: a NaN step among finite ones

    def batch_loss(rows):
        return model(torch.ones(len(rows), 2)).sum() * 0 + next(losses)

    spec = TrainSpec(epochs=3, lr=0.1, batch_size=2)
    with pytest.raises(TrainingDiverged, match=r"^training of 'baseline' stopped: its loss is nan \(not finite\) "
                                               r"in epoch 2 of 3; nothing was saved"):
        train_loop([model], batch_loss, 4, lambda: 0.5, spec, "baseline", quiet=True, checkpoint=ckpt)
    state = torch.load(ckpt.path, weights_only=True)
    assert state["epoch"] == 1  # the NaN epoch was not checkpointed


NAN_STUDENT = '''
import torch
from torch import nn


def make(num_classes, in_channels=1):  # initialised by its factory with NaN: trains to NaN
    net = nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, num_classes))
    with torch.no_grad():
        net[-1].weight.fill_(float("nan"))
    return net
'''


def test_a_student_that_trains_to_nan_stops_in_one_line_and_saves_nothing(tmp_path, manifest, monkeypatch):
    (tmp_path / "nan_student.py").write_text(NAN_STUDENT)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "--data", str(manifest), "--student", "nan_student:make",
                                 "--teacher-epochs", "1", "--epochs", "2", "--out", str(out), "--quiet"])
    line = error_line(result.output)
    assert result.exit_code == 2, result.output
    assert line.startswith("error: training of 'student' stopped: its loss is nan (not finite) in epoch 1 of 2")
    assert not (out / "student.pt").exists() and not (out / "baseline.pt").exists()
    assert not list(out.glob("*.onnx"))


def _cpu_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@pytest.mark.slow  # ~20 s on a loaded 2-core machine: torchrun, two ranks, a teacher, then the NaN student
@pytest.mark.skipif(_cpu_cores() < 2, reason="--nproc 2 on CPU needs 2 cores (one process per core)")
def test_under_torchrun_every_rank_stops_and_the_launcher_prints_one_line(tmp_path, manifest):
    (tmp_path / "nan_student.py").write_text(NAN_STUDENT)
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "distill_export", "run", "--nproc", "2", "--device", "cpu",
                           "--data", str(manifest), "--student", "nan_student:make", "--teacher-epochs", "1",
                           "--epochs", "1", "--out", str(out), "--quiet"],
                          capture_output=True, text=True, env=env, timeout=300)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2, text[-3000:]
    assert error_line(text).startswith("error: training of 'student' stopped: its loss is nan (not finite) in epoch 1 of 1")
    assert "ChildFailedError" not in text and "exitcode" not in text, text[-3000:]
    assert not (out / "student.pt").exists()
