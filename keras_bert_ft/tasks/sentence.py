"""Sentence-level tasks: classification (single texts and pairs), multilabel and regression.

`classification`: softmax over classes, sparse cross-entropy; accuracy, F1 (binary:
positive class; multi-class: macro) and MCC. `multilabel`: a sigmoid per label, binary
cross-entropy, one decision threshold per label tuned on validation data for that label's
F1; micro/macro F1. `regression`: one linear output, mean squared error; Pearson,
Spearman and MSE. Validation metrics come from the serving outputs (scores.py), with
per-class precision / recall / F1 and (classification) the confusion matrix.

`class_weight` (classification) weighs each example's cross-entropy by its true label's
weight, as Keras' `fit(class_weight=...)` does. `error_analysis` lists the validation
examples with the highest loss (`errors.tsv` in the run folder).
"""

import weakref
from typing import Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from keras_bert_ft._keras import keras
from keras_bert_ft.config import SENTENCE_TASKS as TASKS
from keras_bert_ft.data import examples as data_lib
from keras_bert_ft.data.preprocessing import trim_to_longest
from keras_bert_ft.errors import KbftError, bad_argument
from keras_bert_ft.export.serving import TaskServing, concat_batches, run_batches
from keras_bert_ft.tasks import base, models, scores as metrics_lib

# The metric each task's runs are usually judged and compared by.
PRIMARY_METRIC = {"classification": "accuracy", "multilabel": "f1_micro",
                  "regression": "pearson"}
METRIC_NAMES = {"classification": ("accuracy", "f1", "mcc", "eval_loss"),
                "multilabel": ("f1_micro", "f1_macro", "subset_accuracy", "eval_loss"),
                "regression": ("pearson", "spearman", "mse", "eval_loss")}


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


class WeightedSparseCrossentropy(keras.losses.Loss):
    """Sparse categorical cross-entropy from logits, each example's loss times
    `class_weights[true label]`, reduced as Keras reduces `class_weight`: the sum over the
    batch divided by the batch size (the global batch under `tf.distribute`). The logits
    are cast to float32 (mixed precision)."""

    def __init__(self, class_weights: Sequence[float],
                 name: str = "weighted_sparse_categorical_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.class_weights = [float(w) for w in class_weights]

    def call(self, y_true, y_pred):
        labels = tf.reshape(tf.cast(y_true, tf.int32), [-1])
        losses = tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=labels, logits=tf.cast(y_pred, tf.float32))
        return losses * tf.gather(tf.constant(self.class_weights, tf.float32), labels)

    def get_config(self):
        return {**super().get_config(), "class_weights": self.class_weights}


def resolve_class_weights(class_weight, labels, label_names: Sequence[str]
                          ) -> Optional[List[float]]:
    """`class_weight` as one weight per label id (None: unweighted).

    `"balanced"`: n / (k * count of the class) over the training labels, scikit-learn's
    rule (k: the classes that occur). A mapping: the weight of each label name given,
    1.0 for the others; a name that is not a training label is refused.
    """
    if class_weight is None:
        return None
    names = [str(n) for n in label_names]
    if class_weight == "balanced":
        counts = np.bincount(np.asarray(labels, int), minlength=len(names))[:len(names)]
        present = int((counts > 0).sum())
        return [float(counts.sum() / (present * c)) if c else 1.0 for c in counts]
    unknown = [str(k) for k in class_weight if str(k) not in names]
    if unknown:
        shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
        raise bad_argument("class_weight", class_weight, f"keyed by label names of the "
                           f"training data ({shown}); {unknown[0]!r} is not one")
    weights = [float(class_weight.get(n, 1.0)) for n in names]
    if not any(w > 0 for w in weights):
        raise bad_argument("class_weight", class_weight, "a mapping with at least one "
                           "weight > 0 (all zero: nothing would be learned)")
    return weights


