"""Behaviour-level tests of the classification comparison (issue 25, the survivors of mutmut on
tasks/classification/significance.py), one property per promise:

- the interval is the documented one: the 2.5th and 97.5th percentiles of 4,000 paired resamples
  of the test rows, drawn from the run's seed; the same seed gives the same interval, another
  seed another draw;
- a paired comparison is antisymmetric: B vs A mirrors A vs B's interval;
- every test row can be drawn, and a test set where every row has the same difference gives that
  difference as a point interval;
- an empty test set is "no significant difference" with a zero gain;
- correctness given as 0/1 numbers (ints or floats) counts the same as True/False.
"""

from __future__ import annotations

import numpy as np
import pytest

from distill_export.tasks.classification import significance as cls_sig


def _outcomes(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.uniform(size=n) < 0.75
    b = np.where(rng.uniform(size=n) < 0.5, a, rng.uniform(size=n) < 0.65)
    return a, b


def _documented_interval(a, b, seed: int, resamples: int = 4000) -> tuple[float, float]:
    """docs/distillation.md's recipe written out: resample the test rows with replacement,
    both models together, from the seeded generator; the 2.5th and 97.5th percentiles."""
    diff = a.astype(float) - b.astype(float)
    rows = np.random.default_rng(seed).integers(0, len(diff), size=(resamples, len(diff)))
    lo, hi = np.quantile(diff[rows].mean(axis=1), [0.025, 0.975])
    return float(lo), float(hi)


@pytest.mark.parametrize("n", [60, 1500])  # 1500 rows: the resamples are drawn in several blocks
def test_interval_is_the_documented_seeded_percentile_interval(n):
    a, b = _outcomes(n, seed=n)
    for seed in (0, 7):
        assert cls_sig.paired_bootstrap_ci(a, b, seed=seed) == pytest.approx(_documented_interval(a, b, seed),
                                                                              abs=1e-12)
    for resamples in (1, 10, 37):  # the interval is over exactly that many resamples
        assert cls_sig.paired_bootstrap_ci(a, b, n_resamples=resamples, seed=3) == pytest.approx(
            _documented_interval(a, b, 3, resamples), abs=1e-12)


def test_same_seed_same_report_and_the_seed_reaches_the_draw():
    n = 2000  # fine enough that two different draws give different percentiles
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 5, n)
    a, b = _outcomes(n, seed=3)
    pred_a, pred_b = np.where(a, labels, labels + 1), np.where(b, labels, labels + 1)
    first = cls_sig.compare(pred_a, pred_b, labels, seed=11)
    for _ in range(2):
        assert cls_sig.compare(pred_a, pred_b, labels, seed=11) == first  # reproducible
    others = [cls_sig.compare(pred_a, pred_b, labels, seed=s)["ci95"] for s in (12, 13)]
    assert any(ci != first["ci95"] for ci in others)  # the run's seed drives the resamples


@pytest.mark.parametrize("seed", range(4))
def test_swapping_the_models_mirrors_the_interval(seed):
    a, b = _outcomes(int(np.random.default_rng(seed).integers(80, 400)), seed)
    lo, hi = cls_sig.paired_bootstrap_ci(a, b, seed=seed)
    rlo, rhi = cls_sig.paired_bootstrap_ci(b, a, seed=seed)
    assert (rlo, rhi) == pytest.approx((-hi, -lo), abs=1e-12)
    assert lo < hi


@pytest.mark.parametrize("n", [3, 5])
def test_every_row_can_be_drawn(n):
    """Only one row differs (A right, B wrong): whichever row it is, some resamples draw it."""
    for row in range(n):
        a, b = np.zeros(n, bool), np.zeros(n, bool)
        a[row] = True
        lo, hi = cls_sig.paired_bootstrap_ci(a, b, seed=row)
        assert lo == 0.0 and hi > 0.0, (row, lo, hi)


@pytest.mark.parametrize("n", [1, 2, 9])
def test_a_constant_difference_is_a_point_interval(n):
    right, wrong = np.ones(n, bool), np.zeros(n, bool)
    assert cls_sig.paired_bootstrap_ci(right, wrong) == (1.0, 1.0)
    assert cls_sig.paired_bootstrap_ci(wrong, right) == (-1.0, -1.0)
    assert cls_sig.paired_bootstrap_ci(right, right) == (0.0, 0.0)


