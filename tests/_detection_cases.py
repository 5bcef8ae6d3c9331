"""Detection test cases shared by tests/test_detection_*.py: a case worked by hand and a random one."""

from __future__ import annotations

import numpy as np

NAMES = ["a", "b", "c"]


def hand_case() -> tuple[dict, np.ndarray]:
    """Three labeled images and one unlabeled image; classes a, b, c (c has no ground truth).

    Ground truth (x1, y1, x2, y2):
        img0: a G1 (0, 0, 10, 10)
        img1: a G2 (20, 20, 30, 30);  b H1 (5, 5, 25, 25)
        img2: a G3 (0, 0, 20, 20);    b H2 (30, 30, 50, 50)
        img3: unlabeled (rows -100): its detections count for nothing.
    Detections (class, score, box):
        img0: a .90 (0, 0, 10, 10)   IoU 1 with G1                    -> TP
              a .60 (1, 1, 11, 11)   IoU 81/119 = .68 with G1, taken  -> FP
              b .85 (0, 0, 5, 5)     no b in img0                     -> FP
              c .40 (30, 30, 40, 40) class without ground truth       -> not in the mean
        img1: a .80 (5, 5, 25, 25)   on H1 but class a: IoU 25/475 with G2 -> FP
              b .50 (5, 5, 25, 25)   IoU 1 with H1                    -> TP
        img2: a .70 (0, 0, 20, 12.5) IoU 250/400 = .625 with G3       -> TP at IoU .5, .55, .6
              b .95 (30, 30, 50, 50) IoU 1 with H2                    -> TP
    Padding: score 0 (the decode's non-peaks), dropped."""
    K = 4
    boxes = np.zeros((4, K, 4))
    scores = np.zeros((4, K))
    classes = np.zeros((4, K), np.int64)
    dets = {
        0: [(0, .90, (0, 0, 10, 10)), (0, .60, (1, 1, 11, 11)), (1, .85, (0, 0, 5, 5)), (2, .40, (30, 30, 40, 40))],
        1: [(0, .80, (5, 5, 25, 25)), (1, .50, (5, 5, 25, 25))],
        2: [(0, .70, (0, 0, 20, 12.5)), (1, .95, (30, 30, 50, 50))],
        3: [(0, .99, (0, 0, 10, 10)), (1, .98, (5, 5, 25, 25))],
    }
    for i, rows in dets.items():
        for k, (c, s, b) in enumerate(rows):
            classes[i, k], scores[i, k], boxes[i, k] = c, s, b
    targets = np.full((4, 2, 5), -1.0)
    targets[0, 0] = [0, 0, 0, 10, 10]
    targets[1] = [[0, 20, 20, 30, 30], [1, 5, 5, 25, 25]]
    targets[2] = [[0, 0, 0, 20, 20], [1, 30, 30, 50, 50]]
    targets[3] = -100.0
    return {"boxes": boxes, "scores": scores, "classes": classes}, targets


def random_case(n: int = 200, m: int = 3, k: int = 20, c: int = 10, seed: int = 0) -> tuple[dict, np.ndarray]:
    """n images with 0..m boxes, k detections each: ~60% jittered copies of a ground-truth box
    (some with the wrong class), the rest anywhere, 20% with score 0 (padding)."""
    rng = np.random.default_rng(seed)
    t = np.full((n, m, 5), -1.0)
    for i in range(n):
        for j in range(rng.integers(0, m + 1)):
            x, y = rng.uniform(0, 40, 2)
            w, h = rng.uniform(10, 24, 2)
            t[i, j] = [rng.integers(c), x, y, x + w, y + h]
    boxes = np.zeros((n, k, 4))
    scores = rng.uniform(0, 1, (n, k))
    classes = rng.integers(0, c, (n, k))
    for i in range(n):
        for q in range(k):
            j = rng.integers(m)
            if t[i, j, 0] >= 0 and rng.uniform() < 0.6:
                boxes[i, q] = t[i, j, 1:] + rng.normal(0, 3, 4)
                if rng.uniform() < 0.8:
                    classes[i, q] = t[i, j, 0]
            else:
                x, y = rng.uniform(0, 40, 2)
                w, h = rng.uniform(10, 24, 2)
                boxes[i, q] = [x, y, x + w, y + h]
    scores[rng.uniform(size=(n, k)) < 0.2] = 0
    return {"boxes": boxes, "scores": scores, "classes": classes}, t
