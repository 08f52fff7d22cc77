"""Task: the small interface every task plugin implements, and what the plugins share.

A task reads its examples, describes them (label names, ... : JSON that the run folder and
the export keep), turns them into padded feature arrays with labels, builds its head on the
encoder with its loss, and gives a serving module (raw strings in, decoded outputs out)
that evaluation, `predict` and the export all run. The runner (training/runner.py) does
the rest, the same for every task.
"""

import dataclasses
import hashlib
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from keras_bert_ft.data.preprocessing import INPUT_KEYS
from keras_bert_ft.errors import KbftError, bad_argument

IGNORE = -1  # label of positions / sentences left out of the loss


@dataclasses.dataclass
class Features:
    """Model inputs as arrays padded to `seq_length` (plus any extra inputs), the labels,
    and counts worth reporting (`train_windows`, `train_skipped`, ...)."""
    features: Dict[str, np.ndarray]
    labels: np.ndarray
    stats: dict = dataclasses.field(default_factory=dict)

    def __len__(self):
        return len(self.labels)

    def lengths(self) -> np.ndarray:
        return self.features["input_mask"].sum(axis=1)

    def digest(self) -> str:
        """What makes two runs' training data the same."""
        h = hashlib.sha256()
        for key in sorted(self.features):
            h.update(key.encode() + np.ascontiguousarray(self.features[key]).tobytes())
        h.update(np.ascontiguousarray(self.labels).tobytes())
        return h.hexdigest()


class Task:
    """One task. Subclasses set `name` and implement the methods below; `info` is the
    JSON-ready description of the training data that `describe` returns."""

    name = ""
    # Labels per token position, cut with the inputs when batches are trimmed.
    token_labels = False
    # The tokenizer must give word-piece offsets (a vocab.txt one, not a hub preprocessor).
    needs_vocab = False
    # The metric runs are judged and compared by.
    primary_metric = ""
    # Validation metrics `monitor` may name (all numbers; lower is better for LOWER_IS_BETTER).
    metric_names: Tuple[str, ...] = ()
    # `evaluate` reuses the last epoch's served outputs when the weights did not change, so
    # scoring validation through serving every epoch costs no extra pass at the end.
    reuses_predictions = False

    def read(self, source, config, info: Optional[dict] = None, where: Optional[str] = None):
        """Examples from `source` (a path or in-memory records); `info` is the training
        data's description when reading validation data. `where` names the source in
        errors (default: train, or validation when `info` is given)."""
        raise NotImplementedError

    def augment(self, train, config):
        """Training examples with any the task adds (qa: cloze questions)."""
        return train

    def describe(self, train, config) -> dict:
        """Label names and whatever else the head and the serving need."""
        return {}

    def featurize(self, data, preprocessor, config, info: dict) -> Optional[Features]:
        """Padded feature arrays and labels; None when `data` has no labels to train on."""
        raise NotImplementedError

    def reads_pooler(self, config) -> bool:
        return False

    def build_model(self, encoder, config, info: dict):
        raise NotImplementedError

    def combine(self, models):
        """One model averaging `models` (an ensemble), for tasks that have ensembles."""
        raise KbftError(f"Task {self.name!r} has no ensembles. Received: "
                        f"members={len(models)}", argument="members")

    def loss(self, info: dict):
        raise NotImplementedError

    def fit_metrics(self, info: dict) -> list:
        return []

    def serving(self, model, preprocessor, config, info: dict):
        """The raw-string serving module (a `TaskServing`)."""
        raise NotImplementedError

    def evaluate(self, serving, data, config, info: dict) -> dict:
        """Validation metrics, computed on the serving outputs."""
        raise NotImplementedError

    def updated_info(self, serving, data, config, info: dict) -> dict:
        """`info` after validation (multilabel: thresholds tuned on it)."""
        return info

    def predict(self, serving, *inputs, batch_size: int = 32):
        raise NotImplementedError

    def error_analysis(self, serving, data, config, info: dict) -> Optional[List[dict]]:
        """The validation examples the model gets most wrong (highest loss first), as rows
        of `errors.tsv`; None for tasks without it."""
        return None

    def save_model(self, result, output_dir: str) -> dict:
        """What the run folder keeps of the trained model, `{name: path}`: the raw-string
        export (a pretrain run keeps its encoder and preprocessor instead)."""
        import os
        return {"export": result.export(os.path.join(output_dir, "export"))}

    def split_groups(self, data) -> Optional[List]:
        """A key per example that `validation_split` keeps on one side (qa: the article),
        or None to split examples independently."""
        return None

    def split_strata(self, data) -> Optional[List]:
        """A label per example that `validation_split` stratifies on, or None."""
        return None


LOWER_IS_BETTER = ("eval_loss", "mse", "loss", "perplexity")


def subset(data, indices: Sequence[int]):
    """The examples of a task's data at `indices`, in that order."""
    indices = [int(i) for i in indices]
    if hasattr(data, "subset"):
        return data.subset(indices)
    return [data[i] for i in indices]


