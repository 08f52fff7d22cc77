"""fine_tune: the one entry point notebooks, scripts and the CLI share.

Reads the data, picks the strategy, builds encoder + head under its scope, compiles with
AdamW + warmup, runs plain `model.fit`, and computes the task metrics on validation.
Sentence-level tasks: classification (softmax), multilabel (sigmoid per label, thresholds
tuned on validation) and regression (one score); see sentence_tasks.py.
"""

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import tempfile
import time
from typing import List, Optional, Sequence, Union

import numpy as np
import tensorflow as tf

from keras_bert_ft._keras import keras
from keras_bert_ft.data import examples as data_lib
from keras_bert_ft.encoders import presets
from keras_bert_ft.tasks import sentence as sentence_tasks
from keras_bert_ft.training import tpu
from keras_bert_ft.training.determinism import enable_determinism
from keras_bert_ft.encoders.hub_encoder import HubEncoder, TrainableSpec
from keras_bert_ft.errors import KbftError, bad_argument
from keras_bert_ft.export.saved_model import ServingModule, export_saved_model
from keras_bert_ft.tasks.scores import tune_thresholds
from keras_bert_ft.tasks.models import build_task_model
from keras_bert_ft.encoders.native import IMPLS, NativeEncoder, make_encoder
from keras_bert_ft.training.optimization import create_optimizer
from keras_bert_ft.data.preprocessing import Preprocessor, check_seq_length
from keras_bert_ft.training.fault_tolerance import RunBackup, StopOnNonFiniteLoss, fingerprint
from keras_bert_ft.training.strategy import ensure_strategy, is_chief
from keras_bert_ft.data.pipeline import epoch_batches, training_input

logger = logging.getLogger("keras_bert_ft")

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


