"""fine_tune: the one runner every task, notebook, script and CLI command goes through.

It knows no task: the task plugin (tasks/) reads and featurises the data, builds the head
and the serving function; the runner does the rest, the same for all: seeds and
determinism, strategy and TPU rules, precision, re-initialisation, AdamW with warmup and
layer-wise rates, gradual unfreezing, backups and resume, the NaN guard, the user's
callbacks, plain `model.fit`, validation metrics and the result (export, run folder).
"""

import dataclasses
import logging
import math
import os
import time
from typing import List, Optional, Sequence, Union

import numpy as np
import tensorflow as tf

from keras_bert_ft import timings
from keras_bert_ft._keras import keras
from keras_bert_ft.timings import PhaseTimer
from keras_bert_ft.config import FIELDS, FineTuneConfig, make_config, to_json
from keras_bert_ft.data.pipeline import batches, epoch_batches, training_input
from keras_bert_ft.errors import KbftError
from keras_bert_ft.export.saved_model import write_export
from keras_bert_ft.tasks import get_task
from keras_bert_ft.tasks.base import read_data
from keras_bert_ft.training import build, run_folder, tpu
from keras_bert_ft.training.best_epoch import KeepBestEpoch, check_validation, resolve_monitor
from keras_bert_ft.training.determinism import enable_determinism
from keras_bert_ft.training.fault_tolerance import RunBackup, StopOnNonFiniteLoss, fingerprint
from keras_bert_ft.training.optimization import create_optimizer
from keras_bert_ft.training.strategy import ensure_strategy

logger = logging.getLogger("keras_bert_ft")


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
    """A trained model of any task: its serving function (what `predict`, evaluation and
    the export run), config, `info` (label names, ...), history and validation metrics."""
    model: keras.Model
    serving: object
    config: FineTuneConfig
    info: dict
    history: dict
    metrics: dict
    strategy: Optional[tf.distribute.Strategy] = None
    # The validation examples the model gets most wrong (`errors.tsv`), when the task has it.
    errors: Optional[list] = None
    # Seconds per phase of the run (`timings.json`); `save` adds export and writing.
    timings: Optional[PhaseTimer] = None

    @property
    def task(self) -> str:
        return self.config.task

    @property
    def preprocessor(self):
        return self.serving.preprocessor

    @property
    def label_names(self) -> List[str]:
        return list(self.info.get("label_names") or self.info.get("tag_names") or [])

    @property
    def tag_names(self) -> List[str]:
        return list(self.info.get("tag_names", []))

    @property
    def pair(self) -> bool:
        return bool(self.info.get("pair", False))

    @property
    def thresholds(self) -> Optional[List[float]]:
        return self.info.get("thresholds")

    def predict(self, *inputs, **kwargs):
        """Raw strings in, the task's decoded outputs out, computed as the export does.
        Sentence tasks: class probabilities (multilabel: per label; regression: scores);
        tagging: words and tags; qa: answers; summarization: chosen sentences."""
        return get_task(self.task).predict(self.serving, *inputs, **kwargs)

    def export(self, export_dir: str) -> str:
        """A SavedModel serving raw strings, written atomically, with its metadata."""
        if self.task == "pretrain":
            raise KbftError("A pretrain run has no raw-string export: save(OUTPUT) writes "
                            "its encoder and preprocessor (OUTPUT/encoder, "
                            "OUTPUT/preprocessor) for fine-tuning. Received: "
                            f"export_dir={export_dir!r}", argument="export_dir")
        return write_export(self.serving, export_dir, export_metadata(self.config, self.info))

    def save(self, output_dir: str, export: bool = True) -> dict:
        """`metrics.json`, `history.json`, `history.png`, `run_config.json` and `export/`."""
        return run_folder.save_run(self, output_dir, export=export)


def export_metadata(config: FineTuneConfig, info: dict) -> dict:
    """What `kbft_export.json` carries besides the serving's own description: the task's
    `info` and the whole config, from which `export.restore` rebuilds the model."""
    return {**info, "encoder": config.encoder, "config": to_json(config)}