def concat(data, other):
    """A task's data followed by `other`'s (the same type), e.g. training + validation."""
    if hasattr(data, "concat"):
        return data.concat(other)
    return list(data) + list(other)


def split_validation(task: Task, data, fraction: float, seed: int):
    """(training part, validation part) of `data`: `fraction` of the examples held out,
    seeded, stratified by `task.split_strata` and keeping `task.split_groups` whole."""
    n = len(data)
    groups = task.split_groups(data)
    keys = list(range(n)) if groups is None else list(groups)
    members: Dict[object, List[int]] = {}
    for i, key in enumerate(keys):
        members.setdefault(key, []).append(i)
    strata_of = task.split_strata(data)
    strata: Dict[object, List[object]] = {}
    for key, rows in members.items():
        stratum = None if strata_of is None else strata_of[rows[0]]
        strata.setdefault(stratum, []).append(key)
    # round(fraction x groups) held out, shared among the strata by largest remainder.
    order = sorted(strata, key=repr)
    shares = np.array([fraction * len(strata[k]) for k in order])
    counts = np.floor(shares).astype(int)
    extra = int(round(fraction * len(members))) - int(counts.sum())
    for j in np.argsort(-(shares - counts), kind="stable")[:max(extra, 0)]:
        counts[j] += 1
    rng = np.random.RandomState(seed)
    held = []
    for stratum, count in zip(order, counts):
        keys_in = strata[stratum]
        held += [keys_in[j] for j in rng.permutation(len(keys_in))[:count]]
    held_rows = sorted(i for key in held for i in members[key])
    if not held_rows or len(held_rows) == n:
        raise bad_argument("validation_split", fraction, f"a fraction that leaves examples on "
                           f"both sides ({n} examples, {len(members)} groups)")
    held_set = set(held_rows)
    kept = [i for i in range(n) if i not in held_set]
    return subset(data, kept), subset(data, held_rows)


def read_data(task: Task, train, validation, config, augment: bool = True):
    """(training examples, their `info`, validation examples or None): read, cut to
    `max_train_examples` / `max_eval_examples`; without `validation`, `validation_split`
    holds out part of the training data; the training part is then augmented (unless
    `augment` is False: the examples as read, e.g. for a refit that adds validation)."""
    train_data = take(task.read(train, config), config.max_train_examples)
    val_data = None
    if validation is None and config.validation_split:
        train_data, val_data = split_validation(task, train_data, config.validation_split,
                                                config.seed)
    if augment:
        train_data = task.augment(train_data, config)
    info = task.describe(train_data, config)
    if validation is not None:
        val_data = task.read(validation, config, info)
    if val_data is not None:
        val_data = take(val_data, config.max_eval_examples)
    return train_data, info, val_data


def take(data, n: Optional[int]):
    """The first `n` examples of a task's data (all when `n` is None)."""
    if not n:
        return data
    return data.take(n) if hasattr(data, "take") else data[:n]


def pad_features(features: Dict[str, tf.Tensor], seq_length: int) -> Dict[str, np.ndarray]:
    """Model inputs as numpy arrays padded to `seq_length` (other keys unchanged)."""
    out = {}
    for key, value in features.items():
        value = np.asarray(value)
        if key in INPUT_KEYS and value.shape[1] < seq_length:
            value = np.pad(value, [(0, 0), (0, seq_length - value.shape[1])])
        out[key] = value
    return out


def stack(parts: List[Dict[str, np.ndarray]]) -> Dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def masked_sparse_crossentropy(y_true, logits):
    """Mean cross-entropy over the positions whose label is not IGNORE."""
    y_true = tf.cast(y_true, tf.int32)
    mask = tf.cast(y_true != IGNORE, tf.float32)
    losses = tf.keras.losses.sparse_categorical_crossentropy(
        tf.maximum(y_true, 0), tf.cast(logits, tf.float32), from_logits=True)
    return tf.reduce_sum(losses * mask) / tf.maximum(tf.reduce_sum(mask), 1.0)


def masked_binary_crossentropy(y_true, logits):
    """Mean binary cross-entropy over the sentences whose label is not IGNORE."""
    y_true = tf.cast(y_true, tf.float32)
    mask = tf.cast(y_true != IGNORE, tf.float32)
    losses = tf.nn.sigmoid_cross_entropy_with_logits(
        labels=tf.maximum(y_true, 0.0), logits=tf.cast(logits, tf.float32))
    return tf.reduce_sum(losses * mask) / tf.maximum(tf.reduce_sum(mask), 1.0)


def as_list(value, name: str) -> List:
    if isinstance(value, str) or not isinstance(value, Sequence) or not value:
        raise bad_argument(name, value if isinstance(value, str) else type(value).__name__,
                           "a non-empty list")
    return list(value)


def check_labels_known(values, known, where: str) -> None:
    from keras_bert_ft.data.examples import label_vocabulary
    label_vocabulary(values, known, where)
