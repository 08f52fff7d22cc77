"""Sentence-level tasks: classification (single texts and pairs), multilabel and regression.

`classification`: softmax over classes, sparse cross-entropy; accuracy, F1 (binary:
positive class; multi-class: macro) and MCC. `multilabel`: a sigmoid per label, binary
cross-entropy, one decision threshold per label tuned on validation data for that label's
F1; micro/macro F1. `regression`: one linear output, mean squared error; Pearson,
Spearman and MSE. Validation metrics come from the serving outputs (scores.py).
"""

from typing import Dict, Optional, Sequence

import numpy as np
import tensorflow as tf

from keras_bert_ft._keras import keras
from keras_bert_ft.config import SENTENCE_TASKS as TASKS
from keras_bert_ft.data import examples as data_lib
from keras_bert_ft.data.preprocessing import trim_to_longest
from keras_bert_ft.errors import KbftError, bad_argument
from keras_bert_ft.export.serving import TaskServing, concat_batches
from keras_bert_ft.tasks import base, models, scores as metrics_lib

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


def loss_and_metrics(task: str):
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
    if labels is None:
        raise bad_argument(where, examples.source, "labelled examples (no label column)")
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


class SentenceServing(TaskServing):
    """Raw strings -> task outputs, through preprocessor and model.

    `classification`: `probabilities` (softmax), `label_id`, `label`.
    `multilabel`: `probabilities` (a sigmoid per label), `predictions` (0/1 per label, at
    the label's threshold) and `labels` (the names above their thresholds, joined by
    `label_separator`). `regression`: `score`.
    """

    def __init__(self, model, preprocessor, info: dict, task: str = "classification"):
        self.task = check_task(task)
        self.input_names = ("text", "text_pair") if info.get("pair") else ("text",)
        label_names = [str(n) for n in info["label_names"]]
        self.label_names = tf.constant(label_names, tf.string)
        self.label_separator = info.get("label_separator", ",")
        if task == "multilabel":
            thresholds = info.get("thresholds") or [0.5] * len(label_names)
            self.thresholds = tf.constant(thresholds, tf.float32)
        super().__init__(model, preprocessor, info)

    def predict_features(self, features) -> Dict[str, tf.Tensor]:
        logits = tf.cast(self.model(features, training=False), tf.float32)
        if self.task == "regression":
            return {"score": logits[:, 0]}
        if self.task == "multilabel":
            probabilities = tf.sigmoid(logits)
            predicted = probabilities >= self.thresholds
            names = tf.ragged.boolean_mask(
                tf.broadcast_to(self.label_names, tf.shape(predicted)), predicted)
            return {"probabilities": probabilities,
                    "predictions": tf.cast(predicted, tf.int32),
                    "labels": tf.strings.reduce_join(names, axis=-1,
                                                     separator=self.label_separator)}
        probabilities = tf.nn.softmax(logits, axis=-1)
        label_id = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
        return {"probabilities": probabilities, "label_id": label_id,
                "label": tf.gather(self.label_names, label_id)}

    def serve(self, text, text_pair=None):
        return self.predict_features(trim_to_longest(self.preprocessor(text, text_pair)))


class SentenceTask(base.Task):
    """classification, multilabel or regression (the instance's `name`)."""

    def __init__(self, name: str):
        self.name = name
        self.primary_metric = PRIMARY_METRIC[name]

    def read(self, source, config, info=None, where=None):
        label_names = None if info is None else info["label_names"]
        if isinstance(source, data_lib.Examples):
            if (label_names is not None and source.labels is not None
                    and self.name == "classification"):
                extra = set(source.labels.tolist()) - set(range(len(label_names)))
                if extra:
                    raise KbftError(f"validation has label ids unseen in training: {sorted(extra)}")
            examples = source
        else:
            examples = data_lib.load_examples(
                source, text_column=config.text_column, label_column=config.label_column,
                text_pair_column=config.text_pair_column, label_names=label_names,
                encoding=config.encoding, task=self.name,
                label_separator=config.label_separator,
                where=where or ("train" if info is None else "validation"))
        if info is not None and examples.is_pair != bool(info["pair"]):
            raise bad_argument("text_pair_column", config.text_pair_column,
                               "the same for training and validation data (one has pairs, "
                               "the other single texts)")
        return examples

    def describe(self, train, config) -> dict:
        check_labels(self.name, train, "train")
        info = {"label_names": [str(n) for n in train.label_names], "pair": train.is_pair}
        if self.name == "multilabel":
            info.update(label_separator=config.label_separator, thresholds=None)
        return info

    def featurize(self, data, preprocessor, config, info):
        if data.labels is None:
            return None
        integer = np.issubdtype(np.asarray(data.labels).dtype, np.integer)
        labels = np.asarray(data.labels, np.int32 if integer else np.float32)
        return base.Features(data_lib.tokenize_examples(data, preprocessor), labels)

    def reads_pooler(self, config) -> bool:
        from keras_bert_ft.training.build import resolve_pooling
        return resolve_pooling(config) == "pooled"

    def build_model(self, encoder, config, info):
        from keras_bert_ft.training.build import resolve_pooling
        return models.build_task_model(self.name, encoder, len(info["label_names"]),
                                       head_units=tuple(config.head_units),
                                       dropout=config.dropout, pooling=resolve_pooling(config))

    def loss(self, info):
        return loss_and_metrics(self.name)[0]

    def fit_metrics(self, info):
        return loss_and_metrics(self.name)[1]

    def serving(self, model, preprocessor, config, info):
        return SentenceServing(model, preprocessor, info, task=self.name)

    def _outputs(self, serving, examples, batch_size: int = 64):
        columns = [examples.texts] + ([examples.texts_pair] if examples.is_pair else [])
        return concat_batches(serving.run(*columns, batch_size=batch_size))

    def evaluate(self, serving, data, config, info):
        if data.labels is None:
            raise bad_argument("label_column", config.label_column,
                               "a column of the validation data (it has no labels)")
        predictions = self._outputs(serving, data)[output_key(self.name)]
        if self.name == "multilabel" and info.get("thresholds") is None:
            info = dict(info, thresholds=metrics_lib.tune_thresholds(
                data.labels, predictions).tolist())
        metrics = evaluate(self.name, data.labels, predictions, info["label_names"],
                           info.get("thresholds"))
        if self.name == "classification":  # flags degenerate runs (seeds.py)
            metrics["predicted_classes"] = int(len(np.unique(predictions.argmax(-1))))
        metrics["eval_examples"] = len(data)
        return metrics, info

    def predict(self, serving, texts, texts_pair=None, batch_size: int = 64):
        """The serving output `output_key(task)` for raw strings: class probabilities
        (multilabel: per label; regression: scores)."""
        if (texts_pair is not None) != bool(serving.info.get("pair")):
            raise bad_argument("texts_pair", "<given>" if texts_pair is not None else None,
                               "second texts for a pair model, and none for a single-text one")
        examples = data_lib.Examples(list(texts), None, [], None if texts_pair is None
                                     else list(texts_pair))
        if not len(examples):
            units = len(serving.info["label_names"])
            return np.zeros((0,) if self.name == "regression" else (0, units), np.float32)
        return self._outputs(serving, examples, batch_size)[output_key(self.name)]


CLASSIFICATION = SentenceTask("classification")
MULTILABEL = SentenceTask("multilabel")
REGRESSION = SentenceTask("regression")
