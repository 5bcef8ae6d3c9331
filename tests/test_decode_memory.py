"""Memory bounded by what is held (issue 24, item 5): 8-bit images are held as uint8
(CompactColumn) and decoded into storage allocated once; the float32 values the pipeline sees are
bit-identical to the old in-memory path's; `auto` streaming decides on the held size.
tools/bench_decode_memory.py measures the peak RSS at 5,000 and 20,000 rows (docs/benchmarks.md)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
from PIL import Image

from _byo_fixtures import make_manifest, read_rows
from distill_export.config import DataConfig
from distill_export.data import load_dataset
from distill_export.data.compact import CompactColumn


def old_path(manifest, rows, split: str, size=None, rgb=False) -> tuple[torch.Tensor, float, float]:
    """What the in-memory path computed before issue 24: float32(u) / 255 per image, stacked,
    float64 mean/std of the training split, then (x - mean) / std in torch float32."""
    def column(s):
        arrays = []
        for r in rows:
            if r["split"] != s:
                continue
            im = Image.open(manifest.parent / r["image"]).convert("RGB" if rgb else "L")
            if size and (im.height, im.width) != size:
                im = im.resize((size[1], size[0]), Image.BILINEAR)
            x = np.asarray(im, dtype=np.float32) / 255.0
            arrays.append(x[None] if x.ndim == 2 else x.transpose(2, 0, 1))
        return np.stack(arrays)

    train = column("train").astype(np.float64)
    mean, std = float(train.mean()), float(train.std(ddof=1))
    return (torch.from_numpy(column(split)) - mean) / std, mean, std


@pytest.mark.parametrize("rgb", [False, True])
def test_compact_training_images_give_the_old_float_values_bit_for_bit(tmp_path, rgb):
    manifest = make_manifest(tmp_path, modalities=("image", "audio"))
    rows = read_rows(manifest)
    data = load_dataset(DataConfig(source=str(manifest), image_mode="rgb" if rgb else "auto"), seed=0)
    column = data.train.inputs["image"]
    assert isinstance(column, CompactColumn) and column.data.dtype == torch.uint8
    expect, mean, std = old_path(manifest, rows, "train", rgb=rgb)
    assert torch.equal(column[:], expect) and column.shape == expect.shape
    spec = data.modalities["image"]
    assert spec.mean == pytest.approx(mean, rel=1e-12, abs=0) and spec.std == pytest.approx(std, rel=1e-12, abs=0)
    for split in ("val", "test"):  # held compact too, normalised with the training stats
        assert isinstance(getattr(data, split).inputs["image"], CompactColumn)
        assert torch.equal(getattr(data, split).inputs["image"][:], old_path(manifest, rows, split, rgb=rgb)[0])
    rows_ = torch.tensor([3, 0, 7])
    assert torch.equal(column[rows_], expect[rows_]) and torch.equal(column[2], expect[2])
    kept = column.take(rows_)  # a subset stays compact (Split.subset, the labeled rows)
    assert isinstance(kept, CompactColumn) and torch.equal(kept[:], expect[rows_])
    sub = data.train.subset(rows_)
    assert isinstance(sub.inputs["image"], CompactColumn) and torch.equal(sub.inputs["image"][:], expect[rows_])
    assert isinstance(column.to("cpu"), CompactColumn)
    assert torch.equal(torch.nn.functional.pad(column, (1, 1)), torch.nn.functional.pad(expect, (1, 1)))
    assert float(column.mean()) == pytest.approx(float(expect.mean()), abs=1e-6)  # anything else sees float32


def test_a_resized_column_is_bit_identical_too(tmp_path):
    manifest = make_manifest(tmp_path, modalities=("image",))
    data = load_dataset(DataConfig(source=str(manifest), image_size=5), seed=0)
    assert torch.equal(data.train.inputs["image"][:], old_path(manifest, read_rows(manifest), "train", size=(5, 5))[0])


def test_a_16_bit_image_turns_the_column_into_float32(tmp_path):
    manifest = make_manifest(tmp_path, modalities=("image",))
    rows = read_rows(manifest)
    Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16)).save(manifest.parent / rows[1]["image"])  # train
    column = load_dataset(DataConfig(source=str(manifest)), seed=0).train.inputs["image"]
    assert isinstance(column, torch.Tensor) and column.dtype == torch.float32


def write_rgb_manifest(folder, n: int, side: int):
    rng = np.random.default_rng(0)
    (folder / "img").mkdir(parents=True)
    lines = ["image,label"]
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(folder / "img" / f"{i}.png")
        lines.append(f"img/{i}.png,c{i % 4}")
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
    return folder / "manifest.csv"


def test_the_decode_peak_is_close_to_what_is_held(tmp_path):
    """numpy's allocations (traced by tracemalloc): the peak while decoding 600 48x48 RGB rows stays
    within 1.5x the held bytes + 3 MB (the old path: ~5x the float32 size, i.e. ~20x the uint8 one)."""
    manifest = write_rgb_manifest(tmp_path, 600, 48)
    load_dataset(DataConfig(source=str(manifest)), seed=0)  # imports and caches: not part of the peak
    tracemalloc.start()
    data = load_dataset(DataConfig(source=str(manifest)), seed=0)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    column = data.train.inputs["image"]
    held = sum(getattr(data, s).inputs["image"].data.numel() for s in ("train", "val", "test"))  # uint8 bytes
    assert isinstance(column, CompactColumn) and column.data.numel() == len(data.train) * 3 * 48 * 48
    assert peak < 1.5 * held + 3 * 2**20, (peak, held)


def test_auto_streaming_decides_on_the_held_size(tmp_path, capsys):
    """84 training rows of 96x96 RGB: 2.2 MB held as uint8 (8.9 MB as float32, what auto used to count)."""
    manifest = write_rgb_manifest(tmp_path, 100, 96)
    data = load_dataset(DataConfig(source=str(manifest), stream_above_mb=5), seed=0)
    assert not data.info["streaming"]
    assert "84 training rows, ~2 MB held decoded (within data.stream_above_mb=5)" in capsys.readouterr().err
    assert load_dataset(DataConfig(source=str(manifest), stream_above_mb=1), seed=0).info["streaming"]
