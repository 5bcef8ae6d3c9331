"""Bring-your-own teachers and students: .pt2 programs, package.module:factory, our checkpoints,
and the clear errors for each way they can fail to fit the data."""

from __future__ import annotations

import textwrap

import pytest
import torch

from _byo_fixtures import synthetic_dataset
from distill_export.config import RunConfig
from distill_export.errors import CheckpointError, ConfigError
from distill_export.nets.checkpoint import save_checkpoint
from distill_export.nets.external import ExternalTeacher, export_teacher_program, is_factory
from distill_export.nets.model_io import load_teacher
from distill_export.nets.students import create_student
from distill_export.nets.teacher import FusionTeacher
from distill_export.preflight import check_models
from distill_export.train_teacher import teacher_kwargs

ATOL = 1e-5  # fp32, same kernels: the program must compute what the module computes


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset()


@pytest.fixture(scope="module")
def fusion(data):
    torch.manual_seed(0)
    return FusionTeacher(**teacher_kwargs(data, width=4, modality_dropout=0.0)).eval()


@pytest.fixture(scope="module")
def program(fusion, data, tmp_path_factory):
    path = tmp_path_factory.mktemp("pt2") / "teacher.pt2"
    example = {m: v[:2] for m, v in data.train.inputs.items()}
    return export_teacher_program(fusion, example, path)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """An importable module `byo_models` with teacher/student factories, written by the test."""
    (tmp_path / "byo_models.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn

        class LogitsOnly(nn.Module):
            def __init__(self, num_classes):
                super().__init__()
                self.fc = nn.Linear(64 + 64, num_classes)
            def forward(self, image, audio):
                return self.fc(torch.cat([image.flatten(1), audio.flatten(1)], 1))

        def teacher(num_classes=3):
            return LogitsOnly(num_classes)

        def five_class_teacher():
            return LogitsOnly(5)

        def student(num_classes, in_channels=1):
            return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 64, num_classes))

        def broken():
            raise RuntimeError("no weights here")
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "byo_models"
    import sys

    sys.modules.pop("byo_models", None)


def test_pt2_round_trip(program, fusion, data):
    teacher = load_teacher(program, data)
    assert isinstance(teacher, ExternalTeacher)
    assert sorted(teacher.modality_names) == ["audio", "image"]
    batch = {m: v[:5] for m, v in data.test.inputs.items()}  # another batch size than exported
    with torch.no_grad():
        f_ref, l_ref = fusion.forward_features(batch)
        f, logits = teacher.forward_features(batch)
    torch.testing.assert_close(logits, l_ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(f, f_ref, atol=ATOL, rtol=0)
    assert teacher.has_features
    teacher.train()  # an exported module refuses train()/eval(); the adapter must not
    teacher.eval()


def test_pt2_class_count_mismatch(program):
    four = synthetic_dataset(num_classes=4)
    with pytest.raises(CheckpointError, match="4 classes"):
        load_teacher(program, four)


def test_pt2_input_shape_mismatch(program):
    bigger = synthetic_dataset(image_hw=12)
    with pytest.raises(CheckpointError, match=r"expects image of shape \(1, 8, 8\).*gives \(1, 12, 12\)"):
        load_teacher(program, bigger)


def test_teacher_file_that_is_neither(tmp_path, data):
    junk = tmp_path / "teacher.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match=r"\.pt2"):
        load_teacher(junk, data)
    fake = tmp_path / "fake.pt2"
    fake.write_bytes(b"PK not really")
    with pytest.raises(CheckpointError, match="not a torch.export program"):
        load_teacher(fake, data)


def test_our_checkpoint_still_loads(fusion, data, tmp_path):
    path = tmp_path / "teacher.pt"
    save_checkpoint(path, fusion, "teacher", "fusion_teacher", teacher_kwargs(data, 4, 0.0),
                    {"input_shapes": {m: list(s.shape) for m, s in data.modalities.items()}})
    assert isinstance(load_teacher(path, data), FusionTeacher)


def test_factory_teacher_by_modality_name(user_module, data, tmp_path):
    spec = f"{user_module}:teacher"
    assert is_factory(spec)
    teacher = load_teacher(spec, data)
    feats, logits = teacher.forward_features({m: v[:3] for m, v in data.train.inputs.items()})
    assert logits.shape == (3, 3) and feats.shape == (3, 0) and teacher.has_features is False
    # --teacher-weights: a state_dict saved from the same architecture.
    import importlib

    net = importlib.import_module(user_module).teacher()
    torch.nn.init.constant_(net.fc.weight, 0.5)
    weights = tmp_path / "w.pt"
    torch.save(net.state_dict(), weights)
    loaded = load_teacher(spec, data, weights=weights)
    assert torch.equal(loaded.net.fc.weight, net.fc.weight)


def test_factory_errors(user_module, data):
    with pytest.raises(ConfigError, match="cannot import module 'no_such_pkg.models'"):
        load_teacher("no_such_pkg.models:teacher", data)
    with pytest.raises(ConfigError, match="has no attribute 'nope'"):
        load_teacher(f"{user_module}:nope", data)
    with pytest.raises(ConfigError, match="no weights here"):
        load_teacher(f"{user_module}:broken", data)
    with pytest.raises(CheckpointError, match="10 classes|3 classes"):
        load_teacher(f"{user_module}:five_class_teacher", data)


def test_feature_distillation_needs_teacher_features(user_module, data):
    cfg = RunConfig()
    cfg.teacher.path = f"{user_module}:teacher"
    cfg.distill.beta = 0.5
    with pytest.raises(ConfigError, match="returns logits only.*--beta 0"):
        check_models(cfg, data)
    cfg.distill.beta = 0.0
    check_models(cfg, data)  # fine without feature distillation
    cfg.distill.terms = [{"name": "ce"}, {"name": "feature", "weight": 0.5}]  # the term listed explicitly
    with pytest.raises(ConfigError, match="returns logits only, so the feature term"):
        check_models(cfg, data)


def test_factory_student(user_module, data):
    student = create_student(f"{user_module}:student", num_classes=3, in_channels=1)
    feats, logits = student.forward_features(data.train.inputs["image"][:4])
    assert logits.shape == (4, 3) and feats.shape == (4, 0)
    cfg = RunConfig()
    cfg.student.name = f"{user_module}:student"
    check_models(cfg, data)
    cfg.distill.beta = 1.0
    with pytest.raises(ConfigError, match="no forward_features, so the feature term"):
        check_models(cfg, data)
    cfg.distill.beta = 0.0
    cfg.student.name = "no_such_pkg:student"
    with pytest.raises(ConfigError, match="cannot import"):
        check_models(cfg, data)


def test_pt2_with_a_fixed_batch_is_refused_in_one_line(fusion, data, tmp_path):
    """A program exported without a dynamic batch ran the check's batch of 2 and then failed on the
    trainer's batches with a traceback (a fresh audit of issue 24): now one line that says why."""
    class ByName(torch.nn.Module):  # what a user exports by hand: inputs by name, no dynamic_shapes
        def __init__(self):
            super().__init__()
            self.inner = fusion

        def forward(self, audio, image):
            return self.inner.forward_features({"audio": audio, "image": image})

    example = {m: v[:2] for m, v in data.train.inputs.items()}
    path = tmp_path / "static2.pt2"
    torch.export.save(torch.export.export(ByName(), (), example), str(path))  # the batch is fixed at 2
    with pytest.raises(CheckpointError, match="fixed batch size") as err:
        load_teacher(path, data)
    assert "\n" not in str(err.value)
