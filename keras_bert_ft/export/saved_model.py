"""export_saved_model: a SavedModel that serves raw strings, written atomically and checked.

The export carries the preprocessor (keras-hub's leave it out: keras-hub #784) and the
label names. Loading it needs `import tensorflow_text` first (its ops are not core
TensorFlow: tensorflow/hub #705); `load_export` does that and says so when it can't.
"""

import json
import os
import shutil
import uuid
from typing import Dict, Optional, Sequence

import numpy as np
import tensorflow as tf

from keras_bert_ft.data.examples import TASKS
from keras_bert_ft.errors import KbftError, bad_argument
from keras_bert_ft.data.preprocessing import trim_to_longest

METADATA_FILE = "kbft_export.json"


class ServingModule(tf.Module):
    """Raw strings -> task outputs, through preprocessor and model.

    `classification`: `probabilities` (softmax), `label_id`, `label`.
    `multilabel`: `probabilities` (a sigmoid per label), `predictions` (0/1 per label, at
    the label's threshold) and `labels` (the names above their thresholds, joined by
    `label_separator`). `regression`: `score`.
    """

    def __init__(self, model, preprocessor, label_names: Sequence[str],
                 task: str = "classification", thresholds: Optional[Sequence[float]] = None,
                 label_separator: str = ","):
        super().__init__(name="kbft_serving")
        if task not in TASKS:
            raise bad_argument("task", task, f"one of {', '.join(TASKS)}")
        self.model = model
        self.preprocessor = preprocessor
        self.task = task
        self.label_names = tf.constant(list(label_names), tf.string)
        self.label_separator = label_separator
        if task == "multilabel":
            thresholds = [0.5] * len(label_names) if thresholds is None else list(thresholds)
            self.thresholds = tf.constant(thresholds, tf.float32)

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
        features = trim_to_longest(self.preprocessor(text, text_pair))
        return self.predict_features(features)


def export_saved_model(model, preprocessor, export_dir: str, label_names: Sequence[str], *,
                       pair: bool = False, metadata: Optional[dict] = None,
                       task: str = "classification",
                       thresholds: Optional[Sequence[float]] = None,
                       label_separator: str = ",") -> str:
    """Writes a SavedModel whose `serving_default` takes a batch of raw strings.

    Signature inputs: `text` (and `text_pair` when `pair=True`), `tf.string [batch]`.
    Outputs by `task`: classification `probabilities` `[batch, classes]`, `label` (the
    label name) and `label_id`; multilabel `probabilities` `[batch, labels]`,
    `predictions` (0/1 at each label's threshold) and `labels` (names above threshold,
    joined by `label_separator`); regression `score` `[batch]`. Label names, task and
    thresholds also go to `kbft_export.json`. The SavedModel is written to a temporary
    folder beside `export_dir` and renamed into place, so a crash never leaves a
    half-written export behind.
    """
    if not isinstance(export_dir, str) or not export_dir:
        raise bad_argument("export_dir", export_dir, "a folder path")
    label_names = [str(n) for n in label_names]
    num_classes = int(model.output_shape[-1])
    if len(label_names) != num_classes:
        raise bad_argument("label_names", label_names,
                           f"{num_classes} names, one per model output")
    if thresholds is not None:
        thresholds = [float(t) for t in thresholds]
        if task != "multilabel" or len(thresholds) != num_classes:
            raise bad_argument("thresholds", thresholds,
                               f"one per label ({num_classes}), for task='multilabel' only")
    module = ServingModule(model, preprocessor, label_names, task=task,
                           thresholds=thresholds, label_separator=label_separator)
    spec = tf.TensorSpec([None], tf.string)
    if pair:
        serve = tf.function(lambda text, text_pair: module.serve(text, text_pair),
                            input_signature=[spec, spec])
    else:
        serve = tf.function(lambda text: module.serve(text), input_signature=[spec])
    module.serve_fn = serve
    info = {"label_names": label_names, "pair": bool(pair), "task": task,
            "seq_length": int(preprocessor.seq_length), **(metadata or {})}
    if task == "multilabel":
        info.update(thresholds=[float(t) for t in module.thresholds.numpy()],
                    label_separator=label_separator)
    _atomic_write(export_dir, lambda tmp: _save(module, serve, tmp, info))
    return export_dir


def _save(module, serve, path: str, info: dict) -> None:
    tf.saved_model.save(module, path, signatures={"serving_default": serve})
    with tf.io.gfile.GFile(os.path.join(path, METADATA_FILE), "w") as f:
        json.dump(info, f, indent=2)


def _atomic_write(target: str, write) -> None:
    """`write(tmp)` into a sibling temp folder, then swap it in for `target`."""
    target = os.path.abspath(target) if "://" not in target else target
    if "://" in target:  # object stores have no rename; write in place
        write(target)
        return
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(target)}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        write(tmp)
        if os.path.exists(target):
            old = f"{tmp}.old"
            os.rename(target, old)
            try:
                os.rename(tmp, target)
            except OSError:
                os.rename(old, target)  # put the previous export back
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def load_export(export_dir: str):
    """Loads an export (importing tensorflow_text first, which its ops need)."""
    try:
        import tensorflow_text  # noqa: F401  (registers the ops the export uses)
    except ImportError:
        raise ImportError("Loading a keras_bert_ft export needs tensorflow-text: "
                          "pip install tensorflow-text (same version as tensorflow)") from None
    if not tf.io.gfile.exists(os.path.join(export_dir, "saved_model.pb")):
        raise bad_argument("export_dir", export_dir, "a folder holding a keras_bert_ft export")
    return tf.saved_model.load(export_dir)


def read_metadata(export_dir: str) -> dict:
    path = os.path.join(export_dir, METADATA_FILE)
    if not tf.io.gfile.exists(path):
        raise bad_argument("export_dir", export_dir,
                           f"a keras_bert_ft export (no {METADATA_FILE} in it)")
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def predict_export(loaded, texts, texts_pair=None, batch_size: int = 64) -> Dict[str, np.ndarray]:
    """Runs an export's `serving_default` over Python strings in batches."""
    serve = loaded.signatures["serving_default"]
    outputs: Dict[str, list] = {}
    for start in range(0, len(texts), batch_size):
        kwargs = {"text": tf.constant(list(texts[start:start + batch_size]))}
        if texts_pair is not None:
            kwargs["text_pair"] = tf.constant(list(texts_pair[start:start + batch_size]))
        try:
            result = serve(**kwargs)
        except TypeError as err:
            raise KbftError(f"This export takes {'one text' if texts_pair is not None else 'text pairs'}: "
                            f"{str(err).splitlines()[0][:150]}") from None
        for key, value in result.items():
            outputs.setdefault(key, []).append(value.numpy())
    return {k: np.concatenate(v) for k, v in outputs.items()}
