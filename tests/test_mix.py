"""Consistent teaching (issue 23): mixup/cutmix and crops, with the teacher seeing the very batch
the student trains on, and the baseline mixed the same way."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from distill_export.cli import app
from distill_export.data.augment import Mix, mix_batch, mixed_loss, random_crop
from distill_export.distill import objective_under_mix
from distill_export.methods import Objective, SetupInfo, TermInputs
from distill_export.methods.objective import TermSpec


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_mixup_blends_each_row_with_its_partner():
    x = torch.randn(16, 1, 8, 8)
    mixed, mix = mix_batch(x, "mixup", alpha=1.0)
    assert sorted(mix.perm.tolist()) == list(range(16)) and 0 < mix.lam < 1 and mix.box is None
    assert torch.allclose(mixed, mix.lam * x + (1 - mix.lam) * x[mix.perm])


def test_cutmix_pastes_one_box_and_lam_is_the_unpasted_share():
    x = torch.randn(16, 3, 20, 24)
    for _ in range(20):
        mixed, mix = mix_batch(x, "cutmix", alpha=1.0)
        y0, y1, x0, x1 = mix.box
        inside = torch.zeros(20, 24, dtype=torch.bool)
        inside[y0:y1, x0:x1] = True
        assert torch.equal(mixed[..., inside], x[mix.perm][..., inside])
        assert torch.equal(mixed[..., ~inside], x[..., ~inside])
        assert mix.lam == pytest.approx(1 - inside.float().mean().item())


def test_the_same_mix_applies_to_the_rows_other_modalities():
    x = torch.randn(8, 1, 10, 10)
    _, cut = mix_batch(x, "cutmix", alpha=0.5)
    other_image = torch.randn(8, 2, 10, 10)
    audio = torch.randn(8, 1, 40, 12)  # another size: blended with the same lam, not boxed
    vector = torch.randn(8, 5)
    y0, y1, x0, x1 = cut.box
    assert torch.equal(cut.apply(other_image)[..., y0:y1, x0:x1], other_image[cut.perm][..., y0:y1, x0:x1])
    assert torch.allclose(cut.apply(audio), cut.lam * audio + (1 - cut.lam) * audio[cut.perm])
    assert torch.allclose(cut.apply(vector), cut.lam * vector + (1 - cut.lam) * vector[cut.perm])


def test_mixed_cross_entropy_is_the_cross_entropy_of_the_mixed_labels():
    logits, y = torch.randn(12, 5), torch.randint(0, 5, (12,))
    mix = Mix(torch.randperm(12), 0.3)
    soft = 0.3 * F.one_hot(y, 5).float() + 0.7 * F.one_hot(y[mix.perm], 5).float()
    assert mixed_loss(F.cross_entropy, logits, y, mix) == pytest.approx(F.cross_entropy(logits, soft).item(), rel=1e-6)
    assert mixed_loss(F.cross_entropy, logits, y, None) == F.cross_entropy(logits, y)


def test_the_objective_mixes_the_labels_of_label_terms_only():
    logits, teacher = torch.randn(12, 5, requires_grad=True), torch.randn(12, 5)
    y = torch.randint(0, 5, (12,))
    mix = Mix(torch.randperm(12), 0.25)
    batch = TermInputs(logits, y, teacher)

    def objective(specs):
        o = Objective(specs)
        o.setup(SetupInfo(5, 0, 0))
        return o

    kd_only = objective([TermSpec("kd", 1.0, {"temperature": 2.0})])
    assert objective_under_mix(kd_only, batch, mix)[0].item() == pytest.approx(kd_only(batch)[0].item(), rel=1e-6)
    ce = objective([TermSpec("ce", 1.0)])
    soft = 0.25 * F.one_hot(y, 5).float() + 0.75 * F.one_hot(y[mix.perm], 5).float()
    assert objective_under_mix(ce, batch, mix)[0].item() == pytest.approx(F.cross_entropy(logits, soft).item(), rel=1e-5)


def test_crop_keeps_the_shape_and_crops_each_sample_on_its_own():
    x = torch.arange(4 * 16 * 16, dtype=torch.float32).reshape(4, 1, 16, 16)
    out = random_crop(x.repeat(1, 1, 1, 1))
    assert out.shape == x.shape
    same = random_crop(x[:1].repeat(8, 1, 1, 1))
    assert any(not torch.equal(same[0], same[i]) for i in range(1, 8))


@pytest.mark.slow
def test_run_with_mixup_teaches_online_and_records_what_ran(tmp_path, tiny_config_file):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", "--config", str(tiny_config_file), "--out", str(out), "--quiet",
                                      "--mix", "mixup_cutmix", "--augment", "crop", "--method", "hinton",
                                      "--format", "onnx", "--no-self-training-control"])
    assert result.exit_code == 0, result.output
    distill = json.loads((out / "report.json").read_text())["distill"]
    assert distill["mix"] == "mixup_cutmix" and distill["augment"] == "crop"
    assert distill["teacher_cache"]["status"] == "not used"
    assert "mix" in distill["teacher_cache"]["reason"]


@pytest.mark.parametrize("args, named", [
    (["--mix", "blend"], "distill.mix"),
    (["--mix", "mixup", "--rounds", "2"], "distill.mix"),
    (["--augment", "zoom"], "distill.augment"),
])
def test_bad_mix_settings_are_refused_in_one_line(tmp_path, tiny_config_file, args, named):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", "--config", str(tiny_config_file), "--out", str(out), "--quiet", *args])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and named in lines[0] and "Traceback" not in result.output
    assert not out.exists()
