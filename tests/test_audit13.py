"""Thirteenth hostile audit (issue 24; docs/reliability.md, "Fifteenth round"): 3 bad cases.
- B1: a teacher-output cache edited to hold NaN was a "cache hit" (its rows dropped, or the
  divergence blamed on the learning rate); it is now a miss that says why, and is recomputed;
- B2: a folder at RUN/student.onnx failed after the whole export, naming a temporary file;
- B3: the report called the self-training control's teacher "of the same size" even beside a
  loaded teacher of another size."""

from __future__ import annotations

import numpy as np
import torch
from typer.testing import CliRunner

from _cli_checks import one_line_error, snapshot
from distill_export.cli import app

runner = CliRunner()


def test_b1_a_cache_edited_to_hold_nan_is_a_miss_that_says_why(tmp_path):
    from distill_export import teacher_cache
    from distill_export.files import sha256_file

    key = teacher_cache.CacheKey(teacher="t", data="d", preprocessing="p")
    rows = 4
    folder = tmp_path / "teacher_outputs"
    teacher_cache.write(folder, key, rows, iter([(torch.ones(rows, 3), torch.ones(rows, 2))]),
                        teacher_cache.ALL_OUTPUTS)
    assert teacher_cache.load(folder, key, rows)[1] == "hit"
    logits = folder / "logits.npy"
    edited = np.load(logits)
    edited[1, 0] = np.nan
    np.save(logits, edited)
    stored, why = teacher_cache.load(folder, key, rows)
    assert stored is None and why == "logits.npy changed after it was written (its sha256 is not the index's)", why
    # the index edited to match (its sha256 too, fifteenth audit): the values are still checked finite
    import json

    index = json.loads((folder / "index.json").read_text())
    index["outputs"]["logits"]["sha256"] = sha256_file(logits)
    (folder / "index.json").write_text(json.dumps(index))
    stored, why = teacher_cache.load(folder, key, rows)
    assert stored is None and why == "logits.npy holds 1 NaN or inf values (changed after it was written)", why


def test_b2_a_folder_where_export_writes_is_refused_before_the_export(run_copy):
    (run_copy / "student.onnx").unlink()
    (run_copy / "student.onnx").mkdir()
    (run_copy / "student.onnx" / "mine.txt").write_text("a user's file")
    before = snapshot(run_copy)
    line = one_line_error(runner.invoke(app, ["export", str(run_copy), "-q"]), 2)
    assert line == f"error: {run_copy / 'student.onnx'} is not a regular file (a directory)", line  # any command
    assert snapshot(run_copy) == before


def test_b3_the_report_does_not_claim_the_control_teacher_is_the_same_size(tiny_run):
    text = (tiny_run / "report.md").read_text()
    assert "an image-only teacher built with teacher.width, same rows and terms" in text
    assert "of the same size" not in text
