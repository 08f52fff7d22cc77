"""The raw-string SavedModel: written atomically with its metadata, loaded back, run.

The export carries the preprocessor (keras-hub's leave it out: keras-hub #784), the
task's description (label names, ...) and the run's config in `kbft_export.json`.
Loading it needs `import tensorflow_text` first (its ops are not core TensorFlow:
tensorflow/hub #705); `load_export` does that and says so when it can't.
"""

import glob
import json
import os
import shutil
import uuid
from typing import Dict, Optional, Sequence

import numpy as np
import tensorflow as tf

from keras_bert_ft.errors import KbftError, bad_argument
from keras_bert_ft.paths import check_output_folder
from keras_bert_ft.export.serving import concat_batches, run_batches

METADATA_FILE = "kbft_export.json"
_TMP = ".tmp-"  # our temporary folders: .<name>.tmp-<hex> beside the target


def write_export(serving, export_dir: str, metadata: Optional[dict] = None,
                 name: str = "export_dir") -> str:
    """Writes `serving.serve_fn` as `serving_default`, with `serve_examples` and `embed`
    beside it (`signatures`), and the task's metadata in `kbft_export.json`; the op audit
    (`export.audit`) must pass: every op runs in TF Serving's model server. The SavedModel is written to a temporary folder beside
    `export_dir` and renamed into place, so a crash never leaves a half-written export
    behind; an existing export is replaced only then, and a folder that is not an
    export is refused."""
    check_export_dir(export_dir, name)
    info = {**serving.info, "inputs": list(serving.input_names), **(metadata or {})}
    functions, info["signatures"] = signatures(serving, info.get("config"))
    atomic_write(export_dir, lambda tmp: _save(serving, tmp, functions, info), name=name)
    return export_dir


def signatures(serving, config: Optional[dict] = None):
    """The export's signature functions and their description (for kbft_export.json):
    `serving_default` (raw strings), `serve_examples` (serialized tf.Example, features
    named after the training columns for sentence tasks, else after the inputs) and
    `embed` (sentence embeddings, as `embed_pooling` / `embed_normalize` say). `config`:
    the run's config as JSON (None: the defaults)."""
    from keras_bert_ft.config import FIELDS, SENTENCE_TASKS
    config = config or {}
    features = {name: name for name in serving.input_names}
    if serving.task in SENTENCE_TASKS:
        columns = {"text": config.get("text_column"), "text_pair": config.get("text_pair_column")}
        features.update({k: v for k, v in columns.items() if v and k in features})
    pooling = config.get("embed_pooling", FIELDS["embed_pooling"].default)
    normalize = bool(config.get("embed_normalize", FIELDS["embed_normalize"].default))
    functions = {"serving_default": serving.serve_fn,
                 "serve_examples": serving.examples_fn(features)}
    described = {"serving_default": {"inputs": list(serving.input_names)},
                 "serve_examples": {"inputs": ["examples"], "features": features}}
    embed = serving.embed_fn(pooling, normalize)
    if embed is None:  # an ensemble: no single encoder, so no embed to configure
        refuse_ensemble_embed_options(config)
    else:
        functions["embed"] = embed
        described["embed"] = {"inputs": ["text"], "pooling": pooling, "normalize": normalize}
    return functions, described


def refuse_ensemble_embed_options(config: dict) -> None:
    """An ensemble export (qa `--seeds`) has no `embed` signature: its embed options
    (`config`: a run's config as JSON) must stay at their defaults."""
    from keras_bert_ft.config import FIELDS
    for name in ("embed_pooling", "embed_normalize"):
        if name in config and config[name] != FIELDS[name].default:
            raise bad_argument(name, config[name], "its default for a qa ensemble (--seeds): "
                               "an ensemble export has no embed signature")


def check_export_dir(export_dir: str, name: str = "export_dir") -> None:
    """Refuses an export folder path that is a file, lies under a file or a folder this
    user cannot write, or is a non-empty folder that is not an earlier export."""
    check_output_folder(export_dir, name, what="an earlier keras_bert_ft export to replace",
                        ours=lambda p: os.path.isfile(os.path.join(p, METADATA_FILE)))


def _save(serving, path: str, functions: dict, info: dict) -> None:
    from keras_bert_ft._keras import without_layer_traces
    with without_layer_traces():
        tf.saved_model.save(serving, path, signatures=functions)
    from keras_bert_ft.export.audit import audit_export
    report = audit_export(path)
    if not report.ok:  # every export must load in TF Serving's model server
        raise KbftError("The export would not load in TF Serving: "
                        + report.summary().replace("\n", ";"))
    info["serving_ops"] = {"checked_against": report.releases, "ops": len(report.ops)}
    with tf.io.gfile.GFile(os.path.join(path, METADATA_FILE), "w") as f:
        json.dump(info, f, indent=2)


