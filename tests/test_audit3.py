"""The third fresh audit's findings (issue 24): an ONNX model with no inputs, `report` on a run
whose report.json is gone, a teacher.pt replaced after export, a fusion search with a loaded
teacher, tools/same_weights.py on a pickle, an empty item in a --batch list. Each: one line,
exit 2, nothing written or changed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

from _cli_checks import one_line_error, snapshot
from distill_export.cli import app

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]



def test_an_onnx_model_with_no_inputs_is_one_line(tmp_path):
    out_t = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    const = helper.make_node("Constant", [], ["y"], value=helper.make_tensor("c", TensorProto.FLOAT, [1, 4], [1, 2, 3, 4]))
    model = helper.make_model(helper.make_graph([const], "g", [], [out_t]), opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "noin.onnx"
    onnx.save(model, str(path))
    line = one_line_error(runner.invoke(app, ["profile", str(path), "--batch", "1", "--threads", "1",
                                              "--out", str(tmp_path / "p"), "--quiet"]), 2)
    assert "the model has no inputs" in line and not (tmp_path / "p").exists()


def test_report_without_report_json_writes_nothing(run_copy):
    run_copy.joinpath("report.json").unlink()
    before = snapshot(run_copy)
    line = one_line_error(runner.invoke(app, ["report", str(run_copy)]), 2)
    assert "report.json is missing" in line and "nothing was written" in line
    assert snapshot(run_copy) == before


@pytest.mark.parametrize("command", ["profile", "report"])
def test_a_teacher_replaced_after_export_is_refused(run_copy, command):
    teacher = run_copy / "teacher.pt"
    teacher.write_bytes(teacher.read_bytes() + b"\0")  # another checkpoint's bytes
    before = snapshot(run_copy)
    line = one_line_error(runner.invoke(app, [command, str(run_copy), "--quiet"] if command == "profile"
                                        else [command, str(run_copy)]), 2)
    # the teacher stage is judged first (its recorded sha256, fifth audit ST5); profile named `export`,
    # which then refused in turn (forty-fifth audit P15)
    assert f"{teacher} changed after train-teacher" in line and "distill-export run --resume" in line
    assert snapshot(run_copy) == before


def test_a_fusion_search_with_a_loaded_teacher_is_refused_before_the_run_exists(run_copy, tmp_path):
    out = tmp_path / "new"
    line = one_line_error(runner.invoke(app, ["run", "--out", str(out), "--tune", "2", "--tune-search", "terms,fusion",
                                              "--teacher", str(run_copy / "teacher.pt"), "--quiet"]), 2)
    assert "distill.tune_search includes fusion" in line and not out.exists()


def test_same_weights_on_a_pickle_is_one_line_without_unsafe_advice(tmp_path):
    import datetime

    import torch

    bad = tmp_path / "dt.pt"
    torch.save({"when": datetime.datetime(2026, 1, 1)}, bad)
    good = tmp_path / "w.pt"
    torch.save({"w": torch.zeros(2)}, good)
    r = subprocess.run([sys.executable, str(REPO / "tools" / "same_weights.py"), str(good), str(bad)],
                       capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and str(bad) in lines[0] and "datetime" in lines[0], r.stderr
    assert "weights_only" not in r.stderr and "Traceback" not in r.stderr


def test_an_empty_item_in_a_batch_list_is_refused(run_copy, tmp_path):
    line = one_line_error(runner.invoke(app, ["profile", str(run_copy / "student.onnx"), "--batch", "1,,2",
                                              "--threads", "1", "--out", str(tmp_path / "p"), "--quiet"]), 2)
    assert "--batch" in line and "an empty item" in line and not (tmp_path / "p").exists()
