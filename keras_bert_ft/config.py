"""FineTuneConfig: every option of a run, validated in one place, each knowing the tasks it applies to.

The CLI builds its `kbft train` flags from these fields (their help is the flag's help),
and Python callers pass the same names as keyword arguments. An option set (to a value
other than its default) for a task it does not apply to is refused by name, so nothing a
user asks for is silently dropped.
"""

import codecs
import dataclasses
from typing import Dict, Optional, Sequence, Tuple, Union

from keras_bert_ft.errors import KbftError, bad_argument

SENTENCE_TASKS = ("classification", "multilabel", "regression")
SEQUENCE_TASKS = ("tagging", "qa", "summarization")
FINE_TUNING_TASKS = SENTENCE_TASKS + SEQUENCE_TASKS
# Further pre-training (masked-LM) on the user's own text: one more task of the runner.
TASKS = FINE_TUNING_TASKS + ("pretrain",)
PADDINGS = ("bucketed", "dynamic", "static")
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
ENCODER_IMPLS = ("auto", "native", "hub")
UNFREEZE_UNITS = ("epoch", "step")
POOLINGS = ("pooled", "cls", "mean")

# "all layers", "no layer", the top k, or explicit layer indices.
TrainableSpec = Union[str, int, Sequence[int]]


def option(default, help: str, tasks: Tuple[str, ...] = TASKS):
    """A config field: its default, its help (the CLI's too) and the tasks it applies to."""
    return dataclasses.field(default=default, metadata={"help": help, "tasks": tuple(tasks)})