def atomic_write(target: str, write, name: str = "export_dir") -> None:
    """`write(tmp)` into a sibling temp folder, then swap it in for `target`. Temp
    folders that killed runs left beside `target` are removed first."""
    if "://" in target:  # object stores have no rename; write in place
        write(target)
        return
    target = os.path.abspath(target)
    parent = os.path.dirname(target)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as err:
        raise bad_argument(name, target, f"a folder path this user can write ({err.strerror})") from None
    for stale in glob.glob(os.path.join(parent, f".{glob.escape(os.path.basename(target))}{_TMP}*")):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = os.path.join(parent, f".{os.path.basename(target)}{_TMP}{uuid.uuid4().hex[:8]}")
    if not os.access(parent, os.W_OK):
        raise bad_argument(name, target, "a folder path this user can write (permission denied)")
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


def export_saved_model(model, preprocessor, export_dir: str, label_names: Sequence[str], *,
                       pair: bool = False, metadata: Optional[dict] = None,
                       task: str = "classification",
                       thresholds: Optional[Sequence[float]] = None,
                       label_separator: str = ",") -> str:
    """Writes a sentence model (classifier, multilabel, regressor) as a SavedModel whose
    `serving_default` takes a batch of raw strings.

    Signature inputs: `text` (and `text_pair` when `pair=True`), `tf.string [batch]`.
    Outputs by `task`: classification `probabilities` `[batch, classes]`, `label` (the
    label name) and `label_id`; multilabel `probabilities` `[batch, labels]`,
    `predictions` (0/1 at each label's threshold) and `labels` (names above threshold,
    joined by `label_separator`); regression `score` `[batch]`.
    """
    from keras_bert_ft.tasks.sentence import SentenceServing, check_task
    check_task(task)
    label_names = [str(n) for n in label_names]
    num_classes = int(model.output_shape[-1])
    if len(label_names) != num_classes:
        raise bad_argument("label_names", label_names,
                           f"{num_classes} names, one per model output")
    info = {"label_names": label_names, "pair": bool(pair)}
    if thresholds is not None:
        thresholds = [float(t) for t in thresholds]
        if task != "multilabel" or len(thresholds) != num_classes:
            raise bad_argument("thresholds", thresholds,
                               f"one per label ({num_classes}), for task='multilabel' only")
    if task == "multilabel":
        info.update(thresholds=thresholds or [0.5] * num_classes,
                    label_separator=label_separator)
    serving = SentenceServing(model, preprocessor, info, task=task)
    return write_export(serving, export_dir, metadata)


def load_export(export_dir: str, name: str = "export_dir"):
    """Loads an export (importing tensorflow_text first, which its ops need)."""
    try:
        import tensorflow_text  # noqa: F401  (registers the ops the export uses)
    except ImportError:
        raise ImportError("Loading a keras_bert_ft export needs tensorflow-text: "
                          "pip install tensorflow-text (same version as tensorflow)") from None
    if not isinstance(export_dir, str) or not tf.io.gfile.exists(
            os.path.join(export_dir, "saved_model.pb")):
        raise bad_argument(name, export_dir, "a folder holding a keras_bert_ft export")
    try:
        return tf.saved_model.load(export_dir)
    except Exception as err:  # a damaged SavedModel fails in many TensorFlow ways
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise KbftError(f"{name} {export_dir!r} could not be loaded as a SavedModel "
                        f"(damaged or incomplete?): {first}") from None


def read_metadata(export_dir: str, name: str = "export_dir") -> dict:
    path = os.path.join(export_dir, METADATA_FILE) if isinstance(export_dir, str) else ""
    if not path or not tf.io.gfile.exists(path):
        raise bad_argument(name, export_dir, f"a keras_bert_ft export (no {METADATA_FILE} in it)")
    try:
        with tf.io.gfile.GFile(path) as f:
            meta = json.load(f)
    except ValueError as err:  # not JSON, not text
        raise KbftError(f"{path} is not valid JSON ({err}). Received: {name}={export_dir!r}",
                        argument=name) from None
    if not isinstance(meta, dict) or "task" not in meta:
        raise bad_argument(name, export_dir, f"a keras_bert_ft export ({METADATA_FILE} names no task)")
    meta.setdefault("inputs", ["text", "text_pair"] if meta.get("pair") else ["text"])
    return meta


def run_export(loaded, meta: dict, *columns, batch_size: int = 64):
    """An export's `serving_default` over Python string lists: outputs per batch."""
    serve = loaded.signatures["serving_default"]
    names = meta["inputs"]
    if len(columns) != len(names):
        raise bad_argument("inputs", len(columns), f"{len(names)} lists ({', '.join(names)})")
    return run_batches(lambda *b: serve(**dict(zip(names, b))), columns, batch_size)


def predict_export(loaded, texts, texts_pair=None, batch_size: int = 64) -> Dict[str, np.ndarray]:
    """Runs a sentence export's `serving_default` over Python strings in batches."""
    serve = loaded.signatures["serving_default"]
    names = sorted(serve.structured_input_signature[1])
    if ("text_pair" in names) != (texts_pair is not None):
        raise KbftError(f"This export takes {'text pairs' if 'text_pair' in names else 'one text'}"
                        f" per example. Received: texts_pair="
                        f"{'<given>' if texts_pair is not None else None}")
    meta = {"inputs": ["text", "text_pair"] if texts_pair is not None else ["text"]}
    columns = [texts] if texts_pair is None else [texts, texts_pair]
    return concat_batches(run_export(loaded, meta, *columns, batch_size=batch_size))
