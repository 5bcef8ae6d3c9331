"""Is one detector really better than another on the same test images? A paired bootstrap.

mAP is not a mean over images, so there is no McNemar table: the test images are resampled with
replacement (the same draw for both models: paired), and mAP50 is recomputed for each model on
each draw. Each model's detections are matched to the ground truth once (matching.match:
COCO's greedy matching at IoU 0.5, per image and class); a draw only re-weights those per-image
records, so a resample costs a weighted cumulative sum, not a new evaluation.

The interval is the percentile interval of the gain over the draws; the p-value is the two-sided
bootstrap p-value (twice the smaller share of draws on either side of 0, with the +1 correction),
so p < ALPHA exactly when 0 lies outside the matching percentile interval, up to that correction.
The verdict words and ALPHA are classification's (tasks/classification/significance.py), so the
report says the same things for both tasks (a test checks they agree).
"""

from __future__ import annotations

import numpy as np

from distill_export.tasks.detection.matching import (Detections, Records, ap_per_class, labeled_images, match,
                                                      mean_ap)

from distill_export.record.metrics import ALPHA, verdict_of as verdict  # noqa: E402,F401  (one rule: the record checks it)

N_BOOT = 2000  # resamples of the test images
_CHUNK_CELLS = 3_000_000  # resamples x records per block: about 24 MB per float64 array


def draw_counts(n_images: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n_images) int: how many times each image is drawn in each resample."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n_images, size=(n_boot, n_images))
    flat = (np.arange(n_boot)[:, None] * n_images + idx).ravel()
    return np.bincount(flat, minlength=n_boot * n_images).reshape(n_boot, n_images)


def bootstrap_map(records: Records, counts: np.ndarray) -> np.ndarray:
    """(R,) mAP of one model's records under each resample (rows of counts), in blocks."""
    step = max(1, _CHUNK_CELLS // max(1, len(records.score)))
    return np.concatenate([mean_ap(ap_per_class(records, counts[i : i + step]))
                           for i in range(0, len(counts), step)])


def paired_bootstrap(records_a: Records, records_b: Records, n_boot: int = N_BOOT, seed: int = 0,
                     level: float = 0.95) -> dict:
    """Gain (A - B) in mAP on the test set, its percentile interval and two-sided p-value."""
    map_a, map_b = (float(mean_ap(ap_per_class(r))[0]) for r in (records_a, records_b))
    gain = map_a - map_b
    n = len(records_a.gt_count)
    if n == 0 or n_boot <= 0:
        return {"gain": gain, "ci95": [gain, gain], "p_value": 1.0, "map50_a": map_a, "map50_b": map_b,
                "n_boot": 0, "n_images": n}
    counts = draw_counts(n, n_boot, seed)
    diff = bootstrap_map(records_a, counts) - bootstrap_map(records_b, counts)  # (R,)
    lo, hi = np.quantile(diff, [(1 - level) / 2, 1 - (1 - level) / 2])
    below, above = int((diff <= 0).sum()), int((diff >= 0).sum())
    p = min(1.0, 2 * (1 + min(below, above)) / (n_boot + 1))
    return {"gain": gain, "ci95": [float(lo), float(hi)], "p_value": p, "map50_a": map_a, "map50_b": map_b,
            "n_boot": int(n_boot), "n_images": n}


def compare(dets_a, dets_b, targets: np.ndarray, num_classes: int, seed: int = 0, n_boot: int = N_BOOT) -> dict:
    """A vs B on the labeled test images: {gain, ci95, p_value, verdict, n_boot, ...}; gain is a
    difference of mAP50 (a fraction, like accuracy), and A's and B's mAP50 come with it."""
    targets = np.asarray(targets)
    keep = labeled_images(targets)
    rec_a, rec_b = (match(Detections.of(d).take(keep), targets[keep], num_classes) for d in (dets_a, dets_b))
    out = paired_bootstrap(rec_a, rec_b, n_boot=n_boot, seed=seed)
    return {"gain": round(out["gain"], 6), "ci95": [round(v, 6) for v in out["ci95"]], "p_value": out["p_value"],
            "verdict": verdict(out["gain"], out["p_value"]), "n_boot": out["n_boot"],
            "map50_a": round(out["map50_a"], 6), "map50_b": round(out["map50_b"], 6),
            "n_images": out["n_images"], "method": "paired bootstrap over images"}