@dataclasses.dataclass
class FineTuneConfig:
    """Everything a fine-tuning run needs, for every task; each field's help is the CLI's help."""
    task: str = option("classification", "classification (one label, softmax), multilabel "
                       "(a sigmoid per label, thresholds tuned on validation), regression "
                       "(one score, MSE), tagging (CoNLL words), qa (SQuAD JSON), "
                       "summarization (JSON lines) or pretrain (masked-LM on plain text, "
                       "one text per line)")
    encoder: str = option("minilm-l6", "encoder preset name, TF-Hub URL, local folder or gs:// path")
    preprocessor: Optional[str] = option(
        None, "vocab.txt, preprocessor handle or preset; default: the encoder's own")
    lower_case: bool = option(True, "lower-case text (vocab.txt preprocessors only)")
    add_tokens: Optional[str] = option(
        None, "a file of whole words, one per line, appended to the vocabulary (vocab.txt "
              "preprocessors, native encoder); each new embedding row starts as the mean "
              "of the rows of the pieces the old vocabulary cut the word into")
    # Reading the data.
    text_column: str = option("sentence", "column holding the (first) text", SENTENCE_TASKS)
    text_pair_column: Optional[str] = option(
        None, "column holding the second text of a pair", SENTENCE_TASKS)
    label_column: str = option("label", "column holding the label", SENTENCE_TASKS)
    label_separator: str = option(",", "separates label names in a multilabel label cell",
                                  ("multilabel",))
    swap_pairs: bool = option(False, "also train on every pair with its two texts swapped "
                              "(for symmetric pair tasks: paraphrase, similarity)",
                              SENTENCE_TASKS)
    encoding: str = option("utf-8-sig", "text encoding of the data files")
    max_train_examples: Optional[int] = option(None, "use only the first N training examples")
    max_eval_examples: Optional[int] = option(None, "use only the first N validation examples")
    validation_split: float = option(
        0.0, "with no validation data: hold out this fraction of the training data for "
             "validation (seeded by seed; stratified by label for classification, by "
             "article for qa)")
    # The model.
    trainable_layers: TrainableSpec = option(
        "all", '"all", "none", top k, or a list of layer indices')
    train_embeddings: Optional[bool] = option(
        None, "train embeddings (default: only when all layers train)")
    reinit_layers: int = option(0, "re-initialise the top k layers and the pooler (BERT init)")
    encoder_impl: str = option(
        "auto", "native (rebuild a recognised BERT encoder as Keras layers: mixed precision "
                "reaches it), hub (run the restored SavedModel graph), or auto (native "
                "when recognised)")
    seq_length: int = option(128, "maximum tokens per model input (qa: per window), "
                             "[CLS]/[SEP] included")
    pooling: Optional[str] = option(
        None, "pooled, cls or mean; default: the preset's (mean for minilm-l6), else pooled",
        SENTENCE_TASKS)
    head_units: Sequence[int] = option((), "widths of Dense+ReLU+Dropout blocks before the "
                                       "output layer (token tasks: applied at every position)",
                                       FINE_TUNING_TASKS)
    dropout: float = option(0.1, "dropout before the output layer", FINE_TUNING_TASKS)
    # Optimisation.
    epochs: int = option(3, "passes over the training data")
    batch_size: int = option(32, "global batch size (split across replicas)")
    learning_rate: Optional[float] = option(
        None, "peak learning rate after warmup; default: the preset's (1e-4 for minilm-l6), "
              "else 5e-5")
    warmup_ratio: float = option(0.1, "fraction of steps with linear warmup")
    weight_decay: float = option(0.01, "decoupled weight decay (not on LayerNorm/bias)")
    accumulation_steps: int = option(1, "gradient accumulation: each optimizer step adds "
                                     "the gradients of N batches of batch_size (the same "
                                     "update as one batch N times larger)")
    class_weight: Optional[Union[str, Dict[str, float]]] = option(
        None, '"balanced" (weights inversely proportional to class frequency) or a mapping '
              "label name -> loss weight, e.g. neg=1,pos=5", ("classification",))
    bias_correction: bool = option(True, "Adam bias correction (false: the original BERTAdam)")
    clip_norm: Optional[float] = option(None, "clip gradients to this global norm (BERT: 1.0)")
    log_gradient_norms: bool = option(
        False, "log the L2 norm of the applied gradient per layer group (embeddings, "
               "layer_i, pooler, head), averaged over each epoch's steps: history.json "
               "grad_norm_<group>, TensorBoard and OUTPUT/gradient_norms.png (measured "
               "before clip_norm; 0 while a group is frozen)")
    encoder_learning_rate: Optional[float] = option(
        None, "peak rate of the encoder's top layer and pooler (default: learning_rate, "
              "which the head always uses)")
    layer_decay: float = option(1.0, "layer-wise rate decay: k layers below the top train at "
                                "the encoder rate x decay^k, embeddings at x decay^L")
    unfreeze_every: int = option(0, "gradual unfreezing: one more layer from the top every N "
                                 "unfreeze_units, from trainable_layers (0: off)")
    unfreeze_unit: str = option("epoch", "epoch or step")
    error_examples: int = option(100, "validation examples with the highest loss listed in "
                                 "OUTPUT/errors.tsv for error analysis (0: none)",
                                 SENTENCE_TASKS)
    # What the export serves besides the task's outputs.
    embed_pooling: str = option(
        "mean", "sentence embeddings of the export's `embed` signature: mean (masked mean of "
                "the last layer), cls ([CLS] token) or pooled (BERT's pooler)",
        FINE_TUNING_TASKS)
    embed_normalize: bool = option(False, "L2-normalise the `embed` signature's embeddings",
                                   FINE_TUNING_TASKS)
    # Choosing the epoch kept.
    monitor: Optional[str] = option(
        None, "validation metric that picks the epoch kept: the best epoch's weights are "
              "restored before evaluation and export (e.g. accuracy, f1, mcc, eval_loss; "
              "default with patience: the task's main metric)")
    patience: int = option(0, "early stopping: stop after N epochs without improvement of "
                           "monitor (0: train every epoch)")
    # Hardware.
    padding: str = option("auto", "auto (static on TPU, else bucketed), bucketed "
                          "(length-grouped batches), dynamic (per-batch length) or static")
    strategy: str = option("auto", "auto, cpu, gpu, mirrored, tpu or multiworker (TF_CONFIG)")
    tpu_address: str = option("", 'TPU to use: "" finds Colab\'s or $TPU_NAME, "local" is a '
                              "Cloud TPU VM's own, else a TPU name or grpc:// address")
    mixed_precision: Optional[str] = option(
        "auto", "auto (mixed_bfloat16 where the hardware computes bfloat16 natively: TPUs, "
                "GPUs of compute capability 8.0+, CPUs with AVX512-BF16 or AMX; else "
                "float32; kbft doctor says which), float32, mixed_bfloat16 or "
                "mixed_float16 (GPU, with loss scaling); reaches the encoder's matmuls on "
                "the native path only (see encoder_impl)")
    jit_compile: bool = option(False, "compile the train step with XLA")
    steps_per_execution: Optional[int] = option(
        None, "train steps per tf.function call; default: 32 on a TPU, else 1")
    # The run.
    seed: int = option(0, "random seed for initialisation, dropout and shuffling")
    deterministic: bool = option(False, "deterministic TensorFlow ops: the same seed gives the "
                                 "same metrics on CPU, and a resumed run the same as an "
                                 "uninterrupted one")
    output_dir: Optional[str] = option(None, "where checkpoints, logs, history and export go")
    overwrite: bool = option(False, "replace an existing non-empty output folder that is not "
                             "a kbft run folder (by default it is refused)")
    backup_steps: int = option(500, "steps between backups under OUTPUT/backup; running the "
                               "same command again resumes from the last one (0: no backups)")
    verbose: int = option(1, "0 silent, 1 progress bar, 2 one line per epoch")
    # Span QA.
    doc_stride: int = option(128, "word pieces between the starts of two context windows",
                             ("qa",))
    max_query_length: int = option(64, "question word pieces kept", ("qa",))
    max_answer_length: int = option(30, "longest answer, in word pieces", ("qa",))
    n_best_size: int = option(20, "start and end candidates per window", ("qa",))
    cloze: int = option(0, "add up to N cloze questions per training context (a name or "
                        "number of a sentence blanked; 0: none)", ("qa",))
    cloze_per_sentence: int = option(1, "cloze questions per sentence, each blanking "
                                     "another span", ("qa",))
    # Extractive summarisation.
    top_k: int = option(3, "sentences in a summary", ("summarization",))
    # Masked-LM pre-training.
    mask_rate: float = option(0.15, "fraction of the tokens chosen for prediction ([CLS], "
                              "[SEP] and padding never are); of those 80% become [MASK], "
                              "10% a random token, 10% stay", ("pretrain",))
    whole_word_masking: bool = option(True, "choose all word pieces of a word together "
                                      "(## pieces belong to the word before)", ("pretrain",))

    def validate(self) -> "FineTuneConfig":
        """Checks every field (and which apply to `task`); returns self."""
        validate(self)
        return self


