"""Behaviour-level tests of streaming's promises (issue 25, data/streaming.py), fast enough to
run per mutant:

- a streamed training split holds the in-memory one: the same normalisation statistics, shapes
  and resampling counts, and the same values however a column is indexed (an int, a slice, rows,
  a subset, a whole-split pass as train.predict makes, a batch fetcher's batches, epoch after
  epoch), for images (gray or mixed), audio and text, with 0 or 1 workers;
- the up-front scan reports the same bad rows as the in-memory decode, whatever the workers;
- a row that changed after the scan is one DataError naming manifest:line;
- the settings and augmentation names resolve as documented.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from _byo_fixtures import class_image, make_manifest, read_rows, tone, write_png, write_rows, write_wav
from distill_export.config import DataConfig
from distill_export.data import load_dataset
from distill_export.data.manifest import ManifestError
from distill_export.data.streaming import (
    RowSource, StreamSettings, StreamedModality, StreamedSplit, batch_fetcher, is_streamed, worker_augment,
)
from distill_export.errors import DataError
from distill_export.train import predict

ATOL = 1e-6  # streamed stats are summed per row in float64, in-memory ones over the array


def load(path, **kw):
    return load_dataset(DataConfig(source=str(path), **kw), seed=0)


def _train_rows(manifest):
    rows = read_rows(manifest)
    return [(i + 2, r) for i, r in enumerate(rows) if r["split"] == "train"]


@pytest.fixture
def manifest(tmp_path):
    """Gray images, audio (two WAVs at 16 kHz: resampled) and text, with unlabeled rows."""
    path = make_manifest(tmp_path, per_class=6, modalities=("image", "audio", "text"), unlabeled=2)
    for _, row in _train_rows(path)[1:3]:
        write_wav(path.parent / row["audio"], tone(500, sample_rate=16000), sample_rate=16000)
    # The text column first (the order of columns must not matter), and one text cell that
    # happens to name a file: text is keyed by its words, never by that file.
    rows = [{"text": r["text"], **{k: v for k, v in r.items() if k != "text"}} for r in read_rows(path)]
    rows[0]["text"] = "notes.txt"
    (path.parent / "notes.txt").write_text("a file a text cell names")
    return write_rows(path, rows)


def _same(a, b):
    if b.dtype == torch.int64:  # token ids: exactly
        assert a.dtype == torch.int64 and torch.equal(a, b)
    else:
        torch.testing.assert_close(a, b.float(), atol=ATOL, rtol=0)


def _decoded_in_workers(monkeypatch):
    """From now on a column whose data has workers decodes only in them, never in this process."""
    decode = RowSource.decode

    def checked(self, i, modality):
        assert self.workers == 0 or torch.utils.data.get_worker_info() is not None, "decoded in the main process"
        return decode(self, i, modality)

    monkeypatch.setattr(RowSource, "decode", checked)


def _check_equal(memory, streamed, monkeypatch):
    assert memory.info["resampled_wavs"] == streamed.info["resampled_wavs"] == {"16000": 2}
    for m, spec in memory.modalities.items():
        s = streamed.modalities[m]
        assert s.shape == spec.shape and s.mean == pytest.approx(spec.mean, rel=1e-9, abs=1e-12)
        assert s.std == pytest.approx(spec.std, rel=1e-9)
    cols, mem = streamed.train.inputs, {m: v[:] for m, v in memory.train.inputs.items()}
    n = len(memory.train)
    assert is_streamed(cols) and is_streamed(cols["image"]) and not is_streamed(mem) and not is_streamed(mem["image"])
    rows = torch.tensor([n - 1, 0, 3, 3])
    for m, col in cols.items():
        assert isinstance(col, StreamedModality) and len(col) == n and col.shape == (n, *memory.modalities[m].shape)
        _same(col[2], mem[m][2])
        _same(col[1:4], mem[m][1:4])
        _same(col[rows], mem[m][rows])
        _same(col.take(rows)[torch.tensor([1, 2])], mem[m][rows[1:3]])
        _same(col.to("cpu")[[0, n - 1]], mem[m][[0, n - 1]])
        _same(col.take([3, 1])[:], mem[m][[3, 1]])  # rows as a list
        assert col.device == torch.device("cpu") and col.to("cpu").shape == col.shape
        # Decoded rows land on the column's device, also after take() (meta: a device without data).
        meta = col.to("meta")
        assert meta.device == torch.device("meta") and meta.take(rows).device == torch.device("meta")
        assert meta[1].device.type == meta[rows].device.type == meta.take(rows)[0:2].device.type == "meta"
        assert meta[rows].shape == mem[m][rows].shape
        (batch,) = batch_fetcher(meta, StreamSettings())([rows])
        assert batch.device.type == "meta" and batch.shape == mem[m][rows].shape
    sub = streamed.train.subset(rows)
    assert isinstance(sub, StreamedSplit) and torch.equal(sub.labels, memory.train.labels[rows])
    for m in cols:
        assert isinstance(sub.inputs[m], StreamedModality)
        _same(sub.inputs[m][:], mem[m][rows])
    # A whole-split pass (the teacher's outputs, calibration): in order, in batches of 3.
    fn = lambda b: (b["image"].flatten(1), b["audio"].flatten(1).float().sum(1, keepdim=True))  # noqa: E731
    with monkeypatch.context() as patch:
        _decoded_in_workers(patch)
        feats, logits = predict(fn, cols, n, batch_size=3)
        one = predict(lambda b: (b, b.flatten(1)[:, :2]), cols["image"], n, batch_size=4)  # a single column
    feats_m, logits_m = predict(fn, mem, n, batch_size=3)
    torch.testing.assert_close(feats, feats_m, atol=ATOL, rtol=0)
    torch.testing.assert_close(logits, logits_m, atol=1e-3, rtol=1e-6)
    torch.testing.assert_close(one[0], mem["image"].float(), atol=ATOL, rtol=0)
    # A batch fetcher's batches, one epoch's order then another's (its sampler is reset per call).
    fetch = batch_fetcher(dict(cols), StreamSettings(num_workers=streamed.train.inputs["image"].source.workers))
    for seed in (0, 1):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        batches = [order[s : s + 4] for s in range(0, n, 4)]
        got = list(fetch(batches))
        assert len(got) == len(batches)
        for b, batch in zip(batches, got):
            assert set(batch) == set(mem)
            for m in mem:
                _same(batch[m], mem[m][b])
    single = list(batch_fetcher(cols["text"], StreamSettings())([torch.tensor([2, 0]), torch.tensor([4])]))
    assert len(single) == 2 and torch.equal(single[0], mem["text"][[2, 0]]) and torch.equal(single[1], mem["text"][[4]])
    flipped = batch_fetcher(cols["image"], StreamSettings(), augment=lambda t: t.flip(-1))  # a per-sample transform
    _same(next(flipped([rows])), mem["image"][rows].flip(-1))
    assert len({col.fingerprint() for col in cols.values()}) == len(cols)  # every column keys, text too


# One test for both worker counts: mutmut links a test to the code it runs in this process, and
# with workers the scan's per-row code runs in them only.
def test_streamed_split_equals_the_in_memory_one_however_read(manifest, monkeypatch):
    memory = load(manifest, streaming="off")
    for workers in (0, 1):
        _check_equal(memory, load(manifest, streaming="on", num_workers=workers), monkeypatch)


def test_a_column_with_one_rgb_image_is_rgb_and_gray_rows_count_thrice(manifest, monkeypatch):
    line, row = _train_rows(manifest)[2]
    write_png(manifest.parent / row["image"], class_image(1, seed=3, rgb=True))
    memory = load(manifest, streaming="off")
    for workers in (0, 1):
        streamed = load(manifest, streaming="on", num_workers=workers)
        assert streamed.modalities["image"].shape[0] == 3
        _check_equal(memory, streamed, monkeypatch)


def test_a_video_column_with_one_rgb_clip_streams_as_in_memory(tmp_path):
    from _video_fixtures import clip_frames, make_video_manifest
    from distill_export.data.video import write_video

    manifest = make_video_manifest(tmp_path, per_split=(4, 1, 1))
    write_video(tmp_path / read_rows(manifest)[1]["video"], clip_frames(5, seed=1, rgb=True))
    memory = load(manifest, streaming="off")
    for workers in (0, 1):
        streamed = load(manifest, streaming="on", num_workers=workers)
        for m, spec in memory.modalities.items():
            s = streamed.modalities[m]
            assert s.shape == spec.shape and s.mean == pytest.approx(spec.mean, rel=1e-9)
            assert s.std == pytest.approx(spec.std, rel=1e-9)
            _same(streamed.train.inputs[m][:], memory.train.inputs[m][:])
        assert streamed.modalities["video"].shape == (5, 3, 16, 16)


def test_a_constant_column_normalises_by_one(tmp_path):
    path = make_manifest(tmp_path, per_class=6, modalities=("image",))
    for row in read_rows(path):
        write_png(path.parent / row["image"], np.full((8, 8), 77, dtype=np.uint8))
    memory, streamed = load(path, streaming="off"), load(path, streaming="on")
    assert streamed.modalities["image"].std == memory.modalities["image"].std == 1.0
    assert streamed.modalities["image"].mean == pytest.approx(memory.modalities["image"].mean, rel=1e-12)
    torch.testing.assert_close(streamed.train.inputs["image"][:], memory.train.inputs["image"][:].float(), atol=ATOL, rtol=0)


def test_a_text_cell_is_keyed_by_its_words_not_by_a_file_it_names(manifest):
    def key():
        return load(manifest, streaming="on").train.inputs["text"].fingerprint()

    before = key()
    notes = manifest.parent / "notes.txt"
    st = os.stat(notes)
    notes.write_text("other words, and more of them")
    os.utime(notes, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert key() == before


@pytest.mark.parametrize("workers", [0, 1])
def test_the_scan_reports_the_in_memory_bad_rows(manifest, workers):
    bad = _train_rows(manifest)[1:3]
    (manifest.parent / bad[0][1]["image"]).write_bytes(b"not a png")
    (manifest.parent / bad[1][1]["audio"]).write_bytes(b"")
    streamed = pytest.raises(ManifestError, load, manifest, streaming="on", num_workers=workers).value.problems
    memory = pytest.raises(ManifestError, load, manifest, streaming="off").value.problems
    assert [p.line for p in streamed] == [bad[0][0], bad[1][0]]
    assert [(p.line, p.message) for p in streamed] == [(p.line, p.message) for p in memory]
    kept = load(manifest, streaming="on", num_workers=workers, skip_bad_rows=True)
    assert len(kept.train) == len(load(manifest, streaming="off", skip_bad_rows=True).train) == len(_train_rows(manifest)) - 2


@pytest.mark.parametrize("change", ["garbage", "other_shape"])
@pytest.mark.parametrize("read", ["item", "slice", "fetch"])
def test_a_row_changed_after_the_scan_is_one_error_naming_its_line(manifest, change, read):
    streamed = load(manifest, streaming="on")
    line, row = _train_rows(manifest)[3]
    target = manifest.parent / row["image"]
    if change == "garbage":
        target.write_bytes(b"not a png")
    else:
        write_png(target, class_image(0, seed=1, rgb=True))  # RGB in a gray column: 3 channels, not 1
    col = streamed.train.inputs["image"]
    attempt = {"item": lambda: col[3], "slice": lambda: col[0:5],
               "fetch": lambda: list(batch_fetcher(col, StreamSettings())([torch.tensor([0, 1]), torch.tensor([2, 3])]))}
    with pytest.raises(DataError) as info:
        attempt[read]()
    message = str(info.value)
    assert message.startswith(f"{manifest}:{line}: ") and "\n" not in message
    if change == "other_shape":
        assert f"image decodes to shape {(3, *col.shape[2:])}, the other rows to {tuple(col.shape[1:])}" in message
    else:
        assert col[2].shape == col.shape[1:]  # the other rows still decode


def test_stream_settings_follow_the_data_config():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    cases = [({}, cpu, StreamSettings(0, False, True)), ({}, cuda, StreamSettings(0, True, True)),
             ({"num_workers": 3, "pin_memory": "true", "persistent_workers": False}, cpu, StreamSettings(3, True, False)),
             ({"pin_memory": "false"}, cuda, StreamSettings(0, False, True))]
    for kw, device, want in cases:
        assert StreamSettings.from_config(DataConfig(**kw), device) == want, (kw, device)
    assert StreamSettings.from_config(object(), cpu) == StreamSettings(0, False, True)  # a config without the fields
    assert StreamSettings.from_config(object(), cuda) == StreamSettings(0, True, True)  # pin_memory's default: auto
    assert StreamSettings() == StreamSettings(0, False, True)


def test_worker_augmentation_names():
    for name in ("none", "", None):
        assert worker_augment(name, (1, 8, 8)) is None
    x = torch.arange(48, dtype=torch.float32).reshape(1, 6, 8)
    for name in ("shift", "crop"):
        for shape in ((1, 6, 8), (5, 1, 6, 8)):  # a sample's shape or the column's: the last two axes
            assert worker_augment(name, shape)(x).shape == x.shape
    with pytest.raises(ValueError, match="'flip'"):
        worker_augment("flip", (1, 8, 8))


def test_worker_augmentation_needs_a_single_column(manifest):
    cols = load(manifest, streaming="on").train.inputs
    with pytest.raises(ValueError, match="^worker augmentation applies to a single streamed column$"):
        batch_fetcher(dict(cols), StreamSettings(), augment=worker_augment("shift", cols["image"].shape))
