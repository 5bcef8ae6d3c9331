"""Detections against ground truth in plain numpy: IoU, COCO's greedy matching, and AP from the
matched records, exactly as COCO accumulates it (101 recall points), fast enough to run every
epoch and inside a bootstrap.

Ground truth is the data layer's (N, M, 5) box targets, rows ``[class, x1, y1, x2, y2]`` in input
pixels: class -1 is padding, an unlabeled image's rows are all IGNORE_INDEX (-100). Detections
are what the decode returns: boxes (N, K, 4) x1y1x2y2, scores (N, K), classes (N, K). A
detection is a positive score and a box of positive width and height: a score of 0 is the
decode's padding (non-peak cells, when an image has fewer than K peaks), and a box with no
area (an untrained size head's) can never match. Both are dropped here and in the COCO
evaluation alike (COCO itself would ignore a box of negative area as outside its area range,
but count one with both sides negative as a false positive).

COCO's matching (pycocotools ``evaluateImg``): per image and class, detections in descending
score order each take the unmatched ground-truth box of their class with the highest IoU, if
that IoU >= the threshold (ties: the later box). ``accumulate`` then sorts all detections of a
class by score (a stable sort, images in order), and the precision envelope at the 101 recall
points 0, 0.01, ..., 1 is averaged. A class without ground truth is left out of the mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IGNORE_INDEX = -100  # data.dataset.IGNORE_INDEX: an unlabeled image's rows
REC_THRS = np.linspace(0.0, 1.0, 101)  # COCO's recall points (params.recThrs)
_EPS = np.spacing(1)  # COCO's precision denominator guard


@dataclass
class Detections:
    """Per image K detections: boxes (N, K, 4) float64, scores (N, K), classes (N, K) int64."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    @classmethod
    def of(cls, dets) -> "Detections":
        """From a {"boxes", "scores", "classes"} dict, a (boxes, scores, classes) tuple or a Detections."""
        if isinstance(dets, Detections):
            return dets
        if isinstance(dets, dict):
            dets = (dets["boxes"], dets["scores"], dets["classes"])
        boxes, scores, classes = (np.asarray(a) for a in dets)
        return cls(boxes.astype(np.float64).reshape(len(boxes), -1, 4), scores.astype(np.float64),
                   classes.astype(np.int64))

    @property
    def valid(self) -> np.ndarray:
        """(N, K) bool: a positive score and a box with positive width and height."""
        b = self.boxes
        return (self.scores > 0) & (b[..., 2] > b[..., 0]) & (b[..., 3] > b[..., 1])

    def take(self, rows: np.ndarray) -> "Detections":
        return Detections(self.boxes[rows], self.scores[rows], self.classes[rows])

    def ordered(self) -> "Detections":
        """Each image's detections best first (a stable sort, as COCO's per-image sort)."""
        order = np.argsort(-self.scores, axis=1, kind="mergesort")
        return Detections(np.take_along_axis(self.boxes, order[..., None], 1),
                          np.take_along_axis(self.scores, order, 1), np.take_along_axis(self.classes, order, 1))


def labeled_images(targets: np.ndarray) -> np.ndarray:
    """(N,) bool: the images that have labels (an unlabeled image's rows are all -100)."""
    targets = np.asarray(targets)
    if targets.ndim != 3 or targets.shape[1] == 0:
        return np.ones(len(targets), bool)
    return ~(targets[..., 0] == IGNORE_INDEX).all(1)


def gt_arrays(targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, M, 5) targets -> boxes (N, M, 4) and classes (N, M), -1 where there is no box."""
    t = np.asarray(targets, np.float64)
    # reshape cannot infer the box axis of zero images: a test set without labeled images is (0, 0, 5)
    t = t.reshape(len(t), -1, 5) if t.size else t.reshape(len(t), 0, 5)
    cls = np.where(t[..., 0] >= 0, t[..., 0], -1).astype(np.int64)
    return t[..., 1:5], cls


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of (N, K, 4) and (N, M, 4) x1y1x2y2 boxes -> (N, K, M), COCO's way (no +1; 0 when
    the boxes do not overlap, degenerate boxes included)."""
    a, b = a[:, :, None], b[:, None]
    iw = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0])
    ih = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter
    return np.where(inter > 0, inter / np.where(inter > 0, union, 1.0), 0.0)


@dataclass
class Records:
    """Every valid detection of N images, matched once at one IoU threshold: image index,
    class, score and whether it is a true positive, in image order and, per image, best first;
    gt_count (N, C): the ground-truth boxes of each class in each image."""

    image: np.ndarray
    cls: np.ndarray
    score: np.ndarray
    tp: np.ndarray
    gt_count: np.ndarray

    @property
    def num_classes(self) -> int:
        return self.gt_count.shape[1]


