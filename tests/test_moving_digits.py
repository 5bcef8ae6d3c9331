"""The moving-digits generator (data/moving_digits.py): deterministic lossless clips with boxes
on the centre frame, disjoint digit images per split, generated once into the cache (atomically)
and read through the manifest reader as a video column with box targets."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from distill_export.data import moving_digits as md
from distill_export.data.boxes import parse_boxes
from distill_export.data.video import ClipReader

SMALL = {"train": 12, "val": 4, "test": 4, "calibration": 3}


def frames_of(root, manifest) -> list[np.ndarray]:
    with open(manifest, newline="") as f:
        cells = [r["video"] for r in csv.DictReader(f)]
    return [np.round(ClipReader(5, None, "auto").read(root / c.split("#")[0], 2)[0] * 255).astype(np.uint8)
            for c in cells]


def test_the_same_seed_gives_the_same_clips_and_manifest(tmp_path):
    a = md.generate(tmp_path / "a", seed=3, sizes=SMALL)
    b = md.generate(tmp_path / "b", seed=3, sizes=SMALL)
    c = md.generate(tmp_path / "c", seed=4, sizes={"train": 2})
    assert a.read_text() == b.read_text()
    fa, fb = frames_of(a.parent, a), frames_of(b.parent, b)
    assert all(np.array_equal(x, y) for x, y in zip(fa, fb))
    assert (a.parent / "clips/train/00000.mkv").read_bytes() == (b.parent / "clips/train/00000.mkv").read_bytes()
    assert not np.array_equal(fa[0], frames_of(c.parent, c)[0])
    assert fa[0].shape == (5, 1, 64, 64)


def test_clips_hold_one_to_three_boxed_digits_on_the_centre_frame(tmp_path):
    manifest = md.generate(tmp_path, seed=0, sizes=SMALL)
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["split"] for r in rows] == [s for s, n in SMALL.items() for _ in range(n)]
    assert all(r["video"].endswith(".mkv#2") for r in rows)
    assert all(r["label"] == "" for r in rows if r["split"] == "calibration")
    for r in rows:
        if r["split"] == "calibration":
            continue
        boxes = parse_boxes(r["label"])
        assert 1 <= len(boxes) <= 3
        for c, x1, y1, x2, y2 in boxes:
            assert c in "0123456789" and 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 64
            assert 10 <= y2 - y1 <= 26  # sprites 18-26 px tall; the ink box within


def test_the_box_is_the_digits_ink_on_the_centre_frame():
    images, labels = md._mnist()
    pools = md.digit_pools(labels, 0)
    rng = np.random.default_rng(5)
    frames, boxes, used = md.render_clip(images, labels, pools["train"], rng)
    assert frames.shape == (5, 64, 64) and frames.dtype == np.uint8
    for d, x1, y1, x2, y2 in boxes:
        assert d in labels[used]
        inside = frames[2, y1:y2, x1:x2].astype(float)
        assert inside.max() > 150  # ink (or an occluder's noise) in the box


def test_train_val_and_test_digits_are_disjoint(tmp_path):
    _, labels = md._mnist()
    pools = md.digit_pools(labels, 0)
    assert not set(pools["train"]) & set(pools["val"]) and not set(pools["train"]) & set(pools["test"])
    assert not set(pools["val"]) & set(pools["test"]) and len(pools["train"]) == 3500
    md.generate(tmp_path, seed=0, sizes=SMALL)
    used = json.loads((tmp_path / "digits.json").read_text())["splits"]
    for split, clips in used.items():
        assert set(k for clip in clips for k in clip) <= set(pools[split].tolist())


def test_the_built_in_source_is_generated_once_and_read_as_a_manifest(tmp_path, monkeypatch):
    from distill_export.config import DataConfig
    from distill_export.data import load_dataset
    from distill_export.data.targets import BoxTargets, CategoricalTargets
    from distill_export.errors import ConfigError

    monkeypatch.setenv("DISTILL_EXPORT_CACHE", str(tmp_path))
    monkeypatch.setattr(md, "SIZES", SMALL)
    config = DataConfig(source="moving_digits", label_fraction=0.25)
    data = load_dataset(config, seed=0, targets=BoxTargets())
    folder = tmp_path / "moving_digits" / f"v{md.VERSION}-seed0"
    assert [p.name for p in (tmp_path / "moving_digits").iterdir()] == [folder.name]  # no temporary folder left
    stamp = (folder / "manifest.csv").stat().st_mtime_ns
    assert data.name == "moving_digits" and set(data.target_names) <= {str(d) for d in range(10)}
    assert data.target_names == sorted(data.target_names, key=int)  # digits in numeric order
    assert data.modalities["video"].shape == (5, 1, 64, 64) and data.modalities["image"].shape == (1, 64, 64)
    assert data.train.labels.shape[2] == 5 and 1 <= data.train.labels.shape[1] <= 3
    assert int(data.train.labeled.sum()) == 3 and len(data.calibration) == 3  # round(0.25 * 12)
    load_dataset(config, seed=0, targets=BoxTargets())
    assert (folder / "manifest.csv").stat().st_mtime_ns == stamp  # read from the cache, not generated again
    with pytest.raises(ConfigError, match="needs a task whose targets are boxes"):
        load_dataset(config, seed=0, targets=CategoricalTargets())


def test_the_tool_writes_the_clips_anywhere(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("make_moving_digits", Path(__file__).parents[1] / "tools" / "make_moving_digits.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    manifest = tool.main(["--out", str(tmp_path / "md"), "--train", "3", "--val", "1", "--test", "1", "--calibration", "0"])
    assert manifest == tmp_path / "md" / "manifest.csv" and len(manifest.read_text().splitlines()) == 6
    assert "wrote 5 clips" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        tool.main(["--out", str(tmp_path / "md")])  # not empty: refused
