"""What the fifth audit left as arguable, now settled (issue 24; docs/reliability.md):
- C1: distill.teacher_cache_dir naming a file (or a path under one) is refused before any
  directory is made or teacher trained, in one line, exit 2; it was a raw `Not a directory`
  after the teacher had trained;
- D_rot: a photo tagged with an EXIF orientation decodes upright (tests/test_decode_keeps_data.py)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from _cli_checks import one_line_error, snapshot
from distill_export.cli import app
from distill_export.errors import ConfigError
from distill_export.preflight import check_cache_dir

runner = CliRunner()


@pytest.mark.parametrize("below", ["", "/cache"])
def test_c1_a_teacher_cache_dir_that_is_a_file_is_refused_before_anything_runs(tmp_path, below):
    user_file = tmp_path / "notes.txt"
    user_file.write_text("mine\n")
    config = tmp_path / "c.yaml"
    config.write_text(f"distill:\n  teacher_cache_dir: {user_file}{below}\n")
    out, before = tmp_path / "run", snapshot(tmp_path)
    line = one_line_error(runner.invoke(app, ["run", "--config", str(config), "--out", str(out), "--quiet"]), 2)
    assert line == (f"error: distill.teacher_cache_dir {user_file}{below}: {user_file} is not a folder; give a "
                    "folder (it is made if missing) or leave it unset to cache inside the run directory"), line
    assert snapshot(tmp_path) == before and not out.exists()


def test_c1_a_missing_or_existing_cache_folder_is_accepted(tmp_path):
    check_cache_dir(None)
    check_cache_dir(str(tmp_path))  # exists
    check_cache_dir(str(tmp_path / "new" / "deeper"))  # made when first written
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="is not a folder"):
        check_cache_dir(str(tmp_path / "f" / "deeper"))


@pytest.mark.parametrize("edit, key", [
    (lambda r: r["metrics"]["student"].__setitem__("accuracy", float("nan")), "metrics.student.accuracy"),
    (lambda r: r.__setitem__("kd_gain", float("inf")), "kd_gain"),
    (lambda r: r["comparisons"]["student_vs_baseline"].__setitem__("gain", float("-inf")),
     "comparisons.student_vs_baseline.gain"),
])
def test_rj1_a_report_json_with_a_non_finite_score_is_refused_not_rendered(run_copy, edit, key):
    """A hand-edited report.json with NaN/inf scores: `report` says the record is corrupt and
    names the key (it rendered "nan%" and "kd_gain = +inf points" before); nothing is written."""
    import json

    path = run_copy / "report.json"
    record = json.loads(path.read_text())
    edit(record)
    path.write_text(json.dumps(record))  # json writes NaN / Infinity, as a hand edit would
    before = snapshot(run_copy)
    line = one_line_error(runner.invoke(app, ["report", str(run_copy)]), 2)
    assert line.startswith(f"error: {path} is corrupt") and key.split(".")[-1] in line, line
    assert "finite" in line, line
    assert snapshot(run_copy) == before


def test_st3b_profile_of_a_run_sweeps_the_runs_own_batches_and_threads(run_copy):
    """`profile RUN` measures what the run's config.yaml asks (profile.batches [1], threads [1] in
    the tiny run), as `run` did; it swept the standalone 1,8,32,128 x 1,2,4,all before. Flags
    still win."""

    result = runner.invoke(app, ["profile", str(run_copy), "--quiet"])
    assert result.exit_code == 0, result.output
    rows = measured(run_copy)
    assert {r["batch"] for r in rows} == {1} and {r["threads"] for r in rows} == {1}, rows
    result = runner.invoke(app, ["profile", str(run_copy), "--batch", "2", "--quiet"])
    assert result.exit_code == 0, result.output
    rows = measured(run_copy)
    assert {r["batch"] for r in rows} == {2} and {r["threads"] for r in rows} == {1}, rows


def measured(run) -> list[dict]:
    """report.json's latency rows that were measured (a backend not installed is a skipped row)."""
    import json

    rows = json.loads((run / "report.json").read_text())["latency"]
    return [r for r in rows if not r.get("skipped")]
