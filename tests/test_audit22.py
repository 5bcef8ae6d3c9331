"""Twenty-second round (issue 24): what the twenty-second fresh audit found."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from _cli_checks import one_line_error, snapshot
from distill_export.cli import app

runner = CliRunner()


# B1 (`distill RUN --task detection`) is a case of test_audit21.py::test_b1_a_stage_commands_flag_*.


def _tiff_rgb16(path, rgb: np.ndarray) -> None:
    """A minimal little-endian TIFF: one strip of 16-bit RGB samples."""
    h, w, _ = rgb.shape
    data = rgb.astype("<u2").tobytes()
    tags = [(256, 3, 1, w), (257, 3, 1, h), (258, 3, 3, None), (259, 3, 1, 1), (262, 3, 1, 2), (273, 4, 1, None),
            (277, 3, 1, 3), (278, 3, 1, h), (279, 4, 1, len(data))]
    bits_at = 8 + 2 + 12 * len(tags) + 4
    out = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(tags))
    for tag, kind, count, value in tags:
        value = bits_at if tag == 258 else bits_at + 6 if tag == 273 else value
        out += struct.pack("<HHIHH", tag, kind, count, value, 0) if kind == 3 and count == 1 else \
            struct.pack("<HHII", tag, kind, count, value)
    path.write_bytes(out + struct.pack("<I", 0) + struct.pack("<HHH", 16, 16, 16) + data)


@pytest.mark.parametrize("kind", ["ppm", "tif"])
def test_b3_a_16_bit_colour_ppm_or_tiff_is_refused_not_read_as_8_bits(tmp_path, kind):
    """PIL reads a 16-bit-per-sample colour PPM or TIFF as 8-bit RGB: a 0-255 picture came back
    with a maximum of 1/255. Refused, naming the file; 8-bit ones still read."""
    from PIL import Image

    from distill_export.data.loaders import read_image
    from distill_export.errors import DataError

    g = (np.arange(64).reshape(8, 8) * 4).astype(np.uint16)
    rgb = np.stack([g, g, g], -1)
    wide = tmp_path / f"wide.{kind}"
    if kind == "ppm":
        wide.write_bytes(b"P6\n# a comment\n8 8\n65535\n" + rgb.astype(">u2").tobytes())
        what = "a colour PPM with maxval 65535 (more than 8 bits per sample)"
    else:
        _tiff_rgb16(wide, rgb)
        what = "a 16-bit-per-channel colour TIFF"
    assert Image.open(wide).mode == "RGB"  # what PIL makes of it: 8 bits
    with pytest.raises(DataError) as caught:
        read_image(wide)
    assert str(caught.value) == (f"image {wide} is {what}, which the decoder reads as 8 bits (the low byte of each "
                                 "sample would be dropped): save it as 8-bit colour or 16-bit gray")
    Image.fromarray(rgb.astype(np.uint8)).save(tmp_path / f"narrow.{kind}")
    assert np.asarray(read_image(tmp_path / f"narrow.{kind}")).max() == 252


def test_b4_an_opset_above_the_exporters_says_lower(run_copy):
    """'Unsupported onnx_opset_version: 27; try a higher --opset': the way out is a lower one."""
    before = snapshot(run_copy)
    line = one_line_error(runner.invoke(app, ["export", str(run_copy), "--opset", "27", "--exporter", "torchscript",
                                              "-q"]), 2)
    assert "Unsupported onnx_opset_version: 27" in line and line.endswith("; try a lower --opset or the dynamo exporter"), line
    assert snapshot(run_copy) == before


@pytest.mark.parametrize(("key", "value"), [("num_workers", 1), ("pin_memory", "false"), ("persistent_workers", False)])
def test_a1_an_edit_of_how_a_stage_runs_is_no_edit_of_what_it_made(run_copy, key, value):
    """data.num_workers (and, the twenty-third audit's B2, pin_memory and persistent_workers)
    edited after the teacher stage was refused as a change to what it ran with."""
    from distill_export.launch import open_run

    config = yaml.safe_load((run_copy / "config.yaml").read_text())
    config["data"][key] = value
    (run_copy / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    assert getattr(open_run(run_copy, None, command="export")[1].data, key) == value
