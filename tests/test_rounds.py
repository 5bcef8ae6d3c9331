"""Distillation rounds (distill_export/rounds.py): the next round's teacher is the previous
student (temperature-scaled on val) times experts of the other modalities re-fitted on the rows
that student labeled; the control's is its student alone. On the built-in demo data (offline)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distill_export.config import DataConfig, RunConfig, validate_config
from distill_export.data import load_dataset
from distill_export.errors import ConfigError
from distill_export.nets.teacher import fit_temperature
from distill_export.preflight import check_rounds_supported
from distill_export.rounds import next_round_targets, refit_expert

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data():
    # 1,000 of the demo's 3,500 training rows (100 labeled): what each test checks is per row
    return load_dataset(DataConfig(label_fraction=0.1, max_train_rows=1000), seed=0)


class ConstantStudent(nn.Module):
    """forward_features(x) -> (feats, logits): `scale` on class `cls` for every row."""

    def __init__(self, num_classes: int, cls: int, scale: float = 3.0):
        super().__init__()
        self.num_classes, self.cls, self.scale = num_classes, cls, scale

    def forward_features(self, x):
        logits = torch.zeros(len(x), self.num_classes)
        logits[:, self.cls] = self.scale
        return logits, logits


class LinearStudent(nn.Module):
    def __init__(self, data):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(data.train.inputs["image"][0].numel(), data.num_outputs)

    def forward_features(self, x):
        z = self.fc(x.flatten(1))
        return z, z


def _config(**distill) -> RunConfig:
    config = RunConfig()
    config.teacher.epochs = 2
    for key, value in distill.items():
        setattr(config.distill, key, value)
    return config


def test_the_controls_next_teacher_is_its_own_calibrated_student(data):
    student = LinearStudent(data)
    log_p, info = next_round_targets(_config(rounds=2), data, CPU, student, with_experts=False, quiet=True)
    with torch.no_grad():
        train_z = student.fc(data.train.inputs["image"].flatten(1))
        val_z = student.fc(data.val.inputs["image"].flatten(1))
    t = fit_temperature(val_z, data.val.labels)
    assert info["student_temperature"] == t and info["experts"] == {}
    torch.testing.assert_close(log_p, F.log_softmax(train_z / t, dim=1), rtol=1e-5, atol=1e-5)
    assert info["teacher_val_accuracy"] == pytest.approx(float((val_z.argmax(1) == data.val.labels).float().mean()))


@pytest.mark.slow
def test_an_expert_is_refitted_on_the_students_labels_where_the_rows_have_none(data):
    """The student calls every row class 3: the re-fitted audio expert, trained on 10% true labels
    and 90% of those, answers 3 on most unlabeled rows; trained on the labeled rows alone, it
    would not (about a tenth of the rows are 3s)."""
    unlabeled = ~data.train.labeled
    pseudo = torch.full((len(data.train),), 3)
    expert, info = refit_expert(_config(rounds=2), data, CPU, "audio", pseudo, quiet=True, label="")
    with torch.no_grad():
        z = expert.expert_logits({"audio": data.train.inputs["audio"]})["audio"]
    assert float((z.argmax(1)[unlabeled] == 3).float().mean()) > 0.6
    assert info["temperature"] > 0


@pytest.mark.slow
def test_the_next_teacher_multiplies_the_student_by_the_other_modalities_experts(data):
    student = ConstantStudent(data.num_outputs, cls=3, scale=0.5)
    config = _config(rounds=2)
    log_p, info = next_round_targets(config, data, CPU, student, with_experts=True, quiet=True)
    assert set(info["experts"]) == {"audio"}  # every modality but the student's
    # Same seeded expert as the product used: re-fit it and rebuild the product by hand.
    expert, _ = refit_expert(config, data, CPU, "audio", torch.full((len(data.train),), 3), quiet=True, label="")
    t = info["student_temperature"]
    with torch.no_grad():
        audio = F.log_softmax(expert.expert_logits({"audio": data.train.inputs["audio"]})["audio"], dim=1)
    student_part = F.log_softmax(student.forward_features(data.train.inputs["image"])[1] / t, dim=1)
    torch.testing.assert_close(log_p, student_part + audio, rtol=1e-5, atol=1e-5)
    # The student is constant, so the product's ranking is the audio expert's.
    assert torch.equal(log_p.argmax(1), audio.argmax(1))


@pytest.mark.parametrize("change, needle", [
    ({"augment": "shift"}, "distill.augment=none"),
    ({"beta": 1.0}, "no feature layer"),  # hinton + feature matching
    ({"teacher_view": "student"}, "teacher_view=full"),
])
def test_what_later_rounds_cannot_serve_is_refused_in_one_line(data, change, needle):
    config = _config(rounds=2, **change)
    with pytest.raises(ConfigError, match=needle):
        check_rounds_supported(config, data)
    check_rounds_supported(_config(rounds=1, **change), data)  # one round: nothing to refuse


@pytest.mark.parametrize("rounds", [0, 11])
def test_rounds_out_of_range_is_named(rounds):
    config = _config(rounds=rounds)
    with pytest.raises(ConfigError, match="distill.rounds"):
        validate_config(config)


def test_the_rounds_flag_sets_the_config_and_is_checked(tmp_path):
    from typer.testing import CliRunner

    from distill_export.cli import app
    from distill_export.cli.options import load, overrides

    assert load(None, None, overrides(rounds=3)).distill.rounds == 3
    result = CliRunner().invoke(app, ["run", "--rounds", "0", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "distill.rounds must be in [1, 10], got 0" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "r").exists()


@pytest.mark.parametrize("extra, needle", [
    ({"augment": "shift"}, "distill.augment=none"),
    ({"beta": 1.0}, "no feature layer"),
    ({"teacher_view": "student"}, "teacher_view=full"),
])
def test_run_refuses_what_rounds_cannot_serve_before_it_makes_the_run(tmp_path, extra, needle):
    import yaml
    from typer.testing import CliRunner

    from distill_export.cli import app

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"distill": {"rounds": 2, **extra}}))
    result = CliRunner().invoke(app, ["run", "--config", str(cfg), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and needle in result.output, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()  # nothing trained, nothing written


def test_the_labeled_rows_keep_their_true_labels_when_an_expert_is_refitted(data):
    """The student's labels fill only the rows without one."""
    from distill_export.rounds import expert_labels

    labeled = data.train.labeled
    pseudo = (torch.arange(len(data.train)) * 7) % data.num_outputs
    y = expert_labels(data, pseudo)
    assert torch.equal(y[labeled], data.train.labels[labeled])
    assert torch.equal(y[~labeled], pseudo[~labeled])
    assert 0 < int(labeled.sum()) < len(y)
