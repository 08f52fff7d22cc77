"""probe_layers: a logistic-regression probe on each layer's frozen representation.

Where in the network does a task's information live? Each layer's `[CLS]` or
mean-pooled vector feeds a multinomial logistic regression trained on the training
texts; its validation quality per layer is the answer (Tenney et al. 2019 probe the same
way). The encoder stays frozen. The regression is a small NumPy implementation
(standardised features, L2, Nesterov-accelerated gradient descent): no extra dependency.
`compare_pretrained` runs the same probe on the same data before and after fine-tuning:
on the pretrained encoder a run started from and on the run's own.
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
                 encoding: str = "utf-8-sig", output: Optional[str] = None,
                 plot: Optional[str] = None) -> dict:
    """Probes every layer of `model` (pretrained handle, run folder or export).

    Args:
        train, validation: labelled data, as for `fine_tune` (files, DataFrames, Examples).
        representation: `cls` (the `[CLS]` vector) or `mean` (mean over real tokens).
        l2: the probe's L2 penalty on standardised features.
        output: also write the figures to this JSON file.
        plot: also draw the validation accuracy per layer to this PNG.

    Example:
        >>> figures = probe_layers("minilm-l6", "train.tsv", "dev.tsv", max_train_examples=2000)
        >>> print(format_probe(figures))
    """
    if representation not in ("cls", "mean"):
        raise bad_argument("representation", representation, "cls or mean")
    check_source(model, "model")
    train_ex, val_ex = _examples(train, validation, text_column=text_column,
                                 label_column=label_column, text_pair_column=text_pair_column,
                                 max_train_examples=max_train_examples,
                                 max_eval_examples=max_eval_examples, encoding=encoding)
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
    _write(figures, output, plot)
    return figures


def _examples(train, validation, *, text_column, label_column, text_pair_column,
              max_train_examples, max_eval_examples, encoding):
    """The probe's training and validation `Examples` (validation with training's labels)."""
    from keras_bert_ft.data import examples as data_lib
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
    return train_ex, val_ex


def compare_pretrained(model: str, train, validation, *, output: Optional[str] = None,
                       plot: Optional[str] = None, **options) -> dict:
    """The same probe, on the same data, before and after fine-tuning: `probe_layers` on
    the pretrained encoder a run started from (its config's `encoder`) and on the run's
    fine-tuned encoder, per-layer accuracy side by side and their difference.

    The probed property is the probe data's own labels: e.g. TREC question types or CoLA
    acceptability probed on a run fine-tuned on SST-2 shows what fine-tuning kept or lost
    of them, layer by layer.

    Args:
        model: a `kbft train --output` folder or an export.
        train, validation, options: as for `probe_layers` (representation, columns,
            max_train_examples, max_eval_examples, seq_length, l2, ...).
        output, plot: also write the figures to this JSON file / the two curves to this PNG.

    Example:
        >>> figures = compare_pretrained("runs/sst2", "trec_train.tsv", "trec_test.tsv")
        >>> print(format_comparison(figures))
    """
    from keras_bert_ft.export.restore import is_restorable, saved_config
    check_source(model, "model")
    if not is_restorable(model):
        raise bad_argument("model", model, "a kbft train --output folder or an export "
                           "when comparing with the pretrained encoder it started from "
                           "(compare_pretrained)")
    handle = saved_config(model, "model")[0].encoder
    data = {k: options.pop(k) for k in ("text_column", "label_column", "text_pair_column",
                                         "max_train_examples", "max_eval_examples",
                                         "encoding") if k in options}
    data = {"text_column": "sentence", "label_column": "label", "text_pair_column": None,
            "max_train_examples": None, "max_eval_examples": None,
            "encoding": "utf-8-sig", **data}
    if options.get("representation", "cls") not in ("cls", "mean"):  # before anything loads
        raise bad_argument("representation", options["representation"], "cls or mean")
    train_ex, val_ex = _examples(train, validation, **data)
    before = probe_layers(handle, train_ex, val_ex, **options)
    after = probe_layers(model, train_ex, val_ex, **options)
    rows = [{"layer": b["layer"], "before": b["accuracy"], "after": a["accuracy"],
             "difference": a["accuracy"] - b["accuracy"]}
            for b, a in zip(before["layers"], after["layers"])]
    figures = {"model": model, "encoder": handle, "representation": before["representation"],
               "train_examples": before["train_examples"],
               "eval_examples": before["eval_examples"],
               "majority_baseline": before["majority_baseline"], "layers": rows,
               "before": before, "after": after}
    _write(figures, output, plot)
    return figures


def _write(figures: dict, output: Optional[str], plot: Optional[str]) -> None:
    if output:
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        with open(output, "w") as f:
            json.dump(figures, f, indent=2)
    if plot:
        os.makedirs(os.path.dirname(os.path.abspath(plot)), exist_ok=True)
        plot_probe(figures, plot)


def plot_probe(figures: dict, path: str) -> str:
    """Validation accuracy per layer (before and after fine-tuning when `figures` is a
    comparison), the majority class dotted, as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = figures["layers"]
    layers = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(6.5, 4))
    if "before" in figures:
        ax.plot(layers, [r["before"] for r in rows], marker="o",
                label=f"pretrained ({figures['encoder']})")
        ax.plot(layers, [r["after"] for r in rows], marker="o", label="fine-tuned")
    else:
        ax.plot(layers, [r["accuracy"] for r in rows], marker="o", label=figures["model"])
    ax.axhline(figures["majority_baseline"], color="grey", linestyle=":",
               label="majority class")
    ax.set_xticks(layers)
    ax.set_xticklabels([r["layer"] for r in rows], rotation=45 if len(rows) > 8 else 0)
    ax.set_ylabel("probe accuracy on validation")
    ax.set_title(f"{figures['representation']} vectors, {figures['train_examples']} "
                 "training texts", fontsize=10)
    ax.legend(fontsize=8)
    from keras_bert_ft.training.run_folder import save_figure
    return save_figure(fig, path)


def format_comparison(figures: dict) -> str:
    """Per-layer probe accuracy before / after fine-tuning and the difference."""
    lines = [f"probe before/after fine-tuning: {figures['encoder']} -> {figures['model']}, "
             f"{figures['representation']} vectors, {figures['train_examples']} training / "
             f"{figures['eval_examples']} validation texts",
             f"{'layer':<10}{'pretrained':>12}{'fine-tuned':>12}{'difference':>12}", "-" * 46]
    for r in figures["layers"]:
        lines.append(f"{r['layer']:<10}{r['before']:>12.4f}{r['after']:>12.4f}"
                     f"{r['difference']:>+12.4f}")
    lines.append("-" * 46)
    lines.append(f"majority baseline {figures['majority_baseline']:.4f}")
    return "\n".join(lines)


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
