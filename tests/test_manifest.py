"""Manifest validation: one test per kind of bad input, the report (file:line: problem),
--skip-bad-rows, splits drawn with the seed, unlabeled rows, and the CLI's exit code."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from _byo_fixtures import make_manifest, read_rows, tone, write_rows, write_wav
from distill_export.config import DataConfig
from distill_export.data import IGNORE_INDEX, load_dataset
from distill_export.data.manifest import ManifestError
from distill_export.errors import DataError


def load(path: Path, **kw):
    return load_dataset(DataConfig(source=str(path), **kw), seed=0)


@pytest.fixture
def manifest(tmp_path) -> Path:
    return make_manifest(tmp_path, modalities=("image", "audio"))


def edit(path: Path, line: int, **changes) -> Path:
    """Change the row on `line` (the header is line 1)."""
    rows = read_rows(path)
    rows[line - 2].update(changes)
    return write_rows(path, rows)


def problems_of(path: Path, **kw) -> list[tuple[int, str]]:
    with pytest.raises(ManifestError) as info:
        load(path, **kw)
    return [(p.line, p.message) for p in info.value.problems]


def test_good_manifest(manifest):
    data = load(manifest)
    assert data.target_names == ["cat", "dog", "owl"]
    assert data.info["sizes"] == {"train": 12, "val": 3, "test": 3}
    assert data.modalities["audio"].shape == (1, 32, 32)
    assert abs(float(data.train.inputs["image"].mean())) < 1e-4  # normalised with train stats


def test_missing_file(manifest):
    (manifest.parent / "img" / "cat_2.png").unlink()
    assert problems_of(manifest) == [(4, f"image file not found: {manifest.parent / 'img' / 'cat_2.png'}")]


def test_unreadable_image(manifest):
    (manifest.parent / "img" / "dog_1.png").write_bytes(b"garbage")
    [(line, msg)] = problems_of(manifest)
    assert line == 9 and "not an image" in msg


def test_empty_image(manifest):
    (manifest.parent / "img" / "owl_0.png").write_bytes(b"")
    [(line, msg)] = problems_of(manifest)
    assert line == 14 and "empty" in msg


def test_unreadable_wav(manifest):
    (manifest.parent / "wav" / "cat_0.wav").write_bytes(b"RIFFxxxxWAVE")
    [(line, msg)] = problems_of(manifest)
    assert line == 2 and "cannot read WAV" in msg


def test_wav_with_another_sample_rate_is_resampled(manifest, capsys):
    write_wav(manifest.parent / "wav" / "cat_0.wav", tone(400, 16000), 16000)
    data = load(manifest)
    assert data.info["resampled_wavs"] == {"16000": 1}
    assert "resampled 1 WAV files to 8000 Hz (from 16000 Hz)" in capsys.readouterr().err


def test_unknown_label(manifest):
    edit(manifest, 7, label="emu")  # a test row whose label no training row has
    assert problems_of(manifest) == [(7, "unknown label 'emu': no training row has it")]


def test_missing_label_outside_train(manifest):
    edit(manifest, 6, label="")  # cat_4 is the val row
    [(line, msg)] = problems_of(manifest)
    assert line == 6 and "missing label in the val split" in msg


def test_unknown_split_and_empty_cell(manifest):
    edit(manifest, 3, split="holdout")
    edit(manifest, 4, image="")
    assert problems_of(manifest) == [
        (3, "unknown split 'holdout' (train, val, test or calibration)"), (4, "empty 'image' cell")]


def test_malformed_rows(tmp_path, manifest):
    with open(manifest, "a") as f:
        f.write("img/cat_0.png,wav/cat_0.wav,cat,train,surplus\n")
    [(line, msg)] = problems_of(manifest)
    assert line == 20 and "5 fields, the header has 4" in msg
    jsonl = make_manifest(tmp_path / "j", fmt="jsonl", modalities=("image",))
    with open(jsonl, "a") as f:
        f.write("{not json\n")
    [(line, msg)] = problems_of(jsonl)
    assert line == 19 and "not valid JSON" in msg  # JSONL has no header line


def test_empty_split(manifest):
    rows = [r for r in read_rows(manifest) if r["split"] != "test"]
    write_rows(manifest, rows)
    with pytest.raises(DataError, match="no rows in the test split"):
        load(manifest)


def test_one_class_only(manifest):
    write_rows(manifest, [r for r in read_rows(manifest) if r["label"] == "cat"])
    with pytest.raises(DataError, match="one class only"):
        load(manifest)


def test_no_label_column(tmp_path, manifest):
    rows = [{k: v for k, v in r.items() if k != "label"} for r in read_rows(manifest)]
    with pytest.raises(DataError, match="no 'label' column"):
        load(write_rows(tmp_path / "nolabel.csv", rows))


def test_report_lists_every_bad_row_then_skip(manifest, capsys):
    (manifest.parent / "img" / "cat_1.png").unlink()
    edit(manifest, 12, label="emu")
    with pytest.raises(ManifestError, match="2 bad rows .*--skip-bad-rows"):
        load(manifest)
    err = capsys.readouterr().err
    assert f"{manifest}:3: bad row: image file not found" in err
    assert f"{manifest}:12: bad row: unknown label 'emu'" in err
    data = load(manifest, skip_bad_rows=True)
    assert data.info["skipped_rows"] == 2 and len(data.train) + len(data.val) + len(data.test) == 16
    assert "skipping" in capsys.readouterr().err


def test_drawn_splits_unlabeled_rows_and_label_fraction(tmp_path):
    path = make_manifest(tmp_path, per_class=10, split_column=False, unlabeled=4, modalities=("image",))
    a, b = load(path), load(path)
    assert a.info["sizes"] == {"train": 28, "val": 3, "test": 3}  # 1+1 of 10 per class held out
    assert torch.equal(a.test.inputs["image"], b.test.inputs["image"])  # same seed, same split
    assert int((a.train.labels == IGNORE_INDEX).sum()) == 4  # unlabeled rows serve distillation only
    other = load_dataset(DataConfig(source=str(path)), seed=1)
    assert not torch.equal(a.test.inputs["image"], other.test.inputs["image"])
    few = load(path, label_fraction=0.25)
    assert int(few.train.labeled.sum()) == 6  # 2 of 8 per class; the 4 unlabeled stay unlabeled


def test_cli_reports_and_exits_2(manifest):
    from typer.testing import CliRunner

    from distill_export.cli import app

    (manifest.parent / "wav" / "dog_3.wav").unlink()
    result = CliRunner().invoke(app, ["train-teacher", "--data", str(manifest), "--out",
                                      str(manifest.parent / "run"), "--quiet"])
    assert result.exit_code == 2
    assert f"{manifest}:11: bad row: audio file not found" in result.output
    assert "error:" in result.output and "--skip-bad-rows" in result.output
    assert not (manifest.parent / "run" / "teacher.pt").exists()  # no training on broken data


def test_max_train_rows_subsamples_before_decoding(manifest):
    (manifest.parent / "img" / "dog_2.png").unlink()  # never decoded if sampled out...
    data = load(manifest, max_train_rows=2, skip_bad_rows=True)
    assert len(data.train) <= 2 and data.info["train_rows_subsampled_from"] == 12
    assert data.target_names == ["cat", "dog", "owl"]  # val/test labels stay known
    assert len(data.val) == 3 and len(data.test) == 3


def test_run_end_to_end_on_an_image_audio_text_manifest(tmp_path, tiny_config_file):
    """The whole pipeline on user data with a text column: the profiler must feed the
    teacher token ids, not floats."""
    import json

    from typer.testing import CliRunner

    from distill_export.cli import app

    manifest = make_manifest(tmp_path / "data", per_class=6, unlabeled=3)
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", "--data", str(manifest), "--config", str(tiny_config_file),
                                      "--format", "onnx", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert {r["model"] for r in report["latency"] if "p50_ms" in r} >= {"teacher", "student"}
    assert report["exports"]["onnx"]["parity"]["passed"]
