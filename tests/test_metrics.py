import numpy as np
import pytest

from distill_export.tasks.classification.metrics import classification_metrics


def test_metrics_on_a_known_case():
    # true: 0 0 1 1 2 ; pred: 0 1 1 1 0
    logits = np.eye(3)[[0, 1, 1, 1, 0]]
    m = classification_metrics(logits, np.array([0, 0, 1, 1, 2]), 3)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    # precision: c0 1/2, c1 2/3, c2 0 ; recall: c0 1/2, c1 1, c2 0
    assert m["macro_precision"] == pytest.approx((0.5 + 2 / 3) / 3)
    assert m["macro_recall"] == pytest.approx(0.5)
    f1 = [0.5, 0.8, 0.0]
    assert m["macro_f1"] == pytest.approx(sum(f1) / 3)