def _field(default, help: str):
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass
class FineTuneConfig:
    """Everything a fine-tuning run needs; each field's help is the CLI's help."""
    encoder: str = _field("minilm-l6", "encoder preset name, TF-Hub URL, local folder or gs:// path")
    preprocessor: Optional[str] = _field(
        None, "vocab.txt, preprocessor handle or preset; default: the encoder's own")
    lower_case: bool = _field(True, "lower-case text (vocab.txt preprocessors only)")
    text_column: str = _field("sentence", "column holding the (first) text")
    text_pair_column: Optional[str] = _field(None, "column holding the second text of a pair")
    label_column: str = _field("label", "column holding the label")
    label_separator: str = _field(",", "separates label names in a multilabel label cell")
    task: str = _field("classification", "classification (one label, softmax), multilabel "
                       "(a sigmoid per label, thresholds tuned on validation) or regression "
                       "(one score, MSE)")
    epochs: int = _field(3, "passes over the training data")
    batch_size: int = _field(32, "global batch size (split across replicas)")
    learning_rate: Optional[float] = _field(
        None, "peak learning rate after warmup; default: the preset's (1e-4 for minilm-l6), "
              "else 5e-5")
    warmup_ratio: float = _field(0.1, "fraction of steps with linear warmup")
    weight_decay: float = _field(0.01, "decoupled weight decay (not on LayerNorm/bias)")
    trainable_layers: TrainableSpec = _field("all", '"all", "none", top k, or a list of layer indices')
    train_embeddings: Optional[bool] = _field(None, "train embeddings (default: only when all layers train)")
    seq_length: int = _field(128, "maximum tokens per example, [CLS]/[SEP] included")
    padding: str = _field("auto", "auto (static on TPU, else bucketed), bucketed "
                          "(length-grouped batches), dynamic (per-batch length) or static")
    head_units: Sequence[int] = _field((), "widths of Dense+ReLU+Dropout blocks before the logits")
    dropout: float = _field(0.1, "dropout of the head")
    pooling: Optional[str] = _field(
        None, "pooled, cls or mean; default: the preset's (mean for minilm-l6), else pooled")
    encoder_impl: str = _field(
        "auto", "native (rebuild a recognised BERT encoder as Keras layers: mixed precision "
                "reaches it), hub (run the restored SavedModel graph), or auto (native "
                "when recognised)")
    strategy: str = _field("auto", "auto, cpu, gpu, mirrored, tpu or multiworker (TF_CONFIG)")
    mixed_precision: Optional[str] = _field(
        None, "mixed_bfloat16 (TPU, recent CPUs) or mixed_float16 (GPU, with loss scaling); "
              "reaches the encoder's matmuls on the native path only (see encoder_impl); "
              "default: mixed_bfloat16 on a TPU, else float32")
    jit_compile: bool = _field(False, "compile the train step with XLA")
    steps_per_execution: Optional[int] = _field(
        None, "train steps per tf.function call; default: 32 on a TPU, else 1")
    seed: int = _field(0, "random seed for initialisation, dropout and shuffling")
    max_train_examples: Optional[int] = _field(None, "use only the first N training examples")
    max_eval_examples: Optional[int] = _field(None, "use only the first N validation examples")
    output_dir: Optional[str] = _field(None, "where checkpoints, logs, history and export go")
    encoding: str = _field("utf-8-sig", "text encoding of the data files")
    verbose: int = _field(1, "0 silent, 1 progress bar, 2 one line per epoch")
    deterministic: bool = _field(False, "deterministic TensorFlow ops: the same seed gives the "
                                 "same metrics on CPU, and a resumed run the same as an "
                                 "uninterrupted one")
    backup_steps: int = _field(500, "steps between backups under OUTPUT/backup; running the "
                               "same command again resumes from the last one (0: no backups)")
    tpu_address: str = _field("", 'TPU to use: "" finds Colab\'s or $TPU_NAME, "local" is a '
                              "Cloud TPU VM's own, else a TPU name or grpc:// address")
    # The stability and research switches (issue 6).
    encoder_learning_rate: Optional[float] = _field(
        None, "peak rate of the encoder's top layer and pooler (default: learning_rate, "
        "which the head always uses)")
    layer_decay: float = _field(1.0, "layer-wise rate decay: k layers below the top train at "
                                "the encoder rate x decay^k, embeddings at x decay^L")
    bias_correction: bool = _field(True, "Adam bias correction (false: the original BERTAdam)")
    clip_norm: Optional[float] = _field(None, "clip gradients to this global norm (BERT: 1.0)")
    reinit_layers: int = _field(0, "re-initialise the top k layers and the pooler (BERT init)")
    unfreeze_every: int = _field(0, "gradual unfreezing: one more layer from the top every N "
                                 "unfreeze_units, from trainable_layers (0: off)")
    unfreeze_unit: str = _field("epoch", "epoch or step")

    def validate(self) -> "FineTuneConfig":
        for name in ("epochs", "batch_size", "steps_per_execution"):
            value = getattr(self, name)
            if value is None and name == "steps_per_execution":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise bad_argument(name, value, "an int >= 1")
        check_seq_length(self.seq_length)
        sentence_tasks.check_task(self.task)
        if self.learning_rate is not None and not (
                isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0):
            raise bad_argument("learning_rate", self.learning_rate, "a float > 0")
        check_encoder_settings(self)
        if self.padding not in ("auto", *data_lib.PADDINGS):
            raise bad_argument("padding", self.padding,
                               f"one of auto, {', '.join(data_lib.PADDINGS)}")
        value = self.backup_steps
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise bad_argument("backup_steps", value, "an int >= 0")
        validate_research_fields(self)
        return self


def check_encoder_settings(config) -> None:
    """`encoder_impl` and `mixed_precision` of a FineTuneConfig or a tasks.TaskConfig."""
    if config.encoder_impl not in IMPLS:
        raise bad_argument("encoder_impl", config.encoder_impl, f"one of {', '.join(IMPLS)}")
    if config.mixed_precision not in (None, *PRECISIONS):
        raise bad_argument("mixed_precision", config.mixed_precision,
                           f"None or one of {', '.join(PRECISIONS)}")