def fine_tune(train, validation=None, config: Optional[FineTuneConfig] = None, *,
              test=None, callbacks: Sequence[keras.callbacks.Callback] = (),
              metrics: Sequence[keras.metrics.Metric] = (),
              optimizer: Optional[keras.optimizers.Optimizer] = None,
              strategy: Union[str, tf.distribute.Strategy, None] = None,
              **overrides) -> FineTuneResult:
    """Fine-tunes a BERT encoder for `config.task` with plain `model.fit`.

    Tasks: `classification` (single texts or pairs), `multilabel` (labels: a list or a
    `label_separator`-joined string per example; thresholds tuned on `validation`),
    `regression`, `tagging` (CoNLL), `qa` (SQuAD) and `summarization` (JSON lines); see
    each task's module for the data it reads.

    Args:
        train, validation: a file path, `"tfds:<name>"`, in-memory records, or the task's
            own example type. Without `validation`, `validation_split` holds out part of
            `train`. Validation picks the epoch kept (`monitor`, `patience`).
        config: a `FineTuneConfig`; keyword `overrides` replace its fields. A field set for
            a task it does not apply to is refused by name.
        test: data scored once, at the end, with the model kept; its metrics are
            `metrics["test"]`, apart from the validation metrics.
        callbacks: the user's own tf_keras callbacks, passed to `fit`.
        metrics: extra tf_keras metrics for `fit` to log.
        optimizer: a tf_keras optimizer instead of the toolkit's AdamW with warmup (then
            the config's optimisation options must stay at their defaults).
        strategy: a `tf.distribute.Strategy` or a `get_strategy` kind.

    With `output_dir`, the run backs up every `backup_steps` steps to `output_dir/backup`;
    called again with the same settings after a crash, it resumes there
    (fault_tolerance.py). A NaN/inf loss raises `NonFiniteLoss`.

    Example:
        >>> result = fine_tune("train.tsv", "dev.tsv", epochs=1, trainable_layers=2)
        >>> result.metrics["accuracy"], result.export("out/export")
    """
    timer = PhaseTimer()
    timer.startup()
    config = make_config(config, **overrides)
    _check_keras_objects(callbacks, metrics, optimizer, config)
    task = get_task(config.task)
    check_validation(config, validation)
    monitor = resolve_monitor(task, config)
    if config.output_dir:  # refused before anything is read or built
        run_folder.check(config.output_dir, overwrite=config.overwrite)
    if config.deterministic:
        enable_determinism(config.seed)
    else:
        keras.utils.set_random_seed(config.seed)
    with timer.phase("read"):
        train_data, info, val_data = read_data(task, train, validation, config)
        test_data = None if test is None else task.read(test, config, info, where="test")
    strategy = ensure_strategy(strategy or config.strategy, config.tpu_address)
    config = tpu.resolve_hardware_settings(config, strategy)
    if config.output_dir:
        run_folder.prepare(config.output_dir, overwrite=config.overwrite)
    with timer.phase("build"):
        model, encoder = build.build_model(task, config, info, strategy,
                                           tpu.encoder_load_kwargs(config.encoder, strategy))
        preprocessor = build.build_preprocessor(encoder, config, needs_vocab=task.needs_vocab)
    with timer.phase("tokenise"):
        train_features = task.featurize(train_data, preprocessor, config, info)
    if train_features is None or not len(train_features):
        raise KbftError(f"No training example of {_source(train)} can be trained on.")
    compiling = time.perf_counter()  # counting the steps, optimizer, compile, input
    padding = resolve_padding(config.padding, strategy)
    drop_remainder = padding == "static"
    # With accumulation each step takes N batches of batch_size (model.train_step splits it).
    step_batch = config.batch_size * config.accumulation_steps
    model.accumulation_steps = config.accumulation_steps
    model.log_gradient_norms = config.log_gradient_norms
    steps_per_epoch = epoch_batches(train_features.features, batch_size=step_batch,
                                    padding=padding, drop_remainder=drop_remainder)
    multipliers = learning_rate_multipliers(model, config)
    with strategy.scope():
        if optimizer is None:
            optimizer = create_optimizer(build.resolve_learning_rate(config),
                                         total_steps=max(steps_per_epoch * config.epochs, 1),
                                         warmup_ratio=config.warmup_ratio,
                                         weight_decay=config.weight_decay,
                                         bias_correction=config.bias_correction,
                                         global_clipnorm=config.clip_norm,
                                         learning_rate_multipliers=multipliers)
        model.compile(optimizer=optimizer, loss=task.loss(info),
                      metrics=[*task.fit_metrics(info), *metrics],
                      jit_compile=config.jit_compile,
                      steps_per_execution=config.steps_per_execution)
    if tpu.is_tpu(strategy):
        tpu.check_host_tokenisation(model)
    if config.verbose:
        print(model.trainable_report())
        if multipliers:
            from keras_bert_ft.training.layerwise import format_rates, rate_rows
            print(format_rates(rate_rows(model, build.resolve_learning_rate(config), multipliers)))
    backup = None
    if config.output_dir and config.backup_steps:
        backup = RunBackup(config.output_dir, fingerprint(config, train_features.digest(),
                                                          len(train_features)),
                           steps_per_epoch=steps_per_epoch, backup_steps=config.backup_steps,
                           strategy=strategy, deterministic=config.deterministic)
    train_input = training_input(train_features.features, train_features.labels, strategy,
                                 batch_size=step_batch, seed=config.seed,
                                 padding=padding, drop_remainder=drop_remainder,
                                 token_labels=task.token_labels,
                                 steps_per_epoch=steps_per_epoch,
                                 start_step=backup.start_step if backup else 0)
    timer.add("compile", time.perf_counter() - compiling)
    # Validation is scored through the task's serving after each epoch when an epoch is
    # chosen, or when the task reuses those outputs for the final evaluation (one pass and
    # one traced function fewer than Keras's own validation); else by Keras in `fit`.
    score_epochs = monitor is not None or (val_data is not None and task.reuses_predictions
                                           and not tpu.is_tpu(strategy))
    val_ds = None
    with timer.phase("tokenise"):
        val_features = (task.featurize(val_data, preprocessor, config, info)
                        if val_data is not None and not score_epochs else None)
    if val_features is not None and len(val_features):  # evaluation keeps its order
        val_ds = batches(val_features.features, val_features.labels,
                         batch_size=config.batch_size, token_labels=task.token_labels,
                         padding="static" if padding == "static" else "dynamic",
                         drop_remainder=tpu.is_tpu(strategy))
    throughput = ThroughputCallback(step_batch, len(train_features))
    guard = backup.callbacks() if backup else [StopOnNonFiniteLoss()]
    keep_best = epoch_serving = None
    if score_epochs:  # scores each epoch before the history keeper writes it
        epoch_serving = task.serving(model, preprocessor, config, info)
        def evaluate_epoch():
            with timer.phase("validation"):
                return task.evaluate(epoch_serving, val_data, config, info)[0]

        keep_best = KeepBestEpoch(
            evaluate_epoch, monitor,
            config.patience, earlier=backup.resume.history if backup and backup.resume else None,
            checkpoints=os.path.join(config.output_dir, "checkpoints") if config.output_dir
            else None, verbose=config.verbose)
    all_callbacks = [timings.callback(timer), *([keep_best] if keep_best else []), *guard,
                     throughput,
                     *run_folder.checkpoint_callbacks(config.output_dir),
                     *_unfreezing_callbacks(config), *callbacks]
    history = model.fit(train_input.data, steps_per_epoch=train_input.steps_per_epoch,
                        validation_data=val_ds, epochs=config.epochs,
                        callbacks=all_callbacks, verbose=config.verbose)
    history = history.history if backup is None else backup.full_history(history.history)
    if keep_best is not None:
        keep_best.restore(model)
    # The per-epoch serving again: its traced function serves evaluation and the export.
    serving = epoch_serving or task.serving(model, preprocessor, config, info)
    metrics, errors = {}, None
    if val_data is not None:
        with timer.phase("validation"):
            metrics, tuned = task.evaluate(serving, val_data, config, info)
            if tuned != info:  # e.g. multilabel thresholds tuned on validation
                info = tuned
                serving = task.serving(model, preprocessor, config, info)
            if config.error_examples:
                errors = task.error_analysis(serving, val_data, config, info)
    if monitor is not None:
        metrics.update(keep_best.report())
    metrics.update(train_features.stats)
    metrics["train_examples"] = metrics.get("train_examples", len(train_data))
    if val_data is not None and validation is None:
        metrics["validation_split_examples"] = len(val_data)
    metrics["train_examples_per_second"] = round(throughput.examples_per_second, 2)
    if test_data is not None:  # scored once, with the model kept
        with timer.phase("test"):
            metrics["test"] = task.evaluate(serving, test_data, config, info)[0]
    # trained: `predict` may read the weights as constants (on the host: not TPU variables)
    serving.weights_final = not tpu.is_tpu(strategy)
    return FineTuneResult(model=model, serving=serving, config=config, info=info,
                          history=_plain_history(history), metrics=metrics, strategy=strategy,
                          errors=errors, timings=timer)


