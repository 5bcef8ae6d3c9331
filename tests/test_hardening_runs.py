"""Bad input of every class gives one line, a non-zero exit and no traceback, and leaves the
user's files as they were (issue 11): corrupt files in a run directory, manifest audio, run
directories (numbers, YAML and the CLI wrapper: test_hardening.py). docs/reliability.md lists
each case with its test."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from _cli_checks import BILLION_LAUGHS, one_line_error, snapshot
from distill_export.cli import app
from distill_export.config import RunConfig
from distill_export.errors import ConfigError

runner = CliRunner()


# ----- corrupt files in a run directory ---------------------------------------------------------
@pytest.fixture
def fake_run(tmp_path) -> Path:
    """A run directory with a valid config.yaml and report.json (no artifacts)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(RunConfig().to_dict(), sort_keys=False))
    (run / "report.json").write_text('{"exports": {}}\n')
    return run


@pytest.mark.parametrize("content", ['{"exports": {', "[1, 2]", "\xff\xfe garbage", "[" * 100000 + "]" * 100000])
@pytest.mark.parametrize("command", ["validate", "report", "export"])
def test_corrupt_report_json_is_named(command, content, fake_run):
    (fake_run / "report.json").write_bytes(content.encode("latin-1"))
    if command == "export":
        (fake_run / "student.pt").write_bytes(b"")  # exists; export reads the report later
    before = snapshot(fake_run)
    result = runner.invoke(app, [command, str(fake_run), "--quiet"] if command != "report" else [command, str(fake_run)])
    line = one_line_error(result, 2)
    assert "report.json" in line or "student.pt" in line, line
    assert snapshot(fake_run) == before


@pytest.mark.parametrize("content,needle", [
    ("distill: [1, 2\n", "not valid YAML"),
    ("- just a list\n", "mapping"),
    ("distill:\n  temperture: 2\n", "temperture"),
    ("distill:\n  temperature: .nan\n", "distill.temperature"),
    (BILLION_LAUGHS + "seed: *i\n", "alias"),
    ("\x00\x01binary", "not valid YAML"),
])
@pytest.mark.parametrize("command", ["distill", "export", "validate"])
def test_corrupt_run_config_is_named(command, content, needle, fake_run):
    (fake_run / "config.yaml").write_text(content)
    before = snapshot(fake_run)
    line = one_line_error(runner.invoke(app, [command, str(fake_run), "--quiet"]), 2)
    assert needle in line
    assert "config.yaml" in line or needle == "distill.temperature"
    assert snapshot(fake_run) == before


# ----- manifest audio ---------------------------------------------------------------------------
def _wav(path: Path, sample_rate: int, seconds: float, channels: int = 1) -> Path:
    import struct

    n = int(sample_rate * seconds)
    data = b"\x00\x00" * n * channels
    header = b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " + struct.pack(
        "<IHHIIHH", 16, 1, channels, sample_rate, (sample_rate * 2 * channels) & 0xFFFFFFFF, 2 * channels, 16) + b"data" + struct.pack("<I", len(data))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + data)
    return path


