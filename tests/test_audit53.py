"""Fifty-fourth round and after (issue 24): what the fifty-third and fifty-fourth fresh audits found."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from _cli_checks import one_line_error, snapshot
from distill_export.cli import app

runner = CliRunner()


# ----- 54th B2, B3: a state.json whose stages are not the product's shape -------------------------


@pytest.mark.parametrize(("edit", "named"), [
    (lambda stages: {**stages, "validate": "done"}, "`stages.validate` must be a mapping with a status"),
    (lambda stages: [], "`stages` must be a mapping of stage name to its state, got list"),
    (lambda stages: {**stages, "export": {"status": "finished"}}, "`stages.export` must be a mapping with a status "
                                                                  "(pending, done, stale), got status 'finished'"),
])
@pytest.mark.parametrize("command", ["report", "validate"])
def test_a54_b2_b3_a_hand_edited_stage_record_is_named_and_nothing_changes(run_copy, edit, named, command):
    """A string entry was an AttributeError traceback; a list was read as a run made before stages were
    recorded, so `validate` checked no stage and rewrote state.json with two stages left."""
    state = run_copy / "state.json"
    data = json.loads(state.read_text())
    data["stages"] = edit(data["stages"])
    state.write_text(json.dumps(data))
    before = snapshot(run_copy)
    line = one_line_error(runner.invoke(app, [command, str(run_copy)]))
    assert line.startswith(f"error: {state} is corrupt: {named}"), line
    assert snapshot(run_copy) == before


# ----- 53rd B1: a video column as the student modality -------------------------------------------


def test_a53_b1_a_video_student_modality_is_refused_before_any_training(tmp_path, monkeypatch):
    """`--student-modality video` (the manifest's own column) reached conv2d with (B, T, C, H, W) clips:
    a traceback, once the teacher stage was recorded done (and under --nproc 2, from both ranks)."""
    from _video_fixtures import make_video_manifest
    from test_audit31 import _refused

    monkeypatch.chdir(tmp_path)
    manifest = make_video_manifest(tmp_path / "vd", per_split=(6, 2, 2), boxes=True, unlabeled=2)
    line = _refused(runner.invoke(app, ["run", "--task", "detection", "--student", "centernet_tiny", "--method", "det_kd",
                                        "--label-fraction", "0.5", "--data", str(manifest), "--student-modality", "video",
                                        "--epochs", "1", "--teacher-epochs", "1", "--out", "n1", "-q"]))
    assert line == ("error: student modality 'video' is video (clips of shape (5, 1, 16, 16)); the built-in students "
                    "take one image per row: use --student-modality image (each clip at its target frame), or pass "
                    "--student package.module:factory for a clip student"), line
    assert not (tmp_path / "n1").exists()
