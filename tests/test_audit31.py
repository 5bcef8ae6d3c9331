"""Thirty-second round (issue 24): what the thirty-first fresh audit found."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from distill_export.cli import app
from distill_export.tasks import get_task

runner = CliRunner()


def _dets(rows):
    """One image: rows of (class, score, x1, y1, x2, y2), padded to K = 20 with score-0 slots."""
    boxes, scores, classes = np.zeros((1, 20, 4)), np.zeros((1, 20)), np.zeros((1, 20), int)
    for k, (c, s, *box) in enumerate(rows):
        boxes[0, k], scores[0, k], classes[0, k] = box, s, c
    return {"boxes": boxes, "scores": scores, "classes": classes}


# ----- B4: the export under test decided which of the student's detections were judged ---------------


@pytest.mark.parametrize("copies", ["same", "around"])
def test_b4_an_export_filling_its_slots_with_one_detection_fails_the_gate(copies):
    """Student: A (0.90) and B (0.85). Export: A in all 20 slots (or A and 19 peaks at 0.86 around it):
    its own full TopK at 0.86-0.90 excused every detection of the student, gate 1.0."""
    a, b = (1, 0.90, 10, 10, 30, 30), (2, 0.85, 40, 40, 60, 60)
    student = _dets([a, b])
    if copies == "same":
        export = _dets([a] * 20)
    else:
        export = _dets([a] + [(1, 0.86, 10 + k % 3, 10 + k // 3 % 3, 30 + k % 3, 30 + k // 3 % 3) for k in range(19)])
    m = get_task("detection").parity_metrics(export, student, np.full((1, 1, 5), -1.0))
    assert m["reference_count"] == 2 and m["matched_count"] == 1 and m["matched_detections"] <= 0.5, m


def test_a4_a_score_difference_of_exactly_the_tolerance_is_inside_it():
    student, export = _dets([(1, 0.55, 10, 10, 30, 30)]), _dets([(1, 0.50, 10, 10, 30, 30)])  # the tolerance 0.05
    m = get_task("detection").parity_metrics(export, student, np.full((1, 1, 5), -1.0))
    assert m["matched_detections"] == 1.0 and m["extra_count"] == 0, m


# ----- B2, B3: a wrong COCO image size was blamed on every box ---------------------------------------


@pytest.mark.parametrize(("edit", "match"), [
    (lambda im: im.update(width=0), r"image id \d+: width 0 is not a positive whole number of pixels"),
    (lambda im: im.update(height=-4), r"image id \d+: height -4 is not a positive whole number"),
    (lambda im: im.update(width=16.5), r"image id \d+: width 16.5 is not a positive whole number"),
    (lambda im: im.update(width=2, height=2), r"the COCO image \(id \d+\) is 2x2, its file .* is 16x16"),
])
def test_b2_b3_a_wrong_coco_image_size_is_named_not_the_boxes(tmp_path, edit, match):
    from distill_export.errors import DataError
    from test_audit26 import _coco_case
    from test_boxes import load

    manifest = _coco_case(tmp_path, lambda coco: edit(coco["images"][0]))
    with pytest.raises(DataError, match=match) as caught:
        load(manifest, annotations="instances.json")
    assert "bbox" not in str(caught.value), str(caught.value)


# ----- B1, B5: settings that cannot apply to data with the student modality alone -------------------


@pytest.fixture(scope="module")
def image_only_run(tmp_path_factory):
    """An image-only manifest and a train-teacher run on it (the recipe's control turned off)."""
    from _byo_fixtures import make_manifest

    root = tmp_path_factory.mktemp("audit31_image_only")
    manifest = make_manifest(root, per_class=6, modalities=("image",))
    result = runner.invoke(app, ["train-teacher", "--data", str(manifest), "--teacher-epochs", "1",
                                 "--out", str(root / "t1"), "-q"])
    assert result.exit_code == 0, result.output
    return manifest, root / "t1"


def _refused(result) -> str:
    """Exit 2, no traceback, and the last line the one error line (the data's own lines come first)."""
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    errors = [x for x in result.output.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and result.output.strip().endswith(errors[0]), result.output
    return errors[0]


def test_b1_a_stage_command_refuses_a_control_flag_it_cannot_apply(image_only_run):
    """`distill RUN --self-training-control`: the flag was turned off with a note, as if the recipe set it."""
    from _cli_checks import snapshot

    _, run = image_only_run
    before = snapshot(run)
    line = _refused(runner.invoke(app, ["distill", str(run), "--epochs", "1", "--self-training-control"]))
    assert line.startswith("error: --self-training-control (distill.self_training_control) cannot apply"), line
    assert snapshot(run) == before


def test_b5_a_fusion_search_is_refused_where_there_is_one_modality(image_only_run, tmp_path):
    """A second one-modality 'late' teacher was trained, and the pick recorded as a finding."""
    from _cli_checks import snapshot

    manifest, run = image_only_run
    line = _refused(runner.invoke(app, ["run", "--data", str(manifest), "--tune", "2", "--tune-search", "fusion",
                                        "--out", str(tmp_path / "r"), "-q"]))
    assert line == ("error: fusion in --tune-search (distill.tune_search) cannot apply: the only column of the data "
                    "is the student modality 'image', so there are no modalities to fuse; drop it from --tune-search "
                    "(distill.tune_search)"), line
    assert not (tmp_path / "r").exists()
    before = snapshot(run)
    line = _refused(runner.invoke(app, ["tune", str(run), "--trials", "1", "--search", "fusion"]))
    assert line.startswith("error: fusion in --search cannot apply"), line
    assert snapshot(run) == before