def example_losses(task: str, labels, predictions) -> np.ndarray:
    """The loss of each example from gathered `predictions` (the serving output
    `output_key(task)`): classification -log p(true label), multilabel the mean binary
    cross-entropy over labels, regression the squared error."""
    predictions = np.asarray(predictions, np.float64)
    if check_task(task) == "classification":
        labels = np.asarray(labels, int)
        picked = predictions[np.arange(len(predictions)), labels]
        return -np.log(np.maximum(picked, 1e-12))
    labels = np.asarray(labels, np.float64)
    if task == "regression":
        return (labels.reshape(-1) - predictions.reshape(-1)) ** 2
    p = np.clip(predictions, 1e-7, 1 - 1e-7)
    return np.mean(-(labels * np.log(p) + (1 - labels) * np.log(1 - p)), axis=-1)


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
    `output_key(task)`), plus `eval_loss`, the (unweighted) training loss on this data,
    and `per_class` scores (classification: also the `confusion_matrix`)."""
    predictions = np.asarray(predictions)
    if check_task(task) == "classification":
        predicted = predictions.argmax(-1)
        found = metrics_lib.classification_metrics(labels, predicted, len(label_names))
        found["eval_loss"] = float(np.mean(example_losses(task, labels, predictions)))
        found.update(metrics_lib.classification_report(labels, predicted, label_names))
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
    found["eval_loss"] = float(np.mean(example_losses(task, labels, predictions)))
    found["thresholds"] = dict(zip(label_names, map(float, thresholds)))
    return found


# SentenceServing -> its token-length function (`token_lengths`)
_LENGTH_FNS = weakref.WeakKeyDictionary()


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

    def predict_numbers(self, features) -> Dict[str, tf.Tensor]:
        """The numeric outputs: `score` (regression) or `probabilities` (the ONNX export's
        whole graph; `predict_features` adds the labels)."""
        logits = tf.cast(self.model(features, training=False), tf.float32)
        if self.task == "regression":
            return {"score": logits[:, 0]}
        if self.task == "multilabel":
            return {"probabilities": tf.sigmoid(logits)}
        return {"probabilities": tf.nn.softmax(logits, axis=-1)}

    def predict_features(self, features) -> Dict[str, tf.Tensor]:
        numbers = self.predict_numbers(features)
        if self.task == "regression":
            return numbers
        probabilities = numbers["probabilities"]
        if self.task == "multilabel":
            predicted = probabilities >= self.thresholds
            names = tf.ragged.boolean_mask(
                tf.broadcast_to(self.label_names, tf.shape(predicted)), predicted)
            return {"probabilities": probabilities,
                    "predictions": tf.cast(predicted, tf.int32),
                    "labels": tf.strings.reduce_join(names, axis=-1,
                                                     separator=self.label_separator)}
        label_id = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
        return {"probabilities": probabilities, "label_id": label_id,
                "label": tf.gather(self.label_names, label_id)}

    def serve(self, text, text_pair=None):
        # cut to the longest example exactly: `run` batches examples of equal token
        # length, so rounding the length up would only add padding
        features = trim_to_longest(self.preprocessor(text, text_pair), multiple=1)
        return self.predict_features(features)

    def token_lengths(self, *columns, batch_size: int = 256) -> np.ndarray:
        """Tokens per example ([CLS], [SEP]s and truncation included), as `serve_fn` packs
        them: tokenising is a few percent of serving, so ordering by it is cheap."""
        length_fn = _LENGTH_FNS.get(self)
        if length_fn is None:  # kept off the module: an export would save it
            spec = tf.TensorSpec([None], tf.string)
            length_fn = _LENGTH_FNS[self] = tf.function(
                lambda *texts: tf.reduce_sum(self.preprocessor(*texts)["input_mask"], axis=1),
                input_signature=[spec] * len(self.input_names), autograph=False)
        batches = run_batches(lambda *texts: {"length": length_fn(*texts)}, columns, batch_size)
        return concat_batches(batches)["length"]

    def run(self, *columns, batch_size: int = 32):
        """`serve_fn` over Python string lists in batches of equal or near token length
        (sorted by it, so each batch pads little), outputs returned in input order as
        one batch. Examples that fit in one batch are served as they come: that batch
        pads to its longest example in any order (and one sentence at a time skips the
        tokenising pass that sorting needs, a millisecond of each call)."""
        n = len(columns[0]) if columns else 0
        if n <= batch_size or len(columns) != len(self.input_names) or any(
                len(c) != n for c in columns):
            return super().run(*columns, batch_size=batch_size)
        order = np.argsort(self.token_lengths(*columns), kind="stable")
        outputs = concat_batches(super().run(*[[c[i] for i in order] for c in columns],
                                             batch_size=batch_size))
        inverse = np.empty_like(order)
        inverse[order] = np.arange(n)
        return [{k: v[inverse] for k, v in outputs.items()}]


class SentenceTask(base.Task):
    """classification, multilabel or regression (the instance's `name`)."""

    reuses_predictions = True

    def __init__(self, name: str):
        self.name = name
        self.primary_metric = PRIMARY_METRIC[name]
        self.metric_names = METRIC_NAMES[name]
        self._last_outputs = None  # (what they were computed from, predictions)

    def split_strata(self, data):
        """classification: `validation_split` keeps each label's share."""
        return data.labels.tolist() if self.name == "classification" else None

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

    def augment(self, train, config):
        """`swap_pairs`: every pair also in the other order (after any validation split,
        so no pair is on both sides)."""
        if not config.swap_pairs:
            return train
        if not train.is_pair:
            raise bad_argument("swap_pairs", True, "used with pairs (text_pair_column); "
                               f"{train.source} has single texts")
        labels = None if train.labels is None else np.concatenate([train.labels, train.labels])
        return data_lib.Examples(train.texts + train.texts_pair, labels, train.label_names,
                                 train.texts_pair + train.texts, train.source)

    def describe(self, train, config) -> dict:
        check_labels(self.name, train, "train")
        info = {"label_names": [str(n) for n in train.label_names], "pair": train.is_pair}
        if self.name == "multilabel":
            info.update(label_separator=config.label_separator, thresholds=None)
        if self.name == "classification" and getattr(config, "class_weight", None):
            info["class_weights"] = resolve_class_weights(config.class_weight, train.labels,
                                                          info["label_names"])
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
        if self.name == "classification" and info.get("class_weights"):
            return WeightedSparseCrossentropy(info["class_weights"])
        return loss_and_metrics(self.name)[0]

    def fit_metrics(self, info):
        return loss_and_metrics(self.name)[1]

    def serving(self, model, preprocessor, config, info):
        return SentenceServing(model, preprocessor, info, task=self.name)

    def _outputs(self, serving, examples, batch_size: int = 64):
        columns = [examples.texts] + ([examples.texts_pair] if examples.is_pair else [])
        return concat_batches(serving.run(*columns, batch_size=batch_size))

    def _predictions(self, serving, data):
        """The serving output `output_key` for `data`. `evaluate` and `error_analysis`
        share it: it is served again only when the model's weights, the preprocessor or
        the data (the same objects) differ from the last call's."""
        key = _outputs_key(serving, data)
        last = self._last_outputs
        if key is not None and last is not None and _same_key(last[0], key):
            return last[1]
        predictions = self._outputs(serving, data)[output_key(self.name)]
        self._last_outputs = None if key is None else (key, predictions)
        return predictions

    def evaluate(self, serving, data, config, info):
        if data.labels is None:
            raise bad_argument("label_column", config.label_column,
                               "a column of the validation data (it has no labels)")
        predictions = self._predictions(serving, data)
        if self.name == "multilabel" and info.get("thresholds") is None:
            info = dict(info, thresholds=metrics_lib.tune_thresholds(
                data.labels, predictions).tolist())
        metrics = evaluate(self.name, data.labels, predictions, info["label_names"],
                           info.get("thresholds"))
        if self.name == "classification":  # flags degenerate runs (seeds.py)
            metrics["predicted_classes"] = int(len(np.unique(predictions.argmax(-1))))
        metrics["eval_examples"] = len(data)
        return metrics, info

    def error_analysis(self, serving, data, config, info) -> Optional[List[dict]]:
        """The `config.error_examples` examples of `data` with the highest loss, highest
        first: `index` (the example's position in `data`), `text`, `text_pair` (pairs),
        `label`, `predicted`, then `probability` of the predicted class (classification)
        or `probabilities` per label (multilabel), and `loss`. None without labels."""
        count = int(getattr(config, "error_examples", 0) or 0)
        if count <= 0 or data is None or data.labels is None or not len(data):
            return None
        predictions = np.asarray(self._predictions(serving, data), np.float64)
        losses = example_losses(self.name, data.labels, predictions)
        order = np.argsort(-losses, kind="stable")[:count]
        names = [str(n) for n in info["label_names"]]
        rows = []
        for i in order.tolist():
            row = {"index": i, "text": data.texts[i]}
            if data.is_pair:
                row["text_pair"] = data.texts_pair[i]
            row.update(self._error_fields(data.labels[i], predictions[i], names, info))
            row["loss"] = float(losses[i])
            rows.append(row)
        return rows

    def _error_fields(self, label, prediction, names, info) -> dict:
        if self.name == "classification":
            predicted = int(np.argmax(prediction))
            return {"label": names[int(label)], "predicted": names[predicted],
                    "probability": float(prediction[predicted])}
        if self.name == "regression":
            return {"label": float(label), "predicted": float(prediction)}
        separator = info.get("label_separator", ",")
        thresholds = info.get("thresholds") or [0.5] * len(names)
        chosen = prediction >= np.asarray(thresholds, np.float32)
        return {"label": separator.join(n for n, y in zip(names, label) if y > 0.5),
                "predicted": separator.join(n for n, c in zip(names, chosen) if c),
                "probabilities": {n: float(p) for n, p in zip(names, prediction)}}

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


def _outputs_key(serving, data):
    """What a serving output of `data` depends on: the model (and its weights), the
    preprocessor and the data, held weakly; None when they cannot be told apart (or on
    a TPU, whose float64 sums would run on the host)."""
    from keras_bert_ft.training.strategy import is_tpu
    model = getattr(serving, "model", None)
    preprocessor = getattr(serving, "preprocessor", None)
    weights = getattr(model, "weights", None)
    if not weights or is_tpu(getattr(model, "distribute_strategy", None)):
        return None
    try:
        refs = tuple(weakref.ref(x) for x in (model, preprocessor, data))
    except TypeError:  # an object that cannot be referenced weakly
        return None
    # Per-variable sums: any training step or restored checkpoint changes them.
    sums = tuple(float(tf.reduce_sum(tf.cast(w, tf.float64))) for w in weights)
    return refs, len(data), sums


def _same_key(a, b) -> bool:
    return (all(x() is not None and x() is y() for x, y in zip(a[0], b[0]))
            and a[1:] == b[1:])


CLASSIFICATION = SentenceTask("classification")
MULTILABEL = SentenceTask("multilabel")
REGRESSION = SentenceTask("regression")
