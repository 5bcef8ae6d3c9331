"""The sixth audit's detection, tune and tools cases (issue 24). Each bad input is one line,
exit 2, before any folder or file is written:
- DX1/DX2: a tune search space whose trials the task refuses (mix, rounds on detection), for
  `run --tune --tune-search` and `tune RUN --search`, refused as --mix and --rounds are;
- TN4: a tune time budget too small to start a trial, naming the flag of the command used;
- DB_under: a box coordinate that is not a plain decimal number ("1_0"), like "0x10";
- X1: --task detection without a fusion takes the task's own (late), not classification's concat;
- TL6-TL9: tools/*.py build and check every run's config before any training."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from _byo_fixtures import read_rows, write_rows
from _cli_checks import one_line_error, snapshot
from _video_fixtures import make_video_manifest
from distill_export.cli import app
from distill_export.config import RunConfig, load_config
from distill_export.config_checks import MIN_TUNE_MINUTES, check_search_for_task
from distill_export.errors import ConfigError

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
DETECTION = {"task": "detection", "student.name": "centernet_tiny", "distill.method": "det_kd"}
TRIAL_REASON = {
    "mix": "distill.mix=mixup blends images but not their box lists; task detection needs distill.mix=none",
    "rounds": "distill.rounds=2: later rounds fuse classifiers; task detection needs distill.rounds=1",
}


def _detection_config(tmp_path: Path) -> Path:
    path = tmp_path / "det.yaml"
    path.write_text(yaml.safe_dump({"task": "detection", "data": {"source": str(tmp_path / "m.csv"),
                                                                  "student_modality": "image"},
                                    "student": {"name": "centernet_tiny"}, "distill": {"method": "det_kd"}}))
    return path


def _detection_run(tmp_path: Path) -> Path:
    """A detection run directory as far as `tune`'s checks before any trial can tell."""
    run = tmp_path / "run"
    run.mkdir()
    config = load_config(None, None, DETECTION).to_dict()
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (run / "report.json").write_text(json.dumps({}))
    return run


# ----- DX1 / DX2: search spaces against the task ---------------------------------------------


@pytest.mark.parametrize("space", ["mix", "rounds"])
def test_dx_run_tune_with_a_space_detection_refuses_is_one_line_before_any_folder(tmp_path, space):
    config, out = _detection_config(tmp_path), tmp_path / "out"
    before = snapshot(tmp_path)
    line = one_line_error(runner.invoke(app, ["run", "--config", str(config), "--tune", "1", "--tune-search",
                                              f"terms,{space}", "--out", str(out), "--quiet"]))
    assert line == (f"error: --tune-search includes {space}, whose trials set distill.{space}, but task detection "
                    f"cannot take it ({TRIAL_REASON[space]}); drop {space} from --tune-search"), line
    assert snapshot(tmp_path) == before and not out.exists()


@pytest.mark.parametrize("space", ["mix", "rounds"])
def test_dx_tune_run_with_a_space_detection_refuses_is_one_line_and_changes_nothing(tmp_path, space):
    run = _detection_run(tmp_path)
    before = snapshot(tmp_path)
    line = one_line_error(runner.invoke(app, ["tune", str(run), "--search", f"{space},terms", "--trials", "1"]))
    assert line == (f"error: --search includes {space}, whose trials set distill.{space}, but task detection "
                    f"cannot take it ({TRIAL_REASON[space]}); drop {space} from --search"), line
    assert snapshot(tmp_path) == before


def test_dx_every_space_against_each_task():
    """terms and fusion search a detection run (its presets, its late and early teachers); mix
    and rounds are refused there and searched for classification."""
    detection, classification = load_config(None, None, DETECTION), load_config(None, None, {})
    check_search_for_task(detection, ("terms", "fusion"), "--search")
    check_search_for_task(classification, ("terms", "mix", "fusion", "rounds"), "--search")
    for space in ("mix", "rounds"):
        with pytest.raises(ConfigError, match=rf"^--search includes {space}, .* task detection cannot take it"):
            check_search_for_task(detection, ("terms", space), "--search")


