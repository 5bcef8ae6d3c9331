"""Twenty-seventh round (issue 24): what the twenty-sixth fresh audit found."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from _cli_checks import one_line_error, snapshot
from _video_fixtures import make_video_manifest
from distill_export.cli import app
from distill_export.errors import DataError
from test_audit25 import _first_expression
from test_boxes import _coco, load
from test_pt2_safety import PROFILE_FAST, clean, rewrite  # noqa: F401  (clean: the fixture)

runner = CliRunner()
TOOLS = Path(__file__).resolve().parents[1] / "tools"


@pytest.mark.parametrize(("expr", "why"), [
    ("Symbol('s77', positive=True, integer=True)+0*sqrt(Float(2, 9999999))", "a Float precision of more than 1000"),
    ("Symbol('s77', positive=True, integer=True)+0*1e-99999999999", "a number with a decimal exponent beyond 30"),
])
def test_b1_b2_a_precision_or_exponent_sympy_would_spend_minutes_on_is_refused(clean, tmp_path, expr, why):
    """sqrt(Float(2, 9999999)) took 40 s inside torch.export.load; 1e-99999999999 (14 characters,
    float() reads 0) kept mpmath busy for 10 minutes. Both passed the digit and cost checks."""
    hostile = rewrite(clean, tmp_path / "h.pt2", _first_expression(expr))
    line = one_line_error(runner.invoke(app, ["profile", str(hostile), *PROFILE_FAST]), 2)
    assert f"a shape expression in " in line and f"holds {why}" in line, line


def test_what_sympy_srepr_writes_for_a_float_passes():
    from distill_export.nets.pt2_exprs import scan

    assert scan("Float('1.5', precision=53)*s0")[0] is None
    assert scan("RoundDecimal(s0, 5)")[0] is None and scan("2e-5*s0")[0] is None
    assert scan("Float('1.5', precision=99999)")[0] == "a Float precision of more than 1000"


def _coco_case(tmp_path, edit):
    manifest = make_video_manifest(tmp_path, boxes=True)
    coco = _coco(manifest)
    text = edit(coco)
    (tmp_path / "instances.json").write_text(text if isinstance(text, str) else json.dumps(coco))
    return manifest


@pytest.mark.parametrize(("edit", "match"), [
    (lambda c: c["annotations"][0].update(bbox=[2, 3, 10**400, 6]), r"bad row: COCO annotation id 1: bbox \[2, 3, 1000"),
    (lambda c: c["annotations"][0].update(bbox=[2, 3, float("nan"), 6]), r"bbox \[2, 3, nan, 6\] is not \[x, y, width"),
    (lambda c: '{"images": ' + "[" * 100000 + "]" * 100000 + ', "annotations": [], "categories": []}',
     r"cannot read COCO annotation file .*instances.json: maximum recursion depth exceeded"),
    (lambda c: json.dumps(c).replace('"width": 16', '"width": ' + "9" * 5001, 1),
     r"cannot read COCO annotation file .*instances.json: Exceeds the limit \(4300 digits\)"),
])
def test_b3_b4_coco_numbers_and_nesting_beyond_python_are_one_line(tmp_path, edit, match):
    """A 401-digit box width (OverflowError in float()), arrays nested 100,000 deep
    (RecursionError) and a 5,001-digit width (int parsing limit) were tracebacks."""
    manifest = _coco_case(tmp_path, edit)
    with pytest.raises(DataError, match=match) as caught:
        load(manifest, annotations="instances.json")
    assert "\n" not in str(caught.value)


def test_b5_coco_annotations_all_crowd_leave_nothing_to_train_on(tmp_path):
    """Every annotation iscrowd: the teacher trained on no object and the run said done, mAP 0."""
    def crowd(coco):
        for a in coco["annotations"]:
            a["iscrowd"] = 1
    manifest = _coco_case(tmp_path, crowd)
    with pytest.raises(DataError, match=r"none of the \d+ training rows has a box to learn from \(COCO annotations "
                                        r"marked iscrowd are not trained on\)"):
        load(manifest, annotations="instances.json")


def test_b6_streaming_on_as_docs_write_it_is_on(tmp_path):
    """`streaming: on` (docs/scale.md) is a YAML 1.1 boolean: 'must be one of auto, on, off, got True'."""
    from distill_export.config import load_config
    from distill_export.errors import ConfigError

    for text, want in (("on", "on"), ("off", "off"), ('"on"', "on"), ("auto", "auto")):
        (tmp_path / "c.yaml").write_text(f"data:\n  streaming: {text}\n")
        assert load_config("avdigits", tmp_path / "c.yaml", {}).data.streaming == want, text
    (tmp_path / "c.yaml").write_text("distill:\n  mix: no\n")  # any other text field: named, with the fix
    with pytest.raises(ConfigError, match=r"distill: mix: expected a string, got false \(YAML reads a bare yes, "
                                          r"no, on or off as true or false; quote it\)"):
        load_config("avdigits", tmp_path / "c.yaml", {})


SUMMARY = {"decision": {"distill": True, "method": "hinton", "line": "hinton chosen",
                        "terms": [{"name": "ce", "weight": 0.5}, {"name": "kd", "weight": 0.5}]},
           "trials": 2, "completed": 2, "pruned": 0, "seconds": 1.0, "baseline_val_accuracy": 0.5, "best": None}


@pytest.mark.parametrize(("key", "value", "why"), [
    ("seconds", "forever", "seconds: Input should be a valid number"),
    ("trials", -5, "trials: Input should be greater than or equal to 0"),
    ("best", [1, 2, 3], "best: Input should be a valid dictionary"),
    ("baseline_val_accuracy", "high", "baseline_val_accuracy: Input should be a valid number"),
    ("seconds", float("inf"), "seconds is inf"),
    ("line", "\x1b[31mred", "its decision line holds control characters"),
])
def test_b7_values_of_the_wrong_type_in_tune_json_are_named(tmp_path, key, value, why):
    """`"seconds": "forever"` in tune.json was a 69-line schema traceback from update_report."""
    import copy

    from distill_export.config import RunConfig
    from distill_export.errors import ConfigError
    from distill_export.tune_record import resumed_summary

    summary = copy.deepcopy(SUMMARY)
    (summary["decision"] if key == "line" else summary)[key] = value
    path = tmp_path / "tune.json"
    path.write_text(json.dumps(summary))
    with pytest.raises(ConfigError) as caught:
        resumed_summary(path, RunConfig())
    assert str(caught.value).startswith(f"{path} is not the tune.json tune wrote (") and why in str(caught.value)


def test_b8_a_pt2_with_dynamic_height_and_width_is_profiled_at_the_given_shape(tmp_path):
    """--input-shape 1,28,28 'contradicted' a [batch, 1, ?, ?] program, and without it nothing was
    measured. The flag now fills the dynamic dims; without it, the skip says to give it."""
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, stride=2, padding=1), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    dims = {0: torch.export.Dim("b", min=1, max=64), 2: torch.export.Dim("h", min=9, max=512),
            3: torch.export.Dim("w", min=9, max=512)}
    program = torch.export.export(net, (torch.randn(2, 1, 32, 32),), dynamic_shapes=(dims,))
    torch.export.save(program, str(tmp_path / "dyn.pt2"))
    fast = [a for a in PROFILE_FAST if a != "--quiet"]
    result = runner.invoke(app, ["profile", str(tmp_path / "dyn.pt2"), *fast, "--input-shape", "1,28,28",
                                 "--out", str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "p" / "profile.json").read_text())["latency"]
    assert len(rows) == 1 and rows[0]["p50_ms"] > 0 and rows[0]["macs"] > 0, rows
    line = one_line_error(runner.invoke(app, ["profile", str(tmp_path / "dyn.pt2"), *PROFILE_FAST,
                                              "--input-shape", "3,28,28"]), 2)  # a static dim contradicted
    assert "contradicts" in line and "keep the static ones" in line, line
    result = runner.invoke(app, ["profile", str(tmp_path / "dyn.pt2"), *fast, "--out", str(tmp_path / "q")])
    assert "give --input-shape (one sample's dims) to profile it" in result.output, result.output


@pytest.mark.parametrize("edit", [
    lambda a: a.update(logits=a["logits"][:, :2]),
    lambda a: a.update(labels=(a["labels"] + 1) % 3),
    lambda a: a.update(extra=np.zeros(6)),
    lambda a: a.update(logits=a["logits"] + 5) or a.pop("checkpoint_sha256"),
])
def test_b9_an_edited_parity_file_is_named_not_blamed_on_the_export(run_copy, edit):
    """A cut, replaced or added array in parity_data.npz was reported as student.onnx returning the
    wrong shape or outputs. export records the file's sha256 in state.json; so does dropping a
    member (the twenty-seventh audit's V1 dropped an in-file digest to switch it off)."""
    parity = run_copy / "parity_data.npz"
    with np.load(parity) as f:
        arrays = {k: f[k] for k in f.files}
    edit(arrays)
    np.savez(parity, **arrays)
    before = snapshot(run_copy)
    line = one_line_error(runner.invoke(app, ["validate", str(run_copy)]), 2)
    assert line == (f"error: {parity} changed after export (it is not the file export wrote: an array edited, "
                    "added or removed); re-run `distill-export export`"), line
    assert snapshot(run_copy) == before


@pytest.mark.parametrize(("argv", "message"), [
    (["--dtypes", "float99"], "error: argument --dtypes: unknown 'float99'; choose from fp32, bf16, fp16"),
    (["--shapes", "abc"], "error: argument --shapes: 'abc' is not NxC (e.g. 256x1000)"),
    (["--impls", "nosuch"], "error: argument --impls: unknown 'nosuch'; choose from fused, eager, reference, compile, liger"),
    (["--device", "gpu9"], "error: argument --device: invalid choice: 'gpu9' (choose from 'auto', 'cuda', 'cpu')"),
    (["--impls", "reference", "--base", "eager", "--shapes", "4x8"],
     "error: --base eager is not among the implementations run here (reference)"),
])
def test_b10_bench_kd_loss_bad_arguments_are_one_line(tmp_path, argv, message):
    done = subprocess.run([sys.executable, str(TOOLS / "bench_kd_loss.py"), *argv, "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.strip() == message, done.stderr
    assert not (tmp_path / "o").exists()


def test_a3_of_the_last_round_kd_gain_bad_arguments_are_one_line():
    done = subprocess.run([sys.executable, str(TOOLS / "kd_gain.py"), "--seeds", "x"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip() == "error: argument --seeds: invalid int value: 'x'"
