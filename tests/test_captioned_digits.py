"""Text -> image: the captioned-digits generator (tools/make_captioned_digits.py), the late-fusion
(product of experts) teacher, the recipe end to end on a tiny manifest, and its bad inputs.
The generator and the recipe need the MNIST files in ../shared/data and skip without them."""

from __future__ import annotations

import csv
import json
import math
import socket
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from distill_export.cli import app
from distill_export.nets.teacher import LateFusionTeacher

REPO = Path(__file__).resolve().parents[1]
MNIST = REPO.parent / "shared" / "data" / "mnist"
needs_mnist = pytest.mark.skipif(not MNIST.is_dir(), reason=f"MNIST files not in {MNIST}")
TINY = ["--train-per-class", "6", "--val-per-class", "2", "--test-per-class", "3", "--no-check"]


def make_manifest(out: Path, *extra: str) -> Path:
    sys.path.insert(0, str(REPO / "tools"))
    try:
        from make_captioned_digits import main
    finally:
        sys.path.pop(0)
    return main(["--mnist", str(MNIST), "--out", str(out), *TINY, *extra])


@pytest.fixture(scope="module")
def tiny_manifest(tmp_path_factory) -> Path:
    if not MNIST.is_dir():
        pytest.skip(f"MNIST files not in {MNIST}")
    return make_manifest(tmp_path_factory.mktemp("captioned_digits"))


# ----- the generator -------------------------------------------------------------------------
@needs_mnist
def test_generator_is_seeded_and_writes_the_columns(tiny_manifest, tmp_path):
    rows = list(csv.DictReader(open(tiny_manifest)))
    assert list(rows[0]) == ["image", "caption", "label", "split"]
    assert len(rows) == 10 * (6 + 2 + 3)
    assert {s: sum(r["split"] == s for r in rows) for s in ("train", "val", "test")} == {"train": 60, "val": 20, "test": 30}
    assert all(r["caption"].strip() and (tiny_manifest.parent / r["image"]).is_file() for r in rows)
    assert sorted({r["label"] for r in rows}) == [str(d) for d in range(10)]
    again = make_manifest(tmp_path / "again")
    assert again.read_bytes() == tiny_manifest.read_bytes()  # same seed, same manifest
    assert (again.parent / rows[7]["image"]).read_bytes() == (tiny_manifest.parent / rows[7]["image"]).read_bytes()
    other = make_manifest(tmp_path / "other", "--seed", "1")
    assert other.read_bytes() != tiny_manifest.read_bytes()


def test_captions_are_noisy_not_a_label_copy():
    """True attributes are dropped, false ones added, guesses name confusable digits."""
    sys.path.insert(0, str(REPO / "tools"))
    try:
        import make_captioned_digits as gen
    finally:
        sys.path.pop(0)
    import argparse

    import numpy as np

    args = argparse.Namespace(p_drop=0.4, false_rate=1.0, p_guess=1.0, p_guess_right=0.0, paraphrases=2)
    rng = np.random.default_rng(0)
    caps = [gen.caption(1, rng, args) for _ in range(200)]
    assert len(set(caps)) > 20  # paraphrases and noise: not one caption per digit
    assert any("loop" in c for c in caps)  # a false attribute (a 1 has no loop)
    guesses = [c.split("; ")[-1] for c in caps]
    assert all("7" in g or "seven" in g for g in guesses)  # p_guess_right 0: a 1 is guessed as its confusable 7
    assert not any(c.endswith(("a 1", "a one")) for c in caps)  # p_guess_right 0: never the true digit


# ----- the late-fusion teacher ---------------------------------------------------------------
def _fixed_expert_teacher(temperatures=(1.0, 1.0)) -> LateFusionTeacher:
    """Each expert's head has zero weights, so its logits are its bias whatever the input."""
    teacher = LateFusionTeacher({"caption": 64, "image": 1}, num_classes=3, width=2, kinds={"caption": "text"}).eval()
    with torch.no_grad():
        for m, bias in (("image", [1.0, 2.0, 3.0]), ("caption", [0.0, 0.0, math.log(2.0)])):
            teacher.heads[m].weight.zero_()
            teacher.heads[m].bias.copy_(torch.tensor(bias))
        teacher.temperatures.copy_(torch.tensor(temperatures))  # modality_names order: caption, image
    return teacher


def _inputs(batch: int = 2) -> dict[str, torch.Tensor]:
    return {"image": torch.randn(batch, 1, 8, 8), "caption": torch.randint(0, 64, (batch, 5))}


