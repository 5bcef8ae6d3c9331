"""Eighteenth hostile audit (issue 24; docs/reliability.md, "Nineteenth round"): 9 bad cases,
8 of one cause: rich read "[/]" or "[red]" in a path (or "[openvino]" in advice) as markup: a
MarkupError traceback (exit 1) after the work, a run folder printed without its "[red]", and
`pip install distill-export` advised for OpenVINO. The ninth: a parity_data.npz whose x was cut
to 10 rows was blamed on student.onnx's output shape."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from _cli_checks import guarded_stderr, one_line_error, snapshot
from distill_export.cli import app

runner = CliRunner()


@pytest.fixture
def bracket_run(run_copy, tmp_path):
    """The tiny run under a name rich would read as markup and an emoji shortcode."""
    target = tmp_path / "P[/]Q[red]:fire:"
    shutil.move(str(run_copy), target)
    return target


def test_a_run_named_with_markup_is_reported_and_validated(bracket_run):
    result = runner.invoke(app, ["report", str(bracket_run)])
    assert result.exit_code == 0, result.output
    assert f"report: {bracket_run / 'report.md'}".replace(" ", "") in "".join(result.output.split()), result.output
    result = runner.invoke(app, ["validate", str(bracket_run)])
    assert result.exit_code == 0, result.output
    assert "PASS" in result.output and "[green]" not in result.output  # the result column keeps its style, not markup


def test_an_error_naming_a_markup_path_is_printed_as_typed(capsys):
    from distill_export.errors import DataError

    assert guarded_stderr(capsys, DataError("x[/]y[red]/config.yaml is missing")) == \
        (2, "error: x[/]y[red]/config.yaml is missing\n")


def test_advice_in_brackets_is_printed_whole(bracket_run):
    result = runner.invoke(app, ["profile", str(bracket_run / "student.onnx"), "--batch", "1", "--threads", "1",
                                 "--warmup", "0.01", "--min-time", "0.05", "--min-iters", "5", "-q",
                                 "--out", str(bracket_run.parent / "prof[/]")])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    if "OpenVINO is not installed" in text:  # skipped where OpenVINO is installed
        assert "pip install distill-export[openvino]" in text, text


def test_a_cut_parity_file_is_named_not_the_export(run_copy, tmp_path):
    parity = run_copy / "parity_data.npz"
    data = dict(np.load(parity))
    data["x"] = data["x"][:10]
    np.savez(tmp_path / "cut.npz", **data)
    parity.write_bytes((tmp_path / "cut.npz").read_bytes())
    before = snapshot(run_copy)
    line = one_line_error(runner.invoke(app, ["validate", str(run_copy)]), 2)
    rows = len(np.load(tmp_path / "cut.npz")["labels"])
    assert line.startswith(f"error: {parity} holds arrays of different row counts (x 10, reference {rows}, labels {rows}; "
                           "export writes them together)"), line
    assert snapshot(run_copy) == before
