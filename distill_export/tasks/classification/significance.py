"""Is the distilled student really better than the baseline? Paired tests on one test set.

Both classifiers are scored on the same test rows, so the comparison is paired (Dietterich
1998): an exact McNemar test on the rows where exactly one of them is right, and a paired
bootstrap interval for the accuracy difference (resampling test rows, both models together).
"""

from __future__ import annotations

import numpy as np

from distill_export.record.metrics import ALPHA, verdict_of as verdict  # noqa: F401  (one rule: the record checks it)


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> float:
    """Two-sided exact McNemar p-value: a binomial test of the discordant pairs at p=1/2."""
    from scipy.stats import binomtest

    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    if only_a + only_b == 0:
        return 1.0
    return float(binomtest(only_a, only_a + only_b, 0.5).pvalue)


def paired_bootstrap_ci(correct_a: np.ndarray, correct_b: np.ndarray, n_resamples: int = 4000,
                        seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of accuracy(a) − accuracy(b) over test rows resampled with replacement."""
    diff = np.asarray(correct_a, np.float64) - np.asarray(correct_b, np.float64)  # (N,) in {-1, 0, 1}
    n = len(diff)
    if n == 0:
        return 0.0, 0.0
    rng = np.random.default_rng(seed)
    chunk = max(1, 2_000_000 // n)  # resamples per block: about 16 MB of int64 indices at a time
    means = np.concatenate([
        diff[rng.integers(0, n, size=(min(chunk, n_resamples - i), n))].mean(axis=1)
        for i in range(0, n_resamples, chunk)
    ])  # (R,)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def compare(pred_a: np.ndarray, pred_b: np.ndarray, labels: np.ndarray, seed: int = 0) -> dict:
    """A vs B on one test set: gain (a fraction), its 95% CI, McNemar's p and the verdict."""
    correct_a, correct_b = np.asarray(pred_a) == labels, np.asarray(pred_b) == labels
    gain = float(correct_a.mean() - correct_b.mean()) if len(labels) else 0.0
    p = mcnemar_exact(correct_a, correct_b)
    lo, hi = paired_bootstrap_ci(correct_a, correct_b, seed=seed)
    return {"gain": round(gain, 6), "ci95": [round(lo, 6), round(hi, 6)], "p_value": p,
            "verdict": verdict(gain, p), "discordant": [int((correct_a & ~correct_b).sum()),
                                                        int((~correct_a & correct_b).sum())]}