def check_layer_rates(config) -> None:
    """`encoder_learning_rate` and `layer_decay` of a FineTuneConfig or a tasks.TaskConfig."""
    from keras_bert_ft.training.layerwise import check_rates
    rate = config.encoder_learning_rate
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float))
                             or not rate > 0):
        raise bad_argument("encoder_learning_rate", rate, "a float > 0, or None")
    check_rates(config.layer_decay, 1.0)


def validate_research_fields(config: "FineTuneConfig") -> None:
    """Checks the layer-wise rate, re-init and gradual-unfreezing fields."""
    from keras_bert_ft.training.unfreeze import UNITS
    check_layer_rates(config)
    for name in ("reinit_layers", "unfreeze_every"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise bad_argument(name, value, "an int >= 0")
    if config.unfreeze_unit not in UNITS:
        raise bad_argument("unfreeze_unit", config.unfreeze_unit, f"one of {', '.join(UNITS)}")
    if config.unfreeze_every and not (config.trainable_layers == "none"
                                      or isinstance(config.trainable_layers, int)):
        raise bad_argument("trainable_layers", config.trainable_layers,
                           "'none' or an int k (the layers trainable before gradual "
                           "unfreezing adds more)")


class ThroughputCallback(keras.callbacks.Callback):
    """Training examples per second, wall clock, the first execution of each epoch excluded.

    Time runs from the end of each epoch's first execution (tracing, pipeline warm-up) to
    the end of its last, so input-pipeline waits count, as they do for the user. Counts
    real examples, not `steps x batch_size`: length buckets emit partial batches at the
    end of each epoch. Works with `steps_per_execution` (Keras reports the last step).
    """

    def __init__(self, batch_size: int, examples_per_epoch: Optional[int] = None):
        super().__init__()
        self.batch_size = batch_size
        self.examples_per_epoch = examples_per_epoch
        self.seconds = 0.0
        self.batches = 0
        self.examples = 0
        self._first = self._last = None

    def on_epoch_begin(self, epoch, logs=None):
        self._first = self._last = None

    def on_train_batch_end(self, batch, logs=None):
        mark = (time.perf_counter(), int(batch))
        if self._first is None:
            self._first = mark
        else:
            self._last = mark

    def on_epoch_end(self, epoch, logs=None):
        if self._last is None:
            return
        steps = self._last[1] - self._first[1]
        examples = steps * self.batch_size
        if self.examples_per_epoch:
            untimed = (self._first[1] + 1) * self.batch_size
            examples = min(examples, max(self.examples_per_epoch - untimed, 0))
        self.seconds += self._last[0] - self._first[0]
        self.batches += steps
        self.examples += examples

    @property
    def examples_per_second(self) -> float:
        return self.examples / self.seconds if self.seconds else 0.0


@dataclasses.dataclass
class FineTuneResult:
    """A trained model with its preprocessor, labels, history and validation metrics
    (multilabel: also the per-label decision thresholds)."""
    model: keras.Model
    preprocessor: Preprocessor
    label_names: List[str]
    pair: bool
    config: FineTuneConfig
    history: dict
    metrics: dict
    strategy: tf.distribute.Strategy = None
    thresholds: Optional[List[float]] = None

    def predict(self, texts, texts_pair=None, batch_size: int = 64) -> np.ndarray:
        """Class probabilities (multilabel: per label; regression: scores) for raw
        strings, computed exactly as the export does."""
        return predict_probabilities(self.model, self.preprocessor, texts, texts_pair,
                                     batch_size, task=self.config.task)

    def export(self, export_dir: str) -> str:
        return export_saved_model(self.model, self.preprocessor, export_dir,
                                  self.label_names, pair=self.pair,
                                  metadata={"encoder": self.config.encoder},
                                  task=self.config.task, thresholds=self.thresholds,
                                  label_separator=self.config.label_separator)


def predict_probabilities(model, preprocessor, texts, texts_pair=None, batch_size=64,
                          task: str = "classification"):
    """The serving output `sentence_tasks.output_key(task)` for raw strings."""
    units = int(model.output_shape[-1])
    serving = ServingModule(model, preprocessor, ["?"] * units, task=task)
    serve = tf.function(serving.serve)
    key = sentence_tasks.output_key(task)
    out = []
    for start in range(0, len(texts), batch_size):
        chunk = tf.constant(list(texts[start:start + batch_size]))
        pair = None if texts_pair is None else tf.constant(list(texts_pair[start:start + batch_size]))
        out.append(serve(chunk, pair)[key].numpy())
    if out:
        return np.concatenate(out)
    return np.zeros((0,) if task == "regression" else (0, units), np.float32)


def resolve_padding(padding: str, strategy) -> str:
    """`auto` -> `static` under a TPU strategy (XLA needs fixed shapes), else `bucketed`."""
    if padding != "auto":
        return padding
    return "static" if isinstance(strategy, tf.distribute.TPUStrategy) else "bucketed"


def resolve_learning_rate(config: "FineTuneConfig") -> float:
    """The configured rate, else the encoder preset's, else BERT's usual 5e-5."""
    if config.learning_rate is not None:
        return float(config.learning_rate)
    preset = presets.get_preset(config.encoder)
    return preset.learning_rate if preset is not None and preset.learning_rate else 5e-5


def resolve_pooling(config: "FineTuneConfig") -> str:
    """The configured pooling, else the encoder preset's, else BERT's pooled output."""
    if config.pooling:
        return config.pooling
    preset = presets.get_preset(config.encoder)
    return preset.pooling if preset is not None else "pooled"


def default_preprocessor(encoder: HubEncoder, config: FineTuneConfig) -> Preprocessor:
    """The preprocessor the user named, else the encoder's own: its vocab asset (TF-Hub
    BERT encoders carry `vocab_file` and `do_lower_case`), else the preset's."""
    if config.preprocessor:
        return Preprocessor.from_handle(config.preprocessor, lower_case=config.lower_case,
                                        seq_length=config.seq_length)
    vocab, lower = encoder_vocab(encoder)
    if vocab is None and presets.get_preset(config.encoder) is not None:
        return Preprocessor.from_hub(config.encoder, seq_length=config.seq_length)
    if vocab is None:
        raise bad_argument("preprocessor", None, "a vocab.txt or preprocessor handle (the "
                           f"encoder {config.encoder!r} carries no vocab_file)")
    return Preprocessor.from_vocab(vocab, lower_case=config.lower_case if lower is None else lower,
                                   seq_length=config.seq_length)


def encoder_vocab(encoder):
    """(vocab.txt path or None, do_lower_case or None) from the encoder's SavedModel assets."""
    if isinstance(encoder, NativeEncoder):
        return encoder.vocab_path, encoder.do_lower_case
    root = encoder.resolved_object
    vocab = getattr(root, "vocab_file", None)
    lower = bool(root.do_lower_case.numpy()) if hasattr(root, "do_lower_case") else None
    return (vocab.asset_path.numpy().decode() if vocab is not None else None), lower


def _as_examples(source, config, label_names=None):
    if isinstance(source, data_lib.Examples):
        if (label_names is not None and source.labels is not None
                and config.task == "classification"):
            extra = set(source.labels.tolist()) - set(range(len(label_names)))
            if extra:
                raise KbftError(f"validation has label ids unseen in training: {sorted(extra)}")
        return source
    return data_lib.load_examples(
        source, text_column=config.text_column, label_column=config.label_column,
        text_pair_column=config.text_pair_column, label_names=label_names,
        encoding=config.encoding, task=config.task, label_separator=config.label_separator)


def fine_tune(train, validation=None, config: Optional[FineTuneConfig] = None, *,
              callbacks: Sequence[keras.callbacks.Callback] = (),
              strategy: Union[str, tf.distribute.Strategy, None] = None,
              **overrides) -> FineTuneResult:
    """Fine-tunes a BERT encoder for a sentence(-pair) task with plain `model.fit`.

    `config.task` picks the head: `classification`, `multilabel` (labels: a list or a
    `label_separator`-joined string of names per example; thresholds tuned on
    `validation`, else 0.5) or `regression` (numeric labels).

    Args:
        train, validation: a file path (CSV/TSV/JSON lines), DataFrame, dict of lists,
            list of records, `"tfds:<name>"`, or `Examples`.
        config: a `FineTuneConfig`; keyword `overrides` replace its fields.
        callbacks: the user's own Keras callbacks, passed to `fit`.
        strategy: a `tf.distribute.Strategy` or a `get_strategy` kind.

    With `output_dir`, the run backs up every `backup_steps` steps to `output_dir/backup`;
    called again with the same settings after a crash, it resumes there
    (fault_tolerance.py). A NaN/inf loss raises `NonFiniteLoss`.

    Example:
        >>> result = fine_tune("train.tsv", "dev.tsv", epochs=1, trainable_layers=2)
        >>> result.metrics["accuracy"], result.export("out/export")
    """
    config = dataclasses.replace(config or FineTuneConfig(), **overrides).validate()
    if config.deterministic:
        enable_determinism(config.seed)
    else:
        keras.utils.set_random_seed(config.seed)
    train_ex = _as_examples(train, config)
    if config.max_train_examples:
        train_ex = train_ex.take(config.max_train_examples)
    sentence_tasks.check_labels(config.task, train_ex, "train")
    val_ex = None
    if validation is not None:
        val_ex = _as_examples(validation, config, train_ex.label_names)
        if config.max_eval_examples:
            val_ex = val_ex.take(config.max_eval_examples)
    strategy = ensure_strategy(strategy or config.strategy, config.tpu_address)
    config = tpu.resolve_hardware_settings(config, strategy)
    num_classes = len(train_ex.label_names)
    steps_per_epoch = math.ceil(len(train_ex) / config.batch_size)
    with strategy.scope(), precision_policy(config.mixed_precision):
        encoder = make_encoder(config.encoder, config.encoder_impl,
                               trainable_layers=config.trainable_layers,
                               train_embeddings=config.train_embeddings,
                               reinit_layers=config.reinit_layers, reinit_seed=config.seed,
                               **tpu.encoder_load_kwargs(config.encoder, strategy))
        check_seq_length(config.seq_length, encoder.max_seq_length)
        model = build_task_model(config.task, encoder, num_classes,
                                 head_units=tuple(config.head_units), dropout=config.dropout,
                                 pooling=resolve_pooling(config))
        multipliers = learning_rate_multipliers(model, config)
        optimizer = create_optimizer(resolve_learning_rate(config),
                                     total_steps=steps_per_epoch * config.epochs,
                                     warmup_ratio=config.warmup_ratio,
                                     weight_decay=config.weight_decay,
                                     bias_correction=config.bias_correction,
                                     global_clipnorm=config.clip_norm,
                                     learning_rate_multipliers=multipliers)
        loss, fit_metrics = sentence_tasks.loss_and_metrics(config.task)
        model.compile(optimizer=optimizer, loss=loss, metrics=fit_metrics,
                      jit_compile=config.jit_compile,
                      steps_per_execution=config.steps_per_execution)
    if tpu.is_tpu(strategy):
        tpu.check_host_tokenisation(model)
    preprocessor = default_preprocessor(encoder, config)
    if config.verbose:
        print(model.trainable_report())
        if multipliers:
            from keras_bert_ft.training.layerwise import format_rates, rate_rows
            print(format_rates(rate_rows(model, resolve_learning_rate(config), multipliers)))
    padding = resolve_padding(config.padding, strategy)
    drop_remainder = padding == "static"
    epoch_steps = epoch_batches(train_ex, preprocessor, batch_size=config.batch_size,
                                padding=padding, drop_remainder=drop_remainder)
    backup = None
    if config.output_dir and config.backup_steps:
        backup = RunBackup(config.output_dir, fingerprint(config, train_ex),
                           steps_per_epoch=epoch_steps, backup_steps=config.backup_steps,
                           strategy=strategy, deterministic=config.deterministic)
    train = training_input(train_ex, preprocessor, strategy, batch_size=config.batch_size,
                           seed=config.seed, padding=padding, drop_remainder=drop_remainder,
                           steps_per_epoch=epoch_steps,
                           start_step=backup.start_step if backup else 0)
    val_ds = None
    if val_ex is not None:  # evaluation keeps its order: no buckets
        val_ds = data_lib.make_dataset(
            val_ex, preprocessor, batch_size=config.batch_size,
            padding="static" if padding == "static" else "dynamic")
    throughput = ThroughputCallback(config.batch_size, len(train_ex))
    guard = backup.callbacks() if backup else [StopOnNonFiniteLoss()]
    all_callbacks = [*guard, throughput, *_output_callbacks(config.output_dir),
                     *_unfreezing_callbacks(config), *callbacks]
    history = model.fit(train.data, steps_per_epoch=train.steps_per_epoch,
                        validation_data=val_ds, epochs=config.epochs,
                        callbacks=all_callbacks, verbose=config.verbose)
    history = history.history if backup is None else backup.full_history(history.history)
    metrics, thresholds = {}, None
    if val_ex is not None:
        predictions = predict_probabilities(model, preprocessor, val_ex.texts,
                                            val_ex.texts_pair, task=config.task)
        if config.task == "multilabel":
            thresholds = tune_thresholds(val_ex.labels, predictions).tolist()
        metrics = sentence_tasks.evaluate(config.task, val_ex.labels, predictions,
                                          train_ex.label_names, thresholds)
        if config.task == "classification":  # flags degenerate runs (seeds.py)
            metrics["predicted_classes"] = int(len(np.unique(predictions.argmax(-1))))
        metrics["eval_examples"] = len(val_ex)
    metrics["train_examples"] = len(train_ex)
    metrics["train_examples_per_second"] = round(throughput.examples_per_second, 2)
    return FineTuneResult(model=model, preprocessor=preprocessor,
                          label_names=train_ex.label_names, pair=train_ex.is_pair,
                          config=config, history=_plain_history(history),
                          metrics=metrics, strategy=strategy, thresholds=thresholds)


@contextlib.contextmanager
def precision_policy(name: Optional[str]):
    """Builds layers under a Keras mixed-precision policy, then restores the previous one.

    Layers keep the policy they were built with; `compile` wraps the optimizer in loss
    scaling under `mixed_float16`. The logits layer always computes in float32.
    """
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name or "float32")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def learning_rate_multipliers(model, config: FineTuneConfig):
    """Per-variable rate factors for layer-wise decay / a separate encoder rate, or None."""
    base = resolve_learning_rate(config)
    ratio = (config.encoder_learning_rate or base) / base
    if config.layer_decay == 1.0 and ratio == 1.0:
        return None
    from keras_bert_ft.training.layerwise import layer_multipliers
    return layer_multipliers(model, layer_decay=config.layer_decay, encoder_rate=ratio)


