"""Task metrics computed on gathered predictions (so they are exact under any strategy)."""

from typing import Dict

import numpy as np


def confusion(y_true, y_pred, num_classes: int) -> np.ndarray:
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return matrix


def f1_scores(matrix: np.ndarray) -> np.ndarray:
    tp = np.diag(matrix).astype(float)
    predicted, actual = matrix.sum(0), matrix.sum(1)
    denom = predicted + actual
    return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)


def matthews_corrcoef(matrix: np.ndarray) -> float:
    """Multi-class Matthews correlation (Gorodkin's R_K); 0 when undefined."""
    t, p = matrix.sum(1).astype(float), matrix.sum(0).astype(float)
    c, s = float(np.trace(matrix)), float(matrix.sum())
    denom = np.sqrt(s * s - p @ p) * np.sqrt(s * s - t @ t)
    return float((c * s - t @ p) / denom) if denom > 0 else 0.0


def classification_metrics(y_true, y_pred, num_classes: int) -> Dict[str, float]:
    """accuracy, f1 (binary: the positive class 1; multi-class: macro) and mcc."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if len(y_true) == 0:
        return {}
    matrix = confusion(y_true, y_pred, num_classes)
    f1 = f1_scores(matrix)
    return {"accuracy": float(np.mean(y_true == y_pred)),
            "f1": float(f1[1] if num_classes == 2 else f1.mean()),
            "mcc": matthews_corrcoef(matrix)}
