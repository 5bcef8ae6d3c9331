"""Ninth round of issue 24 (docs/reliability.md, "Eleventh round"): the eighth audit's arguable
cases that were left, settled:
- teacher.lr / batch_size / width / modality_dropout in --config with a loaded teacher, the
  control off and one round, were recorded in config.yaml though no teacher trained with them;
- a hand-edited report.json with an inverted 95% interval, a batch of 0 or a negative confusion
  count rendered; it is now a corrupt record, one line, exit 2."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from _cli_checks import one_line_error, snapshot
from distill_export.cli import app
from distill_export.cli.options import load
from distill_export.errors import ConfigError

runner = CliRunner()
TEACHER = "torch.nn:Identity"  # a factory teacher: loaded, never trained


@pytest.mark.parametrize("key, value", [("lr", 0.01), ("batch_size", 32), ("width", 64), ("modality_dropout", 0.1)])
def test_a_loaded_teachers_training_settings_in_config_are_refused(tmp_path, key, value):
    config = tmp_path / "c.yaml"
    config.write_text(f"teacher: {{{key}: {value}}}\ndistill: {{self_training_control: false}}\n")
    before, out = snapshot(tmp_path), tmp_path / "r"
    line = one_line_error(runner.invoke(app, ["run", "--config", str(config), "--teacher", TEACHER,
                                              "--out", str(out), "-q"]), 2)
    assert line == (f"error: teacher.{key} {value} cannot apply: --teacher {TEACHER} is loaded, not trained, and no "
                    "other teacher trains here (the self-training control is off and distill.rounds is 1); drop "
                    f"teacher.{key} from --config"), line
    assert snapshot(tmp_path) == before and not out.exists()


def test_a_loaded_teachers_training_settings_apply_where_a_teacher_still_trains(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("teacher: {width: 8, lr: 0.01}\n")
    # the demo recipe's self-training control trains an image-only teacher with them
    assert load(None, config, {"teacher.path": TEACHER}).teacher.width == 8
    # from round 2 the re-fitted experts are built with teacher.width
    off = tmp_path / "off.yaml"
    off.write_text("teacher: {width: 8}\ndistill: {self_training_control: false, rounds: 2}\n")
    assert load(None, off, {"teacher.path": TEACHER}).teacher.width == 8
    # the recipe's own teacher settings are not the user's: nothing to refuse
    quiet = tmp_path / "q.yaml"
    quiet.write_text("distill: {self_training_control: false}\n")
    assert load(None, quiet, {"teacher.path": TEACHER}).teacher.path == TEACHER
    with pytest.raises(ConfigError, match=r"teacher.lr 0.01 cannot apply"):
        load(None, tmp_path / "c.yaml", {"teacher.path": TEACHER, "distill.self_training_control": False})


def _first_comparison(record: dict) -> dict:
    return next(iter(record["comparisons"].values()))


def _first_latency_row(record: dict) -> dict:
    return next(r for r in record["latency"] if r.get("p50_ms") is not None)


@pytest.mark.parametrize("edit, needle", [
    (lambda r: r.update(kd_gain_ci95=[0.03, 0.01]), "low end above its high end"),
    (lambda r: _first_comparison(r).update(ci95=[0.05, -0.05]), "low end above its high end"),
    (lambda r: _first_latency_row(r).update(batch=0), "batch"),
    (lambda r: r["metrics"]["student"]["confusion_matrix"][0].__setitem__(0, -3), "confusion_matrix"),
])
def test_a_hand_edited_interval_batch_or_count_is_a_corrupt_record(run_copy, edit, needle):
    path = run_copy / "report.json"
    record = json.loads(path.read_text())
    edit(record)
    path.write_text(json.dumps(record))
    before = snapshot(run_copy)
    line = one_line_error(runner.invoke(app, ["report", str(run_copy)]), 2)
    assert line.startswith(f"error: {path} is corrupt") and needle in line, line
    assert snapshot(run_copy) == before


def test_the_products_own_record_still_loads_and_renders(run_copy):
    record = json.loads((run_copy / "report.json").read_text())
    low, high = record["kd_gain_ci95"]
    assert low <= high and all(r["batch"] >= 1 for r in record["latency"] if r.get("batch") is not None)
    result = runner.invoke(app, ["report", str(run_copy)])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("suffix", ["gif", "png", "tiff"])
def test_an_animated_or_multi_page_image_is_refused_naming_the_file(tmp_path, suffix):
    from PIL import Image

    from distill_export.data.loaders import read_image
    from distill_export.errors import DataError

    frames = [Image.new("L", (8, 8), color=c) for c in (0, 255)]
    path = tmp_path / f"two.{suffix}"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    with pytest.raises(DataError, match=rf"image {path} is an animated or multi-page \w+ with 2 frames"):
        read_image(path)
    still = tmp_path / f"one.{suffix}"
    frames[1].save(still)
    assert read_image(still).convert("L").getpixel((0, 0)) == 255  # a single picture reads as before