def match(dets, targets: np.ndarray, num_classes: int, iou_threshold: float = 0.5) -> Records:
    """COCO's greedy matching of each image's detections to its ground truth, all images at once
    (a loop over the K ranks, vectorised over images). targets: labeled images only."""
    d = Detections.of(dets).ordered()
    gt_boxes, gt_cls = gt_arrays(targets)
    N, K = d.scores.shape
    valid = d.valid  # (N, K)
    iou = box_iou(d.boxes, gt_boxes)  # (N, K, M)
    eligible = (d.classes[:, :, None] == gt_cls[:, None, :]) & (gt_cls[:, None, :] >= 0) & valid[..., None]
    iou = np.where(eligible & (iou >= iou_threshold), iou, -1.0)
    taken = np.zeros(gt_cls.shape, bool)  # (N, M)
    tp = np.zeros((N, K), bool)
    rows = np.arange(N)
    M = gt_cls.shape[1]
    for k in range(K if M else 0):
        cand = np.where(taken, -1.0, iou[:, k])  # (N, M)
        best = M - 1 - np.argmax(cand[:, ::-1], axis=1)  # the highest IoU; ties: the later box (COCO)
        hit = cand[rows, best] >= 0
        taken[rows[hit], best[hit]] = True
        tp[:, k] = hit
    gt_count = np.zeros((N, num_classes), np.int64)
    real = gt_cls >= 0
    np.add.at(gt_count, (np.nonzero(real)[0], gt_cls[real]), 1)
    image = np.broadcast_to(rows[:, None], (N, K))
    return Records(image=image[valid], cls=d.classes[valid], score=d.scores[valid], tp=tp[valid], gt_count=gt_count)


def class_ap(score: np.ndarray, tp: np.ndarray, image: np.ndarray, weights: np.ndarray, n_gt: np.ndarray
             ) -> np.ndarray:
    """COCO's 101-point interpolated AP of one class under R weightings of the images.

    score, tp, image: the class's records (n,) in image order; weights (R, N): how many times
    each image counts (all ones: the test set itself; a bootstrap draw's counts otherwise);
    n_gt (R,): the class's ground-truth boxes under each weighting. Returns (R,) AP, nan where
    n_gt is 0 (COCO leaves the class out).

    Only the true positives' points are computed: recall rises only there, so the first point
    at or above a recall threshold is one, and the precision envelope's maximum is always at
    one (a false positive has the recall of the true positive before it and a lower
    precision). An image drawn twice adds each of its records twice at the same score; the
    skipped intermediate points never change the envelope at a recall threshold either."""
    R, N = weights.shape
    ap = np.full(R, np.nan)
    has_gt = n_gt > 0
    order = np.argsort(-score, kind="mergesort")  # COCO: stable over images in order
    hit, img = tp[order], image[order]
    n = int(hit.sum())
    if n == 0 or not has_gt.any():
        ap[has_gt] = 0.0
        return ap
    w = weights.astype(np.float64)
    seg = np.cumsum(hit)[~hit]  # per false positive: the true positives ranked before it
    fp_per_segment = np.zeros((N, n + 1))
    np.add.at(fp_per_segment, (img[~hit], seg), 1.0)
    fps = np.cumsum(w @ fp_per_segment, axis=1)[:, :n]  # (R, n): false positives before each TP
    tps = np.cumsum(w[:, img[hit]], axis=1)  # (R, n)
    rc = tps / np.where(has_gt, n_gt, 1)[:, None].astype(np.float64)
    pr = tps / (tps + fps + _EPS)
    env = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]  # precision envelope
    # COCO: q[t] = env[first i with rc[i] >= REC_THRS[t]]. That index is the number of rc < thr,
    # and rc[i] < REC_THRS[t] iff t >= (the number of thresholds <= rc[i]).
    j = np.searchsorted(REC_THRS, rc, side="right")  # (R, n) in [0, 101]
    hist = np.bincount((np.arange(R)[:, None] * 102 + j).ravel(), minlength=R * 102).reshape(R, 102)
    first = np.cumsum(hist, axis=1)[:, :101]  # (R, 101)
    q = np.where(first < n, np.take_along_axis(env, np.minimum(first, n - 1), 1), 0.0)
    ap[has_gt] = q.mean(1)[has_gt]
    return ap


def ap_per_class(records: Records, weights: np.ndarray | None = None) -> np.ndarray:
    """(R, C) AP of every class (nan: no ground truth); weights (R, N), default the set itself."""
    if weights is None:
        weights = np.ones((1, len(records.gt_count)), np.int64)
    n_gt = weights @ records.gt_count  # (R, C)
    out = np.empty(n_gt.shape)
    for c in range(records.num_classes):
        m = records.cls == c
        out[:, c] = class_ap(records.score[m], records.tp[m], records.image[m], weights, n_gt[:, c])
    return out


def mean_ap(per_class: np.ndarray) -> np.ndarray:
    """(R, C) -> (R,) mean over the classes that have ground truth; 0 where none has."""
    has = ~np.isnan(per_class)
    total = np.where(has, per_class, 0.0).sum(1)
    return np.where(has.any(1), total / np.maximum(has.sum(1), 1), 0.0)


def fast_map(dets, targets: np.ndarray, num_classes: int, iou_threshold: float = 0.5) -> float:
    """mAP at one IoU threshold of the labeled images (COCO's number, without COCO)."""
    keep = labeled_images(targets)
    if not keep.any():
        return 0.0
    records = match(Detections.of(dets).take(keep), np.asarray(targets)[keep], num_classes, iou_threshold)
    return float(mean_ap(ap_per_class(records))[0])