def _unfreezing_callbacks(config: FineTuneConfig):
    if not config.unfreeze_every:
        return []
    from keras_bert_ft.training.unfreeze import GradualUnfreezing
    start = 0 if config.trainable_layers == "none" else config.trainable_layers
    return [GradualUnfreezing(config.unfreeze_every, config.unfreeze_unit, start_layers=start,
                              unfreeze_embeddings=bool(config.train_embeddings),
                              verbose=config.verbose)]


def _output_callbacks(output_dir: Optional[str]):
    if not output_dir:
        return []
    return [keras.callbacks.ModelCheckpoint(
                os.path.join(output_dir, "checkpoints", "ckpt-{epoch:03d}"),
                save_weights_only=True),
            keras.callbacks.TensorBoard(os.path.join(output_dir, "logs"), profile_batch=0)]


def _plain_history(history: dict) -> dict:
    return {k: [float(x) for x in v] for k, v in history.items()}


def save_run(result: FineTuneResult, output_dir: str, export: bool = True) -> dict:
    """Writes `metrics.json`, `history.json`, `history.png`, `run_config.json` and the export.

    Under MultiWorkerMirroredStrategy only the chief writes them; the other workers
    export into a temporary folder they delete (saving reads variables that every
    worker must take part in), and return `{}`.
    """
    if result.strategy is not None and not is_chief(result.strategy):
        scratch = tempfile.mkdtemp(prefix="kbft-worker-export-")
        try:
            result.export(os.path.join(scratch, "export"))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return {}
    os.makedirs(output_dir, exist_ok=True)
    paths = {}
    if export:
        paths["export"] = result.export(os.path.join(output_dir, "export"))
    _write_json(os.path.join(output_dir, "metrics.json"), result.metrics)
    _write_json(os.path.join(output_dir, "history.json"), result.history)
    run_config = dataclasses.asdict(result.config)
    run_config["head_units"] = list(run_config["head_units"])
    run_config.update(label_names=result.label_names, pair=result.pair,
                      thresholds=result.thresholds)
    _write_json(os.path.join(output_dir, "run_config.json"), run_config)
    paths["plot"] = plot_history(result.history, os.path.join(output_dir, "history.png"))
    return paths