def applies(name: str, task: str) -> bool:
    return task in FIELDS[name].metadata["tasks"]


FIELDS = {f.name: f for f in dataclasses.fields(FineTuneConfig)}


def not_applying(config: FineTuneConfig):
    """Names of the fields set (off their default) that do not apply to `config.task`."""
    return [name for name, field in FIELDS.items()
            if not applies(name, config.task) and getattr(config, name) != field.default]


def refuse_for_task(name: str, task: str, value=None) -> KbftError:
    tasks = FIELDS[name].metadata["tasks"] if name in FIELDS else ()
    where = f" (it applies to {', '.join(tasks)})" if tasks else ""
    return KbftError(f"{name} does not apply to task {task!r}{where}. Received: {name}={value!r}",
                     argument=name)


def _int(config, name: str, low: int, none_ok: bool = False) -> None:
    value = getattr(config, name)
    if value is None and none_ok:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise bad_argument(name, value, f"an int >= {low}" + (", or None" if none_ok else ""))


def _number(config, name: str, low: float, high: Optional[float] = None, *,
            low_open: bool = False, none_ok: bool = False) -> None:
    value = getattr(config, name)
    if value is None and none_ok:
        return
    ok = (not isinstance(value, bool) and isinstance(value, (int, float)) and value == value
          and (value > low if low_open else value >= low) and (high is None or value <= high))
    if not ok:
        bounds = f"> {low}" if low_open else f">= {low}"
        if high is not None:
            bounds += f" and <= {high}"
        raise bad_argument(name, value, f"a number {bounds}" + (", or None" if none_ok else ""))


