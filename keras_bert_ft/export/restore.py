"""The one reader of run folders and exports: rebuilds the trained model exactly as the run
built it, from the config the run saved, and restores every variable or fails loudly.

`evaluate`, `predict`, `export`, `diff`, `probe` and Python callers all read runs back
through `restore`. A run folder's weights come from its checkpoints; an export's from the
SavedModel's own variables (the serving module holds the model as `model`). Either way
every variable of the rebuilt model must be found, else a `KbftError` names the first
missing one: a silently half-restored model would report pretrained numbers as
fine-tuned ones.
"""

import json
import os
import re
from typing import Optional

import tensorflow as tf

from keras_bert_ft.config import FIELDS, from_json
from keras_bert_ft.errors import KbftError, bad_argument
from keras_bert_ft.export.saved_model import METADATA_FILE, read_metadata
from keras_bert_ft.tasks import get_task
from keras_bert_ft.training import build, run_folder


def restore(path: str, checkpoint: Optional[str] = None, name: str = "model"):
    """A `FineTuneResult` (no training) from a run folder or an export at `path`."""
    if not isinstance(path, str) or not path:
        raise bad_argument(name, path, "a kbft train --output folder or an export folder")
    if os.path.isfile(os.path.join(path, METADATA_FILE)):
        if checkpoint:
            raise bad_argument("checkpoint", checkpoint, "nothing for an export (it holds "
                               "one set of weights); checkpoints belong to run folders")
        return restore_export(path, name=name)
    if os.path.isfile(os.path.join(path, run_folder.RUN_CONFIG)):
        _refuse_pretrain_run(run_folder.read_run_config(path, name), path, name)
        return restore_run(path, checkpoint, name=name)
    raise bad_argument(name, path, "a kbft train --output folder (with run_config.json) or "
                       f"an export (with {METADATA_FILE})")


def saved_config(path: str, name: str = "model"):
    """(config, info) of the run folder or export at `path`, read without building
    anything: what callers check the user's other input against before `restore`."""
    if not isinstance(path, str) or not path:
        raise bad_argument(name, path, "a kbft train --output folder or an export folder")
    if os.path.isfile(os.path.join(path, METADATA_FILE)):
        return _export_config(path, name)
    if os.path.isfile(os.path.join(path, run_folder.RUN_CONFIG)):
        saved = run_folder.read_run_config(path, name)
        _refuse_pretrain_run(saved, path, name)
        return _split(saved)
    raise bad_argument(name, path, "a kbft train --output folder (with run_config.json) or "
                       f"an export (with {METADATA_FILE})")


def _refuse_pretrain_run(saved: dict, path: str, name: str) -> None:
    """A `kbft pretrain` run folder holds an encoder to fine-tune, not a model that
    predicts: refused in one line that names the folder to use instead."""
    if saved.get("task") == "pretrain":
        encoder = os.path.join(path, "encoder")
        raise KbftError(f"{path} is a kbft pretrain run: it makes no predictions. Its "
                        f"encoder is {encoder} (kbft train --encoder {encoder}; kbft probe "
                        f"--model {encoder}). Received: {name}={path!r}", argument=name)


def is_restorable(path: str) -> bool:
    return isinstance(path, str) and any(
        os.path.isfile(os.path.join(path, f)) for f in (METADATA_FILE, run_folder.RUN_CONFIG))


def _split(saved: dict):
    """(config, info) from a saved run config: the config fields, and the rest."""
    saved = dict(saved)
    saved.setdefault("encoder_impl", "hub")  # runs saved before encoder_impl existed
    config = from_json(saved)
    info = {k: v for k, v in saved.items() if k not in FIELDS}
    return config, info


def _rebuild(config, info, weights: str, reader: str, where: str):
    return rebuild(config, info, lambda model: restore_weights(model, weights, reader=reader,
                                                               where=where))


def rebuild(config, info, load_weights):
    """A `FineTuneResult` (no training) of the model `config` and `info` describe, its
    weights put in by `load_weights(model)`."""
    from keras_bert_ft.training.runner import FineTuneResult
    task = get_task(config.task)
    strategy = tf.distribute.get_strategy()
    model, encoder = build.build_model(task, config, info, strategy)
    if info.get("members"):  # an ensemble: as many models, averaged
        models = [model] + [build.build_model(task, config, info, strategy)[0]
                            for _ in range(int(info["members"]) - 1)]
        model = task.combine(models)
    load_weights(model)
    preprocessor = build.build_preprocessor(encoder, config, needs_vocab=task.needs_vocab)
    serving = task.serving(model, preprocessor, config, info)
    serving.weights_final = True
    return FineTuneResult(model=model, serving=serving, config=config, info=info,
                          history={}, metrics={}, strategy=None)


