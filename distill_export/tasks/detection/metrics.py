"""Test metrics of a detector with faster-coco-eval (COCO's own evaluation, in C++): mAP at IoU
0.5 and over 0.5:0.95, overall and per class. Ground truth and detections are built in memory;
no file is written.

COCO's choices, kept: 101-point interpolated precision; area range 'all' (the small/medium/
large ranges are not computed: the recipe's objects are all "small" in COCO's pixel terms);
maxDets = K, the decode's fixed number of detections per image, so nothing is cut. Detections
with score 0 (the decode's padding) or a box without area are dropped, as in matching.py.
"""

from __future__ import annotations

import logging

import numpy as np

from distill_export.tasks.detection.matching import Detections, gt_arrays, labeled_images

_AREA_ALL = [0.0, 1e10]


def _silence() -> None:
    for name in ("faster_coco_eval", "faster_coco_eval.core.coco", "faster_coco_eval.core.cocoeval"):
        logging.getLogger(name).setLevel(logging.ERROR)


def coco_inputs(dets: Detections, targets: np.ndarray, num_classes: int) -> tuple[dict, list[dict]]:
    """The COCO ground-truth dataset and the results list (bbox x, y, w, h), image ids 1..N."""
    gt_boxes, gt_cls = gt_arrays(targets)
    images = [{"id": i + 1, "width": 0, "height": 0} for i in range(len(gt_cls))]
    anns = []
    for i, j in zip(*np.nonzero(gt_cls >= 0)):  # row order within each image, as COCO keeps it
        x1, y1, x2, y2 = (float(v) for v in gt_boxes[i, j])
        anns.append({"id": len(anns) + 1, "image_id": int(i) + 1, "category_id": int(gt_cls[i, j]),
                     "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    gt = {"images": images, "annotations": anns,
          "categories": [{"id": c, "name": str(c)} for c in range(num_classes)]}
    results = []
    for i, k in zip(*np.nonzero(dets.valid)):
        x1, y1, x2, y2 = (float(v) for v in dets.boxes[i, k])
        results.append({"image_id": int(i) + 1, "category_id": int(dets.classes[i, k]),
                        "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(dets.scores[i, k])})
    return gt, results


def coco_precision(dets, targets: np.ndarray, num_classes: int) -> np.ndarray:
    """COCO's precision array (T=10 IoU thresholds, R=101 recall points, C classes); -1 where a
    class has no ground truth. targets: labeled images only."""
    from faster_coco_eval import COCO, COCOeval_faster

    _silence()
    dets = Detections.of(dets)
    gt, results = coco_inputs(dets, targets, num_classes)
    coco_gt = COCO(gt)
    coco_dt = coco_gt.loadRes(results)
    ev = COCOeval_faster(coco_gt, coco_dt, iouType="bbox")
    ev.params.maxDets = [max(1, dets.scores.shape[1])]
    ev.params.areaRng = [_AREA_ALL]
    ev.params.areaRngLbl = ["all"]
    ev.params.catIds = list(range(num_classes))
    ev.evaluate()
    ev.accumulate()
    return np.asarray(ev.eval["precision"])[:, :, :, 0, -1]  # (T, R, C)


def _mean(p: np.ndarray) -> float | None:
    p = p[p > -1]
    return float(p.mean()) if p.size else None


def detection_metrics(dets, targets: np.ndarray, class_names: list[str]) -> dict:
    """{"map50", "map50_95", "per_class": {name: {"ap50", "ap50_95", "n_objects"}}, "n_images",
    "n_objects"} on the labeled images; an AP is None for a class without ground truth (and
    the mAPs are 0 when no image has a box)."""
    targets = np.asarray(targets)
    keep = labeled_images(targets)
    dets = Detections.of(dets).take(keep)
    targets = targets[keep]
    C = len(class_names)
    _, gt_cls = gt_arrays(targets)
    counts = np.bincount(gt_cls[gt_cls >= 0], minlength=C)
    if len(targets):
        precision = coco_precision(dets, targets, C)
    else:
        precision = -np.ones((10, 101, C))
    per_class = {name: {"ap50": _mean(precision[0, :, c]), "ap50_95": _mean(precision[:, :, c]),
                        "n_objects": int(counts[c])} for c, name in enumerate(class_names)}
    return {
        "map50": _mean(precision[0]) or 0.0,
        "map50_95": _mean(precision) or 0.0,
        "per_class": per_class,
        "n_images": int(len(targets)),
        "n_objects": int(counts.sum()),
    }
