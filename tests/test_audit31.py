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
    student, export = _dets([(1, 0.55, 10, 10, 30, 30)]), _dets([(1, 0.45, 10, 10, 30, 30)])
    m = get_task("detection").parity_metrics(export, student, np.full((1, 1, 5), -1.0))
    assert m["matched_detections"] == 1.0 and m["extra_count"] == 0, m
