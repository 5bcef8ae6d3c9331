"""Ninth round of issue 24 (docs/reliability.md, "Eleventh round"): the eighth audit's arguable
cases that were left, settled:
- teacher.lr / batch_size / width / modality_dropout in --config with a loaded teacher, the
  control off and one round, were recorded in config.yaml though no teacher trained with them;
- a hand-edited report.json with an inverted 95% interval, a batch of 0 or a negative confusion
  count rendered; it is now a corrupt record, one line, exit 2;
- an animated GIF was read as its first frame.
And the ninth audit's bad cases: B1 booleans in report.json numbers, SW3/SW5 tools/same_weights.py
on a list checkpoint and on NaN, B4 a manifest whose every row is bad, B5 student.pt replaced
between distill and export, B6 a key given twice in a config YAML."""

from __future__ import annotations

import json
import os

import pytest
import torch
from typer.testing import CliRunner

from _cli_checks import assert_record_edit_refused, one_line_error, refused_config, run_same_weights, snapshot
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
    (lambda r: _first_latency_row(r).update(iterations=0), "iterations"),  # ninth audit 6a
    (lambda r: r["metrics"]["student"]["confusion_matrix"][0].__setitem__(0, -3), "confusion_matrix"),
])
def test_a_hand_edited_interval_batch_or_count_is_a_corrupt_record(run_copy, edit, needle):
    assert_record_edit_refused(run_copy, edit, needle)


def _first_parity(record: dict) -> dict:
    return next(e["parity"] for e in record["exports"].values() if e.get("parity"))


@pytest.mark.parametrize("edit, needle", [  # ninth audit B1: pydantic reads JSON true as 1
    (lambda r: r["metrics"]["baseline"].update(accuracy=True), "accuracy is true, not a number"),
    (lambda r: r.update(kd_gain=True), "kd_gain is true, not a number"),
    (lambda r: _first_parity(r).update(top1_agreement=True), "top1_agreement is true, not a number"),
    (lambda r: _first_comparison(r).update(p_value=False), "p_value is false, not a number"),
    (lambda r: r["metrics"]["student"].update(n=True), "n is true, not a number"),
    (lambda r: r["metrics"]["student"].update(map50=True), "map50 is true, not a number"),  # another task's score
    (lambda r: r.update(kd_gain_ci95=[True, 0.2]), "kd_gain_ci95[0] is true, not a number"),
    (lambda r: r["timings"].update(distill=True), "timings.distill is true, not a number"),
])
def test_a_boolean_where_a_number_belongs_is_a_corrupt_record(run_copy, edit, needle):
    assert_record_edit_refused(run_copy, edit, needle)


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


def test_sw3_same_weights_compares_a_checkpoint_that_is_a_list(tmp_path):
    torch.save([torch.zeros(2), {"k": torch.ones(1)}], tmp_path / "a.pt")
    torch.save([torch.zeros(2), {"k": torch.full((1,), 2.0)}], tmp_path / "b.pt")
    torch.save({"w": torch.zeros(2)}, tmp_path / "d.pt")
    assert run_same_weights(tmp_path / "a.pt", tmp_path / "a.pt") == (0, "identical\n")
    assert run_same_weights(tmp_path / "a.pt", tmp_path / "b.pt") == (1, "[1].k: tensors differ\n1 differences\n")
    assert run_same_weights(tmp_path / "a.pt", tmp_path / "d.pt") == (
        1, "(the file itself): a list != a dict\n1 differences\n")


def test_sw5_same_weights_compares_bits_so_a_nan_is_itself_and_minus_zero_is_not_zero(tmp_path):
    torch.save({"w": torch.tensor([float("nan"), 1.0]), "meta": {"lr": float("nan")}}, tmp_path / "nan.pt")
    torch.save({"w": torch.tensor([0.0])}, tmp_path / "zero.pt")
    torch.save({"w": torch.tensor([-0.0])}, tmp_path / "minus_zero.pt")
    assert run_same_weights(tmp_path / "nan.pt", tmp_path / "nan.pt") == (0, "identical\n")
    assert run_same_weights(tmp_path / "zero.pt", tmp_path / "minus_zero.pt") == (1, "w: tensors differ\n1 differences\n")


