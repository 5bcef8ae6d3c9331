"""Eleventh hostile audit (issue 24; docs/reliability.md, "Thirteenth round"): 11 bad cases in 6
findings, each now refused in one line with exit 2 and nothing changed:
B1 a number such as `1_0` (read as 10) in a gate or any numeric flag; B2 YAML 1.1 numbers (`017`
octal, `1:30` base 60, `1_000`); B3 a report.json export path outside the run; B4 ONNX external
data that is a FIFO; B5 baseline.pt (or the control teacher) replaced after distill; B6 settings
in --config that this run never reads."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from _cli_checks import assert_record_edit_refused, one_line_error, refused_config, snapshot
from distill_export.cli import app
from distill_export.cli.options import load
from distill_export.errors import ConfigError, DataError

runner = CliRunner()


def test_b1_a_gate_or_a_numeric_flag_written_with_an_underscore_is_refused(run_copy):
    before = snapshot(run_copy)
    line = one_line_error(runner.invoke(app, ["validate", str(run_copy), "--gate", "fp32_max_abs=1_0"]), 2)
    assert line == "error: --gate fp32_max_abs: expected a plain number (ASCII digits, no '_'), got '1_0'", line
    assert snapshot(run_copy) == before
    for value in ("1_0", "\u0661"):  # an Arabic-Indic one: int() reads it as 1
        # a usage error: click's box here; the console script prints it as one line (test_usage_errors.py)
        result = runner.invoke(app, ["run", "--epochs", value, "--out", str(run_copy / "x"), "-q"])
        text = " ".join(result.output.replace("│", " ").split())
        assert result.exit_code == 2 and f"'{value}' is not a plain integer (ASCII digits, no '_')" in text, text
        assert not (run_copy / "x").exists()


@pytest.mark.parametrize("text, shown", [("seed: 017\n", "'017'"), ("distill: {temperature: 1:30}\n", "'1:30'"),
                                         ("distill: {epochs: 1_0}\n", "'1_0'")])
def test_b2_a_yaml_1_1_number_is_refused_not_read_as_another_value(tmp_path, text, shown):
    line, config = refused_config(tmp_path, text)
    assert line.startswith(f"error: config {config} is refused: line 1: {shown} is a YAML 1.1 number"), line


def test_b2_plain_numbers_still_read(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("seed: 17\ndistill: {method: hinton, temperature: 1.5, epochs: 0x2, lr: 1.0e-3}\n")
    loaded = load(None, config, {})
    assert (loaded.seed, loaded.distill.temperature, loaded.distill.epochs, loaded.distill.lr) == (17, 1.5, 2, 1e-3)


@pytest.mark.parametrize("path", ["../other/student.onnx", "/tmp/student.onnx"])
def test_b3_an_export_path_outside_the_run_is_a_corrupt_record(run_copy, path):
    assert_record_edit_refused(run_copy, lambda r: r["exports"]["onnx"].update(path=path),
                               f"path {path!r} is not a file inside the run directory")


def test_b4_onnx_external_data_that_is_a_fifo_is_named(tmp_path):
    from distill_export.runtimes.onnx_runtime import onnx_session
    from test_audit65 import _external_data_model

    model = _external_data_model(tmp_path)
    assert onnx_session(model).run(None, {"x": np.zeros((2, 4), np.float32)})[0].sum() == 8.0  # a real file loads
    (tmp_path / "w.bin").unlink()
    os.mkfifo(tmp_path / "w.bin")
    with pytest.raises(DataError, match=r"the external data file 'w.bin' of initializer 'w' is not a regular file "
                                        r"\(a FIFO\)"):
        onnx_session(model)


@pytest.mark.parametrize("name", ["baseline.pt", "control_teacher.pt"])
def test_b5_a_checkpoint_distill_measured_and_replaced_since_is_refused(run_copy, name):
    shutil.copyfile(run_copy / "student.pt" if name == "baseline.pt" else run_copy / "teacher.pt", run_copy / name)
    before = snapshot(run_copy)
    line = one_line_error(runner.invoke(app, ["report", str(run_copy)]), 2)
    assert line.startswith(f"error: {run_copy / name} changed after distill (the distill stage measured another "
                           "checkpoint: the run would describe other weights)"), line
    assert snapshot(run_copy) == before


@pytest.mark.parametrize("text, message", [
    ("export: {int8_recipe: qdq}\n", "export.int8_recipe is read only by INT8 exports"),
    ("distill: {mix_alpha: 0.3}\n", "distill.mix_alpha 0.3 is the strength of distill.mix, which is none here"),
    ("distill: {teacher_cache_dir: cache, augment: shift}\n", "distill.teacher_cache_dir cache is never used here"),
    ("data: {clip_frames: 7}\n", "data.clip_frames 7 sets the frames of a video column"),
    ("data: {annotations: x.json}\n", "data.annotations x.json holds a detection run's boxes"),
    ("device: cpu\ndistill: {kd_impl: triton}\n", "distill.kd_impl triton is the fused CUDA kernel"),
])
def test_b6_a_config_setting_this_run_never_reads_is_refused(tmp_path, text, message):
    line, config = refused_config(tmp_path, text)
    assert line.startswith(f"error: {message}"), line


def test_b6_the_same_settings_pass_where_they_are_read(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("export: {formats: [onnx, onnx-int8], int8_recipe: qdq}\n"
                      "distill: {mix: mixup, mix_alpha: 0.3, teacher_cache_dir: null}\n")
    loaded = load(None, config, {})
    assert loaded.export.int8_recipe == "qdq" and loaded.distill.mix_alpha == 0.3
    with pytest.raises(ConfigError, match="distill.kd_impl triton"):
        load(None, config, {"device": "cpu", "distill.kd_impl": "triton"})