def _source(data) -> str:
    return data if isinstance(data, str) else type(data).__name__


# The optimisation options an optimizer of the user's own replaces.
_OPTIMIZER_FIELDS = ("learning_rate", "warmup_ratio", "weight_decay", "bias_correction",
                     "clip_norm", "encoder_learning_rate", "layer_decay")


def _check_keras_objects(callbacks, metrics, optimizer, config) -> None:
    """The user's callbacks, metrics and optimizer are tf_keras ones; a Keras 3 object is
    refused in one line that says how to get the tf_keras one."""
    for i, callback in enumerate(callbacks):
        _check_kind(callback, f"callbacks[{i}]", "callback", keras.callbacks.Callback)
    for i, metric in enumerate(metrics):
        _check_kind(metric, f"metrics[{i}]", "metric", keras.metrics.Metric)
    if optimizer is not None:
        _check_kind(optimizer, "optimizer", "optimizer", keras.optimizers.Optimizer)
        changed = [name for name in _OPTIMIZER_FIELDS
                   if getattr(config, name) != FIELDS[name].default]
        if changed:
            raise KbftError(f"{changed[0]} does not apply with an optimizer of your own "
                            f"(it configures the toolkit's AdamW). Received: "
                            f"{changed[0]}={getattr(config, changed[0])!r}",
                            argument=changed[0])