def test_an_empty_test_set_is_no_significant_difference():
    empty = np.array([], dtype=np.int64)
    out = cls_sig.compare(empty, empty, empty)
    assert out == {"gain": 0.0, "ci95": [0.0, 0.0], "p_value": 1.0, "verdict": "no significant difference",
                   "discordant": [0, 0]}
    assert cls_sig.paired_bootstrap_ci(empty, empty) == (0.0, 0.0)


@pytest.mark.parametrize("seed", range(3))
def test_zero_one_correctness_counts_like_booleans(seed):
    a, b = _outcomes(120, seed)
    p = cls_sig.mcnemar_exact(a, b)
    assert (a != b).any() and 0 < p <= 1
    for as_a, as_b in ((float, float), (int, float), (float, np.uint8)):
        assert cls_sig.mcnemar_exact(a.astype(as_a), b.astype(as_b)) == p, (as_a, as_b)
    assert cls_sig.paired_bootstrap_ci(a.astype(float), b.astype(int)) == cls_sig.paired_bootstrap_ci(a, b)


# ----- classification metrics (tasks/classification/metrics.py) ------------------------------


def _reference_metrics(pred: list[int], labels: list[int], num_classes: int) -> dict:
    """Macro precision/recall/F1 written out by counting, with the documented convention that a
    class never predicted (precision) or never present (recall) contributes 0, not NaN."""
    precision, recall, f1 = [], [], []
    for c in range(num_classes):
        tp = sum(p == c and y == c for p, y in zip(pred, labels))
        predicted, present = sum(p == c for p in pred), sum(y == c for y in labels)
        pc = tp / predicted if predicted else 0.0
        rc = tp / present if present else 0.0
        precision.append(pc)
        recall.append(rc)
        f1.append(2 * pc * rc / (pc + rc) if pc + rc else 0.0)
    return {"macro_precision": sum(precision) / num_classes, "macro_recall": sum(recall) / num_classes,
            "macro_f1": sum(f1) / num_classes}


@pytest.mark.parametrize("seed", range(8))
def test_macro_metrics_match_counting_with_rare_and_absent_classes(seed):
    """Random small test sets over 6 classes: some classes are predicted or present once, some
    never; the macro scores are the counted ones, the confusion matrix holds integer counts."""
    from distill_export.tasks.classification.metrics import classification_metrics

    rng = np.random.default_rng(seed)
    n, num_classes = int(rng.integers(4, 12)), 6
    labels = rng.choice(4, n, p=[0.5, 0.3, 0.15, 0.05])  # classes 4 and 5 never present
    pred = np.where(rng.uniform(size=n) < 0.6, labels, rng.integers(0, num_classes, n))
    with np.errstate(all="raise"):  # no NaN or division warnings leak out of the metrics
        m = classification_metrics(np.eye(num_classes)[pred], labels, num_classes)
    want = _reference_metrics(pred.tolist(), labels.tolist(), num_classes)
    for key, value in want.items():
        assert m[key] == pytest.approx(value, abs=1e-12), (key, pred, labels)
    assert m["accuracy"] == pytest.approx(float(np.mean(pred == labels)))
    assert m["n"] == n
    cm = m["confusion_matrix"]
    assert all(type(v) is int for row in cm for v in row)  # counts, written to report.json as such
    assert sum(map(sum, cm)) == n and [sum(row) for row in cm] == np.bincount(labels, minlength=6).tolist()


def test_a_class_predicted_or_present_once_counts():
    from distill_export.tasks.classification.metrics import classification_metrics

    labels, pred = np.array([0, 0, 0, 1]), np.array([0, 0, 1, 1])  # class 1: present once, predicted twice
    m = classification_metrics(np.eye(2)[pred], labels, 2)
    assert m["macro_recall"] == pytest.approx((2 / 3 + 1) / 2)
    m = classification_metrics(np.eye(2)[labels], pred, 2)  # roles swapped: class 1 predicted once
    assert m["macro_precision"] == pytest.approx((2 / 3 + 1) / 2)


