"""The verdict's statistics: exact McNemar and the paired bootstrap interval."""

from __future__ import annotations

import numpy as np
import pytest

from distill_export.tasks.classification.significance import compare, mcnemar_exact, paired_bootstrap_ci, verdict


def _pairs(only_a: int, only_b: int, both: int = 50, neither: int = 5):
    a = np.array([1] * only_a + [0] * only_b + [1] * both + [0] * neither, bool)
    b = np.array([0] * only_a + [1] * only_b + [1] * both + [0] * neither, bool)
    return a, b


def test_mcnemar_exact_matches_the_binomial_by_hand():
    # 10 rows only A got right, 2 only B: p = 2·P(X <= 2), X ~ Bin(12, 1/2) = 2·(1 + 12 + 66)/4096.
    a, b = _pairs(10, 2)
    assert mcnemar_exact(a, b) == pytest.approx(2 * 79 / 4096, rel=1e-9)
    assert mcnemar_exact(b, a) == pytest.approx(2 * 79 / 4096, rel=1e-9)  # symmetric


def test_mcnemar_ignores_concordant_rows_and_caps_at_one():
    a, b = _pairs(3, 3, both=500, neither=500)
    assert mcnemar_exact(a, b) == pytest.approx(1.0)
    same = np.ones(20, bool)
    assert mcnemar_exact(same, same) == 1.0


def test_bootstrap_interval_brackets_the_gain_and_shrinks_with_n():
    rng = np.random.default_rng(1)
    small_a, small_b = rng.random(200) < 0.9, rng.random(200) < 0.8
    big_a, big_b = rng.random(5000) < 0.9, rng.random(5000) < 0.8
    lo, hi = paired_bootstrap_ci(small_a, small_b, seed=0)
    gain = small_a.mean() - small_b.mean()
    assert lo < gain < hi
    blo, bhi = paired_bootstrap_ci(big_a, big_b, seed=0)
    assert bhi - blo < (hi - lo) / 3  # ~1/sqrt(25) of the width


def test_bootstrap_of_identical_predictions_is_a_point():
    a = np.array([1, 0, 1, 1], bool)
    assert paired_bootstrap_ci(a, a) == (0.0, 0.0)


@pytest.mark.parametrize("gain,p,expected", [
    (0.05, 0.01, "paid"), (-0.05, 0.01, "hurt"), (0.05, 0.05, "no significant difference"),
    (0.05, 0.2, "no significant difference"),
])
def test_verdict_at_the_5_percent_level(gain, p, expected):
    assert verdict(gain, p) == expected


def test_compare_reports_gain_interval_p_and_discordant_counts():
    labels = np.arange(100) % 10
    pred_a = labels.copy()
    pred_b = labels.copy()
    pred_b[:20] = (labels[:20] + 1) % 10  # B wrong on 20 rows A gets right
    pred_a[95:] = (labels[95:] + 1) % 10  # A wrong on 5 rows B gets right
    out = compare(pred_a, pred_b, labels)
    assert out["gain"] == pytest.approx(0.15)
    assert out["discordant"] == [20, 5]
    assert out["p_value"] < 0.01 and out["verdict"] == "paid"
    assert out["ci95"][0] > 0 and out["ci95"][1] > out["gain"]


def test_modality_gap_note_uses_the_student_modality_alone():
    """With 3+ modalities each `without_<m>` probe keeps the others: only `only_<student>` says
    what the teacher knows through the student's modality alone."""
    from distill_export.report import _modality_gap_note

    base = {"metrics": {"teacher": {"accuracy": 0.9}, "baseline": {"accuracy": 0.6}}, "distill": {"label_fraction": 0.1}}
    two = _modality_gap_note({**base, "teacher": {"modality_probe": {"without_audio": 0.61}}})
    assert "scores 61.0%" in two and "modality gap" in two
    three = {"without_audio": 0.8, "without_text": 0.85}
    assert _modality_gap_note({**base, "teacher": {"modality_probe": three}}) == ""  # no single-modality probe
    note = _modality_gap_note({**base, "teacher": {"modality_probe": {**three, "only_image": 0.75}}})
    assert "scores 75.0%" in note and "labels the 90.0%" in note
