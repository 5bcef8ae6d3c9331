"""Streaming manifests (data/streaming.py): the same batches as the in-memory path for the same
seed, the same training result, a decode failure in a worker names the manifest row, and the
up-front scan still lists bad rows (or skips them with --skip-bad-rows)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from _byo_fixtures import class_image, make_manifest, read_rows, write_png, write_rows
from distill_export.config import DataConfig
from distill_export.data import load_dataset
from distill_export.data.manifest import ManifestError
from distill_export.data.streaming import StreamSettings, StreamedModality, batch_fetcher
from distill_export.errors import DataError
from distill_export.train import TrainSpec, train_loop
from distill_export.teacher_cache import CACHE_DIR, INDEX_FILE

# Streamed stats are summed per row in float64 and in-memory ones by numpy over the whole
# array: the same numbers up to float64 rounding, so normalised float32 values agree to ~1e-7.
ATOL = 1e-6


def load(path: Path, **kw):
    return load_dataset(DataConfig(source=str(path), **kw), seed=0)


@pytest.fixture
def manifest(tmp_path) -> Path:
    path = make_manifest(tmp_path, per_class=8, modalities=("image", "audio"), unlabeled=5)
    rows = read_rows(path)  # one RGB image: the column becomes RGB, gray rows are repeated
    write_png(path.parent / rows[0]["image"], class_image(0, seed=0, rgb=True))
    return path


def epoch_batches(n_rows: int, batch_size: int, seed: int) -> list[torch.Tensor]:
    """train_loop's first-epoch batches (the same generator and draw)."""
    order = torch.randperm(n_rows, generator=torch.Generator().manual_seed(seed))
    return [order[s : s + batch_size] for s in range(0, n_rows, batch_size)]


@pytest.mark.parametrize("workers", [0, 2])
def test_streaming_gives_the_in_memory_batches(manifest, workers):
    memory = load(manifest, streaming="off")
    streamed = load(manifest, streaming="on", num_workers=workers)
    assert not memory.info["streaming"] and streamed.info["streaming"]
    assert streamed.modalities == {**streamed.modalities}  # specs built
    for m, spec in memory.modalities.items():
        s = streamed.modalities[m]
        assert s.shape == spec.shape and s.mean == pytest.approx(spec.mean, rel=1e-12)
        assert s.std == pytest.approx(spec.std, rel=1e-9)
    assert torch.equal(memory.train.labels, streamed.train.labels)
    for split in ("val", "test"):  # held in memory either way
        for m in memory.modalities:
            torch.testing.assert_close(getattr(streamed, split).inputs[m][:], getattr(memory, split).inputs[m][:],
                                       atol=ATOL, rtol=0)  # [:]: a compact 8-bit column as float32
    batches = epoch_batches(len(memory.train), 5, seed=3)
    columns = streamed.train.inputs
    assert isinstance(columns["image"], StreamedModality)
    fetch = batch_fetcher(dict(columns), StreamSettings(num_workers=workers))
    got = list(fetch(batches))
    assert len(got) == len(batches)
    for rows, batch in zip(batches, got):
        for m in memory.modalities:
            torch.testing.assert_close(batch[m], memory.train.inputs[m][rows], atol=ATOL, rtol=0)
    # Indexing a streamed column directly (what the teacher cache and calibration do) agrees too.
    torch.testing.assert_close(columns["image"][:4], memory.train.inputs["image"][:4], atol=ATOL, rtol=0)


def test_a_training_run_streamed_matches_in_memory(manifest):
    """train_loop with fetch (workers decode) == train_loop indexing tensors: same loss history."""
    memory = load(manifest, streaming="off")
    streamed = load(manifest, streaming="on", num_workers=1)
    spec = TrainSpec(epochs=2, lr=1e-2, batch_size=4, seed=1)

    def train(data, streaming):
        torch.manual_seed(0)
        x = data.train.inputs["image"]
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(x.shape[1] * 8 * 8, 3))
        labels = data.train.labels.clamp(min=0)

        def batch_loss(rows, xb=None):
            xb = x[rows] if xb is None else xb
            return torch.nn.functional.cross_entropy(model(xb), labels[rows])

        fetch = batch_fetcher(x, StreamSettings(num_workers=1)) if streaming else None
        result = train_loop([model], batch_loss, len(labels), lambda: 0.5, spec, "t", quiet=True, fetch=fetch)
        return [h["train_loss"] for h in result.history], model[1].weight.detach().clone()

    losses_m, w_m = train(memory, False)
    losses_s, w_s = train(streamed, True)
    assert losses_s == pytest.approx(losses_m, abs=1e-5)
    torch.testing.assert_close(w_s, w_m, atol=1e-5, rtol=0)


def test_a_worker_decode_failure_names_the_manifest_row(manifest):
    streamed = load(manifest, streaming="on", num_workers=1)
    rows = read_rows(manifest)
    train_lines = [i + 2 for i, r in enumerate(rows) if r["split"] == "train"]
    victim = train_lines[3]  # the 4th training row: position 3 of the streamed split
    (manifest.parent / rows[victim - 2]["image"]).write_bytes(b"not a png")  # changed after the scan
    fetch = batch_fetcher(streamed.train.inputs["image"], StreamSettings(num_workers=1))
    with pytest.raises(DataError) as info:
        list(fetch([torch.tensor([0, 1]), torch.tensor([2, 3])]))
    message = str(info.value)
    assert f"{manifest}:{victim}:" in message and "\n" not in message