def _check_kind(obj, name: str, kind: str, expected) -> None:
    from keras_bert_ft._keras import check_tf_keras
    check_tf_keras(obj, name, kind)
    if not isinstance(obj, expected):
        raise KbftError(f"{name} must be a tf_keras {kind} ({expected.__module__}."
                        f"{expected.__name__}). Received: {name}={obj!r}", argument=name)


def resolve_padding(padding: str, strategy) -> str:
    """`auto` -> `static` under a TPU strategy (XLA needs fixed shapes), else `bucketed`."""
    if padding != "auto":
        return padding
    return "static" if isinstance(strategy, tf.distribute.TPUStrategy) else "bucketed"


def learning_rate_multipliers(model, config: FineTuneConfig):
    """Per-variable rate factors for layer-wise decay / a separate encoder rate, or None."""
    base = build.resolve_learning_rate(config)
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


def _plain_history(history: dict) -> dict:
    return {k: [float(x) for x in v] for k, v in history.items()}


def predict_probabilities(model, preprocessor, texts, texts_pair=None, batch_size=64,
                          task: str = "classification"):
    """The main serving output of a sentence model (`tasks.sentence.output_key`) for raw
    strings, for a model built outside `fine_tune`."""
    units = int(model.output_shape[-1])
    info = {"label_names": [str(i) for i in range(units)], "pair": texts_pair is not None}
    sentence = get_task(task)
    serving = sentence.serving(model, preprocessor, None, info)
    return sentence.predict(serving, texts, texts_pair, batch_size=batch_size)
