"""The detection task's numbers: COCO mAP against a case worked by hand, the fast numpy AP
against faster-coco-eval, and the paired bootstrap over images."""

from __future__ import annotations

import numpy as np
import pytest

from distill_export.tasks import get_task, task_names
from distill_export.tasks.detection import DetectionTask
from distill_export.tasks.detection.matching import Detections, ap_per_class, fast_map, match, mean_ap
from distill_export.tasks.detection.metrics import coco_precision
from distill_export.tasks.detection.significance import bootstrap_map, compare, draw_counts

from _detection_cases import NAMES, hand_case, random_case

# ----- the case worked by hand (tests/_detection_cases.py draws it) ---------------------------------
# COCO's AP: a class's detections over all images, best first; precision p = TP/(TP+FP) and recall
# r = TP/#GT after each; the envelope p~(i) = max of p over ranks >= i; then at each of the 101
# recall points R = 0, .01, ..., 1 the envelope at the first rank with r >= R (0 if none); AP is
# their mean.
#
# class a, IoU .5 (3 GT):  rank  det      TP/FP  r     p     p~
#                          1     .90 img0 TP    1/3   1     1
#                          2     .80 img1 FP    1/3   1/2   2/3
#                          3     .70 img2 TP    2/3   2/3   2/3
#                          4     .60 img0 FP    2/3   1/2   1/2
#   R = 0 .. .33 (34 points) -> rank 1: 1;  R = .34 .. .66 (33) -> rank 3: 2/3;  R >= .67 (34) -> 0
#   AP50(a) = (34 * 1 + 33 * 2/3) / 101 = 56/101 = 0.5545
# class b, IoU .5 (2 GT):  1  .95 img2 TP  r 1/2  p 1    p~ 1
#                          2  .85 img0 FP    1/2    1/2     2/3
#                          3  .50 img1 TP    1      2/3     2/3
#   R = 0 .. .50 (51 points) -> 1;  R = .51 .. 1 (50) -> 2/3
#   AP50(b) = (51 + 50 * 2/3) / 101 = 253/303 = 0.8350
# class c has no ground truth: left out.  mAP50 = (56/101 + 253/303) / 2 = 421/606 = 0.6947
#
# mAP50-95 (IoU .50, .55, ..., .95): b's boxes are exact, AP(b) = 253/303 at every threshold. a's
# img2 box has IoU .625, a TP at .50, .55, .60 only; above, a's ranks are TP, FP, FP, FP: r = 1/3
# at best, p~ = 1 up to R = .33 -> AP = 34/101. AP50-95(a) = (3 * 56/101 + 7 * 34/101) / 10 = 406/1010.
AP50_A, AP50_B = 56 / 101, 253 / 303
AP5095_A, AP5095_B = 406 / 1010, 253 / 303


def test_the_task_is_registered():
    assert "detection" in task_names()
    task = get_task("detection")
    assert isinstance(task, DetectionTask)
    assert task.headline == "map50" and task.score_name == "mAP50"
    assert task.output_names == ("boxes", "scores", "classes")


def test_coco_map_matches_the_case_worked_by_hand():
    dets, targets = hand_case()
    task = DetectionTask()
    m = task.evaluate(dets, targets, data=type("D", (), {"target_names": NAMES})())
    assert m["map50"] == pytest.approx((AP50_A + AP50_B) / 2, abs=1e-9)
    assert m["map50_95"] == pytest.approx((AP5095_A + AP5095_B) / 2, abs=1e-9)
    assert m["per_class"]["a"] == {"ap50": pytest.approx(AP50_A, abs=1e-9),
                                   "ap50_95": pytest.approx(AP5095_A, abs=1e-9), "n_objects": 3}
    assert m["per_class"]["b"]["ap50"] == pytest.approx(AP50_B, abs=1e-9)
    assert m["per_class"]["b"]["ap50_95"] == pytest.approx(AP5095_B, abs=1e-9)
    assert m["per_class"]["c"] == {"ap50": None, "ap50_95": None, "n_objects": 0}
    assert m["n_images"] == 3 and m["n_objects"] == 5  # the unlabeled image is left out


