"""Video columns (data/video.py, the manifest reader): lossless clips round-trip bit-exactly, a
video column gives a clip (T, C, H, W) and its target frame (C, H, W), streaming decodes the same
batches in DataLoader workers, and each bad clip is one line naming its manifest row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from _byo_fixtures import read_rows, write_png, write_rows
from _video_fixtures import SIZE, clip_frames, make_video_manifest, write_frame_folder
from distill_export.config import DataConfig
from distill_export.data import load_dataset
from distill_export.data.loaders import image_to_array, kind_of_column, read_image
from distill_export.data.manifest import ManifestError
from distill_export.data.manifest_decode import frame_modality
from distill_export.data.streaming import StreamSettings, StreamedModality, batch_fetcher
from distill_export.data.video import ClipReader, clip_window, write_video
from distill_export.errors import DataError

ATOL = 1e-6  # streamed stats are summed per row, in-memory ones over the array (as test_streaming)


def load(path: Path, **kw):
    return load_dataset(DataConfig(source=str(path), **kw), seed=0)


def to_uint8(x: np.ndarray) -> np.ndarray:
    return np.round(x * 255).astype(np.uint8)


@pytest.mark.parametrize("rgb", [False, True])
def test_ffv1_clips_round_trip_bit_exactly(tmp_path, rgb):
    frames = clip_frames(7, seed=3, rgb=rgb)
    path = write_video(tmp_path / "c.mkv", frames)
    clip, frame = ClipReader(7, None, "auto").read(path, None)
    got = to_uint8(clip).transpose(0, 2, 3, 1)  # (T, H, W, C)
    assert np.array_equal(got, frames if rgb else frames[..., None])
    assert np.array_equal(to_uint8(frame), to_uint8(clip[3]))
    write_video(tmp_path / "again.mkv", frames)  # bitexact: the same frames, the same file
    assert (tmp_path / "c.mkv").read_bytes() == (tmp_path / "again.mkv").read_bytes()


def test_the_clip_is_centred_on_the_target_frame_and_repeats_the_ends(tmp_path):
    path = write_video(tmp_path / "c.mkv", clip_frames(7))
    reader = ClipReader(5, None, "grayscale")
    assert clip_window(7, 0, 5) == [0, 0, 0, 1, 2] and clip_window(7, 6, 5) == [4, 5, 6, 6, 6]
    clip, frame = reader.read(path, None)  # no index: the centre frame, 7 // 2 = 3
    assert clip.shape == (5, 1, SIZE, SIZE) and frame.shape == (1, SIZE, SIZE)
    assert np.array_equal(frame, clip[2])
    assert to_uint8(frame)[0, 4, 9] == 203  # the square of frame 3 reaches x = 10
    clip, frame = reader.read(path, 0)
    assert [to_uint8(f)[0, 4, 7] for f in clip] == [200, 200, 200, 201, 202]  # frame 0 repeated before the start


def test_a_folder_of_frames_reads_like_the_video(tmp_path):
    frames = clip_frames(5, seed=1)
    folder = write_frame_folder(tmp_path / "frames", frames)
    video = write_video(tmp_path / "c.mkv", frames)
    a = ClipReader(3, None, "auto").read(folder, 1)
    b = ClipReader(3, None, "auto").read(video, 1)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_video_columns_are_found_by_name_or_extension():
    assert kind_of_column("video", ["frames/0001"]) == "video"
    assert kind_of_column("front_video", ["x"]) == "video"
    assert kind_of_column("clip", ["a/1.mkv#2", "a/2.MP4", "b.webm#0"]) == "video"
    assert kind_of_column("clip", ["a/1.mkv#2", "a/2.png"]) == "text"
    assert [frame_modality(c) for c in ("video", "front_video", "video_left", "clip")] == \
        ["image", "front_image", "image_left", "clip_image"]


def test_a_video_column_gives_the_clip_and_its_target_frame(tmp_path):
    manifest = make_video_manifest(tmp_path, index=1, calibration=2)
    data = load(manifest, label_fraction=1.0)
    video, image = data.modalities["video"], data.modalities["image"]
    assert (video.kind, video.layout, video.shape) == ("video", "NTCHW", (5, 1, SIZE, SIZE))
    assert (image.kind, image.layout, image.shape) == ("image", "NCHW", (1, SIZE, SIZE))
    assert data.train.inputs["video"].shape == (6, 5, 1, SIZE, SIZE)
    assert data.info["preprocessing"]["clip_frames"] == 5 and data.info["calibration_rows"] == 2
    # The frame is the clip's centre, each normalised with its own modality's statistics.
    x = data.test.inputs["video"][:, 2] * video.std + video.mean
    torch.testing.assert_close(data.test.inputs["image"] * image.std + image.mean, x, atol=1e-6, rtol=0)
    # ... and the same values as that frame saved as a PNG and read as an image column.
    png = write_png(tmp_path / "f.png", clip_frames(5, seed=8)[1])
    expect = image_to_array(read_image(png), (SIZE, SIZE), rgb=False)
    got = data.test.inputs["image"][0].numpy() * image.std + image.mean  # test row 0 is clip 8
    np.testing.assert_allclose(got, expect, atol=1e-6)
    # The calibration split: decoded, never trained on; the export calibrates on it.
    assert data.calibration is not None and len(data.calibration) == 2 and len(data.train) == 6
    assert data.calibration_rows("image", 256).shape == (2, 1, SIZE, SIZE)
    assert data.calibration_rows("image", 1).shape[0] == 1


def test_clip_frames_and_image_size_shape_the_clip(tmp_path):
    data = load(make_video_manifest(tmp_path, frames=7), clip_frames=3, image_size=8)
    assert data.modalities["video"].shape == (3, 1, 8, 8) and data.modalities["image"].shape == (1, 8, 8)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_streamed_video_column_gives_the_in_memory_batches(tmp_path, workers):
    manifest = make_video_manifest(tmp_path, per_split=(8, 2, 2), unlabeled=3)
    memory = load(manifest, streaming="off")
    streamed = load(manifest, streaming="on", num_workers=workers)
    assert streamed.info["streaming"] and isinstance(streamed.train.inputs["video"], StreamedModality)
    for m, spec in memory.modalities.items():
        s = streamed.modalities[m]
        assert s.shape == spec.shape and s.kind == spec.kind
        assert s.mean == pytest.approx(spec.mean, rel=1e-9) and s.std == pytest.approx(spec.std, rel=1e-9)
    rows = [torch.tensor([3, 0, 7]), torch.tensor([10, 1])]
    got = list(batch_fetcher(dict(streamed.train.inputs), StreamSettings(num_workers=workers))(rows))
    for index, batch in zip(rows, got):
        for m in ("video", "image"):
            torch.testing.assert_close(batch[m], memory.train.inputs[m][index], atol=ATOL, rtol=0)


def test_an_rgb_clip_makes_the_gray_ones_rgb_streamed_or_not(tmp_path):
    manifest = make_video_manifest(tmp_path)
    first = read_rows(manifest)[0]["video"]
    write_video(tmp_path / first, clip_frames(5, seed=0, rgb=True))
    memory = load(manifest)
    streamed = load(manifest, streaming="on")
    assert memory.modalities["video"].shape == (5, 3, SIZE, SIZE) == streamed.modalities["video"].shape
    torch.testing.assert_close(streamed.train.inputs["image"][[1, 0]], memory.train.inputs["image"][[1, 0]],
                               atol=ATOL, rtol=0)


def _bad(tmp_path, edit, **kw) -> str:
    manifest = make_video_manifest(tmp_path)
    rows = read_rows(manifest)
    edit(tmp_path, rows)
    write_rows(manifest, rows)
    with pytest.raises(ManifestError) as err:
        load(manifest, **kw)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{manifest}:3: bad row: ")  # row 2 is line 3
    return message


def test_a_clip_with_too_few_frames_names_its_row(tmp_path):
    def edit(root, rows):
        write_video(root / rows[1]["video"], clip_frames(3))
    assert "has 3 frames; data.clip_frames=5 needs at least 5" in _bad(tmp_path, edit)


def test_an_undecodable_or_missing_video_names_its_row(tmp_path):
    def garbage(root, rows):
        (root / rows[1]["video"]).write_bytes(b"not a video at all" * 20)
    assert "not a video PyAV can decode" in _bad(tmp_path / "a", garbage)

    def missing(root, rows):
        rows[1]["video"] = "clips/nothere.mkv"
    assert "video file not found" in _bad(tmp_path / "b", missing)


@pytest.mark.parametrize("index", ["#5", "#-1"])
def test_a_frame_index_out_of_range_names_its_row(tmp_path, index):
    def edit(root, rows):
        rows[1]["video"] += index
    assert f"frame index {index[1:]} is out of range" in _bad(tmp_path, edit)


def test_a_bad_clip_in_a_streamed_split_names_its_row_too(tmp_path):
    def edit(root, rows):
        write_video(root / rows[1]["video"], clip_frames(2))
    assert "has 2 frames" in _bad(tmp_path, edit, streaming="on", num_workers=2)


def test_odd_clip_frames_only():
    from distill_export.config import load_config
    from distill_export.errors import ConfigError

    with pytest.raises(ConfigError, match="data.clip_frames must be odd"):
        load_config(None, None, {"data.clip_frames": 4})
    with pytest.raises(DataError, match="odd"):
        ClipReader(2, None, "auto")


def test_a_column_of_frame_folders(tmp_path):
    rows = []
    for i, split in enumerate(["train"] * 4 + ["val", "test"]):
        write_frame_folder(tmp_path / f"frames/{i}", clip_frames(5, seed=i))
        rows.append({"video": f"frames/{i}" + ("#3" if i == 0 else ""), "label": "ab"[i % 2], "split": split})
    data = load(write_rows(tmp_path / "manifest.csv", rows))
    assert data.modalities["video"].shape == (5, 1, SIZE, SIZE)
    video = write_video(tmp_path / "c.mkv", clip_frames(5, seed=0))
    clip, _ = ClipReader(5, None, "auto").read(video, 3)
    spec = data.modalities["video"]
    np.testing.assert_allclose(data.train.inputs["video"][0].numpy() * spec.std + spec.mean, clip, atol=1e-6)


def test_a_bad_clip_stops_the_cli_before_anything_trains(tmp_path):
    from typer.testing import CliRunner

    from distill_export.cli import app

    manifest = make_video_manifest(tmp_path / "data")
    rows = read_rows(manifest)
    write_video(tmp_path / "data" / rows[1]["video"], clip_frames(2))
    write_rows(manifest, rows)
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", "--data", str(manifest), "--out", str(out), "--quiet"])
    assert result.exit_code == 2, result.output
    assert f"{manifest}:3: bad row: video " in result.output and "has 2 frames" in result.output
    assert not out.exists()