def _write_json(path: str, payload) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, default=str)
    os.replace(tmp, path)


def plot_history(history: dict, path: str) -> str:
    """Loss and accuracy per epoch, training and validation, as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in ("loss", "accuracy") if k in history]
    fig, axes = plt.subplots(1, max(len(keys), 1), figsize=(5 * max(len(keys), 1), 3.5))
    axes = np.atleast_1d(axes)
    for ax, key in zip(axes, keys):
        epochs = np.arange(1, len(history[key]) + 1)
        ax.plot(epochs, history[key], marker="o", label=f"train {key}")
        if f"val_{key}" in history:
            ax.plot(epochs, history[f"val_{key}"], marker="o", label=f"validation {key}")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def export_from_run(run_dir: str, export_dir: str, checkpoint: Optional[str] = None) -> str:
    """Rebuilds a `kbft train` run's model, loads a checkpoint (the latest by default)
    and writes a raw-string export."""
    config_path = os.path.join(run_dir, "run_config.json")
    if not os.path.isfile(config_path):
        raise bad_argument("run", run_dir, "a kbft train --output folder (no run_config.json)")
    with open(config_path) as f:
        saved = json.load(f)
    label_names, pair = saved.pop("label_names"), saved.pop("pair")
    thresholds = saved.pop("thresholds", None)
    fields = {f.name for f in dataclasses.fields(FineTuneConfig)}
    config = FineTuneConfig(**{k: v for k, v in saved.items() if k in fields})
    checkpoint = checkpoint or tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints"))
    if checkpoint is None:
        checkpoint = _latest_weights(os.path.join(run_dir, "checkpoints"))
    if checkpoint is None:
        raise bad_argument("checkpoint", checkpoint,
                           f"a checkpoint prefix (none found under {run_dir}/checkpoints)")
    # Runs saved before `encoder_impl` existed trained the restored SavedModel graph.
    impl = saved.get("encoder_impl", "hub")
    with precision_policy(config.mixed_precision):
        encoder = make_encoder(config.encoder, impl)
        model = build_task_model(config.task, encoder, len(label_names),
                                 head_units=tuple(config.head_units), dropout=config.dropout,
                                 pooling=resolve_pooling(config))
    model.load_weights(checkpoint).expect_partial()
    preprocessor = default_preprocessor(encoder, config)
    return export_saved_model(model, preprocessor, export_dir, label_names, pair=pair,
                              metadata={"encoder": config.encoder}, task=config.task,
                              thresholds=thresholds, label_separator=config.label_separator)


def _latest_weights(folder: str) -> Optional[str]:
    if not os.path.isdir(folder):
        return None
    prefixes = sorted({name.split(".")[0] for name in os.listdir(folder)
                       if name.endswith(".index")})
    return os.path.join(folder, prefixes[-1]) if prefixes else None