def restore_run(run_dir: str, checkpoint: Optional[str] = None, name: str = "run"):
    """The model of a `kbft train` run folder with a checkpoint's weights (the latest by
    default), its history and metrics."""
    config, info = _split(run_folder.read_run_config(run_dir, name))
    folder = os.path.join(run_dir, "checkpoints")
    if checkpoint:
        if not (os.path.isfile(checkpoint + ".index") or os.path.isfile(checkpoint)):
            raise bad_argument("checkpoint", checkpoint, "a checkpoint prefix (e.g. "
                               f"{folder}/ckpt-003; no {checkpoint}.index found)")
    else:
        checkpoint = tf.train.latest_checkpoint(folder) or _latest_weights(folder)
        if checkpoint is None:
            raise bad_argument(name, run_dir, "a run folder with checkpoints (none under "
                               f"{folder})")
    result = _rebuild(config, info, checkpoint, "model", f"checkpoint {checkpoint!r}")
    for attr, file in (("history", "history.json"), ("metrics", "metrics.json")):
        path = os.path.join(run_dir, file)
        if os.path.isfile(path):
            with open(path) as f:
                setattr(result, attr, json.load(f))
    return result


def restore_export(export_dir: str, name: str = "model"):
    """The trainable model inside an export, rebuilt from the config it carries."""
    config, info = _export_config(export_dir, name)
    weights = os.path.join(export_dir, "variables", "variables")
    return _rebuild(config, info, weights, "serving", f"export {export_dir!r}")


def _export_config(export_dir: str, name: str):
    """(config, info) of an export whose SavedModel is whole enough to serve."""
    meta = read_metadata(export_dir, name)
    if "config" not in meta:
        raise bad_argument(name, export_dir, "an export written by this version of "
                           "keras_bert_ft (its kbft_export.json carries no run config)")
    check_saved_model(export_dir, name)
    info = {k: v for k, v in meta.items()
            if k not in ("config", "encoder", "inputs", "task", "seq_length")}
    config, _ = _split(meta["config"])
    return config, info


def check_saved_model(export_dir: str, name: str = "model") -> None:
    """Refuses an export whose saved_model.pb is missing or not a SavedModel (truncated,
    overwritten): its weights alone would restore, but it could not be served."""
    from tensorflow.core.protobuf import saved_model_pb2
    path = os.path.join(export_dir, "saved_model.pb")
    try:
        with open(path, "rb") as f:
            parsed = saved_model_pb2.SavedModel.FromString(f.read())
        whole = bool(parsed.meta_graphs)
    except Exception:  # OSError, protobuf's DecodeError
        whole = False
    if not whole:
        raise bad_argument(name, export_dir, "a whole keras_bert_ft export (its "
                           "saved_model.pb is missing, truncated or not a SavedModel)")


def restore_weights(model, path: str, *, reader: str = "model", where: str = "") -> None:
    """Restores every variable of `model` from `path` or raises `KbftError`.

    `reader="model"`: a checkpoint written by `model.save_weights` (run folders);
    `"serving"`: a SavedModel's variables, whose root holds the model as `model`. The file
    may hold more than the model (optimizer slots, the tokenizer's tables): those are
    left unread on purpose, once every variable of the model was found.
    """
    try:
        if reader == "model":
            status = model.load_weights(path)
            if status is None:  # .h5 files: Keras matches every layer or raises
                return
        else:
            status = tf.train.Checkpoint(model=model).read(path)
        status.assert_existing_objects_matched()
        saved = len(_saved_model_variables(path, reader))
    except (AssertionError, ValueError, tf.errors.OpError) as err:
        first = _layer_names(model, (str(err).strip().splitlines()
                                     or [type(err).__name__])[0])[:300]
        raise KbftError(f"The weights in {where or path} do not fit the model rebuilt from "
                        f"its config: {first}") from None
    rebuilt = len({id(v) for v in model.variables})
    if saved != rebuilt:  # e.g. a deeper encoder's layers left over: not this model's weights
        raise KbftError(f"The weights in {where or path} do not fit the model rebuilt from "
                        f"its config: they hold {saved} model variables, the model {rebuilt} "
                        "(the encoder or head differs from the one they were trained with).")
    status.expect_partial()  # only the extra values are unread: every variable matched


def _layer_names(model, message: str) -> str:
    """TensorFlow's restore errors name a Keras layer by its checkpoint key,
    `layer_with_weights-N` (the N-th layer that has weights): the layer's own name instead."""
    layers = [layer for layer in getattr(model, "layers", []) if layer.weights]
    return re.sub(r"layer_with_weights-(\d+)", lambda m: layers[int(m.group(1))].name
                  if int(m.group(1)) < len(layers) else m.group(0), message)


def _saved_model_variables(path: str, reader: str):
    """The keys of the model's variables in a checkpoint or an export's variables: every
    value but the optimizer's (slots, step, rate), the metrics' and, in an export, those
    outside the model (the tokenizer's)."""
    keys = []
    for key, _ in tf.train.list_variables(path):
        parts = key.split("/")
        if not key.endswith("/.ATTRIBUTES/VARIABLE_VALUE") or "OPTIMIZER_SLOT" in parts:
            continue
        if reader == "serving":
            if parts[0] != "model":
                continue
            parts = parts[1:]
        if not {"optimizer", "keras_api", "save_counter"} & set(parts):
            keys.append(key)
    return keys


def _latest_weights(folder: str) -> Optional[str]:
    if not os.path.isdir(folder):
        return None
    prefixes = sorted({name.split(".")[0] for name in os.listdir(folder)
                       if name.endswith(".index")})
    return os.path.join(folder, prefixes[-1]) if prefixes else None
