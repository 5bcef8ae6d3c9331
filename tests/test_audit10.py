"""Tenth hostile audit (issue 24; docs/reliability.md, "Twelfth round"): 9 bad cases, each
refused in one line now, with exit 2 and nothing changed:
B1/B2 booleans and negative counts in report.json's dataset and comparisons; B3/B4 a setting given
twice in one YAML (two merge keys, or nested and dotted); B5 distill.method beside distill.terms;
B6 a FIFO or device as a .pt teacher; B7 a checkpoint's unexpected key named; B9 same_weights.py
comparing 1, 1.0 and True as equal. And three arguable cases: `--batch 1_0`, an empty manifest,
a manifest that is a device."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from _cli_checks import assert_record_edit_refused, refused_config, run_same_weights
from distill_export.errors import ConfigError, DataError



def _first_comparison(record: dict) -> dict:
    return next(iter(record["comparisons"].values()))


@pytest.mark.parametrize("edit, needle", [
    (lambda r: r["dataset"].update(pca_variance=True), "pca_variance is true, not a number"),
    (lambda r: r["dataset"].update(audio_snr_db=False), "audio_snr_db is false, not a number"),
    (lambda r: r["dataset"].update(pca_components=True), "pca_components is true, not a number"),
    (lambda r: r["dataset"]["sizes"].update(test=-1000), "greater than or equal to 0"),
    (lambda r: r["dataset"].update(labeled_train_rows=-50), "labeled_train_rows"),
    (lambda r: _first_comparison(r).update(discordant=[-3, 112]), "discordant"),
    (lambda r: r["distill"].update(train_rows=-1), "train_rows"),
])
def test_b1_b2_a_boolean_or_negative_count_in_the_record_is_corrupt(run_copy, edit, needle):
    assert_record_edit_refused(run_copy, edit, needle)


@pytest.mark.parametrize("text, needle", [
    ("teacher: {<<: {epochs: 1}, <<: {epochs: 3}, width: 8}\n",
     "is refused: the merge key '<<' appears twice in one mapping (lines 1 and 1)"),
    ("teacher: {epochs: 1, width: 8}\nteacher.epochs: 3\n",
     "is refused: teacher.epochs is given twice (as 'teacher: epochs' and as 'teacher.epochs'): which one is meant?"),
])
def test_b3_b4_a_setting_given_twice_in_one_yaml_is_refused(tmp_path, text, needle):
    line, config = refused_config(tmp_path, text, "train-teacher", name="twice.yaml")
    assert line.startswith(f"error: config {config} ") and needle in line, line


def test_b3_b4_one_merge_of_a_list_and_different_dotted_settings_still_load(tmp_path):
    from distill_export.config import read_yaml

    config = tmp_path / "ok.yaml"
    config.write_text("a: &a {epochs: 1}\nb: &b {width: 8}\nteacher: {<<: [*a, *b]}\nteacher.lr: 0.01\n")
    assert read_yaml(config)["teacher"] == {"epochs": 1, "width": 8}


def test_b5_distill_method_beside_different_terms_is_refused(tmp_path):
    line, _ = refused_config(tmp_path, "distill: {method: dkd, terms: [{name: kd, weight: 1.0}]}\n")
    assert line == ("error: distill.method dkd and distill.terms (kd) are both set in --config, and the terms are "
                    "what runs, so dkd would be recorded but never run; drop distill.method, or drop distill.terms "
                    "(or pass --method, which replaces them)"), line


def test_b5_a_method_that_names_the_same_objective_and_the_method_flag_pass(tmp_path):
    from distill_export.cli.options import load

    agrees = tmp_path / "tuned.yaml"  # what tune writes when it declines to distill
    agrees.write_text("distill: {method: labels_only, terms: [{name: ce, weight: 1.0}]}\n")
    assert load(None, agrees, {}).distill.method == "labels_only"
    differs = tmp_path / "c.yaml"
    differs.write_text("distill: {method: dkd, terms: [{name: kd, weight: 1.0}]}\n")
    config = load(None, differs, {"distill.method": "hinton"})  # the flag replaces the terms (B6)
    assert config.distill.method == "hinton" and config.distill.terms == []
    with pytest.raises(ConfigError, match="distill.method dkd and distill.terms"):
        load(None, differs, {})


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_b6_a_teacher_pt_that_is_a_fifo_or_a_device_is_named_not_read(tmp_path, kind):
    teacher = tmp_path / "teacher.pt"
    if kind == "fifo":
        os.mkfifo(teacher)
    else:
        teacher.symlink_to("/dev/zero")
    out = tmp_path / "r"
    done = subprocess.run([sys.executable, "-m", "distill_export", "train-teacher", "--teacher", str(teacher),
                           "--out", str(out), "-q"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = [ln for ln in (done.stdout + done.stderr).splitlines() if ln.strip()]
    what = "a FIFO" if kind == "fifo" else "a character device"
    assert done.returncode == 2 and lines == [f"error: teacher {teacher} is not a regular file ({what})"], lines
    assert not out.exists()


def test_b7_a_checkpoint_that_does_not_fit_names_the_keys():
    from distill_export.errors import CheckpointError
    from distill_export.nets.checkpoint import load_state

    model = torch.nn.Linear(2, 2)
    state = {**model.state_dict(), "extra_w": torch.zeros(1)}
    with pytest.raises(CheckpointError, match=r'does not fit the Linear model: Unexpected key\(s\) in state_dict: '
                                              r'"extra_w"'):
        load_state(model, state, "x.pt")


def test_b9_same_weights_compares_plain_values_by_type_and_bits(tmp_path):
    for name, value in {"int": 1, "bool": True, "float": 1.0, "zero": 0.0, "minus_zero": -0.0}.items():
        torch.save({"w": value}, tmp_path / f"{name}.pt")
    assert run_same_weights(tmp_path / "int.pt", tmp_path / "int.pt") == (0, "identical\n")
    assert run_same_weights(tmp_path / "int.pt", tmp_path / "bool.pt") == (1, "w: 1 != True\n1 differences\n")
    assert run_same_weights(tmp_path / "int.pt", tmp_path / "float.pt") == (1, "w: 1 != 1.0\n1 differences\n")
    assert run_same_weights(tmp_path / "zero.pt", tmp_path / "minus_zero.pt") == (1, "w: 0.0 != -0.0\n1 differences\n")


def test_a_number_with_an_underscore_is_not_read_as_another_number():
    from distill_export.profiling.settings import parse_ints

    with pytest.raises(ConfigError, match=r"--batch: expected comma-separated integers \(ASCII digits, no '_'\), got '1_0'"):
        parse_ints("1_0", "--batch")
    assert parse_ints("1,10", "--batch") == [1, 10]


def test_an_empty_manifest_and_a_manifest_that_is_a_device_are_said_as_such(tmp_path):
    from distill_export.data.manifest import missing_manifest
    from distill_export.data.manifest_rows import read_rows

    empty = tmp_path / "m.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match=r"is empty: no header and no rows"):
        read_rows(empty)
    device = tmp_path / "zero.csv"
    device.symlink_to("/dev/zero")
    assert missing_manifest(device) == (f"manifest {device} is not a regular file (a device, FIFO or other special "
                                        "file); give a .csv or .jsonl file")