@pytest.mark.parametrize("field, value, needle", [
    ("label", 0.5, "line 1: field 'label' is 0.5"),
    ("image", 123, "line 1: field 'image'"),
])
def test_b4_a_manifest_whose_every_row_is_bad_names_a_row_not_a_missing_column(tmp_path, field, value, needle):
    from distill_export.data.manifest_rows import read_rows
    from distill_export.errors import DataError

    manifest = tmp_path / "m.jsonl"
    rows = [{"image": f"img/{i}.png", "label": str(i % 2)} for i in range(4)]
    for row in rows:
        row[field] = value
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError) as caught:
        read_rows(manifest)
    message = str(caught.value)
    assert message.startswith(f"manifest {manifest} has no usable row: all 4 rows are bad") and needle in message
    assert "no 'label' column" not in message


@pytest.mark.parametrize("command", ["export", "validate", "profile", "report"])
def test_b5_a_student_pt_replaced_after_distill_is_refused_by_every_later_stage(run_copy, command):
    import shutil

    shutil.copyfile(run_copy / "baseline.pt", run_copy / "student.pt")  # another checkpoint, same kind
    before = snapshot(run_copy)
    line = one_line_error(runner.invoke(app, [command, str(run_copy), "-q"] if command != "report"
                                        else [command, str(run_copy)]), 2)
    assert line.startswith(f"error: {run_copy / 'student.pt'} changed after distill (the distill stage measured "
                           "another checkpoint: the run would describe other weights)"), line
    assert f"re-run `distill-export distill {run_copy}`" in line, line
    assert snapshot(run_copy) == before


def test_b5_the_distilled_checkpoint_is_recorded_by_its_hash(tiny_run):
    from distill_export.files import sha256_file

    record = json.loads((tiny_run / "report.json").read_text())
    assert record["distill"]["files_sha256"] == {name: sha256_file(tiny_run / name) for name in
                                                 ("student.pt", "baseline.pt", "control_teacher.pt")}


@pytest.mark.parametrize("text, needle", [
    ("distill: {epochs: 1}\ndistill: {epochs: 2}\n", "key 'distill' appears twice in one mapping (lines 1 and 2)"),
    ("teacher: {epochs: 1, width: 8, epochs: 3}\n", "key 'epochs' appears twice in one mapping (lines 1 and 1)"),
])
def test_b6_a_key_given_twice_in_a_config_is_refused(tmp_path, text, needle):
    line, config = refused_config(tmp_path, text, name="dup.yaml")
    assert line == f"error: config {config} is refused: {needle}: which one is meant?", line


def test_b6_a_merge_key_then_an_override_is_not_a_repeat():
    from distill_export import safe_yaml

    text = "base: &b {epochs: 1, lr: 0.1}\nteacher:\n  <<: *b\n  epochs: 3\n"
    assert safe_yaml.load(text)["teacher"] == {"epochs": 3, "lr": 0.1}


@pytest.mark.parametrize("ending", ["/", "/.", "/.."])  # the tenth audit's B8: `DIR/.` wrote a file DIR
def test_an_output_file_named_with_a_trailing_slash_is_refused(run_copy, tmp_path, monkeypatch, ending):
    monkeypatch.chdir(tmp_path)  # a short relative path: long ones are shortened in error lines
    out = f"newdir{ending}"
    before = snapshot(tmp_path)
    line = one_line_error(runner.invoke(app, ["tune", str(run_copy), "--trials", "1", "--out", out, "-q"]), 2)
    folder = os.path.normpath(out)
    assert line == (f"error: --out '{out}' names a folder (it ends in '/' or '.', or is empty), and --out is a file; "
                    f"give the file's name, e.g. {folder}/NAME"), line
    assert snapshot(tmp_path) == before and not (tmp_path / "newdir").exists()