# ----- TN4: a budget too small to start a trial ----------------------------------------------


def test_tn4_run_tune_minutes_below_the_floor_is_refused_naming_its_flag(tmp_path):
    out, before = tmp_path / "out", snapshot(tmp_path)
    line = one_line_error(runner.invoke(app, ["run", "--tune", "2", "--tune-minutes", "1e-9", "--out", str(out), "-q"]))
    assert line == (f"error: --tune-minutes 1e-09 is below the least search budget, {MIN_TUNE_MINUTES:g} minutes: "
                    f"no trial would start; give --tune-minutes {MIN_TUNE_MINUTES:g} or more"), line
    assert snapshot(tmp_path) == before and not out.exists()


def test_tn4_tune_minutes_below_the_floor_is_refused_naming_its_flag(tmp_path):
    run = _detection_run(tmp_path)
    before = snapshot(tmp_path)
    line = one_line_error(runner.invoke(app, ["tune", str(run), "--minutes", "0.001"]))
    assert line.startswith("error: --minutes 0.001 is below the least search budget") and "give --minutes" in line
    assert snapshot(tmp_path) == before


def test_tn4_run_tune_passes_its_own_flags_to_the_budget(monkeypatch, tmp_path):
    """The "no trial completed ... give it more X" line names X from the budget: run's flags here."""
    from distill_export import tune as tune_module

    seen = {}

    def fake_tune(config, run, methods, budget, path, quiet, search=()):
        seen["flags"] = budget.trials_flag, budget.minutes_flag
        raise ConfigError("stop")

    monkeypatch.setattr(tune_module, "tune", fake_tune)

    class Run:
        def file(self, name):
            return tmp_path / name

    config = RunConfig()
    config.distill.tune_minutes = 1.0
    with pytest.raises(ConfigError, match="stop"):
        tune_module.tune_before_distill(config, Run(), quiet=True)
    assert seen["flags"] == ("--tune", "--tune-minutes")
    assert (tune_module.TuneBudget().trials_flag, tune_module.TuneBudget().minutes_flag) == ("--trials", "--minutes")


# ----- DB_under: box coordinates are plain decimal numbers -----------------------------------


@pytest.mark.parametrize("cell", ["a 1_0 4 12 10", "a 0x1 4 12 10", "a ٣ 4 12 10"])
def test_db_under_a_coordinate_that_is_not_a_plain_number_is_refused_naming_the_row(tmp_path, cell):
    from distill_export.data import load_dataset
    from distill_export.data.boxes import BoxTargets
    from distill_export.data.manifest import ManifestError

    manifest = make_video_manifest(tmp_path, boxes=True)
    rows = read_rows(manifest)
    rows[1]["label"] = cell  # line 3 of the file
    write_rows(manifest, rows)
    before = snapshot(tmp_path)
    from distill_export.config import DataConfig

    with pytest.raises(ManifestError) as err:
        load_dataset(DataConfig(source=str(manifest)), seed=0, targets=BoxTargets())
    message = str(err.value)
    assert message.startswith(f"{manifest}:3: bad row: ") and f"{cell.split()[1]!r} is not a number" in message
    assert "\n" not in message and snapshot(tmp_path) == before


def test_db_plain_decimals_still_parse():
    from distill_export.data.boxes import parse_boxes

    assert parse_boxes("a 1e1 2.5 +43 44.; b .5 0 1 1") == [("a", 10.0, 2.5, 43.0, 44.0), ("b", 0.5, 0.0, 1.0, 1.0)]
    assert parse_boxes('[["a", 1, 2, 3.5, 4e1]]') == [("a", 1.0, 2.0, 3.5, 40.0)]


