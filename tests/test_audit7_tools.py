"""The seventh audit's tools cases (issue 24). The scripts under tools/ check every numeric
argument while parsing the command line (tools/toolargs.py), before any training, export or
file: a bad value is one line `error: argument --flag: ...` on stderr, exit 2, nothing written.
- TLf/TLf2/TLh/TLi: bench_profile --repeats 0, --batch 0, --threads=-3 (and, without a run
  directory, no demo run trained into the repository's bench-results/ first);
- B2/B8: bench_export --seconds -1, bench_kd_loss --threads -1;
- B1/B7: bench_train --rows -5, make_captioned_digits --p-drop 2, and the other make_*/prepare_*
  numeric arguments (probabilities in [0, 1], counts >= 1, fractions in (0, 1]);
- B4: bench_cache runs end to end on the current online-teacher API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from _cli_checks import snapshot

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / "tools"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _tool(tmp_path: Path, name: str, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOLS / name), *args], capture_output=True, text=True,
                          cwd=tmp_path, env=ENV, timeout=timeout)


def _refused(proc: subprocess.CompletedProcess, flag: str, needle: str) -> None:
    """Exit 2, one line on stderr naming the flag and the rule, nothing on stdout, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout.strip() == "" and "Traceback" not in proc.stderr, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: argument {flag}: ") and needle in lines[0], lines[0]


def _fake_run(tmp_path: Path) -> Path:
    """A folder standing in for a run directory: a refusal must leave it as it was."""
    run = tmp_path / "RB"
    run.mkdir()
    (run / "report.json").write_text(json.dumps({"exports": {}}))
    (run / "config.yaml").write_text("seed: 0\n")
    return run


BAD = [  # (tool, arguments before --out, flag, what the message says), one per audit case and kind of rule
    ("bench_profile.py", ["RB", "--repeats", "0"], "--repeats", "must be an integer >= 1, got 0"),  # TLf2
    ("bench_profile.py", ["RB", "--batch", "0"], "--batch", "must be an integer >= 1, got 0"),  # TLh
    ("bench_profile.py", ["RB", "--threads=-3"], "--threads", "must be an integer >= 0, got -3"),  # TLi
    ("bench_profile.py", ["RB", "--batch", "1,,8"], "--batch", "has an empty item"),
    ("bench_export.py", ["--run", "RB", "--seconds", "-1"], "--seconds", "must be a number > 0, got -1"),  # B2
    ("bench_export.py", ["--run", "RB", "--batches", "0"], "--batches", "must be an integer >= 1, got 0"),  # B9
    ("bench_kd_loss.py", ["--device", "cpu", "--threads", "-1"], "--threads", "must be an integer >= 1"),  # B8
    ("bench_kd_loss.py", ["--device", "cpu", "--reps", "0"], "--reps", "must be an integer >= 1, got 0"),  # B3
    ("bench_train.py", ["--rows", "-5"], "--rows", "must be an integer >= 10, got -5"),  # B1 (10: the classes)
    ("bench_cache.py", ["--repeats", "0"], "--repeats", "must be an integer >= 1, got 0"),
    ("make_captioned_digits.py", ["--p-drop", "2"], "--p-drop", "must be a probability in [0, 1], got 2"),  # B7
    ("make_captioned_digits.py", ["--false-rate", "nan"], "--false-rate", "is not a finite number"),
    ("make_captioned_digits.py", ["--train-per-class", "0"], "--train-per-class", "must be an integer >= 1"),
    ("make_moving_digits.py", ["--train", "0"], "--train", "must be an integer >= 1, got 0"),
    ("make_rgb96_manifest.py", ["--per-class", "-1"], "--per-class", "must be an integer >= 3, got -1"),  # B6
    ("prepare_avmnist.py", ["--mnist", "RB", "--fsdd", "RB", "--pca-variance", "0"], "--pca-variance",
     "must be a fraction in (0, 1], got 0"),
]


@pytest.mark.parametrize("tool,args,flag,needle", BAD, ids=[f"{t[:-3]}{a[-2]}" for t, a, _, _ in BAD])
def test_a_bad_number_is_one_line_exit_2_and_writes_nothing(tmp_path, tool, args, flag, needle):
    _fake_run(tmp_path)
    before = snapshot(tmp_path)
    out = tmp_path / ("o.json" if tool == "bench_export.py" else "o")
    _refused(_tool(tmp_path, tool, *args, "--out", str(out)), flag, needle)
    assert snapshot(tmp_path) == before  # no --out, the run folder untouched


def test_bench_profile_without_a_run_refuses_before_training_a_demo_run(tmp_path):
    """TLf: the demo run goes into the repository's bench-results/; a bad --repeats builds none."""
    results = REPO / "bench-results"
    before = snapshot(results)
    _refused(_tool(tmp_path, "bench_profile.py", "--repeats", "0", "--out", str(tmp_path / "o")),
             "--repeats", "got 0")
    assert snapshot(results) == before and not (tmp_path / "o").exists()


def test_bench_cache_runs_end_to_end_on_tiny_settings(tmp_path):
    """B4: the online teacher takes train_student's (rows, x_student, mix); it was called with
    one argument too many and the tool did not run at all."""
    out = tmp_path / "cache"
    proc = _tool(tmp_path, "bench_cache.py", "--rows", "128", "--widths", "8", "--repeats", "1",
                 "--out", str(out), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["bench_cache.csv", "bench_cache.json", "bench_cache.md"]
    (row,) = json.loads((out / "bench_cache.json").read_text())["results"]
    assert row["teacher_width"] == 8 and row["epoch_online_s"] > 0 and row["epoch_cached_s"] > 0
    assert row["cache_bytes"] > 0
