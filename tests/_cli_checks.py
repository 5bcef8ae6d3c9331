"""Assertions shared by the hardening tests: a bad input gives one line, no traceback, a code."""

from __future__ import annotations

import hashlib
from pathlib import Path

# A YAML alias bomb: nine aliases of nine, nested eight deep (9**9 strings once expanded).
BILLION_LAUGHS = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi"))


def one_line_error(result, code: int = 2) -> str:
    """The CLI exited with `code`, printed exactly one non-empty line and no traceback."""
    text = (result.output or "").strip()
    assert result.exit_code == code, (result.exit_code, text, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in text, text
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def snapshot(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under folder (missing folder: {})."""
    folder = Path(folder)
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def forget_student_hash(run: Path) -> None:
    """Make `run` a run from before distill recorded student.pt's sha256, so a forged student.pt
    reaches the loader's own checks instead of the 'changed after distill' refusal (B5)."""
    import json

    path = Path(run) / "report.json"
    record = json.loads(path.read_text())
    record["distill"].pop("files_sha256", None)
    path.write_text(json.dumps(record))


def assert_record_edit_refused(run: Path, edit, needle: str) -> None:
    """A hand edit of run/report.json (`edit(record)` changes the dict in place) makes `report RUN`
    refuse the file as corrupt in one line naming `needle`, with exit 2 and nothing written."""
    import json

    from typer.testing import CliRunner

    from distill_export.cli import app

    path = Path(run) / "report.json"
    record = json.loads(path.read_text())
    edit(record)
    path.write_text(json.dumps(record))
    before = snapshot(run)
    line = one_line_error(CliRunner().invoke(app, ["report", str(run)]), 2)
    assert line.startswith(f"error: {path} is corrupt") and needle in line, line
    assert snapshot(run) == before


def run_same_weights(*paths) -> tuple[int, str]:
    """tools/same_weights.py on `paths` in a fresh process: (exit code, stdout), never a traceback."""
    import subprocess
    import sys

    tool = Path(__file__).resolve().parents[1] / "tools" / "same_weights.py"
    done = subprocess.run([sys.executable, str(tool), *map(str, paths)], capture_output=True, text=True, timeout=120)
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, done.stdout


def refused_config(folder: Path, text: str, command: str = "run", name: str = "c.yaml") -> tuple[str, Path]:
    """`distill-export COMMAND --config F --out R -q` with F holding `text` is refused: one line,
    exit 2, nothing in `folder` changed and no run folder R. Returns (the line, F)."""
    from typer.testing import CliRunner

    from distill_export.cli import app

    config, out = Path(folder) / name, Path(folder) / "r"
    config.write_text(text)
    before = snapshot(folder)
    line = one_line_error(CliRunner().invoke(app, [command, "--config", str(config), "--out", str(out), "-q"]), 2)
    assert snapshot(folder) == before and not out.exists()
    return line, config


def guarded_stderr(capsys, exc: BaseException) -> tuple[int, str]:
    """(exit code, stderr) of a command that raises `exc` through the CLI's guard (cli/guard.py)."""
    import typer

    from distill_export.cli import guard

    @guard.guarded
    def command():
        raise exc

    try:
        command()
    except typer.Exit as stopped:
        return stopped.exit_code, capsys.readouterr().err
    raise AssertionError(f"the guard let {exc!r} pass without an exit code")
