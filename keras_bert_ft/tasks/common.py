"""What the sequence tasks share: their config, model building and fitting, serving and export.

Each task (tagging, span QA, extractive summarisation) turns raw text into features with
one graph function, used eagerly to build training arrays and inside the export, so the
exported model sees exactly what training saw. Metrics are computed in numpy from
predictions gathered on the host, so they are exact under any distribution strategy.
"""

import contextlib
import dataclasses
import json
import math
import os
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import tensorflow as tf

from keras_bert_ft._keras import keras
from keras_bert_ft.data import examples as data_lib
from keras_bert_ft.export import saved_model as export_lib
from keras_bert_ft.encoders.hub_encoder import HubEncoder, TrainableSpec
from keras_bert_ft.errors import KbftError, bad_argument
from keras_bert_ft.encoders.native import make_encoder
from keras_bert_ft.training.optimization import create_optimizer
from keras_bert_ft.data.preprocessing import (INPUT_KEYS, Preprocessor, check_seq_length,
                                         trim_to_longest)
from keras_bert_ft.training.strategy import get_strategy
from keras_bert_ft.training import runner as training
from keras_bert_ft.tasks import TASKS
IGNORE = -1  # label of positions / sentences left out of the loss


def _field(default, help: str):
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass
class TaskConfig:
    """A sequence-task run; each field's help is the CLI's help."""
    encoder: str = _field("minilm-l6", "encoder preset name, TF-Hub URL, local folder or gs:// path")
    preprocessor: Optional[str] = _field(
        None, "vocab.txt (or a folder with assets/vocab.txt); default: the encoder's own")
    lower_case: bool = _field(True, "lower-case text (vocab.txt preprocessors only)")
    epochs: int = _field(3, "passes over the training data")
    batch_size: int = _field(32, "global batch size (split across replicas)")
    learning_rate: float = _field(5e-5, "peak learning rate after warmup")
    warmup_ratio: float = _field(0.1, "fraction of steps with linear warmup")
    weight_decay: float = _field(0.01, "decoupled weight decay (not on LayerNorm/bias)")
    trainable_layers: TrainableSpec = _field("all", '"all", "none", top k, or a list of layer indices')
    train_embeddings: Optional[bool] = _field(None, "train embeddings (default: only when all layers train)")
    seq_length: int = _field(128, "tokens per model input (QA: per window), specials included")
    padding: str = _field("auto", "training batches: auto (static on TPU, else bucketed), "
                          "bucketed (length-grouped), dynamic (per-batch length) or static")
    dropout: float = _field(0.1, "dropout before the task's output layer")
    strategy: str = _field("auto", "auto, cpu, gpu, mirrored or tpu")
    seed: int = _field(0, "random seed for initialisation, dropout and shuffling")
    max_train_examples: Optional[int] = _field(None, "use only the first N training examples")
    max_eval_examples: Optional[int] = _field(None, "use only the first N validation examples")
    output_dir: Optional[str] = _field(None, "where checkpoints, logs, history and export go")
    encoding: str = _field("utf-8", "text encoding of the data files")
    verbose: int = _field(1, "0 silent, 1 progress bar, 2 one line per epoch")
    doc_stride: int = _field(128, "qa: word pieces between the starts of two context windows")
    max_query_length: int = _field(64, "qa: question word pieces kept")
    max_answer_length: int = _field(30, "qa: longest answer, in word pieces")
    n_best_size: int = _field(20, "qa: start and end candidates per window")
    top_k: int = _field(3, "summarization: sentences in a summary")
    cloze: int = _field(0, "qa: add up to N cloze questions per training context "
                        "(a name or number of a sentence blanked; 0: none)")
    cloze_per_sentence: int = _field(1, "qa: cloze questions per sentence, each blanking "
                                     "another span")
    encoder_impl: str = _field(
        "auto", "native (rebuilt as tf-models BertEncoder: mixed precision reaches it), hub "
                "(the restored SavedModel graph) or auto (native when recognised)")
    mixed_precision: Optional[str] = _field(
        None, "mixed_bfloat16 or mixed_float16 (native encoder path); default float32")
    encoder_learning_rate: Optional[float] = _field(
        None, "peak rate of the encoder's top layer (default: learning_rate, the head's)")
    layer_decay: float = _field(1.0, "layer-wise rate decay: k layers below the top train "
                                "at the encoder rate x decay^k, embeddings at x decay^L")

    def validate(self) -> "TaskConfig":
        for name in ("epochs", "batch_size", "doc_stride", "max_query_length",
                     "max_answer_length", "n_best_size", "top_k", "cloze_per_sentence"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise bad_argument(name, value, "an int >= 1")
        if isinstance(self.cloze, bool) or not isinstance(self.cloze, int) or self.cloze < 0:
            raise bad_argument("cloze", self.cloze, "an int >= 0")
        check_seq_length(self.seq_length)
        if not (isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0):
            raise bad_argument("learning_rate", self.learning_rate, "a float > 0")
        if self.padding not in ("auto", *data_lib.PADDINGS):
            raise bad_argument("padding", self.padding,
                               f"one of auto, {', '.join(data_lib.PADDINGS)}")
        training.check_encoder_settings(self)
        training.check_layer_rates(self)
        return self


def resolve(config: Optional[TaskConfig], overrides: dict, strategy):
    """The validated config (overrides applied), seeded, and its strategy."""
    fields = {f.name for f in dataclasses.fields(TaskConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise bad_argument(unknown[0], overrides[unknown[0]],
                           f"a TaskConfig field ({', '.join(sorted(fields))})")
    config = dataclasses.replace(config or TaskConfig(), **overrides).validate()
    keras.utils.set_random_seed(config.seed)
    strategy = strategy or config.strategy
    if isinstance(strategy, str):
        strategy = get_strategy(strategy)
    return config, strategy


@contextlib.contextmanager
def model_scope(config: TaskConfig, strategy):
    """Where a task's layers are built: the strategy's scope, under the run's precision."""
    with strategy.scope(), training.precision_policy(config.mixed_precision):
        yield


def build_encoder(config: TaskConfig, strategy) -> HubEncoder:
    """The encoder: native when recognised (see `encoder_impl`), else the restored graph."""
    with model_scope(config, strategy):
        encoder = make_encoder(config.encoder, config.encoder_impl,
                               trainable_layers=config.trainable_layers,
                               train_embeddings=config.train_embeddings)
    check_seq_length(config.seq_length, encoder.max_seq_length)
    from keras_bert_ft.tasks.models import leave_pooler_untrained
    leave_pooler_untrained(encoder)  # the task heads read the sequence output
    return encoder


def task_preprocessor(encoder: HubEncoder, config: TaskConfig) -> Preprocessor:
    """A vocab.txt preprocessor (the tasks need word-piece offsets): the one named, the
    vocab of a named preprocessor folder, else the encoder's own."""
    handle = config.preprocessor
    if handle and not handle.endswith(".txt"):
        from keras_bert_ft.encoders import presets
        vocab = os.path.join(presets.resolve_preprocessor(handle), "assets", "vocab.txt")
        if not os.path.isfile(vocab):
            raise bad_argument("preprocessor", handle, "a vocab.txt, or a folder holding "
                               "assets/vocab.txt (tagging, QA and summarisation need offsets)")
        return Preprocessor.from_vocab(vocab, lower_case=config.lower_case,
                                       seq_length=config.seq_length)
    preprocessor = training.default_preprocessor(encoder, config)
    if preprocessor._hub_module is not None:
        raise bad_argument("preprocessor", config.preprocessor,
                           "a vocab.txt (the encoder carries none, and these tasks need "
                           "word-piece offsets)")
    return preprocessor


def compile_model(model, config: TaskConfig, strategy, loss, train_items: int):
    """AdamW with warmup + linear decay over the run's steps, and the task's loss."""
    steps = math.ceil(train_items / config.batch_size) * config.epochs
    multipliers = training.learning_rate_multipliers(model, config)
    with strategy.scope():
        optimizer = create_optimizer(config.learning_rate, total_steps=max(steps, 1),
                                     warmup_ratio=config.warmup_ratio,
                                     weight_decay=config.weight_decay,
                                     learning_rate_multipliers=multipliers)
        model.compile(optimizer=optimizer, loss=loss)
    if config.verbose:
        print(model.trainable_report())
    return model


def fit(model, dataset, config: TaskConfig, train_items: int, callbacks=()):
    """Plain `model.fit`; returns (history dict, examples per second)."""
    throughput = training.ThroughputCallback(config.batch_size, train_items)
    history = model.fit(dataset, epochs=config.epochs, verbose=config.verbose,
                        callbacks=[throughput, *training._output_callbacks(config.output_dir),
                                   *callbacks])
    return training._plain_history(history.history), round(throughput.examples_per_second, 2)


def arrays_dataset(features: Dict[str, np.ndarray], labels: np.ndarray, config: TaskConfig,
                   strategy, *, token_labels: bool = False) -> tf.data.Dataset:
    """Shuffled training batches of (features, labels) from padded arrays.

    `config.padding`: `bucketed` batches inputs of similar length together (batches
    shuffled) and cuts each batch to its longest input (rounded up to 8), so short
    inputs stop paying for long ones; `dynamic` only cuts; `static` keeps
    `seq_length` and full batches (TPUs need fixed shapes; `auto` picks it there).
    `token_labels` cuts per-token labels with their inputs.
    """
    padding = training.resolve_padding(config.padding, strategy)
    dataset = tf.data.Dataset.from_tensor_slices((features, labels))
    dataset = dataset.shuffle(len(labels), seed=config.seed, reshuffle_each_iteration=True)
    if padding == "bucketed":
        boundaries = data_lib._bucket_boundaries(int(features["input_mask"].shape[1]))
        dataset = dataset.bucket_by_sequence_length(
            lambda x, y: tf.reduce_sum(x["input_mask"]), boundaries,
            [config.batch_size] * (len(boundaries) + 1))
        dataset = dataset.shuffle(64, seed=config.seed)
    else:
        dataset = dataset.batch(config.batch_size, drop_remainder=(
            padding == "static" and len(labels) >= config.batch_size))

    def trim(batch, y):
        batch = trim_to_longest(batch)
        if token_labels:
            y = y[:, :tf.shape(batch["input_mask"])[1]]
        return batch, y

    if padding != "static":
        dataset = dataset.map(trim)
    return dataset.prefetch(tf.data.AUTOTUNE)


def pad_features(features: Dict[str, tf.Tensor], seq_length: int) -> Dict[str, np.ndarray]:
    """Model inputs as numpy arrays padded to `seq_length` (other keys unchanged)."""
    out = {}
    for key, value in features.items():
        value = np.asarray(value)
        if key in INPUT_KEYS and value.shape[1] < seq_length:
            value = np.pad(value, [(0, 0), (0, seq_length - value.shape[1])])
        out[key] = value
    return out


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


class TaskServing(tf.Module):
    """A task's raw-text serving function (`serve_fn`, a tf.function with an input
    signature) with the model and tokenizer it closes over: `predict` and the export
    run this same function."""

    task = ""
    input_names: Sequence[str] = ()

    def __init__(self, model, preprocessor: Preprocessor, info: dict):
        super().__init__(name=f"kbft_{self.task}")
        self.model = model
        self.preprocessor = preprocessor
        # JSON, not a dict attribute: tf.Module would wrap a dict as a trackable
        self._info_json = json.dumps(dict(info, task=self.task,
                                          seq_length=int(preprocessor.seq_length)))
        spec = tf.TensorSpec([None], tf.string)
        # autograph off: the graph has no Python control flow, and converting tf-text
        # internals made tracing several times slower
        self.serve_fn = tf.function(self.serve, input_signature=[spec] * len(self.input_names),
                                    autograph=False)

    @property
    def info(self) -> dict:
        return json.loads(self._info_json)

    def serve(self, *inputs) -> Dict[str, tf.Tensor]:
        """Subclasses name their parameters after `input_names`: they name the signature's inputs."""
        raise NotImplementedError

    def run(self, *columns, batch_size: int = 32) -> List[Dict[str, np.ndarray]]:
        """`serve_fn` over Python string lists in batches: numpy outputs per batch."""
        return run_batches(lambda *b: self.serve_fn(*b), columns, batch_size)


def run_batches(fn: Callable, columns, batch_size: int) -> List[Dict[str, np.ndarray]]:
    n = len(columns[0])
    if any(len(c) != n for c in columns):
        raise bad_argument("inputs", [len(c) for c in columns], "lists of equal length")
    out = []
    for start in range(0, n, batch_size):
        batch = [tf.constant([str(x) for x in c[start:start + batch_size]], tf.string)
                 for c in columns]
        out.append({k: v.numpy() for k, v in fn(*batch).items()})
    return out


def export_serving(serving: TaskServing, export_dir: str, metadata: Optional[dict] = None) -> str:
    """Writes `serving.serve_fn` as `serving_default`, atomically (temp folder + rename),
    with the task's metadata in `kbft_export.json`."""
    if not isinstance(export_dir, str) or not export_dir:
        raise bad_argument("export_dir", export_dir, "a folder path")
    info = {**serving.info, **(metadata or {})}
    export_lib._atomic_write(
        export_dir, lambda tmp: export_lib._save(serving, serving.serve_fn, tmp, info))
    return export_dir


def run_export(export_dir: str, *columns, batch_size: int = 32):
    """An export's `serving_default` over Python string lists: (metadata, batch outputs)."""
    meta = export_lib.read_metadata(export_dir)
    if meta.get("task") not in TASKS:
        raise bad_argument("export_dir", export_dir,
                           f"an export of one of the tasks {', '.join(TASKS)}")
    serve = export_lib.load_export(export_dir).signatures["serving_default"]
    names = meta["inputs"]
    if len(columns) != len(names):
        raise bad_argument("inputs", len(columns), f"{len(names)} lists ({', '.join(names)})")
    return meta, run_batches(lambda *b: serve(**dict(zip(names, b))), columns, batch_size)


@dataclasses.dataclass
class TaskResult:
    """A trained task model with its serving function, history and validation metrics."""
    task: str
    model: keras.Model
    serving: TaskServing
    config: TaskConfig
    history: dict
    metrics: dict
    strategy: Union[tf.distribute.Strategy, None] = None

    @property
    def preprocessor(self) -> Preprocessor:
        return self.serving.preprocessor

    def export(self, export_dir: str) -> str:
        return export_serving(self.serving, export_dir,
                              {"encoder": self.config.encoder, "inputs": list(self.serving.input_names)})

    def save(self, output_dir: str, export: bool = True) -> dict:
        """Writes `metrics.json`, `history.json`, `history.png`, `run_config.json` and
        (with `export`) `export/` under `output_dir`."""
        os.makedirs(output_dir, exist_ok=True)
        paths = {}
        if export:
            paths["export"] = self.export(os.path.join(output_dir, "export"))
        training._write_json(os.path.join(output_dir, "metrics.json"), self.metrics)
        training._write_json(os.path.join(output_dir, "history.json"), self.history)
        run_config = dataclasses.asdict(self.config)
        run_config.update((k, v) for k, v in self.serving.info.items() if k != "seq_length")
        training._write_json(os.path.join(output_dir, "run_config.json"), run_config)
        paths["plot"] = training.plot_history(self.history, os.path.join(output_dir, "history.png"))
        return paths


def check_labels_known(values, known, where: str) -> None:
    unseen = sorted(set(values) - set(known))
    if unseen:
        raise KbftError(f"{where} has labels unseen in training: {unseen[:10]} "
                        f"(training labels: {list(known)[:20]}).")
