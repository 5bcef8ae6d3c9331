"""Behaviour-level tests of the detection metrics' promises (issue 25, the survivors of mutmut on
tasks/detection/metrics.py and tasks/detection/significance.py):

- mAP50 is the mean of the per-class AP50 over classes with ground truth, and mAP50:95 the mean
  of their AP50:95 (the per-class table and the headline agree);
- the mAPs are 0, and each class's AP is None, when no image has a box, and a test set without
  labeled images is measured (0 images, 0 objects) and compared ("no significant difference"),
  not a traceback;
- evaluating leaves the application's logging alone (only faster-coco-eval's loggers are quieted).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from distill_export.tasks.detection import significance as det_sig
from distill_export.tasks.detection.metrics import detection_metrics

from _detection_cases import random_case

NAMES = [str(c) for c in range(10)]


@pytest.mark.parametrize("seed", [0, 1])
def test_headline_maps_are_the_means_of_the_per_class_aps(seed):
    dets, targets = random_case(n=40, seed=seed)
    m = detection_metrics(dets, targets, NAMES)
    with_gt = [v for v in m["per_class"].values() if v["n_objects"] > 0]
    assert with_gt and all(v["ap50"] is not None for v in with_gt)
    assert m["map50"] == pytest.approx(np.mean([v["ap50"] for v in with_gt]), abs=1e-9)
    assert m["map50_95"] == pytest.approx(np.mean([v["ap50_95"] for v in with_gt]), abs=1e-9)
    assert 0 < m["map50_95"] < m["map50"] <= 1
    assert sum(v["n_objects"] for v in m["per_class"].values()) == m["n_objects"]


def test_no_box_anywhere_is_zero_map_and_no_class_ap():
    dets, targets = random_case(n=6, seed=3)
    empty = np.full_like(targets, -1.0)  # labeled images, none with a box
    m = detection_metrics(dets, empty, NAMES)
    assert m["map50"] == 0.0 and m["map50_95"] == 0.0 and m["n_images"] == 6 and m["n_objects"] == 0
    assert all(v["ap50"] is None and v["ap50_95"] is None for v in m["per_class"].values())


def test_a_test_set_without_labeled_images_is_measured_and_compared():
    dets, targets = random_case(n=6, seed=4)
    unlabeled = np.full_like(targets, -100.0)
    m = detection_metrics(dets, unlabeled, NAMES)
    assert (m["map50"], m["map50_95"], m["n_images"], m["n_objects"]) == (0.0, 0.0, 0, 0)
    assert all(v["ap50"] is None and v["n_objects"] == 0 for v in m["per_class"].values())
    out = det_sig.compare(dets, dets, unlabeled, 10, seed=0, n_boot=50)
    assert (out["n_images"], out["n_boot"], out["p_value"], out["verdict"]) == (0, 0, 1.0, "no significant difference")
    assert out["ci95"] == [out["gain"], out["gain"]]


def test_evaluating_leaves_the_applications_logging_alone():
    root, app = logging.getLogger(), logging.getLogger("distill_export")
    before = (root.level, app.level)
    quieted = ("faster_coco_eval", "faster_coco_eval.core.coco", "faster_coco_eval.core.cocoeval")
    for name in quieted:  # levels live for the whole process: start from unset
        logging.getLogger(name).setLevel(logging.NOTSET)
    dets, targets = random_case(n=8, seed=6)
    detection_metrics(dets, targets, NAMES)
    assert (root.level, app.level) == before
    for name in quieted:
        assert logging.getLogger(name).level == logging.ERROR, name
