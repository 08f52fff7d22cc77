"""Task metrics on gathered predictions: hand-computed values, numpy, scipy/scikit-learn."""

import numpy as np
import pytest

from keras_bert_ft.tasks import scores as m
from keras_bert_ft.errors import KbftError

TRUE = [0, 0, 0, 1, 1, 1, 1, 0]
PRED = [0, 1, 0, 1, 1, 0, 1, 0]  # tp=3 fp=1 fn=1 tn=3


def test_binary_accuracy_f1_mcc_by_hand():
    assert m.accuracy(TRUE, PRED) == 6 / 8
    assert m.f1_score(TRUE, PRED) == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    # MCC = (tp*tn - fp*fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = 8/16
    assert m.mcc(TRUE, PRED) == pytest.approx(0.5)
    assert m.f1_score(TRUE, PRED, average="micro") == pytest.approx(6 / 8)
    # class 0: tp=3, fp=1, fn=1 -> also 0.75; macro = 0.75
    assert m.f1_score(TRUE, PRED, average="macro") == pytest.approx(0.75)
    assert m.classification_metrics(TRUE, PRED, 2) == pytest.approx(
        {"accuracy": 0.75, "f1": 0.75, "mcc": 0.5})


def test_multiclass_macro_skips_absent_classes_and_mcc_by_hand():
    y_true = [0, 0, 1, 1, 2, 2]
    y_pred = [0, 1, 1, 1, 2, 0]
    # F1 per class: 0 -> 2*1/(2+2)=0.5, 1 -> 2*2/(3+2)=0.8, 2 -> 2*1/(1+2)=2/3.
    # A fourth class that never occurs must not drag the macro mean down.
    expected_macro = (0.5 + 0.8 + 2 / 3) / 3
    assert m.f1_score(y_true, y_pred, average="macro", num_classes=4) == pytest.approx(expected_macro)
    found = m.classification_metrics(y_true, y_pred, 4)
    assert found["f1"] == pytest.approx(expected_macro)
    # Gorodkin R_K: c=4, s=6, t=(2,2,2,0), p=(2,3,1,0): (24-12)/sqrt(36-14)/sqrt(36-12)
    assert found["mcc"] == pytest.approx(12 / np.sqrt(22) / np.sqrt(24))
    assert m.mcc([0, 1, 2], [0, 0, 0]) == 0.0  # constant predictions: undefined -> 0


def test_against_scikit_learn_on_random_labels():
    sklearn_metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn not installed")
    rng = np.random.RandomState(0)
    for classes in (2, 5):
        y_true, y_pred = rng.randint(0, classes, 300), rng.randint(0, classes, 300)
        y_pred[:100] = y_true[:100]
        assert m.mcc(y_true, y_pred) == pytest.approx(
            sklearn_metrics.matthews_corrcoef(y_true, y_pred))
        for average in ("macro", "micro") + (("binary",) if classes == 2 else ()):
            assert m.f1_score(y_true, y_pred, average=average) == pytest.approx(
                sklearn_metrics.f1_score(y_true, y_pred, average=average)), average
    with pytest.raises(KbftError, match="Received: average='weighted'"):
        m.f1_score(TRUE, PRED, average="weighted")


def test_pearson_spearman_with_ties():
    x = np.array([1.0, 2.0, 2.0, 3.0, 5.0, 4.0])
    y = np.array([2.0, 1.0, 4.0, 4.0, 6.0, 3.0])
    assert m.pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert m.rank(x).tolist() == [1.0, 2.5, 2.5, 4.0, 6.0, 5.0]
    assert m.spearman(x, y) == pytest.approx(np.corrcoef(m.rank(x), m.rank(y))[0, 1])
    assert m.spearman(x, x ** 3) == pytest.approx(1.0)
    assert m.pearson(x, np.ones_like(x)) == 0.0
    found = m.regression_metrics(x, y)
    assert found["mse"] == pytest.approx(np.mean((x - y) ** 2))
    stats = pytest.importorskip("scipy.stats", reason="scipy not installed")
    assert found["spearman"] == pytest.approx(stats.spearmanr(x, y)[0])
    assert found["pearson"] == pytest.approx(stats.pearsonr(x, y)[0])


def test_thresholds_maximise_each_labels_f1():
    y = np.array([[1, 0], [1, 0], [0, 1], [0, 0], [0, 1]], np.float32)
    p = np.array([[0.30, 0.9], [0.20, 0.1], [0.10, 0.8], [0.05, 0.2], [0.25, 0.7]], np.float32)
    t = m.tune_thresholds(y, p)
    # Label 0: positives score 0.30 and 0.20, a negative 0.25 between them: taking all
    # three (F1 0.8) beats only the top one (F1 2/3). Label 1: 0.9 (negative), 0.8 and
    # 0.7 (positive): all three, F1 0.8.
    assert t.dtype == np.float32
    assert t[0] == pytest.approx((0.20 + 0.10) / 2) and t[1] == pytest.approx((0.7 + 0.2) / 2)
    found = m.multilabel_metrics(y, p, t, ["a", "b"])
    assert found["f1_per_label"] == pytest.approx({"a": 0.8, "b": 0.8})
    assert found["f1_micro"] == pytest.approx(2 * 4 / (4 + 6))
    # Rows 0 (b over threshold, not true) and 4 (a likewise) have a label wrong.
    assert found["subset_accuracy"] == pytest.approx(3 / 5)
    assert m.tune_thresholds(np.zeros((3, 1)), np.ones((3, 1)))[0] == 0.5  # no positives
