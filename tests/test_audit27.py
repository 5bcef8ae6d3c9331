"""Twenty-eighth round (issue 24): what the twenty-seventh fresh audit found."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from _cli_checks import one_line_error
from distill_export.cli import app
from test_audit26 import SUMMARY
from test_pt2_safety import PROFILE_FAST

runner = CliRunner()
HOSTILE = ["<script>alert(1)</script>", "a|b\nc", "[bold red]x\x1b[2J"]


def test_d1_hostile_class_names_are_text_in_a_markdown_table():
    """COCO category names reached report.md raw: live HTML, a split row, a broken table, ESC[2J."""
    from distill_export.record.format import md_table

    table = md_table(["class", "AP50"], [[name, "1.0"] for name in HOSTILE])
    lines = table.splitlines()
    assert len(lines) == 2 + len(HOSTILE)  # no row broken by a newline
    assert all(line.count(" | ") == 1 for line in lines[2:]), table  # no cell split by a `|`
    assert "<script" not in table and "&lt;script>" in table and "\x1b" not in table and "\\\\x1b\\[2J" in table
    assert md_table(["p"], [["p < 0.05"]]).endswith("| p < 0.05 |")  # a comparison stays as written


def test_d3_a_hostile_dataset_name_is_text_in_report_md(tiny_run):
    from distill_export.record import store
    from distill_export.report.markdown import render_markdown

    data, _, _ = store.load(tiny_run / "report.json")
    data["dataset"]["name"] = "<img src=x onerror=alert(1)>\x1b[2J"
    text = render_markdown(data, [])
    assert "<img" not in text and "&lt;img src=x onerror=alert(1)>\\\\x1b\\[2J" in text and "\x1b" not in text


def test_d2_a_class_name_that_is_tex_to_matplotlib_is_drawn_as_text(tmp_path):
    """`$\\foo$` as a class name: matplotlib parsed it as TeX and the run ended in a traceback."""
    pytest.importorskip("matplotlib")
    from distill_export.tasks.detection.draw import draw_detections

    frames = np.zeros((1, 1, 32, 32), np.float32)
    targets = np.array([[[0, 2, 2, 12, 12], [1, 14, 14, 30, 30]]], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a glyph warning for ESC was printed too
        path = draw_detections(frames, {}, targets, tmp_path / "d.png", class_names=["$\\foo$", "x\x1b[2J$^$"])
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_d4_an_error_line_never_carries_a_control_character():
    from distill_export.cli.guard import one_line

    assert one_line("box 1 ([bold red]x\x1b[2J -3 4 7 14) lies outside") == \
        "box 1 ([bold red]x\\x1b[2J -3 4 7 14) lies outside"


@pytest.mark.parametrize(("edit", "why"), [
    (lambda s: s["decision"].update(distill=False, method="labels_only", terms=[{"name": "kd", "weight": 1.0}]),
     "its decision is labels only (distill: false) yet names distillation terms"),
    (lambda s: s.update(trials=True), "trials is true, not a number)"),
])
def test_t1_t3_a_labels_only_decision_with_kd_terms_is_refused(tmp_path, edit, why):
    """T1: the student trained `1·kd` while config.yaml and report.md said labels only.
    T3: the message began with an empty location and pydantic's 'Value error,'."""
    import copy

    from distill_export.config import RunConfig
    from distill_export.errors import ConfigError
    from distill_export.tune_record import resumed_summary

    summary = copy.deepcopy(SUMMARY)
    edit(summary)
    path = tmp_path / "tune.json"
    path.write_text(json.dumps(summary))
    with pytest.raises(ConfigError) as caught:
        resumed_summary(path, RunConfig())
    assert f"tune.json is not the tune.json tune wrote ({why}" in str(caught.value), str(caught.value)
    assert "(: " not in str(caught.value) and "Value error" not in str(caught.value)


def _interpolating_program(path):
    """What torch.export.save writes for interpolate(scale_factor=0.7) on dynamic H, W:
    Float('0.69999999999999996', precision=53), 17 digits after the point."""
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.head = torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Linear(4, 3)

        def forward(self, x):
            x = torch.nn.functional.interpolate(x, scale_factor=0.7, mode="bilinear")
            return self.head(self.conv(x).mean((2, 3)))

    dims = {0: torch.export.Dim("b", min=1, max=64), 2: torch.export.Dim("h", min=4, max=64),
            3: torch.export.Dim("w", min=4, max=64)}
    torch.export.save(torch.export.export(Net().eval(), (torch.randn(2, 1, 16, 16),), dynamic_shapes=(dims,)),
                      str(path))
    return path


def test_p2_pr1_a_program_torch_wrote_loads_and_is_profiled_inside_its_ranges(tmp_path):
    """P2: a double's repr in a Float was refused as 'more than 15 digits'. PR1: 128x128 (and
    batch 128) were timed for a program exported for 4..64 (its guards are off after loading)."""
    program = _interpolating_program(tmp_path / "interp.pt2")
    fast = [a for a in PROFILE_FAST if a != "--quiet"]
    result = runner.invoke(app, ["profile", str(program), *fast, "--input-shape", "1,16,16", "--out", str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    line = one_line_error(runner.invoke(app, ["profile", str(program), *PROFILE_FAST, "--input-shape", "1,128,128"]), 2)
    assert line == (f"error: --input-shape 1,128,128 is outside what {program} was exported for: its input 'x' "
                    "takes dim 2 from 4 to 64"), line
    argv = ["profile", str(program), *PROFILE_FAST, "--input-shape", "1,16,16"]
    argv[argv.index("--batch") + 1] = "128"
    line = one_line_error(runner.invoke(app, argv), 2)
    assert line.endswith("is outside what " + str(program) + " was exported for: its input 'x' takes dim 0 from 1 to 64")


def test_p1_constants_and_calls_cost_what_they_cost_sympy():
    from distill_export.nets.pt2_exprs import scan

    assert scan("+".join(["sqrt(" * 31 + "oo" + ")" * 31] * 50))[1] >= 1600  # cost 0 before
    assert scan("Float('0.69999999999999996', precision=53)*s0")[0] is None
    assert scan("0." + "1" * 60)[0] == "a number of more than 15 digits"