def _choice(config, name: str, choices, none_ok: bool = False) -> None:
    value = getattr(config, name)
    if value is None and none_ok:
        return
    if value not in choices:
        raise bad_argument(name, value, f"one of {', '.join(choices)}")


def _bool(config, name: str, none_ok: bool = False) -> None:
    value = getattr(config, name)
    if not (isinstance(value, bool) or (none_ok and value is None)):
        raise bad_argument(name, value, "True or False" + (", or None" if none_ok else ""))


def validate(config: FineTuneConfig) -> None:
    """Every check of a config, in one place. Raises `KbftError` naming the field."""
    _choice(config, "task", TASKS)
    unwanted = not_applying(config)
    if unwanted:
        raise refuse_for_task(unwanted[0], config.task, getattr(config, unwanted[0]))
    for name in ("epochs", "batch_size", "doc_stride", "max_query_length",
                 "max_answer_length", "n_best_size", "top_k", "cloze_per_sentence"):
        _int(config, name, 1)
    for name in ("backup_steps", "reinit_layers", "unfreeze_every", "cloze", "verbose",
                 "patience", "error_examples"):
        _int(config, name, 0)
    for name in ("max_train_examples", "max_eval_examples", "steps_per_execution"):
        _int(config, name, 1, none_ok=True)
    _int(config, "seed", 0)
    _int(config, "accumulation_steps", 1)
    _number(config, "validation_split", 0, 0.5)
    if config.monitor is not None and (not isinstance(config.monitor, str) or not config.monitor):
        raise bad_argument("monitor", config.monitor, "a validation metric name, e.g. "
                           "accuracy or eval_loss")
    _check_class_weight(config.class_weight)
    _int(config, "seq_length", 3)
    _number(config, "learning_rate", 0, low_open=True, none_ok=True)
    _number(config, "encoder_learning_rate", 0, low_open=True, none_ok=True)
    _number(config, "clip_norm", 0, low_open=True, none_ok=True)
    _number(config, "warmup_ratio", 0, 1)
    _number(config, "weight_decay", 0)
    _number(config, "dropout", 0, 0.99)
    _number(config, "layer_decay", 0, 1, low_open=True)
    mask_rate = config.mask_rate
    if (isinstance(mask_rate, bool) or not isinstance(mask_rate, (int, float))
            or not 0 < mask_rate < 1):
        raise bad_argument("mask_rate", mask_rate, "in (0, 1)")
    for name in ("lower_case", "jit_compile", "deterministic", "bias_correction", "overwrite",
                 "swap_pairs", "embed_normalize", "whole_word_masking",
                 "log_gradient_norms"):
        _bool(config, name)
    _bool(config, "train_embeddings", none_ok=True)
    _choice(config, "padding", ("auto", *PADDINGS))
    _choice(config, "mixed_precision", PRECISIONS, none_ok=True)
    _choice(config, "encoder_impl", ENCODER_IMPLS)
    _choice(config, "unfreeze_unit", UNFREEZE_UNITS)
    _choice(config, "pooling", POOLINGS, none_ok=True)
    _choice(config, "embed_pooling", POOLINGS)
    for name in ("encoder", "text_column", "label_column", "label_separator"):
        value = getattr(config, name)
        if not isinstance(value, str) or not value:
            raise bad_argument(name, value, "a non-empty string")
    for name in ("preprocessor", "text_pair_column", "output_dir", "add_tokens"):
        value = getattr(config, name)
        if value is not None and (not isinstance(value, str) or not value):
            raise bad_argument(name, value, "a non-empty string, or None")
    if not isinstance(config.strategy, str):
        raise bad_argument("strategy", config.strategy, "a strategy name (auto, cpu, gpu, "
                           "mirrored, tpu, multiworker)")
    try:
        codecs.lookup(config.encoding)
    except (LookupError, TypeError):
        raise bad_argument("encoding", config.encoding,
                           "a text encoding Python knows (utf-8, utf-8-sig, latin-1, ...)") from None
    units = config.head_units
    if isinstance(units, (str, bytes)) or not all(
            isinstance(u, int) and not isinstance(u, bool) and u >= 1 for u in units):
        raise bad_argument("head_units", units, "a list of ints >= 1")
    _check_trainable_layers(config.trainable_layers)
    if config.unfreeze_every and not (config.trainable_layers == "none"
                                      or isinstance(config.trainable_layers, int)):
        raise bad_argument("trainable_layers", config.trainable_layers,
                           "'none' or an int k (the layers trainable before gradual "
                           "unfreezing adds more)")
    if config.add_tokens and config.encoder_impl == "hub":
        raise bad_argument("encoder_impl", config.encoder_impl, "native or auto with "
                           "add_tokens (a SavedModel graph's embedding table cannot grow)")
    if config.add_tokens and config.preprocessor and not config.preprocessor.endswith(".txt"):
        raise bad_argument("add_tokens", config.add_tokens, "used with a vocab.txt "
                           f"preprocessor (the preprocessor {config.preprocessor!r} is a "
                           "SavedModel)")
    if config.task == "pretrain" and config.encoder_impl == "hub":
        raise bad_argument("encoder_impl", config.encoder_impl, "native or auto for task "
                           "'pretrain' (the masked-LM head ties its output to the native "
                           "encoder's word-embedding table)")
    if config.tpu_address and config.strategy not in ("auto", "tpu"):
        raise bad_argument("tpu_address", config.tpu_address, f"empty unless strategy is "
                           f"auto or tpu (strategy={config.strategy!r} uses no TPU)")
    if config.task == "qa" and config.max_query_length > config.seq_length - 4:
        raise bad_argument("max_query_length", config.max_query_length,
                           f"<= seq_length - 4 = {config.seq_length - 4}, leaving room "
                           "for context")