@pytest.mark.parametrize("rate,seconds,needle", [
    (500, 0.5, "sample rate 500 Hz is outside 1 kHz-384 kHz"),
    (999, 0.5, "sample rate 999 Hz"),
    (400_000, 0.01, "sample rate 400000 Hz"),
    (4_000_000_000, 0.0, "sample rate 4000000000 Hz"),
    (1000, 61.0, "61.0 s long, more than the 60 s limit"),
])
def test_manifest_audio_header_limits_name_the_row(rate, seconds, needle, tmp_path):
    from _byo_fixtures import make_manifest, read_rows, write_rows

    manifest = make_manifest(tmp_path, modalities=("image", "audio"))
    rows = read_rows(manifest)
    rows[2]["audio"] = "wav/bad.wav"  # line 4 of the file (header is line 1)
    _wav(tmp_path / "wav" / "bad.wav", rate, seconds)
    write_rows(manifest, rows)
    result = runner.invoke(app, ["train-teacher", "--data", str(manifest), "--out", str(tmp_path / "r"), "--quiet"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"{manifest}:4: bad row: WAV file" in result.output and needle in result.output, result.output
    assert not (tmp_path / "r" / "teacher.pt").exists()


def test_audio_limits_at_the_edges_and_configurable(tmp_path):
    from types import SimpleNamespace

    from distill_export.data.audio import read_wav
    from distill_export.data.manifest_decode import Decoder
    from distill_export.errors import DataError

    assert read_wav(_wav(tmp_path / "lo.wav", 1000, 0.1))[1] == 1000
    assert read_wav(_wav(tmp_path / "hi.wav", 384_000, 0.01))[1] == 384_000
    ten = _wav(tmp_path / "ten.wav", 8000, 10.0)
    assert len(read_wav(ten)[0]) == 80_000
    with pytest.raises(DataError, match="more than the 5 s limit"):
        read_wav(ten, max_seconds=5)
    strict = Decoder("audio", "audio", SimpleNamespace(max_audio_seconds=5.0), tmp_path)
    with pytest.raises(DataError, match="5 s limit"):
        strict.decode("ten.wav")
    assert Decoder("audio", "audio", SimpleNamespace(), tmp_path).decode("ten.wav").shape[0] == 1


def test_manifest_path_too_long_names_the_row(tmp_path):
    from _byo_fixtures import make_manifest, read_rows, write_rows

    manifest = make_manifest(tmp_path, modalities=("image", "audio"))
    rows = read_rows(manifest)
    rows[0]["audio"] = "a" * 5000 + ".wav"
    rows[1]["image"] = "b" * 300 + "/x.png"
    write_rows(manifest, rows)
    result = runner.invoke(app, ["train-teacher", "--data", str(manifest), "--out", str(tmp_path / "r"), "--quiet"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"{manifest}:2: bad row: audio 'aaaa" in result.output and "File name too long" in result.output
    assert f"{manifest}:3: bad row: image 'bbbb" in result.output
    assert max(len(x) for x in result.output.splitlines()) < 400


# ----- run directories ---------------------------------------------------------------------------
def test_out_into_a_folder_of_user_files_is_refused(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.md").write_text("my notes\n")
    (mine / "student.onnx").write_bytes(b"my model")
    before = snapshot(mine)
    for command in ("run", "train-teacher"):
        line = one_line_error(runner.invoke(app, [command, "--out", str(mine), "--quiet"]), 2)
        assert "not empty and is not a run directory" in line
    assert snapshot(mine) == before


def test_out_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    assert "is a file" in one_line_error(runner.invoke(app, ["run", "--out", str(f)]), 2)
    assert f.read_text() == "x"


def test_an_empty_folder_can_be_a_run(tmp_path):
    from distill_export.rundir import RUN_STAGES, RunDir

    empty = tmp_path / "empty"
    empty.mkdir()
    rd = RunDir.create(empty, fresh=True, stages=RUN_STAGES)
    assert rd.missing_stages() == [s for s in RUN_STAGES if s != "report"]


def test_bad_data_makes_no_run_directory(tmp_path):
    from _byo_fixtures import make_manifest

    manifest = make_manifest(tmp_path / "data", modalities=("image", "audio"))
    (manifest.parent / "wav" / "dog_3.wav").unlink()
    out = tmp_path / "r"
    result = runner.invoke(app, ["run", "--data", str(manifest), "--out", str(out), "--quiet"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert not out.exists()  # the data is checked before the directory is made


@pytest.mark.slow
def test_concurrent_runs_cannot_both_claim_a_folder(tmp_path):
    """Eight processes race for one --out (new, then an existing empty folder, twice each):
    one wins. All start (and import) at once; each says it is ready, then each race is released
    by a start time sent on stdin that its eight processes sleep until: they race however long
    the imports took on a loaded machine, and no fixed wait is paid for slow starts. (A race is
    won twice only by chance: four races catch a non-exclusive claim more often than two.)"""
    import subprocess
    import sys

    code = ("import sys, time\nfrom distill_export.rundir import RunDir, RUN_STAGES\n"
            "from distill_export.errors import ConfigError\n"
            "print('ready', flush=True)\n"
            "time.sleep(max(0.0, float(sys.stdin.readline()) - time.time()))\n"
            "try:\n    RunDir.create(sys.argv[1], fresh=True, stages=RUN_STAGES)\n    print('won')\n"
            "except ConfigError as exc:\n    print('lost', exc)\n")
    targets = [tmp_path / f"new{i}" / "run" for i in (1, 2)] + [tmp_path / f"empty{i}" for i in (1, 2)]
    for target in targets[2:]:
        target.mkdir()
    races = {target: [subprocess.Popen([sys.executable, "-c", code, str(target)], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, text=True) for _ in range(8)]
             for target in targets}
    for p in (p for procs in races.values() for p in procs):
        assert p.stdout.readline().strip() == "ready"
    for target, procs in races.items():
        go = time.time() + 0.2  # time for every process of the race to be asleep until then
        for p in procs:
            p.stdin.write(f"{go}\n")
            p.stdin.flush()
        outcomes = [p.communicate(timeout=60)[0].strip() for p in procs]
        assert sum(o == "won" for o in outcomes) == 1, (target, outcomes)
        assert all(o == "won" or "already holds a run" in o for o in outcomes), (target, outcomes)


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    return copy


def test_finished_run_records_every_stage(run_copy):
    import json

    from distill_export.rundir import RUN_STAGES

    stages = json.loads((run_copy / "state.json").read_text())["stages"]
    assert {s: stages[s]["status"] for s in RUN_STAGES} == {s: "done" for s in RUN_STAGES}
    assert runner.invoke(app, ["report", str(run_copy)]).exit_code == 0


def test_failed_stage_leaves_the_run_directory_as_it_was(run_copy):
    """The issue's case: `distill RUN -T 7` with a broken teacher.pt must not rewrite config.yaml."""
    (run_copy / "teacher.pt").write_bytes(b"not a checkpoint")
    before = snapshot(run_copy)
    line = one_line_error(runner.invoke(app, ["distill", str(run_copy), "--method", "hinton", "-T", "7", "--quiet"]), 2)
    assert "teacher.pt" in line
    assert snapshot(run_copy) == before
    assert yaml.safe_load((run_copy / "config.yaml").read_text())["distill"]["temperature"] == 4.0


def test_stage_that_fails_midway_is_rolled_back(run_copy, monkeypatch):
    """export writes parity_data.npz and a new file, then fails: both are undone."""
    from distill_export.errors import ExportError

    def fail_after_writing(source, formats, options):
        (source.out_dir / "student-half.onnx").write_bytes(b"half")
        (source.out_dir / "student.onnx").unlink()
        raise ExportError("exporter crashed halfway")

    monkeypatch.setattr("distill_export.export.export_formats", fail_after_writing)
    before = snapshot(run_copy)
    line = one_line_error(runner.invoke(app, ["export", str(run_copy), "--opset", "20", "--quiet"]), 2)
    assert "halfway" in line
    assert snapshot(run_copy) == before
    assert not (run_copy / ".stage-backup").exists()


def test_report_on_an_unfinished_run_names_the_missing_stages(tmp_path):
    from distill_export.rundir import RUN_STAGES, RunDir

    rd = RunDir.create(tmp_path / "run", fresh=True, stages=RUN_STAGES)
    rd.save_config(RunConfig())
    rd.mark_stage("train_teacher")
    before = snapshot(rd.path)
    line = one_line_error(runner.invoke(app, ["report", str(rd.path)]), 2)
    assert "unfinished" in line and "distill, export, validate, profile" in line
    assert f"distill-export distill {rd.path}" in line
    assert snapshot(rd.path) == before
    # the stage commands refuse to skip ahead, and say what to run
    line = one_line_error(runner.invoke(app, ["validate", str(rd.path)]), 2)
    assert "export" in line and snapshot(rd.path) == before


def test_killed_teacher_stage_gives_a_valid_hint(tmp_path):
    from distill_export.rundir import RUN_STAGES, RunDir

    rd = RunDir.create(tmp_path / "run", fresh=True, stages=RUN_STAGES)
    rd.save_config(RunConfig())  # `run` saves its config first; then it was killed in training
    line = one_line_error(runner.invoke(app, ["distill", str(rd.path)]), 2)
    assert "train_teacher" in line and "distill-export run --out NEW" in line
    assert "distill-export train-teacher " + str(rd.path) not in line  # the old, invalid hint


def test_train_teacher_that_fails_leaves_no_folder(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise ConfigError("teacher training failed")

    monkeypatch.setattr("distill_export.pipeline.stage_train_teacher", boom)
    monkeypatch.setattr("distill_export.launch.load_data", lambda config: (None, None))  # no data needed
    out = tmp_path / "r"
    assert "teacher training failed" in one_line_error(
        runner.invoke(app, ["train-teacher", "--out", str(out), "--quiet"]), 2)
    assert not out.exists()


def test_a_claim_being_written_is_a_lost_race_and_an_old_one_an_abandoned_start(tmp_path):
    """The race above lost now and then with "holds the start of a run that never wrote its
    config.yaml; delete it": the winner had claimed the folder (report.json) and was writing its
    config. A claim younger than CLAIM_GRACE_S is said as the race it is; an older one as before."""
    import os

    from distill_export.rundir import CLAIM_GRACE_S, RUN_STAGES, RunDir

    target = tmp_path / "run"
    target.mkdir()
    (target / "report.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"already holds a run \(another run claimed it just now\)"):
        RunDir.create(target, fresh=True, stages=RUN_STAGES)
    old = time.time() - CLAIM_GRACE_S - 5
    os.utime(target / "report.json", (old, old))
    with pytest.raises(ConfigError, match=r"holds the start of a run that never wrote its config.yaml"):
        RunDir.create(target, fresh=True, stages=RUN_STAGES)
    assert sorted(p.name for p in target.iterdir()) == ["report.json"]