def test_the_scan_lists_bad_rows_in_workers_and_skip_bad_rows_skips_them(manifest):
    rows = read_rows(manifest)
    line = next(i + 2 for i, r in enumerate(rows) if r["split"] == "train")
    (manifest.parent / rows[line - 2]["image"]).write_bytes(b"")
    with pytest.raises(ManifestError) as info:
        load(manifest, streaming="on", num_workers=2)
    assert [p.line for p in info.value.problems] == [line]
    memory_problems = pytest.raises(ManifestError, load, manifest, streaming="off").value.problems
    assert [(p.line, p.message) for p in info.value.problems] == [(p.line, p.message) for p in memory_problems]
    kept = load(manifest, streaming="on", num_workers=2, skip_bad_rows=True)
    assert len(kept.train) == len(load(manifest, streaming="off", skip_bad_rows=True).train)


def test_auto_streams_above_the_threshold_and_says_so(manifest, capsys):
    assert not load(manifest).info["streaming"]  # a few KB: in memory
    assert "decoded into memory" in capsys.readouterr().err
    assert load(manifest, stream_above_mb=0).info["streaming"]
    assert "streamed from disk" in capsys.readouterr().err


def test_streaming_fingerprint_changes_with_a_file(manifest):
    a = load(manifest, streaming="on").fingerprint()
    assert load(manifest, streaming="on").fingerprint() == a
    rows = read_rows(manifest)
    rows[1]["image"], rows[2]["image"] = rows[2]["image"], rows[1]["image"]
    write_rows(manifest, rows)
    assert load(manifest, streaming="on").fingerprint() != a


def test_an_image_size_the_student_cannot_take_is_one_line(manifest, tmp_path):
    from typer.testing import CliRunner

    from distill_export.cli import app

    cfg = tmp_path / "small.yaml"
    cfg.write_text("data: {image_size: 2}\n")
    result = CliRunner().invoke(app, ["run", "--data", str(manifest), "--config", str(cfg), "--student", "tiny_cnn",
                                      "--out", str(tmp_path / "r"), "--quiet"])
    assert result.exit_code == 2, result.output
    line = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(line) == 1 and "student tiny_cnn cannot take image inputs of shape (3, 2, 2)" in line[0]
    assert "data.image_size=2" in line[0] and not (tmp_path / "r").exists()


@pytest.mark.parametrize("augment", ["none", "shift", "crop, mix: mixup_cutmix"])
@pytest.mark.slow
def test_a_streamed_run_completes_and_says_so(manifest, tmp_path, augment):
    """The whole pipeline on a streamed training split: teacher, cache (or the online teacher with
    worker-side augmentation), student, export, report."""
    import json

    from typer.testing import CliRunner

    from distill_export.cli import app

    cfg = tmp_path / "s.yaml"
    cfg.write_text("data: {streaming: 'on', num_workers: 1}\nteacher: {epochs: 1}\n"
                   f"distill: {{epochs: 1, self_training_control: false, augment: {augment}}}\nexport: {{formats: [onnx]}}\n"
                   "profile: {batches: [1], threads: [1], warmup_s: 0.01, min_time_s: 0.05, min_iters: 5}\n")
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", "--data", str(manifest), "--config", str(cfg), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["dataset"]["streaming"] is True and report["distill"]["streaming"] is True
    if augment == "none":
        assert report["distill"]["teacher_cache"]["status"] == "miss"  # computed over the streamed rows, then written
        assert (out / CACHE_DIR / INDEX_FILE).is_file()
    else:
        assert report["distill"]["teacher_cache"]["status"] == "not used"  # the teacher sees each augmented batch
    assert report["exports"]["onnx"]["parity"]["passed"]


def test_streamed_shift_augmentation_runs_per_sample_in_the_workers(manifest):
    """distill.augment=shift on streamed data: torchvision.transforms.v2 in the workers, each sample a
    translation of the in-memory one by at most ±2 px (edge-replicated), as the batch transform does."""
    import torch.nn.functional as F

    from distill_export.data.augment import MAX_SHIFT
    from distill_export.data.streaming import worker_augment

    memory = load(manifest, streaming="off")
    streamed = load(manifest, streaming="on", num_workers=1)
    column = streamed.train.inputs["image"]
    torch.manual_seed(0)
    rows = torch.arange(len(memory.train))
    fetch = batch_fetcher(column, StreamSettings(num_workers=1), augment=worker_augment("shift", column.shape))
    (got,) = list(fetch([rows]))
    m = MAX_SHIFT
    padded = F.pad(memory.train.inputs["image"], (m, m, m, m), mode="replicate")
    h, w = got.shape[-2:]
    shifts = []
    for i in range(len(rows)):
        found = [(dy, dx) for dy in range(2 * m + 1) for dx in range(2 * m + 1)
                 if torch.allclose(padded[i, :, dy : dy + h, dx : dx + w], got[i], atol=ATOL, rtol=0)]
        assert found, f"sample {i} is not a ±{m} px shift of its row"
        shifts.append(found)
    assert any((m, m) not in found for found in shifts)  # some samples did move