def test_the_fast_ap_matches_the_case_worked_by_hand():
    dets, targets = hand_case()
    assert DetectionTask().score(dets, targets) == pytest.approx((AP50_A + AP50_B) / 2, abs=1e-12)
    per_class = ap_per_class(match(Detections.of(dets).take(np.arange(3)), targets[:3], 3))[0]
    assert per_class[:2] == pytest.approx([AP50_A, AP50_B], abs=1e-12) and np.isnan(per_class[2])
    # at IoU .65 the img2 box misses: a's AP is 34/101
    assert fast_map(dets, targets, 3, iou_threshold=0.65) == pytest.approx((34 / 101 + AP50_B) / 2, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_fast_ap_equals_faster_coco_eval_on_random_cases(seed):
    dets, targets = random_case(n=150, seed=seed)
    precision = coco_precision(Detections.of(dets), targets, 10)  # (T, R, C)
    for t, iou in ((0, 0.5), (5, 0.75)):
        coco = [precision[t, :, c].mean() if (precision[t, :, c] > -1).any() else np.nan for c in range(10)]
        fast = ap_per_class(match(dets, targets, 10, iou_threshold=iou))[0]
        np.testing.assert_allclose(fast, coco, atol=1e-9)
    m = DetectionTask().evaluate(dets, targets)
    assert abs(DetectionTask().score(dets, targets) - m["map50"]) < 1e-6


def test_degenerate_boxes_and_padding_are_no_detections():
    dets, targets = hand_case()
    base = DetectionTask().score(dets, targets)
    worse = {k: v.copy() for k, v in dets.items()}
    worse["boxes"][1, 2:] = [[12, 12, 11, 30], [3, 3, 3, 9]]  # padding rows: negative and zero width
    worse["scores"][1, 2:] = [0.99, 0.98]
    worse["classes"][1, 2:] = 0
    assert DetectionTask().score(worse, targets) == pytest.approx(base, abs=1e-12)
    assert DetectionTask().evaluate(worse, targets)["map50"] == pytest.approx(base, abs=1e-9)


def test_score_and_evaluate_take_raw_heads_through_the_graph_decode():
    torch = pytest.importorskip("torch")
    from distill_export.nets.centernet import OUTPUT_STRIDE, decode

    task = DetectionTask()
    raw = torch.randn(6, 3 + 4, 16, 16, generator=torch.Generator().manual_seed(0))
    raw[:, 3:5] = raw[:, 3:5].abs() * 4  # box sizes in cells
    decoded = task.decode_outputs(raw.numpy())
    boxes, scores, classes = decode(raw, 3, OUTPUT_STRIDE)
    np.testing.assert_array_equal(decoded["boxes"], boxes.numpy())
    np.testing.assert_array_equal(decoded["classes"], classes.numpy())
    targets = np.full((6, 2, 5), -1.0)
    targets[:, 0] = np.c_[decoded["classes"][:, 0], decoded["boxes"][:, 0]]  # each image's best detection is right
    assert task.score(raw.numpy(), targets) == pytest.approx(task.score(decoded, targets), abs=1e-12)
    assert task.evaluate(raw.numpy(), targets)["map50"] == pytest.approx(task.score(raw.numpy(), targets), abs=1e-6)


# ----- the paired bootstrap --------------------------------------------------------------------------
def _drop_true_positives(dets, targets, fraction: float, seed: int = 0) -> dict:
    """B = A with a share of A's true positives (at IoU .5) removed (score 0)."""
    d = Detections.of(dets).ordered()
    rec = match(d, targets, 10)
    tp = np.zeros(d.scores.shape, bool)
    tp[d.valid] = rec.tp
    drop = tp & (np.random.default_rng(seed).uniform(size=tp.shape) < fraction)
    return {"boxes": d.boxes, "scores": np.where(drop, 0.0, d.scores), "classes": d.classes}


def test_the_bootstrap_finds_a_known_gain():
    a, targets = random_case(n=300, seed=3)
    b = _drop_true_positives(a, targets, 0.3)
    task = DetectionTask()
    known = task.score(a, targets) - task.score(b, targets)
    assert known > 0.02
    out = task.compare(a, b, targets, seed=0)
    assert out["gain"] == pytest.approx(known, abs=1e-6)
    lo, hi = out["ci95"]
    assert 0 < lo <= known <= hi
    assert out["verdict"] == "paid" and out["p_value"] < 0.05 and out["n_boot"] >= 1000
    back = task.compare(b, a, targets, seed=0)
    assert back["verdict"] == "hurt" and back["gain"] == pytest.approx(-known, abs=1e-6)


def test_identical_models_are_no_significant_difference():
    a, targets = random_case(n=100, seed=4)
    out = DetectionTask().compare(a, {k: v.copy() for k, v in a.items()}, targets, seed=1)
    assert out["gain"] == 0 and out["ci95"] == [0, 0] and out["p_value"] == 1.0
    assert out["verdict"] == "no significant difference"


def test_a_small_difference_on_few_images_is_not_significant():
    a, targets = random_case(n=30, seed=5)
    b = _drop_true_positives(a, targets, 0.03, seed=1)
    out = DetectionTask().compare(a, b, targets, seed=0)
    assert out["ci95"][0] <= 0 <= out["ci95"][1] and out["verdict"] == "no significant difference"


def test_a_bootstrap_draw_equals_coco_on_the_resampled_images():
    """Re-weighting the matched records is the same as evaluating the drawn images (repeated)."""
    dets, targets = random_case(n=80, seed=6)
    counts = draw_counts(80, 3, seed=7)  # (3, 80)
    records = match(dets, targets, 10)
    fast = bootstrap_map(records, counts)
    d = Detections.of(dets)
    for r in range(3):
        idx = np.repeat(np.arange(80), counts[r])  # each drawn image as many times as it was drawn
        precision = coco_precision(d.take(idx), targets[idx], 10)[0]
        assert fast[r] == pytest.approx(precision[:, (precision > -1).any(0)].mean(), abs=1e-9)
    assert mean_ap(ap_per_class(records))[0] == pytest.approx(fast_map(dets, targets, 10), abs=1e-12)


def test_the_verdict_words_are_classifications():
    from distill_export.tasks.classification import significance as cls_sig
    from distill_export.tasks.detection import significance as det_sig

    assert det_sig.ALPHA == cls_sig.ALPHA
    for gain, p in ((0.1, 0.01), (-0.1, 0.01), (0.1, 0.2), (0.0, 1.0), (0.05, 0.049999)):
        assert det_sig.verdict(gain, p) == cls_sig.verdict(gain, p)


def test_compare_unlabeled_images_are_left_out():
    dets, targets = hand_case()
    out = compare(dets, dets, targets, 3, n_boot=50)
    assert out["n_images"] == 3 and out["map50_a"] == pytest.approx((AP50_A + AP50_B) / 2, abs=1e-6)
