"""Decoding keeps the data or refuses it (issue 24, item 4): every PIL mode by its real range,
absurd image sizes refused from the header, WAV headers checked against the file, JSONL fields
type-checked. Refusals are one line naming manifest:line, exit 2, nothing written.
docs/reliability.md, "Decoding that keeps the data or refuses it", lists each case."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from _byo_fixtures import make_manifest, read_rows, write_rows
from _cli_checks import one_line_error, snapshot
from distill_export.cli import app
from distill_export.config import DataConfig
from distill_export.data import load_dataset, loaders
from distill_export.data.audio import read_wav
from distill_export.errors import DataError


def decode(path: Path, size=(2, 2), rgb=False) -> np.ndarray:
    return loaders.image_to_array(loaders.read_image(path), size, rgb)


def saved(tmp_path: Path, im: Image.Image, name: str) -> Path:
    path = tmp_path / name
    im.save(path)
    assert Image.open(path).mode == im.mode  # the file really holds this mode
    return path


# ----- every PIL mode, with its real range ------------------------------------------------------
def test_8_bit_modes_keep_their_values(tmp_path):
    one = Image.new("1", (2, 2), 0)
    one.putpixel((0, 0), 1)
    assert decode(saved(tmp_path, one, "one.png"))[0, 0].tolist() == [1.0, 0.0]
    assert decode(saved(tmp_path, Image.new("L", (2, 2), 128), "l.png"))[0, 0, 0] == np.float32(128) / 255
    rgb = decode(saved(tmp_path, Image.new("RGB", (2, 2), (10, 20, 30)), "rgb.png"), rgb=True)[:, 0, 0]
    assert rgb.tolist() == (np.array([10, 20, 30], np.float32) / 255).tolist()
    cmyk = decode(saved(tmp_path, Image.new("CMYK", (2, 2), (255, 0, 0, 0)), "c.tif"), rgb=True)[:, 0, 0]
    assert cmyk.tolist() == [0.0, 1.0, 1.0]  # full cyan: PIL's CMYK -> RGB
    ycc = decode(saved(tmp_path, Image.new("YCbCr", (2, 2), (100, 128, 128)), "y.tif"), rgb=True)[:, 0, 0]
    assert np.allclose(ycc, 100 / 255, atol=2 / 255)  # neutral chroma: gray at its luma


def test_alpha_is_composited_over_black(tmp_path):
    rgba = decode(saved(tmp_path, Image.new("RGBA", (2, 2), (255, 255, 255, 128)), "a.png"), rgb=True)
    assert np.allclose(rgba, 128 / 255)  # half-transparent white over black
    hidden = decode(saved(tmp_path, Image.new("LA", (2, 2), (200, 0)), "la.png"))
    assert hidden.max() == 0.0  # fully transparent: 0, not the gray it stores
    pal = Image.new("P", (2, 2), 1)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal.info["transparency"] = 1  # the red entry is transparent
    x = decode(saved(tmp_path, pal, "p.png"), rgb=True)
    assert x.max() == 0.0


def test_16_bit_gray_is_scaled_by_65535_not_clipped(tmp_path):
    a = np.array([[0, 32768], [65535, 1000]], dtype=np.uint16)
    x = decode(saved(tmp_path, Image.fromarray(a), "a16.png"))[0]
    assert x[0, 1] == pytest.approx(0.5, abs=1e-4) and x[1, 0] == 1.0 and x[1, 1] == pytest.approx(1000 / 65535)
    big = Image.frombytes("I;16B", (2, 1), struct.pack(">HH", 32768, 65535))
    assert decode(saved(tmp_path, big, "b16.tif"), size=(1, 2))[0, 0].tolist() == pytest.approx([0.5, 1.0], abs=1e-4)
    four = np.full((4, 4), 32768, dtype=np.uint16)  # resized in float: still ~0.5
    assert np.allclose(decode(saved(tmp_path, Image.fromarray(four), "r16.png")), 0.5, atol=1e-4)
    assert decode(tmp_path / "a16.png", rgb=True).shape == (3, 2, 2)  # gray in an RGB column: repeated


def test_32_bit_integer_and_float_images(tmp_path):
    i32 = Image.fromarray(np.array([[0, 65535]], dtype=np.int32), mode="I")
    assert decode(saved(tmp_path, i32, "i.tif"), size=(1, 2))[0, 0].tolist() == [0.0, 1.0]
    unit = Image.fromarray(np.array([[0.0, 0.25]], dtype=np.float32), mode="F")
    assert decode(saved(tmp_path, unit, "f1.tif"), size=(1, 2))[0, 0].tolist() == [0.0, 0.25]
    byte = Image.fromarray(np.array([[0.0, 127.5]], dtype=np.float32), mode="F")
    assert decode(saved(tmp_path, byte, "f255.tif"), size=(1, 2))[0, 0].tolist() == [0.0, 0.5]


@pytest.mark.parametrize("mode, values, needle", [
    ("I", [0, 70000], "mode I (32-bit integer) pixels range from 0 to 70000"),
    ("F", [-1.0, 0.5], "mode F (32-bit float) pixels range from -1 to 0.5"),
    ("F", [0.0, 1000.0], "mode F (32-bit float) pixels range from 0 to 1000"),
    ("F", [0.0, float("nan")], "mode F (32-bit float) has non-finite pixels"),
])
def test_wide_images_outside_their_rule_are_refused(tmp_path, mode, values, needle):
    im = Image.fromarray(np.array([values], dtype=np.int32 if mode == "I" else np.float32), mode=mode)
    with pytest.raises(DataError, match=r".*") as info:
        decode(saved(tmp_path, im, "w.tif"), size=(1, 2))
    assert needle in str(info.value) and "w.tif" in str(info.value)


# ----- manifests through the CLI: one line naming manifest:line ---------------------------------
def image_manifest(tmp_path: Path) -> tuple[Path, list[dict]]:
    manifest = make_manifest(tmp_path / "data", modalities=("image",))
    return manifest, read_rows(manifest)


def refused(tmp_path: Path, manifest: Path, *extra: str) -> str:
    """Exit 2, no traceback, one `error:` line (after at most the progress line saying how the
    training rows are held), nothing written."""
    before = snapshot(tmp_path)
    result = CliRunner().invoke(
        app, ["train-teacher", "--data", str(manifest), "--out", str(tmp_path / "run"), "--quiet", *extra])
    lines = [line for line in result.output.splitlines() if line.strip()]
    if len(lines) == 2 and lines[0].endswith("decoded into memory"):
        result.output_bytes = (lines[1] + "\n").encode()  # the one error line, for one_line_error
    message = one_line_error(result, 2)
    assert snapshot(tmp_path) == before and not (tmp_path / "run").exists()
    return message


def test_a_16_bit_png_in_a_manifest_keeps_its_range(tmp_path):
    manifest, rows = image_manifest(tmp_path)
    Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16)).save(manifest.parent / rows[0]["image"])
    data = load_dataset(DataConfig(source=str(manifest)), seed=0)
    spec = data.modalities["image"]
    first = data.train.inputs["image"][0] * spec.std + spec.mean  # row 0 is the first training row
    assert float(first.mean()) == pytest.approx(0.5, abs=1e-3)  # not 1.0 (clipped to 255 before)


def test_a_float_tiff_outside_its_range_is_one_line(tmp_path):
    manifest, rows = image_manifest(tmp_path)
    Image.fromarray(np.full((8, 8), 1000.0, dtype=np.float32), mode="F").save(manifest.parent / "img" / "f.tif")
    rows[2]["image"] = "img/f.tif"
    write_rows(manifest, rows)
    message = refused(tmp_path, manifest)
    assert f"{manifest}:4: bad row: image" in message and "mode F (32-bit float) pixels range from 1000 to 1000" in message


def float_column(tmp_path: Path, values: dict[int, float]) -> tuple[Path, list[dict]]:
    """The image manifest with rows {index: value} replaced by 8x8 mode-F TIFFs of that value."""
    manifest, rows = image_manifest(tmp_path)
    for i, value in values.items():
        Image.fromarray(np.full((8, 8), value, dtype=np.float32), mode="F").save(manifest.parent / "img" / f"f{i}.tif")
        rows[i]["image"] = f"img/f{i}.tif"
    write_rows(manifest, rows)
    return manifest, rows


@pytest.mark.parametrize("streaming", ["off", "on"])
def test_float_images_take_one_scale_per_column(tmp_path, streaming):
    """Mode F on a 0-255 scale: the near-black 0.8 read as 0.8 (brighter than 200/255) when each
    image chose its own scale (a fresh audit of issue 24); the column's range decides it now, over
    every split (row 5 is a test row), in memory and streamed alike."""
    manifest, rows = float_column(tmp_path, {0: 0.8, 1: 200.0, 5: 100.0})  # rows 0, 1: the first train rows
    data = load_dataset(DataConfig(source=str(manifest), streaming=streaming), seed=0)
    assert data.info["streaming"] is (streaming == "on")
    spec = data.modalities["image"]
    first, second = (float((data.train.inputs["image"][i] * spec.std + spec.mean).mean()) for i in (0, 1))
    assert first == pytest.approx(0.8 / 255, abs=1e-5) and second == pytest.approx(200 / 255, abs=1e-5)
    test_row = float((data.test.inputs["image"][0] * spec.std + spec.mean).mean())  # row 5: the first test row
    assert test_row == pytest.approx(100 / 255, abs=1e-5)


def test_float_images_all_in_unit_range_stay_as_they_are(tmp_path):
    manifest, _ = float_column(tmp_path, {0: 0.8, 1: 0.25})
    data = load_dataset(DataConfig(source=str(manifest)), seed=0)
    spec = data.modalities["image"]
    assert float((data.train.inputs["image"][0] * spec.std + spec.mean).mean()) == pytest.approx(0.8, abs=1e-5)


def test_a_float_image_outside_its_columns_range_is_one_line(tmp_path):
    """Others on 0-255, one negative: that row is refused in one line, nothing written."""
    manifest, _ = float_column(tmp_path, {0: 0.8, 1: 200.0, 2: -3.0})
    message = refused(tmp_path, manifest)
    assert f"{manifest}:4: bad row: image" in message and "f2.tif" in message
    assert "pixels range from -3 to -3, outside [0, 255]" in message


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height and holds no pixels: proves the size is refused
    from the header (decoding it would fail as truncated instead)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))


@pytest.mark.parametrize("side, needle", [
    (9000, "is 9000x9000 (81.0 M pixels), more than the 67.1 M pixel limit"),
    (20000, "too large to decode"),  # PIL's own bomb guard, at open: named, one line
])
def test_an_absurd_image_size_is_refused_from_its_header(tmp_path, side, needle):
    manifest, rows = image_manifest(tmp_path)
    (manifest.parent / rows[5]["image"]).write_bytes(png_header(side, side))
    message = refused(tmp_path, manifest)
    assert f"{manifest}:7: bad row: image" in message and needle in message


def test_auto_size_refuses_a_huge_first_image_and_a_set_size_resizes_it(tmp_path):
    manifest, rows = image_manifest(tmp_path)
    Image.new("L", (1500, 12), 100).save(manifest.parent / rows[0]["image"])
    message = refused(tmp_path, manifest)
    assert message.startswith(f"error: {manifest}:2: data.image_size=0 (auto) takes the first image's size")
    assert "is 1500x12, more than 1024 px a side: set data.image_size" in message
    data = load_dataset(DataConfig(source=str(manifest), image_size=8), seed=0)
    assert data.modalities["image"].shape == (1, 8, 8)


def test_a_wav_whose_header_claims_2_gb_is_corrupt_not_long(tmp_path):
    manifest = make_manifest(tmp_path / "data", modalities=("image", "audio"))
    wav = manifest.parent / read_rows(manifest)[3]["audio"]
    raw = bytearray(wav.read_bytes())
    at = raw.index(b"data")
    raw[at + 4 : at + 8] = struct.pack("<I", 2_000_000_000)
    wav.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="corrupt or truncated: its header claims 2000000000 bytes"):
        read_wav(wav)
    message = refused(tmp_path, manifest)
    assert f"{manifest}:5: bad row: WAV file" in message and "corrupt or truncated" in message
    assert "raise the limit" not in message


@pytest.mark.parametrize("field, value, needle", [
    ("text", ["a", "b"], "field 'text' is a list (JSON array): it must be a string"),
    ("text", {"a": 1}, "field 'text' is an object (JSON dict): it must be a string"),
    ("label", 1.5, "field 'label' is 1.5, a non-integer number: a label is a string or an integer"),
    ("label", True, "field 'label' is a boolean: it must be a string or an integer"),
    ("split", 3, "field 'split' is an integer: it must be a string"),
])
def test_jsonl_fields_of_the_wrong_type_are_refused(tmp_path, field, value, needle):
    manifest = make_manifest(tmp_path / "data", modalities=("image", "text"), fmt="jsonl")
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    rows[3][field] = value
    write_rows(manifest, rows)
    assert refused(tmp_path, manifest) == f"error: {manifest}:4: bad row: {needle}; fix it or pass --skip-bad-rows"


def test_an_integer_valued_float_label_reads_as_the_integer(tmp_path):
    manifest = make_manifest(tmp_path / "data", modalities=("image",), fmt="jsonl", classes=("0", "1", "2"))
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    for r in rows:
        r["label"] = float(r["label"])  # 0.0, 1.0, 2.0
    write_rows(manifest, rows)
    assert load_dataset(DataConfig(source=str(manifest)), seed=0).target_names == ["0", "1", "2"]


def test_a_jsonl_row_with_a_key_twice_is_refused(tmp_path):
    """json.loads keeps the last of two "label" keys in silence (found by a fresh audit): the row
    is refused, naming the field, instead of guessing which one was meant."""
    manifest = make_manifest(tmp_path / "data", modalities=("image",), fmt="jsonl")
    lines = manifest.read_text().splitlines()
    lines[3] = lines[3].rstrip("}") + ', "label": "1"}'
    manifest.write_text("\n".join(lines) + "\n")
    assert refused(tmp_path, manifest) == (f"error: {manifest}:4: bad row: field 'label' appears twice (which one "
                                           "is meant?); fix it or pass --skip-bad-rows")


# ----- EXIF orientation: the image as every viewer shows it -------------------------------------
def sideways_jpeg(path: Path) -> Path:
    """A 4 wide x 2 high JPEG, white on its left column, tagged orientation 6 (stored rotated: a
    viewer turns it 90 degrees clockwise, so it shows 2 wide x 4 high, white along the top row)."""
    pixels = np.zeros((2, 4), np.uint8)
    pixels[:, 0] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(path, exif=exif.tobytes(), quality=100)
    return path


def test_an_exif_rotated_photo_decodes_upright(tmp_path):
    path = sideways_jpeg(tmp_path / "phone.jpg")
    upright = loaders.read_image(path)
    assert (upright.height, upright.width) == (4, 2)
    pixels = np.asarray(upright)
    assert pixels[0].min() > 200 and pixels[1:].max() < 60  # the white stored column is now the top row
    with Image.open(path) as im:
        assert loaders.displayed_size(im) == (4, 2) and (im.height, im.width) == (2, 4)


def test_an_exif_rotated_first_image_sets_the_upright_auto_size(tmp_path):
    manifest, rows = image_manifest(tmp_path)
    for row in rows:  # every image the same sideways photo: the column's auto size is its upright one
        sideways_jpeg(manifest.parent / row["image"])
    data = load_dataset(DataConfig(source=str(manifest)), seed=0)
    assert data.modalities["image"].shape == (1, 4, 2)
