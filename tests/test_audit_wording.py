"""The second fresh audit's wording findings (issue 24, B9): a data cell that is a directory, a
FIFO or a device is named as what it is (not "not found"), and an ONNX input with a static zero
dimension is not called dynamic. One line, exit 2, nothing read from the special file."""

from __future__ import annotations

import os

import onnx
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

from distill_export.cli import app
from distill_export.data.loaders import load_audio, read_image as load_image
from distill_export.errors import DataError

runner = CliRunner()


@pytest.mark.parametrize("kind", ["directory", "fifo", "device"])
def test_an_image_or_audio_cell_that_is_not_a_file_says_what_it_is(tmp_path, kind):
    path = tmp_path / "x.png"
    if kind == "directory":
        path.mkdir()
        says = "is a directory"
    elif kind == "fifo":
        os.mkfifo(path)
        says = "is not a regular file (a FIFO)"
    else:
        path.symlink_to("/dev/zero")
        says = "is not a regular file (a character device)"
    for load, what in ((load_image, "image file"), (load_audio, "audio file")):
        with pytest.raises(DataError) as info:
            load(path)
        assert str(info.value) == f"{what} {path} {says}"
    missing = tmp_path / "gone.png"
    with pytest.raises(DataError, match=f"^image file not found: {missing}$"):
        load_image(missing)


def test_an_onnx_input_with_a_static_zero_dimension_is_not_called_dynamic(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 0, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 0, 4])
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "zero.onnx"
    onnx.save(model, str(path))
    out = tmp_path / "prof"
    result = runner.invoke(app, ["profile", str(path), "--batch", "1", "--out", str(out), "--quiet"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "has a static dimension of size 0 [1, 0, 4]" in lines[0], result.output
    assert "dynamic" not in lines[0] and not out.exists()