# ----- X1: the detection task's own fusion when none is set -----------------------------------


def test_x1_detection_without_a_fusion_takes_late_and_an_explicit_concat_says_what_to_set(tmp_path):
    assert load_config(None, None, DETECTION).teacher.fusion == "late"
    assert load_config("avdigits", None, DETECTION).teacher.fusion == "late"
    assert load_config(None, None, {**DETECTION, "teacher.fusion": "early"}).teacher.fusion == "early"
    assert load_config(None, None, {}).teacher.fusion == "concat"  # classification keeps its default
    out, before = tmp_path / "out", snapshot(tmp_path)
    line = one_line_error(runner.invoke(app, ["run", "--task", "detection", "--student", "centernet_tiny", "--method",
                                              "det_kd", "--teacher-fusion", "concat", "--out", str(out), "-q"]))
    assert line == ("error: teacher.fusion=concat is not a detection teacher (choices for task detection: late, "
                    "early); set --teacher-fusion late (or teacher.fusion in --config)"), line
    assert snapshot(tmp_path) == before and not out.exists()


# ----- TL6-TL9: tools check every config before any training ---------------------------------


@pytest.mark.parametrize("tool, args, needle", [
    # TL7: the bad student is the second; TL8: a bad --set value (before any training either way)
    ("kd_gain", ["--seeds", "0", "--label-fractions", "1.0", "--students", "tiny_cnn", "centernet_tiny"],
     "error: student centernet_tiny, label fraction 1, seed 0: student 'centernet_tiny' is a detection student"),
    ("kd_gain", ["--seeds", "0", "--label-fractions", "1.0", "--set", "data.max_train_rows=nan"],
     "error: --recipe/--config/--set: flags: data: max_train_rows: expected an integer, got 'nan'"),
    ("compare_methods", ["--methods", "hinton", "bogus"], "error: method bogus: unknown distillation method 'bogus'"),
    ("bench_cache", ["--recipe", "bogus"], "error: unknown recipe 'bogus'"),
    ("bench_export", ["--student", "bogus_net"], "error: unknown student 'bogus_net'"),
    ("bench_train", ["--student", "centernet_tiny"], "error: student 'centernet_tiny' is a detection student"),
], ids=["kd_gain-student", "kd_gain-set", "compare_methods", "bench_cache", "bench_export", "bench_train"])
def test_tl_tools_refuse_a_bad_setting_in_one_line_before_any_work(tmp_path, tool, args, needle):
    out = tmp_path / ("out.json" if tool == "bench_export" else "out")
    before = snapshot(tmp_path)
    proc = subprocess.run([sys.executable, str(REPO / "tools" / f"{tool}.py"), *args, "--out", str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(needle), (proc.returncode, lines)
    assert snapshot(tmp_path) == before and not out.exists()


@pytest.mark.parametrize("task, score", [("detection", "mAP50"), ("classification", "accuracy")])
def test_tune_names_the_tasks_validation_score(tmp_path, monkeypatch, task, score):
    """`tune RUN` sums up its best trial by the task's own validation score (it said "validation
    accuracy 0.0%" on a detection run, whose trials score mAP50). The search itself is replaced:
    only the CLI's summary line is under test."""
    import distill_export.tune as tune_module

    run = _detection_run(tmp_path)
    if task == "classification":
        (run / "config.yaml").write_text(yaml.safe_dump(load_config(None, None, {}).to_dict(), sort_keys=False))
    summary = {"best": {"method": "det_kd", "val_accuracy": 0.425}, "completed": 1, "pruned": 0, "seconds": 1.0,
               "confirmation": None, "decision": {"line": "distil"}}
    monkeypatch.setattr(tune_module, "tune", lambda *a, **k: summary)
    result = runner.invoke(app, ["tune", str(run), "--trials", "1"])
    assert result.exit_code == 0, result.output
    assert f"det_kd, validation {score} 42.5%" in result.output, result.output
