"""Nineteenth hostile audit (issue 24; docs/reliability.md, "Twentieth round"): 1 bad case.
An ONNX file whose external-data location holds a NUL byte gave a ValueError traceback ("embedded
null byte") from `profile` and `validate`, where every other bad location is one line."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from _cli_checks import one_line_error, snapshot
from distill_export.cli import app


def test_external_data_named_with_a_nul_byte_is_one_line(tmp_path, monkeypatch):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((1, 4), dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save_model(model, str(tmp_path / "m.onnx"), save_as_external_data=True, location="w.bin", size_threshold=0)
    loaded = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)
    for entry in loaded.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = "w.bin\x00zz"
    (tmp_path / "nul.onnx").write_bytes(loaded.SerializeToString())
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    line = one_line_error(CliRunner().invoke(app, ["profile", "nul.onnx", "--batch", "1", "--threads", "1", "-q"]), 2)
    assert line == ("error: nul.onnx: initializer 'w' keeps its data in 'w.bin\\x00zz', a file name with a NUL byte, "
                    "which no file system holds"), line
    assert snapshot(tmp_path) == before