def test_metrics_of_an_empty_test_set_are_zero_without_warnings():
    import warnings

    from distill_export.tasks.classification.metrics import classification_metrics

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = classification_metrics(np.zeros((0, 3)), np.zeros(0, np.int64), 3)
    assert m["accuracy"] == 0.0 and m["n"] == 0
    assert m["macro_precision"] == m["macro_recall"] == m["macro_f1"] == 0.0
    assert m["confusion_matrix"] == [[0] * 3] * 3


# ----- detection's paired bootstrap (tasks/detection/significance.py) -------------------------


def _detection_pair(n: int, seed: int, sigma: float = 4.0):
    from _detection_cases import random_case

    good, targets = random_case(n=n, seed=seed)
    rng = np.random.default_rng(seed)
    return good, {**good, "boxes": good["boxes"] + rng.normal(0, sigma, good["boxes"].shape)}, targets


def test_each_resample_draws_n_images_and_every_image_can_be_drawn():
    from distill_export.tasks.detection import significance as det_sig

    for n, boots in ((3, 50), (7, 200)):
        counts = det_sig.draw_counts(n, boots, seed=1)
        assert counts.shape == (boots, n) and (counts.sum(axis=1) == n).all()
        assert (counts.sum(axis=0) > 0).all()  # no image is left out of every draw


def test_one_map_per_resample_and_drawing_every_image_once_is_the_full_set():
    from distill_export.tasks.detection import significance as det_sig
    from distill_export.tasks.detection.matching import ap_per_class, match, mean_ap

    good, _, targets = _detection_pair(40, seed=2)
    records = match(good, targets, 10)
    full = float(mean_ap(ap_per_class(records))[0])
    for boots in (1, 5, 33):
        counts = np.vstack([np.ones((1, 40), np.int64), det_sig.draw_counts(40, boots - 1, seed=3)])
        maps = det_sig.bootstrap_map(records, counts)
        assert maps.shape == (boots,)
        assert maps[0] == pytest.approx(full, abs=1e-12)


def test_detection_p_value_floor_and_the_reported_draws():
    """A clearly better detector: every draw favours it, so p is the bootstrap's floor 2/(B+1)
    (twice the smaller share, with the +1 correction); the result says how many draws and
    images it used, and the seed drives the draws."""
    from distill_export.tasks.detection import significance as det_sig

    good, noisy, targets = _detection_pair(60, seed=0, sigma=8.0)
    for boots in (99, 199):
        out = det_sig.compare(good, noisy, targets, 10, seed=5, n_boot=boots)
        assert out["p_value"] == pytest.approx(2 / (boots + 1), rel=1e-12)
        assert out["verdict"] == "paid" and out["n_boot"] == boots and out["n_images"] == 60
        assert out["method"] == "paired bootstrap over images"
        assert out["ci95"][0] > 0
    one = det_sig.compare(good, noisy, targets, 10, seed=5, n_boot=1)
    assert one["n_boot"] == 1 and one["p_value"] == 1.0  # one draw cannot be significant
    slight = {**good, "boxes": good["boxes"] + np.random.default_rng(1).normal(0, 1.0, good["boxes"].shape)}
    cis = {tuple(det_sig.compare(good, slight, targets, 10, seed=s, n_boot=60)["ci95"]) for s in (1, 2, 3)}
    assert len(cis) > 1  # the run's seed reaches the draws


def test_no_draw_is_no_significant_difference():
    from distill_export.tasks.detection import significance as det_sig

    good, noisy, targets = _detection_pair(20, seed=4, sigma=8.0)
    out = det_sig.compare(good, noisy, targets, 10, seed=0, n_boot=0)
    assert out["n_images"] == 20 and out["n_boot"] == 0 and out["p_value"] == 1.0
    assert out["gain"] > 0 and out["ci95"] == [out["gain"]] * 2 and out["verdict"] == "no significant difference"
    assert out["gain"] == pytest.approx(out["map50_a"] - out["map50_b"], abs=2e-6)
