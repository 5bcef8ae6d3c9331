"""Students and teacher: registry, shapes, features, checkpoints."""

from __future__ import annotations

import pytest
import numpy as np
import torch

from distill_export.errors import CheckpointError, ConfigError
from distill_export.nets.checkpoint import load_checkpoint, load_state, save_checkpoint
from distill_export.nets.students import create_student, student_names
from distill_export.nets.teacher import FusionTeacher


@pytest.mark.parametrize("name", ["tiny_cnn", "mobilenet_v3_small", "shufflenet_v2_x0_5", "resnet18"])
def test_students_take_small_single_channel_images(name):
    torch.manual_seed(0)
    net = create_student(name, num_classes=10, in_channels=1).eval()
    x = torch.randn(2, 1, 28, 28)
    feats, logits = net.forward_features(x)
    assert logits.shape == (2, 10)
    assert feats.shape == (2, net.feature_dim)
    assert torch.allclose(net(x), logits)


def test_registry_lists_the_choices():
    assert set(student_names()) >= {"tiny_cnn", "mobilenet_v3_small", "shufflenet_v2_x0_5", "resnet18"}
    with pytest.raises(ConfigError, match="tiny_cnn"):
        create_student("vgg99", 10)


def test_teacher_is_much_larger_than_the_default_student():
    teacher = FusionTeacher({"image": 1, "audio": 1}, 10, width=16)
    student = create_student("tiny_cnn", 10)
    n_t = sum(p.numel() for p in teacher.parameters())
    n_s = sum(p.numel() for p in student.parameters())
    assert n_t >= 10 * n_s


def test_teacher_drop_zeroes_a_modality():
    torch.manual_seed(0)
    teacher = FusionTeacher({"image": 1, "audio": 1}, 10, width=4).eval()
    x = {"image": torch.randn(3, 1, 28, 28), "audio": torch.randn(3, 1, 32, 32)}
    _, full = teacher.forward_features(x)
    _, no_audio = teacher.forward_features(x, drop=("audio",))
    x2 = {**x, "audio": torch.randn(3, 1, 32, 32)}
    _, no_audio2 = teacher.forward_features(x2, drop=("audio",))
    assert not torch.allclose(full, no_audio)
    assert torch.allclose(no_audio, no_audio2)  # the audio no longer matters


def test_checkpoint_round_trip(tmp_path):
    net = create_student("tiny_cnn", 10)
    path = tmp_path / "s.pt"
    save_checkpoint(path, net, "student", "tiny_cnn", {"num_classes": 10, "in_channels": 1}, {"k": "v"})
    payload = load_checkpoint(path, kind="student")
    other = load_state(create_student("tiny_cnn", 10), payload["state_dict"], path)
    for a, b in zip(net.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(CheckpointError, match="expected a 'teacher'"):
        load_checkpoint(path, kind="teacher")
    with pytest.raises(CheckpointError, match="does not fit"):
        load_state(create_student("resnet18", 10), payload["state_dict"], path)
    assert not list(tmp_path.glob(".*tmp"))  # no temp file left behind


def test_truncated_checkpoint_is_refused(tmp_path):
    net = create_student("tiny_cnn", 10)
    path = tmp_path / "s.pt"
    save_checkpoint(path, net, "student", "tiny_cnn", {"num_classes": 10, "in_channels": 1}, {})
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(path)


def test_same_model_saved_twice_gives_the_same_bytes_and_old_files_still_load(tmp_path):
    """torch.save through an open file names the zip's record folder "archive"; saved by path it
    was named after the random temporary file, so two identical trainings gave different files."""
    from distill_export.files import torch_archive_hash
    from distill_export.train import _save_checkpoint

    torch.manual_seed(0)
    net = create_student("tiny_cnn", 10)
    args = ("student", "tiny_cnn", {"num_classes": 10, "in_channels": 1}, {"k": "v"})
    a, b = tmp_path / "a" / "student.pt", tmp_path / "b" / "other.pt"
    save_checkpoint(a, net, *args)
    save_checkpoint(b, net, *args)
    assert a.read_bytes() == b.read_bytes()
    _save_checkpoint(tmp_path / "t1.pt", {"models": [net.state_dict()], "epoch": 1})
    _save_checkpoint(tmp_path / "t2.pt", {"models": [net.state_dict()], "epoch": 1})
    assert (tmp_path / "t1.pt").read_bytes() == (tmp_path / "t2.pt").read_bytes()

    old = tmp_path / "old.pt"  # a checkpoint saved by path, as before: its own record folder name
    torch.save(load_checkpoint(a), old)
    assert old.read_bytes() != a.read_bytes()
    assert torch_archive_hash(old) == torch_archive_hash(a)
    payload = load_checkpoint(old, kind="student")
    assert all(torch.equal(x, y) for x, y in zip(payload["state_dict"].values(), net.state_dict().values()))


def _evil_pickle(path):
    """A torch.save'd dict whose unpickling would run a shell command."""
    import os

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"x": Evil()}, path)
    return path


def test_refused_files_never_suggest_loading_with_weights_only_false(tmp_path):
    """Issue 24: torch's message advises re-running torch.load with weights_only=False, which
    would run the file's code. Every message we print says what the file is not, instead."""
    from distill_export.errors import CheckpointError
    from distill_export.nets.checkpoint import load_checkpoint, read_state_file

    noise = tmp_path / "noise.pt"
    noise.write_bytes(bytes(range(256)) * 8)
    evil = _evil_pickle(tmp_path / "evil.pt")
    arrays = tmp_path / "arrays.pt"  # numpy arrays: torch's message offers "two options" in bold face
    torch.save({"state_dict": {"a": np.zeros(3)}}, arrays)
    for path, why in ((noise, "Unsupported operand"), (evil, "posix.system"), (arrays, "numpy")):
        for load in (lambda p: load_checkpoint(p, kind="student"), lambda p: read_state_file(p, "--student-init")):
            with pytest.raises(CheckpointError) as err:
                load(path)
            message = str(err.value)
            assert "weights_only" not in message and "\n" not in message and "\x1b" not in message
            assert "trust" not in message and "safe_globals" not in message
            assert why in message and "not a plain tensor file" in message
