"""What differs between sentence-level tasks: loss, Keras metrics, validation metrics.

`classification`: softmax over classes, sparse cross-entropy; accuracy, F1 (binary:
positive class; multi-class: macro) and MCC. `multilabel`: a sigmoid per label, binary
cross-entropy, one decision threshold per label tuned on validation data for that label's
F1; micro/macro F1. `regression`: one linear output, mean squared error; Pearson,
Spearman and MSE. Validation metrics come from gathered predictions (see metrics.py).
"""

from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from keras_bert_ft._keras import keras
from keras_bert_ft.data.examples import TASKS
from keras_bert_ft.errors import bad_argument
from keras_bert_ft.tasks import scores as metrics_lib

# The metric each task's runs are usually judged and compared by.
PRIMARY_METRIC = {"classification": "accuracy", "multilabel": "f1_micro",
                  "regression": "pearson"}


def check_task(task: str) -> str:
    if task not in TASKS:
        raise bad_argument("task", task, f"one of {', '.join(TASKS)}")
    return task


def output_key(task: str) -> str:
    """The serving output holding the model's main prediction."""
    return "score" if check_task(task) == "regression" else "probabilities"


def loss_and_metrics(task: str) -> Tuple[keras.losses.Loss, list]:
    """The loss on the model's raw outputs (logits / score) and the metrics `fit` logs."""
    if check_task(task) == "classification":
        return (keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                [keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    if task == "multilabel":  # a logit > 0 is a probability > 0.5
        return (keras.losses.BinaryCrossentropy(from_logits=True),
                [keras.metrics.BinaryAccuracy(name="accuracy", threshold=0.0)])
    return keras.losses.MeanSquaredError(), []


def check_labels(task: str, examples, where: str) -> None:
    """Training `Examples` a task can learn from, else a `KbftError` naming `where`."""
    labels = examples.labels
    if check_task(task) == "classification" and len(set(labels.tolist())) < 2:
        raise bad_argument(where, examples.source, "training data with at least two "
                           f"different labels (found only {examples.label_names})")
    if task == "regression" and float(np.ptp(labels)) == 0.0:
        raise bad_argument(where, examples.source, "regression targets that vary (all are "
                           f"{float(labels[0])})")


def evaluate(task: str, labels: np.ndarray, predictions: np.ndarray,
             label_names: Sequence[str], thresholds: Optional[Sequence[float]] = None
             ) -> Dict[str, object]:
    """The task's metrics from gathered `predictions` (the serving output
    `output_key(task)`), plus `eval_loss`, the training loss on this data."""
    predictions = np.asarray(predictions)
    if check_task(task) == "classification":
        found = metrics_lib.classification_metrics(labels, predictions.argmax(-1),
                                                   len(label_names))
        picked = predictions[np.arange(len(predictions)), labels]
        found["eval_loss"] = float(np.mean(-np.log(np.maximum(picked, 1e-12))))
        return found
    if task == "regression":
        found = metrics_lib.regression_metrics(labels, predictions)
        found["eval_loss"] = found["mse"]
        return found
    if thresholds is None:
        thresholds = np.full(len(label_names), 0.5)
    found = metrics_lib.multilabel_metrics(labels, predictions, thresholds, label_names)
    found["f1_micro_at_0.5"] = metrics_lib.multilabel_metrics(
        labels, predictions, np.full(len(label_names), 0.5))["f1_micro"]
    p = np.clip(predictions.astype(np.float64), 1e-7, 1 - 1e-7)
    found["eval_loss"] = float(np.mean(-(labels * np.log(p) + (1 - labels) * np.log(1 - p))))
    found["thresholds"] = dict(zip(label_names, map(float, thresholds)))
    return found
