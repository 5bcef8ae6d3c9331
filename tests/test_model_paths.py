"""A model path (profile's .onnx/.pt2, --teacher, --student-init) is checked to be a regular file
of a sane size before any byte is read (a fresh audit of issue 24, B6/B9): a link to /dev/urandom
was read for 4.8 GB before "does not exist", a FIFO blocked; a directory, FIFO or device is now
named as what it is, in one line, exit 2, nothing written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from _cli_checks import one_line_error, snapshot
from distill_export.cli import app
from distill_export.errors import ConfigError
from distill_export import files

runner = CliRunner()


@pytest.fixture
def odd(tmp_path) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "urand.onnx").symlink_to("/dev/urandom")
    (folder / "u.pt2").symlink_to("/dev/urandom")
    os.mkfifo(folder / "fifo.onnx")
    os.mkfifo(folder / "fifo.pt2")
    (folder / "dir.pt").mkdir()
    (folder / "empty.onnx").write_bytes(b"")
    return folder


@pytest.mark.parametrize("name, what", [("urand.onnx", "is not a regular file (a character device)"),
                                        ("u.pt2", "is not a regular file (a character device)"),
                                        ("fifo.onnx", "is not a regular file (a FIFO)"),
                                        ("fifo.pt2", "is not a regular file (a FIFO)"),
                                        ("empty.onnx", "is empty (0 bytes)")])
def test_profile_names_a_model_file_that_is_not_one(name, what, odd, tmp_path):
    before = snapshot(tmp_path)
    line = one_line_error(runner.invoke(app, ["profile", str(odd / name), "--batch", "1", "--quiet",
                                              "--out", str(tmp_path / "out")]), 2)
    assert line == f"error: the model file {odd / name} given to profile {what}", line
    assert "teacher" not in line and "does not exist" not in line
    assert snapshot(tmp_path) == before and not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag, name, what", [("--teacher", "fifo.pt2", "is not a regular file (a FIFO)"),
                                              ("--teacher", "u.pt2", "is not a regular file (a character device)"),
                                              ("--teacher", "dir.pt", "is a directory, not a model file"),
                                              ("--student-init", "fifo.onnx", "is not a regular file (a FIFO)")])
def test_run_refuses_a_teacher_or_init_path_that_is_not_a_file(flag, name, what, odd, tmp_path):
    before = snapshot(tmp_path)
    result = runner.invoke(app, ["run", flag, str(odd / name), "--out", str(tmp_path / "run"), "--quiet"])
    line = one_line_error(result, 2)
    assert line.startswith("error: ") and f"{odd / name} {what}" in line, line
    assert snapshot(tmp_path) == before and not (tmp_path / "run").exists()


def test_a_model_file_larger_than_the_limit_is_refused_unread(tmp_path, monkeypatch):
    big = tmp_path / "big.onnx"
    with open(big, "wb") as f:  # sparse: the size says it, no byte is read
        f.truncate(4096)
    monkeypatch.setattr(files, "MAX_MODEL_BYTES", 1024)
    with pytest.raises(ConfigError, match=r"big\.onnx is 4,096 bytes, more than the 1,024 a model file may be"):
        files.check_model_file(big, str(big))
