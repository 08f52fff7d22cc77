"""Task metrics computed on gathered predictions (so they are exact under any strategy).

Streaming Keras metrics average per-replica, per-batch values; F1, Matthews correlation
and rank correlations do not decompose that way. Every metric here takes the whole set of
labels and predictions as numpy arrays, after `predict` has gathered them.
"""

from typing import Dict, Optional, Sequence

import numpy as np

from keras_bert_ft.errors import bad_argument

AVERAGES = ("binary", "macro", "micro")


def confusion(y_true, y_pred, num_classes: int) -> np.ndarray:
    """`matrix[i, j]`: examples of true class i predicted as j."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return matrix


def f1_scores(matrix: np.ndarray) -> np.ndarray:
    """Per-class F1 from a confusion matrix; 0 for a class never true nor predicted."""
    tp = np.diag(matrix).astype(float)
    predicted, actual = matrix.sum(0), matrix.sum(1)
    denom = predicted + actual
    return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)


def _ratio(numerator, denominator) -> np.ndarray:
    numerator = np.asarray(numerator, float)
    denominator = np.asarray(denominator, float)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator),
                     where=denominator > 0)


def class_scores(tp, predicted, actual, names: Sequence[str]) -> Dict[str, Dict[str, float]]:
    """`{name: {precision, recall, f1, support}}` from per-class counts of true positives,
    predictions and true examples (`support`); a ratio with nothing to divide by is 0."""
    tp, predicted, actual = (np.asarray(x, float) for x in (tp, predicted, actual))
    precision, recall = _ratio(tp, predicted), _ratio(tp, actual)
    f1 = _ratio(2 * tp, predicted + actual)
    return {str(name): {"precision": float(precision[i]), "recall": float(recall[i]),
                        "f1": float(f1[i]), "support": int(actual[i])}
            for i, name in enumerate(names)}


def classification_report(y_true, y_pred, label_names: Sequence[str]) -> Dict[str, object]:
    """`per_class` ({label: {precision, recall, f1, support}}) and `confusion_matrix`
    ({"labels": [...], "matrix": rows = true label, columns = predicted}) of integer
    class labels."""
    matrix = confusion(y_true, y_pred, len(label_names))
    names = [str(n) for n in label_names]
    return {"per_class": class_scores(np.diag(matrix), matrix.sum(0), matrix.sum(1), names),
            "confusion_matrix": {"labels": names, "matrix": matrix.tolist()}}


def macro_f1(matrix: np.ndarray) -> float:
    """Mean F1 over the classes that occur in the labels or the predictions (as
    scikit-learn does): a class absent from both says nothing about the model."""
    present = (matrix.sum(0) + matrix.sum(1)) > 0
    return float(f1_scores(matrix)[present].mean()) if present.any() else 0.0


def matthews_corrcoef(matrix: np.ndarray) -> float:
    """Multi-class Matthews correlation (Gorodkin's R_K); 0 when undefined."""
    t, p = matrix.sum(1).astype(float), matrix.sum(0).astype(float)
    c, s = float(np.trace(matrix)), float(matrix.sum())
    denom = np.sqrt(s * s - p @ p) * np.sqrt(s * s - t @ t)
    return float((c * s - t @ p) / denom) if denom > 0 else 0.0


def _num_classes(y_true, y_pred, num_classes: Optional[int]) -> int:
    return int(num_classes or max(int(np.max(y_true, initial=0)),
                                  int(np.max(y_pred, initial=0))) + 1)


def accuracy(y_true, y_pred) -> float:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float(np.mean(y_true == y_pred)) if len(y_true) else 0.0


def f1_score(y_true, y_pred, average: str = "binary", num_classes: Optional[int] = None,
             pos_label: int = 1) -> float:
    """F1 of integer class labels: `binary` (class `pos_label`), `macro` or `micro`."""
    if average not in AVERAGES:
        raise bad_argument("average", average, f"one of {', '.join(AVERAGES)}")
    matrix = confusion(y_true, y_pred, _num_classes(y_true, y_pred, num_classes))
    if average == "binary":
        return float(f1_scores(matrix)[pos_label]) if pos_label < len(matrix) else 0.0
    if average == "macro":
        return macro_f1(matrix)
    # micro: pooled counts; every error is one false positive and one false negative.
    total = matrix.sum()
    return float(np.trace(matrix) / total) if total else 0.0


def mcc(y_true, y_pred, num_classes: Optional[int] = None) -> float:
    """Matthews correlation of integer class labels (binary or multi-class)."""
    return matthews_corrcoef(confusion(y_true, y_pred,
                                       _num_classes(y_true, y_pred, num_classes)))


def classification_metrics(y_true, y_pred, num_classes: int) -> Dict[str, float]:
    """accuracy, f1 (binary: the positive class 1; multi-class: macro) and mcc."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if len(y_true) == 0:
        return {}
    matrix = confusion(y_true, y_pred, num_classes)
    return {"accuracy": float(np.mean(y_true == y_pred)),
            "f1": float(f1_scores(matrix)[1]) if num_classes == 2 else macro_f1(matrix),
            "mcc": matthews_corrcoef(matrix)}


# ------------------------------------------------------------------ regression
def pearson(x, y) -> float:
    """Pearson correlation; 0 when either side is constant (undefined)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    x, y = x - x.mean(), y - y.mean()
    denom = np.sqrt((x @ x) * (y @ y))
    return float(x @ y / denom) if denom > 0 else 0.0


def rank(values) -> np.ndarray:
    """1-based ranks, ties sharing their average rank (as scipy.stats.rankdata)."""
    _, inverse, counts = np.unique(np.asarray(values, np.float64), return_inverse=True,
                                   return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2.0)[inverse.reshape(-1)]


def spearman(x, y) -> float:
    """Spearman rank correlation: Pearson of the tie-averaged ranks."""
    return pearson(rank(x), rank(y))


def regression_metrics(y_true, y_score) -> Dict[str, float]:
    """pearson, spearman and mse of float scores."""
    y_true = np.asarray(y_true, np.float64).reshape(-1)
    y_score = np.asarray(y_score, np.float64).reshape(-1)
    if len(y_true) == 0:
        return {}
    return {"pearson": pearson(y_true, y_score), "spearman": spearman(y_true, y_score),
            "mse": float(np.mean((y_true - y_score) ** 2))}


# ------------------------------------------------------------------ multi-label
def tune_thresholds(y_true, probabilities, default: float = 0.5) -> np.ndarray:
    """One threshold per label maximising that label's F1 on `(y_true, probabilities)`.

    A label is predicted when its probability is >= its threshold. Thresholds sit
    halfway between the last probability taken as positive and the next lower one, so
    small numeric differences do not flip a decision. A label without positives keeps
    `default`.
    """
    y_true = np.asarray(y_true) > 0.5
    probabilities = np.asarray(probabilities, np.float64)
    thresholds = np.full(y_true.shape[1], float(default))
    for j in range(y_true.shape[1]):
        positives = int(y_true[:, j].sum())
        if positives == 0:
            continue
        order = np.argsort(-probabilities[:, j], kind="mergesort")
        scores, hits = probabilities[order, j], y_true[order, j]
        tp = np.cumsum(hits)
        taken = np.arange(1, len(scores) + 1)
        # Only cut where the score changes: tied examples are all in or all out.
        cuts = np.flatnonzero(np.append(scores[1:] < scores[:-1], True))
        f1 = 2 * tp[cuts] / (taken[cuts] + positives)
        k = cuts[int(np.argmax(f1))]
        below = scores[k + 1] if k + 1 < len(scores) else 0.0
        thresholds[j] = (scores[k] + below) / 2.0
    # float32, as the export compares them: the same decisions in numpy and in serving.
    return thresholds.astype(np.float32)


def multilabel_metrics(y_true, probabilities, thresholds,
                       label_names: Optional[Sequence[str]] = None) -> Dict[str, object]:
    """f1_micro, f1_macro (over labels that occur), subset accuracy (every label
    right), per-label F1 and `per_class` precision / recall / F1 / support, at the given
    thresholds."""
    y_true = np.asarray(y_true) > 0.5
    if len(y_true) == 0:
        return {}
    y_pred = np.asarray(probabilities) >= np.asarray(thresholds)[None, :]
    tp = (y_true & y_pred).sum(0).astype(float)
    denom = (y_true.sum(0) + y_pred.sum(0)).astype(float)
    per_label = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    names = list(label_names) if label_names is not None else [str(i) for i in range(len(tp))]
    return {"f1_micro": float(2 * tp.sum() / denom.sum()) if denom.sum() else 0.0,
            "f1_macro": float(per_label[denom > 0].mean()) if (denom > 0).any() else 0.0,
            "subset_accuracy": float(np.mean((y_true == y_pred).all(1))),
            "f1_per_label": dict(zip(names, map(float, per_label))),
            "per_class": class_scores(tp, y_pred.sum(0), y_true.sum(0), names)}