def test_late_fusion_logits_are_the_sum_of_expert_log_softmaxes_by_hand():
    logits = _fixed_expert_teacher()(_inputs())  # (2, 3)
    lse_image = math.log(math.e + math.e**2 + math.e**3)  # log-softmax of [1, 2, 3]
    lse_caption = math.log(1 + 1 + 2)  # of [0, 0, log 2]
    expected = [1 - lse_image + 0 - lse_caption, 2 - lse_image + 0 - lse_caption,
                3 - lse_image + math.log(2) - lse_caption]  # [-3.7939, -2.7939, -1.1008]
    assert expected[0] == pytest.approx(-3.79390032, abs=1e-7)
    for row in logits:  # fp32 arithmetic on 3 numbers: 1e-6
        assert row.tolist() == pytest.approx(expected, abs=1e-6)
    # softmax of the sum is the normalised product of the experts' probabilities
    p_image = torch.softmax(torch.tensor([1.0, 2.0, 3.0]), 0)
    p_caption = torch.tensor([0.25, 0.25, 0.5])
    product = p_image * p_caption / (p_image * p_caption).sum()
    torch.testing.assert_close(torch.softmax(logits[0], 0), product, atol=1e-6, rtol=0)


def test_late_fusion_temperatures_and_dropped_experts():
    teacher = _fixed_expert_teacher(temperatures=(1.0, 2.0))  # image expert at T = 2
    logits = teacher(_inputs())
    lse_image = math.log(sum(math.exp(b / 2) for b in (1.0, 2.0, 3.0)))
    lse_caption = math.log(4)
    expected = [b / 2 - lse_image + c - lse_caption for b, c in zip((1.0, 2.0, 3.0), (0.0, 0.0, math.log(2)))]
    assert logits[0].tolist() == pytest.approx(expected, abs=1e-6)
    _, image_only = teacher.forward_features(_inputs(), drop=("caption",))  # the expert left out of the product
    assert image_only[0].tolist() == pytest.approx([b / 2 - lse_image for b in (1.0, 2.0, 3.0)], abs=1e-6)
    feats, none = teacher.forward_features(_inputs(), drop=("caption", "image"))
    assert torch.equal(none, torch.zeros(2, 3)) and feats.shape == (2, teacher.feature_dim)


def test_calibration_fits_an_overconfident_expert():
    """Temperature scaling: an expert whose logits are 5x too large gets T near 5."""
    teacher = LateFusionTeacher({"image": 1}, num_classes=3, width=2)
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (4000,), generator=gen)
    true_logits = torch.randn(4000, 3, generator=gen) + 1.5 * torch.nn.functional.one_hot(labels, 3)
    sampled = torch.distributions.Categorical(logits=true_logits).sample()  # labels drawn from the true probs
    teacher.calibrate({"image": 5 * true_logits}, sampled)
    assert 4.0 < float(teacher.temperatures[0]) < 6.5


def test_late_fusion_trains_each_expert_on_the_labeled_rows():
    """Gradients reach every expert, and each expert's loss is its own CE (not the product's)."""
    teacher = LateFusionTeacher({"caption": 64, "image": 1}, num_classes=3, width=2, kinds={"caption": "text"})
    x, y = _inputs(4), torch.tensor([0, 1, 2, 1])
    loss = teacher.loss(x, y)
    expected = sum(torch.nn.functional.cross_entropy(teacher.expert(m, x[m]), y) for m in ("caption", "image"))
    torch.testing.assert_close(loss, expected)
    loss.backward()
    for m in ("caption", "image"):
        assert teacher.heads[m].weight.grad.abs().sum() > 0


def test_late_fusion_teacher_exports_to_onnx(tmp_path):
    import numpy as np
    import onnxruntime as ort

    from distill_export.export import ExportOptions
    from distill_export.export.teacher_onnx import export_teacher_onnx

    torch.manual_seed(0)
    teacher = LateFusionTeacher({"caption": 64, "image": 1}, num_classes=3, width=2, kinds={"caption": "text"}).eval()
    with torch.no_grad():
        teacher.temperatures.copy_(torch.tensor([3.0, 0.5]))  # exported with the model
    x = _inputs(4)
    res = export_teacher_onnx(teacher, x, tmp_path, ExportOptions())
    sess = ort.InferenceSession(res.path, providers=["CPUExecutionProvider"])
    feeds = {i.name: x[i.name].numpy() for i in sess.get_inputs()}
    got = sess.run(None, feeds)[0]
    np.testing.assert_allclose(got, teacher(x).detach().numpy(), atol=1e-5)  # fp32 ONNX vs eager


