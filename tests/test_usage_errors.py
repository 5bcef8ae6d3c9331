"""The console script turns click's usage errors (a value of the wrong type, an unknown option,
a missing argument, an unknown command) into one `error:` line and exit 2, like every other bad
input, instead of a usage box (fourth audit, N14). --help still prints help, exit 0."""

from __future__ import annotations

import subprocess
import sys

import pytest

CASES = [
    (["run", "--epochs", "abc"], "Invalid value for '--epochs'"),
    (["run", "--epoch", "3"], "No such option: --epoch"),
    (["profile"], "Missing argument 'TARGET'"),
    (["nosuch"], "No such command 'nosuch'"),
]


def _cli(args: list[str]) -> subprocess.CompletedProcess:
    code = ("import sys; from distill_export.entry import main; sys.argv = ['distill-export', *sys.argv[1:]]; main()")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args,named", CASES[:2])
def test_a_usage_error_is_one_line_and_exit_2(args, named):
    proc = _cli(args)
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], lines
    assert "Traceback" not in proc.stderr and "╭" not in proc.stderr


def test_every_kind_of_usage_error_and_help_in_one_process(capsys):
    """The other kinds through the same main() in-process (no interpreter start each)."""
    from distill_export.entry import main

    for args, named in CASES[2:]:
        sys_argv = sys.argv
        sys.argv = ["distill-export", *args]
        try:
            with pytest.raises(SystemExit) as info:
                main()
        finally:
            sys.argv = sys_argv
        assert info.value.code == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and named in err[0], err
    sys.argv, saved = ["distill-export", "--help"], sys.argv
    try:
        with pytest.raises(SystemExit) as info:
            main()
    finally:
        sys.argv = saved
    assert info.value.code == 0