def _check_class_weight(value) -> None:
    if value is None or value == "balanced":
        return
    if isinstance(value, dict) and value and all(
            isinstance(k, str) and not isinstance(w, bool) and isinstance(w, (int, float))
            and w >= 0 and w == w for k, w in value.items()):
        return
    raise bad_argument("class_weight", value, '"balanced" or a mapping of label names to '
                       "weights >= 0, e.g. neg=1,pos=5")


def _check_trainable_layers(spec) -> None:
    if spec in ("all", "none"):
        return
    if isinstance(spec, int) and not isinstance(spec, bool) and spec >= 0:
        return
    if (isinstance(spec, (list, tuple)) and spec
            and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in spec)):
        return
    raise bad_argument("trainable_layers", spec, '"all", "none", an int k >= 0 or a list of '
                       "layer indices")


def make_config(config: Optional[FineTuneConfig] = None, **overrides) -> FineTuneConfig:
    """`config` (or the defaults) with `overrides` applied, validated. An unknown name is
    refused with the list of fields."""
    unknown = sorted(set(overrides) - set(FIELDS))
    if unknown:
        raise bad_argument(unknown[0], overrides[unknown[0]],
                           f"a FineTuneConfig field ({', '.join(FIELDS)})")
    if config is not None and not isinstance(config, FineTuneConfig):
        raise bad_argument("config", type(config).__name__, "a FineTuneConfig")
    config = dataclasses.replace(config or FineTuneConfig(), **overrides)
    if isinstance(config.head_units, list):
        config.head_units = tuple(config.head_units)
    return config.validate()


def to_json(config: FineTuneConfig) -> dict:
    values = dataclasses.asdict(config)
    values["head_units"] = list(values["head_units"])
    return values


def from_json(values: dict) -> FineTuneConfig:
    """A config from `to_json` output (unknown keys ignored: the run folder holds more)."""
    config = FineTuneConfig(**{k: v for k, v in values.items() if k in FIELDS})
    if isinstance(config.trainable_layers, list):
        config.trainable_layers = list(config.trainable_layers)
    config.head_units = tuple(config.head_units or ())
    return config
