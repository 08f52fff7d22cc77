"""probe_layers: a logistic-regression probe on each layer's frozen representation.

Where in the network does a task's information live? Each layer's `[CLS]` or
mean-pooled vector feeds a multinomial logistic regression trained on the training
texts; its validation quality per layer is the answer (Tenney et al. 2019 probe the same
way). The encoder stays frozen. The regression is a small NumPy implementation
(standardised features, L2, Nesterov-accelerated gradient descent): no extra dependency.
"""

import json
import os
from typing import Optional

import numpy as np

from keras_bert_ft.errors import bad_argument
from keras_bert_ft.research.diff import check_source
from keras_bert_ft.tasks.scores import classification_metrics
from keras_bert_ft.research.representations import all_layer_features, encode_texts, load_encoder


class LogisticProbe:
    """Multinomial logistic regression with L2 on standardised features.

    Minimises mean cross-entropy + l2/2 ||W||^2 (bias not penalised) by accelerated
    gradient descent with step 1/L, L the gradient's Lipschitz bound, so it has no
    learning rate to tune and gives the same result on every run.
    """

    def __init__(self, l2: float = 1e-2, iterations: int = 500):
        if not l2 >= 0:
            raise bad_argument("l2", l2, "a float >= 0")
        self.l2, self.iterations = float(l2), int(iterations)

    def fit(self, x: np.ndarray, y: np.ndarray, num_classes: int) -> "LogisticProbe":
        x = np.asarray(x, np.float64)
        self.mean, self.std = x.mean(0), x.std(0) + 1e-8
        z = self._design(x)
        n = z.shape[0]
        targets = np.eye(num_classes)[np.asarray(y, int)]
        # Softmax cross-entropy's Hessian is bounded by 0.5 * Z^T Z / n (plus the L2 term).
        lipschitz = 0.5 * np.linalg.eigvalsh(z.T @ z / n)[-1] + self.l2
        step = 1.0 / lipschitz
        penalty = np.ones((z.shape[1], 1))
        penalty[-1] = 0.0  # the bias column
        w = np.zeros((z.shape[1], num_classes))
        previous, t = w, 1.0
        for _ in range(self.iterations):
            t_next = (1.0 + np.sqrt(1.0 + 4.0 * t * t)) / 2.0
            look = w + (t - 1.0) / t_next * (w - previous)
            grad = z.T @ (_softmax(z @ look) - targets) / n + self.l2 * penalty * look
            previous, w, t = w, look - step * grad, t_next
        self.weights = w
        self.train_loss = float(-np.mean(np.sum(targets * np.log(
            np.maximum(_softmax(z @ w), 1e-12)), axis=1)))
        return self

    def _design(self, x):
        z = (np.asarray(x, np.float64) - self.mean) / self.std
        return np.hstack([z, np.ones((z.shape[0], 1))])

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return _softmax(self._design(x) @ self.weights)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.predict_proba(x).argmax(-1)


def _softmax(logits):
    logits = logits - logits.max(1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(1, keepdims=True)


def probe_layers(model: str, train, validation, *, representation: str = "cls",
                 text_column: str = "sentence", label_column: str = "label",
                 text_pair_column: Optional[str] = None,
                 max_train_examples: Optional[int] = None,
                 max_eval_examples: Optional[int] = None, seq_length: int = 128,
                 l2: float = 1e-2, iterations: int = 500, batch_size: int = 64,
                 encoding: str = "utf-8-sig", output: Optional[str] = None) -> dict:
    """Probes every layer of `model` (pretrained handle, run folder or export).

    Args:
        train, validation: labelled data, as for `fine_tune` (files, DataFrames, Examples).
        representation: `cls` (the `[CLS]` vector) or `mean` (mean over real tokens).
        l2: the probe's L2 penalty on standardised features.
        output: also write the figures to this JSON file.

    Example:
        >>> figures = probe_layers("minilm-l6", "train.tsv", "dev.tsv", max_train_examples=2000)
        >>> print(format_probe(figures))
    """
    from keras_bert_ft.data import examples as data_lib
    if representation not in ("cls", "mean"):
        raise bad_argument("representation", representation, "cls or mean")
    check_source(model, "model")
    columns = dict(text_column=text_column, label_column=label_column,
                   text_pair_column=text_pair_column, encoding=encoding)
    train_ex = train if isinstance(train, data_lib.Examples) else data_lib.load_examples(
        train, where="train", **columns)
    if max_train_examples:
        train_ex = train_ex.take(max_train_examples)
    val_ex = validation if isinstance(validation, data_lib.Examples) else data_lib.load_examples(
        validation, label_names=train_ex.label_names, where="validation", **columns)
    if max_eval_examples:
        val_ex = val_ex.take(max_eval_examples)
    loaded = load_encoder(model, seq_length=seq_length)
    num_classes = len(train_ex.label_names)
    feats = {}
    for name, ex in (("train", train_ex), ("validation", val_ex)):
        features = encode_texts(loaded.preprocessor, ex.texts, ex.texts_pair)
        feats[name] = all_layer_features(loaded.encoder, features,
                                         representation=representation, batch_size=batch_size)
    majority = int(np.bincount(train_ex.labels, minlength=num_classes).argmax())
    rows = []
    for layer, (x_train, x_val) in enumerate(zip(feats["train"], feats["validation"])):
        probe = LogisticProbe(l2=l2, iterations=iterations).fit(x_train, train_ex.labels,
                                                                num_classes)
        metrics = classification_metrics(val_ex.labels, probe.predict(x_val), num_classes)
        rows.append({"layer": f"layer_{layer}", "train_accuracy": float(np.mean(
            probe.predict(x_train) == train_ex.labels)), "train_loss": probe.train_loss, **metrics})
    figures = {"model": model, "kind": loaded.kind, "encoder": loaded.handle,
               "representation": representation, "train_examples": len(train_ex),
               "eval_examples": len(val_ex), "l2": l2, "iterations": iterations,
               "majority_baseline": float(np.mean(val_ex.labels == majority)),
               "layers": rows,
               "best_layer": max(rows, key=lambda r: r["accuracy"])["layer"] if rows else None}
    if output:
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        with open(output, "w") as f:
            json.dump(figures, f, indent=2)
    return figures


def format_probe(figures: dict) -> str:
    """Per-layer table: validation accuracy, F1, MCC, training accuracy."""
    lines = [f"probe: {figures['model']} ({figures['kind']}), {figures['representation']} "
             f"vectors, {figures['train_examples']} training / {figures['eval_examples']} "
             "validation texts",
             f"{'layer':<10}{'accuracy':>10}{'f1':>8}{'mcc':>8}{'train acc':>11}", "-" * 47]
    for r in figures["layers"]:
        lines.append(f"{r['layer']:<10}{r['accuracy']:>10.4f}{r['f1']:>8.4f}{r['mcc']:>8.4f}"
                     f"{r['train_accuracy']:>11.4f}")
    lines.append("-" * 47)
    lines.append(f"majority baseline {figures['majority_baseline']:.4f}; best layer: "
                 f"{figures['best_layer']}")
    return "\n".join(lines)
