"""One rule for every command that writes where it is told (issue 24): `run`, `train-teacher`,
`tune`, `profile --out` and the scripts under tools/ check their output path before any work,
through output_paths.check_output. A file output must be new, in a folder that exists; a folder output
must be new or empty. Neither may lie inside a run directory. A refusal is one line, exit 2, and
every file under the test's folder keeps its hash. docs/reliability.md lists the cases."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from _cli_checks import one_line_error, snapshot
from distill_export.cli import app
from distill_export.config import RunConfig

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture
def place(tmp_path) -> Path:
    """A user's file, a user's folder with a file in it, and a run directory, side by side."""
    (tmp_path / "mine.txt").write_text("my notes\n")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "keep.csv").write_text("a,b\n1,2\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(RunConfig().to_dict(), sort_keys=False))
    (run / "report.json").write_text('{"schema_version": 1}\n')
    (run / "state.json").write_text(json.dumps({"stages": {"train_teacher": {"status": "done"}}}))
    return tmp_path


# (target under `place`, what the line says), for outputs that are folders and outputs that are files
FOLDER_CASES = [("mine.txt", "is a file, not a folder"), ("folder", "is not empty"),
                ("run", "already holds a run"), ("run/sub", "inside the run directory")]
FILE_CASES = [("mine.txt", "already exists"), ("folder/keep.csv", "already exists"),
              ("run/config.yaml", "already exists"), ("run/new.json", "inside the run directory"),
              ("no/such/out.json", "does not exist")]


# ----- the commands -----------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["run", "train-teacher"])
@pytest.mark.parametrize("target,needle", FOLDER_CASES)
def test_run_folders_are_new_or_empty_and_outside_runs(place, command, target, needle):
    before = snapshot(place)
    line = one_line_error(runner.invoke(app, [command, "--out", str(place / target), "--quiet"]), 2)
    assert "--out" in line and needle in line, line
    assert snapshot(place) == before


@pytest.mark.parametrize("target,needle", FOLDER_CASES)
def test_profile_out_is_checked_before_anything_is_measured(place, target, needle):
    onnx = place / "model.onnx"
    onnx.write_bytes(b"not measured")  # the path check comes first: this file is never read
    before = snapshot(place)
    line = one_line_error(runner.invoke(app, ["profile", str(onnx), "--out", str(place / target), "--quiet"]), 2)
    assert "--out" in line and needle in line, line
    assert snapshot(place) == before


@pytest.mark.parametrize("target,needle", FILE_CASES)
def test_tune_out_follows_the_same_rule(place, target, needle):
    before = snapshot(place)
    line = one_line_error(runner.invoke(app, ["tune", str(place / "run"), "--out", str(place / target)]), 2)
    assert "--out" in line and needle in line, line
    assert snapshot(place) == before


def test_a_missing_parent_is_made_for_a_folder_and_refused_for_a_file(tmp_path):
    from distill_export.errors import ConfigError
    from distill_export.output_paths import check_output

    assert check_output(tmp_path / "a" / "b", folder=True) == tmp_path / "a" / "b"  # made by the writer
    assert not (tmp_path / "a").exists()  # the check itself makes nothing
    with pytest.raises(ConfigError, match="does not exist"):
        check_output(tmp_path / "a" / "b.json", folder=False)


# ----- the scripts under tools/ -----------------------------------------------------------------
def _tool(name: str):
    spec = importlib.util.spec_from_file_location(f"tool_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# tool -> (the output is a folder?, arguments besides --out, does main take argv?)
TOOLS = {
    "bench_cache": (True, [], False), "bench_kd_loss": (True, [], True), "bench_profile": (True, [], False),
    "bench_train": (True, [], False), "compare_methods": (True, [], False), "kd_gain": (True, [], False),
    "make_rgb96_manifest": (True, [], False), "make_moving_digits": (True, [], True),
    "make_captioned_digits": (True, ["--mnist", "nowhere"], True),
    "prepare_avmnist": (True, ["--mnist", "nowhere", "--fsdd", "nowhere"], True),
    "bench_export": (False, [], False), "make_demo_audio": (False, [], True),
    "explore_variants": (True, ["{name: a}"], False), "profile_host": (True, [], False),
}
TOOL_CASES = [(tool, target, needle) for tool, (folder, _, _) in TOOLS.items()
              for target, needle in (FOLDER_CASES if folder else FILE_CASES)]


@pytest.mark.parametrize("tool,target,needle", TOOL_CASES, ids=[f"{t}-{p}" for t, p, _ in TOOL_CASES])
def test_tools_check_their_output_before_any_work(place, tool, target, needle, monkeypatch, capsys):
    folder, extra, takes_argv = TOOLS[tool]
    argv = ["--out", str(place / target), *extra]
    module = _tool(tool)
    before = snapshot(place)
    with pytest.raises(SystemExit) as exit_:
        if takes_argv:
            module.main(argv)
        else:
            monkeypatch.setattr(sys, "argv", [f"{tool}.py", *argv])
            module.main()
    assert exit_.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: --out") and needle in err[0], err
    assert snapshot(place) == before


@pytest.mark.parametrize("argv, needle", [
    (["--rows", "100", "--keep", "{place}/folder"], "error: --keep"),  # a user's folder with a file in it
    (["--rows", "100", "--keep", "{place}/run"], "error: --keep"),  # a run directory
    (["--rows", "-5"], "error: --rows -5"),
])
def test_bench_decode_memory_checks_keep_and_rows_before_any_work(place, argv, needle, capsys):
    """--keep wrote its manifests over a user's files (a fresh audit of issue 24); --rows -5 gave
    a list repr: both refused in one line, exit 2, nothing changed."""
    module = _tool("bench_decode_memory")
    before = snapshot(place)
    with pytest.raises(SystemExit) as exit_:
        module.main([a.format(place=place) for a in argv])
    assert exit_.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith(needle), err
    assert snapshot(place) == before