@needs_mnist
def test_control_teacher_is_the_late_teachers_image_expert(tiny_manifest, tmp_path):
    """The self-training control reuses the late teacher's image expert instead of training an
    image-only teacher; that is only fair if training one gives the very same weights."""
    from distill_export.config import load_config
    from distill_export.nets.checkpoint import load_checkpoint
    from distill_export.launch import load_data
    from distill_export.nets.model_io import save_expert_teacher
    from distill_export.train_teacher import train_teacher

    cfg = load_config("captioned_digits", None, {"data.source": str(tiny_manifest), "teacher.epochs": 2})
    data, device = load_data(cfg)
    train_teacher(cfg, data, device, tmp_path / "late.pt", quiet=True)
    train_teacher(cfg, data, device, tmp_path / "image_only.pt", quiet=True, modalities=["image"])
    info = save_expert_teacher(tmp_path / "late.pt", "image", tmp_path / "expert.pt")
    trained = load_checkpoint(tmp_path / "image_only.pt", kind="teacher")
    derived = load_checkpoint(tmp_path / "expert.pt", kind="teacher")
    assert derived["arch_kwargs"] == trained["arch_kwargs"]
    assert trained["state_dict"].keys() == derived["state_dict"].keys()
    for key, value in trained["state_dict"].items():  # bit-identical on CPU: same init, rows and steps
        assert torch.equal(value, derived["state_dict"][key]), key
    assert info["best_epoch"] == trained["meta"]["best_epoch"]


# ----- the recipe, end to end ----------------------------------------------------------------
SMOKE = {"teacher": {"epochs": 1}, "distill": {"epochs": 1},
         "profile": {"batches": [1], "threads": [1], "warmup_s": 0.01, "min_time_s": 0.05, "min_iters": 5}}


@needs_mnist
@pytest.mark.slow
def test_recipe_smoke_runs_every_stage(tiny_manifest, tmp_path):
    """CI smoke: the captioned_digits recipe on 110 rows, 1 epoch (~20 s on 2 loaded cores)."""
    import yaml

    cfg = tmp_path / "smoke.yaml"
    cfg.write_text(yaml.safe_dump(SMOKE))
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", "--recipe", "captioned_digits", "--data", str(tiny_manifest),
                                      "--config", str(cfg), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["teacher"]["fusion"] == "late"
    assert report["dataset"]["kinds"] == {"image": "image", "caption": "text"}
    assert report["distill"]["labeled_train_rows"] == 10  # 1 of each digit's 6 (5 of 300 in the full recipe)
    assert set(report["teacher"]["modality_probe"]) == {"without_caption"}
    control = report["distill"]["self_training_control"]
    assert control["teacher_training"]["expert_of"].endswith("teacher.pt")  # the late teacher's image expert
    assert control["teacher_accuracy"] == report["teacher"]["modality_probe"]["without_caption"]
    temps = report["teacher"]["training"]["expert_temperatures"]
    assert set(temps) == {"caption", "image"} and all(t > 0 for t in temps.values())
    assert report["teacher_exports"]["onnx"]["parity"]["passed"]  # the teacher ONNX takes image + caption
    assert report["exports"]["onnx"]["parity"]["passed"]
    md = (out / "report.md").read_text()
    assert "Teacher fusion: late (a product of per-modality experts" in md
    # The recipe's second round: the caption expert re-fitted on the round-1 student's labels;
    # the control's second round from its own student, with no caption.
    rounds = report["distill"]["student_training"]["rounds"]
    assert [r["round"] for r in rounds] == [1, 2] and report["distill"]["rounds"] == 2
    assert rounds[1]["teacher"]["experts"]["caption"]["pseudo_labeled_rows"] == 50  # 60 training rows, 10 labeled
    assert control["student_training"]["rounds"][1]["teacher"]["experts"] == {}
    assert "2 distillation rounds" in md and "caption expert" in md and "Student val accuracy by round" in md
    assert "audio voices" not in md  # only the built-in demo holds voices out


@pytest.mark.slow
def test_late_fusion_on_the_image_audio_demo(tmp_path, tiny_config_file):
    """teacher.fusion is open to every recipe: the built-in image+audio demo with a late teacher
    (on the tiny config's share of the training rows)."""
    from distill_export.nets.checkpoint import load_checkpoint

    out = tmp_path / "t"
    result = CliRunner().invoke(app, ["train-teacher", "--config", str(tiny_config_file), "--teacher-fusion", "late",
                                      "--teacher-epochs", "1", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert load_checkpoint(out / "teacher.pt", kind="teacher")["arch"] == "late_fusion_teacher"
    report = json.loads((out / "report.json").read_text())
    assert report["teacher"]["fusion"] == "late" and 0.0 < report["metrics"]["teacher"]["accuracy"] <= 1.0


# ----- bad input: one line naming the row, exit 2 --------------------------------------------
def _one_line_exit_2(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in result.output, result.output


def _nothing_written(run_dir, manifest, before: bytes) -> None:
    """A refused command leaves the user's manifest as it was and trains nothing."""
    assert manifest.read_bytes() == before
    assert not (run_dir / "teacher.pt").exists() and not (run_dir / "report.json").exists()


def test_missing_manifest_names_the_tool_that_builds_it(tmp_path):
    missing = tmp_path / "captioned_digits" / "manifest.csv"
    result = CliRunner().invoke(app, ["run", "--recipe", "captioned_digits", "--data", str(missing)])
    _one_line_exit_2(result, "does not exist", "python tools/make_captioned_digits.py")


@needs_mnist
def test_empty_caption_names_its_row(tiny_manifest, tmp_path):
    rows = list(csv.DictReader(open(tiny_manifest)))
    rows[4]["caption"] = ""
    bad = tmp_path / "manifest.csv"
    with open(bad, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**r, "image": str(tiny_manifest.parent / r["image"])} for r in rows)
    before = bad.read_bytes()
    result = CliRunner().invoke(app, ["train-teacher", "--recipe", "captioned_digits", "--data", str(bad),
                                      "--out", str(tmp_path / "run")])
    _one_line_exit_2(result, f"{bad}:6: bad row: empty 'caption' cell")  # row 5 is line 6 (after the header)
    named = [line for line in result.output.splitlines() if ":6:" in line]
    assert len(named) == 1 and named[0].startswith("error:"), result.output  # one line, not a list + a summary
    _nothing_written(tmp_path / "run", bad, before)


@needs_mnist
def test_caption_column_the_teacher_was_not_built_for(tiny_manifest, tmp_path):
    from distill_export.nets.checkpoint import save_checkpoint

    kwargs = {"modalities": {"image": 1}, "num_classes": 10, "width": 2, "kinds": {"image": "image"}}
    path = tmp_path / "image_teacher.pt"
    save_checkpoint(path, LateFusionTeacher(**kwargs), "teacher", "late_fusion_teacher", kwargs,
                    {"input_shapes": {"image": [1, 28, 28]}})
    before = tiny_manifest.read_bytes()
    result = CliRunner().invoke(app, ["train-teacher", "--recipe", "captioned_digits", "--data", str(tiny_manifest),
                                      "--teacher", str(path), "--out", str(tmp_path / "run")])
    _one_line_exit_2(result, f"{tiny_manifest}:1: column 'caption' is not one teacher {path} was built for")
    assert [line.startswith("error:") for line in result.output.splitlines()].count(True) == 1, result.output
    _nothing_written(tmp_path / "run", tiny_manifest, before)


@needs_mnist
def test_wordllama_asked_for_and_not_installed(tiny_manifest, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wordllama", None)  # `import wordllama` raises ImportError
    before = tiny_manifest.read_bytes()
    result = CliRunner().invoke(app, ["train-teacher", "--recipe", "captioned_digits", "--data", str(tiny_manifest),
                                      "--config", str(_yaml(tmp_path, {"data": {"text_encoder": "wordllama"}})),
                                      "--out", str(tmp_path / "run")])
    _one_line_exit_2(result, f"{tiny_manifest}:2: text column 'caption'", "pip install 'distill-export[wordllama]'")
    assert [line.startswith("error:") for line in result.output.splitlines()].count(True) == 1, result.output
    _nothing_written(tmp_path / "run", tiny_manifest, before)


def _yaml(tmp_path: Path, data: dict) -> Path:
    import yaml

    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@needs_mnist
def test_wordllama_loads_offline_without_network(tiny_manifest, monkeypatch):
    pytest.importorskip("wordllama", reason="the optional wordllama extra is not installed (pip install 'distill-export[wordllama]')")
    from types import SimpleNamespace

    from distill_export.data.manifest import build_manifest_dataset

    def no_network(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:] if len(args) > 1 else args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket.socket, "connect_ex", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    config = SimpleNamespace(source=str(tiny_manifest), label_fraction=1.0, text_encoder="wordllama")
    data = build_manifest_dataset(config, seed=0)
    spec = data.modalities["caption"]
    assert spec.kind == "vector" and spec.shape[0] >= 64
    emb = data.train.inputs["caption"]
    assert torch.isfinite(emb).all() and emb.std() > 0
