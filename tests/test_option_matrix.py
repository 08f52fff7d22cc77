"""Every FineTuneConfig field x every task: the option is HONOURED (it has an effect this
file observes on a tiny run of that task) or REFUSED by name (Python and `kbft train`,
before any model is built).

The matrix is `config.FIELDS x config.TASKS`, so a new field fails here until it has a
check in `HONOURED` (and a value in `REFUSE_VALUES` when some task refuses it). Runs are
shared: each task trains three tiny runs and starts two more (module-scoped, built on
first use), each setting many non-default options at once, and each option is checked on
the run that sets it, against a run that leaves it at its default:

- `main`: 2 epochs of data read from latin-1 files with custom columns, a cased
  vocab.txt preprocessor, layer-wise rates, re-init, static padding, a run folder with
  backups, verbose 2.
- `det_a`, `det_b`: identical deterministic runs (seed 5) of the hub encoder with gradual
  unfreezing per step and dynamic padding.
- `probe_seed` (`det_a` with seed 6) and `probe_hw` (MirroredStrategy, XLA,
  mixed_bfloat16, validation cut to 5 examples) stop at `on_train_begin`: everything
  they check (initial weights, the compiled model and its strategy, the data the runner
  read) exists before the first step, and XLA under MirroredStrategy on this machine's
  two logical CPUs cannot run anyway.
"""

import contextlib
import dataclasses
import io
import json
import math
import os
import re
import time
from typing import Callable, Dict, List, Optional

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework import config as tf_config

from keras_bert_ft import cli
from keras_bert_ft._keras import keras
from keras_bert_ft.cli.app import flag_of
from keras_bert_ft.config import (FIELDS, FINE_TUNING_TASKS, SENTENCE_TASKS, TASKS, applies,
                                  make_config)
from keras_bert_ft.encoders.hub_encoder import HubEncoder
from keras_bert_ft.encoders.native import NativeEncoder
from keras_bert_ft.errors import KbftError
from keras_bert_ft.tasks import get_task
from keras_bert_ft.tasks import qa as qa_lib
from keras_bert_ft.tasks.qa import QAExample
from keras_bert_ft.training import build, runner

from conftest import NEGATIVE, POSITIVE, VOCAB

THINGS = ["movie", "film", "plot", "acting"]
FILLER = ["the", "a", "was", "is", "not", "it", "and"]
MODEL_NAMES = {"classification": "classifier", "multilabel": "multilabel_classifier",
               "regression": "regressor", "tagging": "tagger", "qa": "span_qa",
               "summarization": "extractive_summarizer"}
LATIN = "café"  # "é" is one byte in latin-1 and not valid UTF-8 on its own
TRAIN_ROWS, EVAL_ROWS = 20, 8

# ------------------------------------------------------------------------ the runs' options

MAIN = dict(epochs=2, batch_size=4, max_train_examples=12,
            learning_rate=2e-3, warmup_ratio=0.5, weight_decay=0.03, bias_correction=False,
            clip_norm=0.5, encoder_learning_rate=1e-3, layer_decay=0.5, trainable_layers=1,
            train_embeddings=True, reinit_layers=1, seq_length=32, head_units=(8,),
            dropout=0.2, padding="static", strategy="cpu", steps_per_execution=2, seed=3,
            overwrite=True, backup_steps=4, verbose=2, lower_case=False, encoding="latin-1",
            log_gradient_norms=True)
COLUMNS = dict(text_column="txt", text_pair_column="txt2", label_column="y")
MAIN_TASK = {
    "classification": dict(COLUMNS, pooling="mean"),
    "multilabel": dict(COLUMNS, pooling="mean", label_separator=";"),
    "regression": dict(COLUMNS, pooling="mean"),
    "tagging": {},
    "qa": dict(doc_stride=6, max_query_length=6, max_answer_length=5, n_best_size=7,
               cloze=2, cloze_per_sentence=3),
    "summarization": dict(top_k=2),
}
DET = dict(epochs=1, batch_size=4, seq_length=24, deterministic=True, seed=5,
           encoder_impl="hub", trainable_layers="none", unfreeze_every=2,
           unfreeze_unit="step", padding="dynamic", verbose=0)
HARDWARE = dict(epochs=1, batch_size=4, seq_length=24, strategy="mirrored", jit_compile=True,
                mixed_precision="mixed_bfloat16", max_eval_examples=5, verbose=0)
QA_WINDOWS = dict(doc_stride=6, max_query_length=6)  # what seq_length 24 needs
SMALL_TASK = {"classification": dict(pooling="cls"), "multilabel": dict(pooling="cls"),
              "regression": dict(pooling="cls"), "qa": QA_WINDOWS}

# `choice`: a validation split of the training data picks the epoch kept (a metric other
# than the task's main one), with early stopping, accumulation and error analysis.
CHOICE = dict(epochs=3, batch_size=2, seq_length=24, validation_split=0.25, patience=1,
              accumulation_steps=2, embed_pooling="cls", embed_normalize=True, verbose=0)
PAIRS_SWAPPED = dict(pooling="cls", error_examples=3, text_pair_column="sentence2",
                     swap_pairs=True)
CHOICE_TASK = {"classification": dict(PAIRS_SWAPPED, monitor="eval_loss",
                                      class_weight="balanced"),
               "multilabel": dict(PAIRS_SWAPPED, monitor="eval_loss"),
               "regression": dict(PAIRS_SWAPPED, monitor="mse"),
               "tagging": dict(monitor="token_accuracy"),
               "qa": dict(QA_WINDOWS, monitor="exact_match"),
               "summarization": dict(monitor="rouge1")}

# A value other than the default for each field some task refuses; `kbft train` gets
# str(value).
REFUSE_VALUES = dict(text_column="txt", text_pair_column="txt2", label_column="y",
                     label_separator=";", pooling="mean", doc_stride=8, max_query_length=4,
                     max_answer_length=5, n_best_size=5, cloze=2, cloze_per_sentence=2,
                     top_k=2, class_weight="balanced", error_examples=3, swap_pairs=True,
                     head_units=(8,), dropout=0.2, embed_pooling="cls", embed_normalize=True,
                     mask_rate=0.3, whole_word_masking=False)


# ------------------------------------------------------------------------------ tiny data

def write_latin1(path, text: str) -> str:
    with open(path, "w", encoding="latin-1") as f:
        f.write(text)
    return str(path)


def sentence_rows(task: str, n: int, seed: int, pair: bool):
    """Toy sentiment rows: `label` is the class (with accents), the label set or a score."""
    rng = np.random.RandomState(seed)
    rows = []
    for i in range(n):
        positive = i % 2 == 0
        words = list(rng.choice(POSITIVE if positive else NEGATIVE, 2))
        if task == "multilabel" and i % 3 == 0:
            words[1] = rng.choice(NEGATIVE if positive else POSITIVE)
        text = f"the movie was {words[0]} and {words[1]}"
        if task == "classification":
            label = "positif" if positive else "négatif"
        elif task == "multilabel":
            label = sorted({"pos" for w in words if w in POSITIVE}
                           | {"nég" for w in words if w in NEGATIVE}
                           | ({"question"} if i % 4 == 1 else set()))
        else:
            label = float(sum(w in POSITIVE for w in words) - sum(w in NEGATIVE for w in words))
        row = {"sentence": text, "label": label}
        if pair:
            row["sentence2"] = f"it is {rng.choice(POSITIVE if positive else NEGATIVE)}"
        rows.append(row)
    return rows


def sentence_file(path, task: str, n: int, seed: int) -> str:
    """Latin-1 TSV with the columns txt, txt2, y only (none of the default names)."""
    lines = ["txt\ttxt2\ty"]
    for row in sentence_rows(task, n, seed, pair=True):
        label = ";".join(row["label"]) if task == "multilabel" else row["label"]
        lines.append(f"{row['sentence']} {LATIN}\t{row['sentence2']}\t{label}")
    return write_latin1(path, "\n".join(lines) + "\n")


def tagged_sentence(rng, accented: bool = False):
    words, tags = [], []
    for _ in range(rng.randint(2, 5)):
        r = rng.rand()
        if r < 0.3:
            words.append(rng.choice(["good", "great", "love"]))
            tags.append("B-POS")
        elif r < 0.6:
            words.append(rng.choice(THINGS))
            tags.append("B-OBJ")
        else:
            words.append(rng.choice(FILLER))
            tags.append("O")
    if accented:
        words.append(LATIN)
        tags.append("B-CAFÉ")
    return {"tokens": words, "tags": tags}


def conll_file(path, n: int, seed: int) -> str:
    rng = np.random.RandomState(seed)
    blocks = []
    for _ in range(n):
        row = tagged_sentence(rng, accented=True)
        blocks.append("\n".join(f"{w} {t}" for w, t in zip(row["tokens"], row["tags"])))
    return write_latin1(path, "\n\n".join(blocks) + "\n")


def cloze_context_example(i: int, rng) -> QAExample:
    """The answer in one sentence, and one that cloze questions can blank (three
    name/number spans: Charles, London, the year)."""
    thing, answer = THINGS[i % 4], POSITIVE[(i // 4) % 4]
    before = f"{' '.join(rng.choice(FILLER, 2))} the {thing} was "
    context = (f"{before}{answer} at the {LATIN} . it was seen by Charles in London in "
               f"{1800 + i} .")
    return QAExample(f"how is the {thing} ?", context, [answer], [len(before)], qid=str(i))


def squad_file(path, n: int, seed: int) -> str:
    rng = np.random.RandomState(seed)
    articles = []
    for i in range(n):
        ex = cloze_context_example(i + 100 * seed, rng)
        articles.append({"title": f"t{i}", "paragraphs": [{"context": ex.context, "qas": [
            {"id": ex.qid, "question": ex.question,
             "answers": [{"text": ex.answers[0], "answer_start": ex.answer_starts[0]}]}]}]})
    return write_latin1(path, json.dumps({"data": articles}, ensure_ascii=False))


def short_qa_example(rng) -> QAExample:
    """A context that fits one short window (dynamic padding trims it)."""
    words = list(rng.choice(FILLER, rng.randint(1, 3)))
    thing, answer = rng.choice(THINGS), rng.choice(POSITIVE)
    at = rng.randint(0, len(words) + 1)
    words[at:at] = [thing, answer]
    start = len(" ".join(words[:at + 1])) + 1
    return QAExample(f"how is the {thing} ?", " ".join(words), [answer], [start])


def document(rng, short: bool = False, accented: bool = False):
    n = rng.randint(2, 4) if short else rng.randint(3, 6)
    longest = 2 if short else 4
    sentences = [" ".join(rng.choice(FILLER + THINGS + POSITIVE, rng.randint(1, longest + 1)))
                 + " ." for _ in range(n)]
    if accented:
        sentences[0] = f"{LATIN} {sentences[0]}"
    return {"sentences": sentences, "labels": [1, 1] + [0] * (n - 2)}


def jsonl_file(path, n: int, seed: int) -> str:
    rng = np.random.RandomState(seed)
    lines = [json.dumps(document(rng, accented=True), ensure_ascii=False) for _ in range(n)]
    return write_latin1(path, "\n".join(lines) + "\n")


def main_file(task: str, folder) -> str:
    """The main run's training data: a latin-1 file of TRAIN_ROWS examples."""
    if task in SENTENCE_TASKS:
        return sentence_file(folder / "train.tsv", task, TRAIN_ROWS, 0)
    make, ext = {"tagging": (conll_file, "conll"), "qa": (squad_file, "json"),
                 "summarization": (jsonl_file, "jsonl")}[task]
    return make(folder / f"train.{ext}", TRAIN_ROWS, 0)


def small_data(task: str, n: int, seed: int):
    """In-memory training records with the default columns."""
    rng = np.random.RandomState(seed)
    if task in SENTENCE_TASKS:
        return sentence_rows(task, n, seed, pair=False)
    if task == "tagging":
        return [tagged_sentence(rng) for _ in range(n)]
    if task == "qa":
        return [short_qa_example(rng) for _ in range(n)]
    return [document(rng, short=True) for _ in range(n)]


# ----------------------------------------------------------------------------- observing

class StopProbe(Exception):
    """Ends a probe run at `on_train_begin`."""


class Observer(keras.callbacks.Callback):
    """What a run did, seen from inside `fit`: steps, trainable groups over time, the
    weights training started from, op determinism, and backups in the run folder."""

    def __init__(self, output_dir: Optional[str] = None, keep_weights: bool = False,
                 probe: bool = False):
        super().__init__()
        self.output_dir = output_dir
        self.keep_weights = keep_weights
        self.probe = probe
        self.batch_groups: List[List[str]] = []
        self.backups: List[tuple] = []  # (global step, a backup exists) per batch end
        self.begin_weights = None
        self.epoch = 0

    @property
    def encoder(self):
        return self.model.get_layer("encoder")

    def on_train_begin(self, logs=None):
        self.steps, self.epochs = self.params.get("steps"), self.params.get("epochs")
        self.begin_groups = list(self.encoder.trainable_groups)
        self.determinism = tf_config.is_op_determinism_enabled()
        encoder_ids = {id(v) for v in self.encoder.weights}
        self.head_begin = [v.numpy() for v in self.model.weights if id(v) not in encoder_ids]
        if self.keep_weights:
            self.begin_weights = {g: [v.numpy() for v in vs]
                                  for g, vs in self.encoder.layer_groups().items()}
        if self.output_dir:
            self.backup_run_file = os.path.isfile(
                os.path.join(self.output_dir, "backup", "run.json"))
        self.strategy = self.model.distribute_strategy
        if self.probe:
            raise StopProbe()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self.batch_groups.append(list(self.encoder.trainable_groups))
        if self.output_dir:
            found = [f for _, _, files in os.walk(os.path.join(self.output_dir, "backup"))
                     for f in files if f.endswith(".index")]
            self.backups.append((self.epoch * self.steps + batch + 1, bool(found)))

    def on_train_end(self, logs=None):
        self.end_groups = list(self.encoder.trainable_groups)


@dataclasses.dataclass
class Run:
    result: object  # None for a probe
    seen: Observer
    batches: List[tuple]  # (rows, width, longest input) of one epoch of training input
    read: tuple  # what the runner read: (training examples, info, validation examples)
    stdout: str
    config: object

    @property
    def model(self):
        return self.seen.model

    @property
    def metrics(self):
        return self.result.metrics


@dataclasses.dataclass
class TaskRuns:
    task: str
    main: Run
    det_a: Run
    det_b: Run
    probe_seed: Run
    probe_hw: Run
    choice: Run
    train_file: str
    encoder: str
    vocab: str
    folder: object


def train(train_data, validation, *, keep_weights: bool = False, probe: bool = False,
          **options) -> Run:
    """A run of `fine_tune` with `options` in its config, observed; a probe stops when
    training would begin."""
    config = make_config(**options)
    seen = Observer(config.output_dir, keep_weights, probe)
    inputs, read, stdout = [], [], io.StringIO()

    def spy(function, calls):
        def call(*args, **kwargs):
            calls.append(function(*args, **kwargs))
            return calls[-1]
        return call

    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(stdout):
        patch.setattr(runner, "training_input", spy(runner.training_input, inputs))
        patch.setattr(runner, "read_data", spy(runner.read_data, read))
        try:
            result = runner.fine_tune(train_data, validation, config, callbacks=[seen])
        except StopProbe:
            result = None
    fed = inputs[-1]
    batches = []
    for features, _ in fed.data.take(fed.steps_per_epoch):
        mask = features["input_mask"].numpy()
        batches.append((mask.shape[0], mask.shape[1], int(mask.sum(axis=1).max())))
    return Run(result, seen, batches, read[-1], stdout.getvalue(), config)


def build_runs(task: str, encoder: str, vocab: str, folder) -> TaskRuns:
    train_file = main_file(task, folder)
    out = folder / "run"
    out.mkdir()
    (out / "notes.txt").write_text("someone else's file")  # replaced: overwrite=True
    main = train(train_file, None, keep_weights=True, task=task, encoder=encoder,
                 preprocessor=vocab, output_dir=str(out), **MAIN, **MAIN_TASK[task])
    small = SMALL_TASK.get(task, {})
    probe_hw = train(small_data(task, 8, 1), small_data(task, EVAL_ROWS, 3), probe=True,
                     keep_weights=True, task=task, encoder=encoder, **HARDWARE, **small)
    was_deterministic = tf_config.is_op_determinism_enabled()
    try:
        det_a, det_b = (train(small_data(task, 8, 2), None, task=task, encoder=encoder,
                              **DET, **small) for _ in range(2))
        probe_seed = train(small_data(task, 8, 2), None, probe=True, task=task,
                           encoder=encoder, **dict(DET, seed=6), **small)
    finally:  # process-wide: the next task's runs start without it
        if not was_deterministic:
            tf_config.disable_op_determinism()
    choice_data = (sentence_rows(task, 12, 4, pair=True) if task in SENTENCE_TASKS
                   else small_data(task, 12, 4))
    choice = train(choice_data, None, task=task, encoder=encoder,
                   **CHOICE, **CHOICE_TASK[task])
    return TaskRuns(task, main, det_a, det_b, probe_seed, probe_hw, choice, train_file=train_file,
                    encoder=encoder, vocab=vocab, folder=folder)


@pytest.fixture(scope="module")
def matrix(encoder2, vocab_file, tmp_path_factory):
    """task -> its TaskRuns, trained on first use (a failure is reported once, then
    only named)."""
    cache = {}

    def get(task: str) -> TaskRuns:
        if task not in cache:
            cache[task] = None
            cache[task] = build_runs(task, encoder2, vocab_file,
                                     tmp_path_factory.mktemp(f"options-{task}"))
        if cache[task] is None:
            pytest.fail(f"the {task} runs failed (see the first {task} test)")
        return cache[task]
    return get


@contextlib.contextmanager
def no_model_built():
    """Fails the test if the runner builds a model inside the block."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was built before the option was refused")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(build, "build_model", refuse)
        yield


def refused_fast(call: Callable, *needles: str, seconds: float = 3.0) -> str:
    """`call()` raises a one-line KbftError naming each needle, quickly, before any model
    is built. Returns the message."""
    start = time.perf_counter()
    with no_model_built(), pytest.raises(KbftError) as err:
        call()
    elapsed = time.perf_counter() - start
    message = str(err.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, (needle, message)
    assert elapsed < seconds, f"refusal took {elapsed:.1f}s: {message}"
    return message


def trainable_layers_of(groups) -> List[str]:
    return [g for g in groups if g.startswith("layer_")]


def optimizer_of(run: Run):
    return run.model.optimizer


def multipliers_by_group(run: Run) -> Dict[str, set]:
    factors = optimizer_of(run).learning_rate_multipliers
    return {g: {round(factors.get(v.name.split(":")[0], 1.0), 9) for v in vs}
            for g, vs in run.model.encoder.layer_groups().items()}


def train_rows(run: Run) -> int:
    """Rows the training input holds (qa: windows, cloze questions included)."""
    return run.metrics.get("train_windows", run.metrics["train_examples"])


def fine_tune_fast(runs: TaskRuns, **options):
    """A run of the main training file with `options` in its config (to be refused)."""
    return lambda: runner.fine_tune(runs.train_file, None, make_config(
        task=runs.task, encoder=runs.encoder, **options))


def main_columns(task: str) -> dict:
    return {k: v for k, v in MAIN_TASK[task].items() if k in COLUMNS or k == "label_separator"}


# --------------------------------------------------------------- honoured: one check each

def check_task(runs: TaskRuns, task: str):
    for run in (runs.main, runs.det_a):
        assert run.result.task == task and run.result.config.task == task
    for run in (runs.main, runs.det_a, runs.probe_hw):
        assert run.model.name == MODEL_NAMES[task]


def check_encoder(runs, task):
    encoder = runs.main.model.encoder
    assert encoder.handle == runs.encoder and encoder.num_layers == 2  # minilm-l6 has 6
    assert encoder.hidden_size == 32


def check_preprocessor(runs, task):
    assert runs.main.result.preprocessor.source == runs.vocab
    assert runs.det_a.result.preprocessor.source != runs.vocab  # the encoder's own asset


def check_lower_case(runs, task):
    upper = runs.main.result.preprocessor.tokenize(tf.constant(["GOOD"])).to_list()
    lower = runs.det_a.result.preprocessor.tokenize(tf.constant(["GOOD"])).to_list()
    assert runs.main.result.preprocessor.lower_case is False
    assert upper == [[VOCAB.index("[UNK]")]] and lower == [[VOCAB.index("good")]]


def check_columns(runs, task):
    """The main files have only the columns txt, txt2 and y: the run reads pairs with
    the labels of y, and without text_column or label_column reading is refused."""
    result = runs.main.result
    assert result.pair and result.serving.input_names == ("text", "text_pair")
    assert result.label_names == {"classification": ["négatif", "positif"],
                                  "multilabel": ["nég", "pos", "question"],
                                  "regression": ["y"]}[task]  # a score is named by its column
    for missing in ("text_column", "label_column"):  # left at its default: no such column
        options = {k: v for k, v in main_columns(task).items() if k != missing}
        refused_fast(fine_tune_fast(runs, encoding="latin-1", **options), missing)


def check_label_separator(runs, task):
    result = runs.main.result
    assert result.info["label_separator"] == ";"
    assert result.label_names == ["nég", "pos", "question"]  # not "nég;pos" as one label
    out = result.serving.run(["the movie was good and awful"], ["it is fun"])[0]
    labels = out["labels"][0].decode()
    assert "," not in labels and set(filter(None, labels.split(";"))) <= {"nég", "pos", "question"}


def check_encoding(runs, task):
    result = runs.main.result
    if task == "classification":
        assert "négatif" in result.label_names
    elif task == "multilabel":
        assert "nég" in result.label_names
    elif task == "tagging":
        assert "B-CAFÉ" in result.tag_names
    data = get_task(task).read(runs.train_file, result.config)
    first = {"tagging": lambda d: " ".join(d.words[0]), "qa": lambda d: d[0].context,
             "summarization": lambda d: d[0].sentences[0]}.get(task, lambda d: d.texts[0])
    assert LATIN in first(data)
    # The same file under the default encoding (utf-8-sig): refused while reading.
    refused_fast(fine_tune_fast(runs, **main_columns(task)), "encoding")


def check_max_train_examples(runs, task):
    assert runs.main.metrics["train_examples"] == MAIN["max_train_examples"] < TRAIN_ROWS


def check_max_eval_examples(runs, task):
    """The runner evaluates on the first 5 of the 8 validation examples."""
    validation = runs.probe_hw.read[2]
    assert len(validation) == HARDWARE["max_eval_examples"] < EVAL_ROWS


def check_trainable_layers(runs, task):
    assert trainable_layers_of(runs.main.seen.begin_groups) == ["layer_1"]  # top 1
    assert trainable_layers_of(runs.det_a.seen.begin_groups) == []  # "none"
    assert trainable_layers_of(runs.probe_hw.seen.begin_groups) == ["layer_0", "layer_1"]
    rows = {g: trainable for g, _, trainable in runs.main.model.report_rows()}
    assert rows["layer_1"] and not rows["layer_0"] and rows["head"]


def check_train_embeddings(runs, task):
    # Only the top layer trains, yet the embeddings do too (default: only with all layers).
    assert "embeddings" in runs.main.seen.begin_groups
    assert "embeddings" not in runs.det_a.seen.begin_groups
    assert "embeddings" in runs.probe_hw.seen.begin_groups  # all layers: by default too


def check_reinit_layers(runs, task):
    # probe_hw starts from the encoder's own weights (native too, no re-init).
    begin, pretrained = runs.main.seen.begin_weights, runs.probe_hw.seen.begin_weights
    for group in ("layer_0", "layer_1"):
        assert [w.shape for w in begin[group]] == [w.shape for w in pretrained[group]]
    assert all(np.array_equal(a, b) for a, b in zip(begin["layer_0"], pretrained["layer_0"]))
    kernels = [(a, b) for a, b in zip(begin["layer_1"], pretrained["layer_1"])
               if a.ndim > 1 and b.std() > 0]
    assert kernels and all(not np.allclose(a, b) for a, b in kernels)  # redrawn


def check_encoder_impl(runs, task):
    assert isinstance(runs.det_a.model.encoder, HubEncoder)  # "hub"
    assert isinstance(runs.main.model.encoder, NativeEncoder)  # "auto" -> native


def check_seq_length(runs, task):
    assert runs.main.result.preprocessor.seq_length == 32
    assert runs.det_a.result.preprocessor.seq_length == 24
    assert {width for _, width, _ in runs.main.batches} == {32}  # static padding
    assert max(width for _, width, _ in runs.det_a.batches) <= 24


def check_pooling(runs, task):
    names = {layer.name for layer in runs.main.model.layers}
    assert "mean_pooling" in names and "cls_token" not in names
    assert "cls_token" in {layer.name for layer in runs.det_a.model.layers}


def check_head_units(runs, task):
    assert runs.main.model.get_layer("head_dense_0").units == 8
    assert "head_dense_0" not in {layer.name for layer in runs.det_a.model.layers}


def check_dropout(runs, task):
    assert runs.main.model.get_layer("head_dropout").rate == pytest.approx(0.2)
    assert runs.det_a.model.get_layer("head_dropout").rate == pytest.approx(0.1)


def check_epochs(runs, task):
    assert len(runs.main.result.history["loss"]) == 2 and runs.main.seen.epochs == 2
    assert len(runs.det_a.result.history["loss"]) == 1


def check_batch_size(runs, task):
    rows = train_rows(runs.main)
    assert {n for n, _, _ in runs.main.batches} == {4}  # static: the remainder is dropped
    assert runs.main.seen.steps == len(runs.main.batches) == rows // 4


def check_learning_rate(runs, task):
    assert optimizer_of(runs.main)._learning_rate.peak == pytest.approx(2e-3)


def check_warmup_ratio(runs, task):
    schedule = optimizer_of(runs.main)._learning_rate
    assert schedule.total_steps == runs.main.seen.steps * 2
    assert schedule.warmup_steps == round(schedule.total_steps * 0.5)
    alt = optimizer_of(runs.det_a)._learning_rate  # default 0.1
    assert alt.warmup_steps == round(alt.total_steps * 0.1)


def check_weight_decay(runs, task):
    assert optimizer_of(runs.main).weight_decay == pytest.approx(0.03)
    assert optimizer_of(runs.det_a).weight_decay == pytest.approx(0.01)


def check_bias_correction(runs, task):
    assert optimizer_of(runs.main).bias_correction is False
    assert optimizer_of(runs.det_a).bias_correction is True


def check_clip_norm(runs, task):
    assert optimizer_of(runs.main).global_clipnorm == pytest.approx(0.5)
    assert optimizer_of(runs.det_a).global_clipnorm is None


def check_encoder_learning_rate(runs, task):
    groups = multipliers_by_group(runs.main)
    assert groups["layer_1"] == {0.5}  # 1e-3 / 2e-3: the top layer's rate
    assert not optimizer_of(runs.det_a).learning_rate_multipliers


def check_layer_decay(runs, task):
    groups = multipliers_by_group(runs.main)
    assert groups["layer_0"] == {0.25} and groups["embeddings"] == {0.125}


def check_unfreeze(runs, task):
    """Every 2 steps one more layer, within the one epoch: [0, 1, ...] layers."""
    seen = runs.det_a.seen
    counts = [len(trainable_layers_of(g)) for g in seen.batch_groups]
    assert len(counts) >= 2, counts
    assert counts == [min((i + 1) // 2, 2) for i in range(len(counts))], counts
    assert len(trainable_layers_of(seen.end_groups)) > len(trainable_layers_of(seen.begin_groups))


def check_padding(runs, task):
    assert {(n, w) for n, w, _ in runs.main.batches} == {(4, 32)}  # static
    for _, width, longest in runs.det_a.batches:  # dynamic: cut to the longest, rounded to 8
        assert width == min(24, math.ceil(longest / 8) * 8), runs.det_a.batches
    assert min(width for _, width, _ in runs.det_a.batches) < 24


def check_strategy(runs, task):
    strategy = runs.probe_hw.seen.strategy  # the model was built and compiled under it
    assert isinstance(strategy, tf.distribute.MirroredStrategy)
    assert strategy.num_replicas_in_sync == 2
    for run in (runs.main, runs.det_a):  # "cpu" and "auto": the default strategy here
        assert run.result.strategy is run.seen.strategy
        assert not isinstance(run.result.strategy, tf.distribute.MirroredStrategy)
    # A kind this machine lacks is refused by name, not replaced.
    refused_fast(fine_tune_fast(runs, **main_columns(task), encoding="latin-1",
                                strategy="gpu"), "strategy", "no GPU")


def check_tpu_address(runs, task):
    """The address reaches TPU discovery; on a machine without one, a clear refusal."""
    asked = []

    def resolver(tpu=None):
        asked.append(tpu)
        raise ValueError(f"no TPU named {tpu} here")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tf.distribute.cluster_resolver, "TPUClusterResolver", resolver)
        for strategy in ("tpu", "auto"):  # a named TPU is never dropped for the CPU
            refused_fast(fine_tune_fast(runs, **main_columns(task), encoding="latin-1",
                                        strategy=strategy, tpu_address="my-tpu"),
                         "tpu_address", "none found: no TPU named my-tpu here")
    assert asked == ["my-tpu", "my-tpu"]


def check_mixed_precision(runs, task):
    model = runs.probe_hw.model
    assert isinstance(model.encoder, NativeEncoder)  # "auto": the path precision reaches
    assert model.encoder.compute_dtype == "bfloat16" and model.encoder.variable_dtype == "float32"
    assert {v.dtype for v in model.weights} == {tf.float32}
    assert model.output.dtype == tf.float32
    assert runs.main.model.encoder.compute_dtype == "float32"
    assert keras.mixed_precision.global_policy().name == "float32"


def check_jit_compile(runs, task):
    assert runs.probe_hw.model._jit_compile is True
    assert not runs.main.model._jit_compile and not runs.det_a.model._jit_compile


def check_steps_per_execution(runs, task):
    assert int(runs.main.model._steps_per_execution.numpy()) == 2
    assert int(runs.det_a.model._steps_per_execution.numpy()) == 1
    # Keras calls batch-end callbacks once per execution of 2 steps.
    assert len(runs.main.seen.batch_groups) == 2 * math.ceil(runs.main.seen.steps / 2)


def check_seed(runs, task):
    """Seed 5 twice: the same initial head and the same history; seed 6: another head."""
    a, b, c = runs.det_a, runs.det_b, runs.probe_seed
    assert a.result.history == b.result.history
    assert all(np.array_equal(x, y) for x, y in zip(a.seen.head_begin, b.seen.head_begin))
    assert [x.shape for x in a.seen.head_begin] == [x.shape for x in c.seen.head_begin]
    assert not any(np.array_equal(x, y) for x, y in zip(a.seen.head_begin, c.seen.head_begin)
                   if x.std() > 0)


def check_deterministic(runs, task):
    assert runs.det_a.seen.determinism and runs.det_b.seen.determinism
    assert not runs.main.seen.determinism and not runs.probe_hw.seen.determinism
    assert runs.det_a.result.history == runs.det_b.result.history

    def numbers(run):
        return {k: v for k, v in run.metrics.items() if k != "train_examples_per_second"}
    assert numbers(runs.det_a) == numbers(runs.det_b)


def check_output_dir(runs, task):
    out = runs.main.config.output_dir
    assert os.path.isfile(os.path.join(out, ".kbft-run"))
    assert os.path.isfile(os.path.join(out, "checkpoints", "ckpt-002.index"))
    assert os.listdir(os.path.join(out, "logs"))
    assert runs.main.seen.backup_run_file  # OUTPUT/backup/run.json while training
    assert not os.path.exists(os.path.join(out, "backup"))  # a finished run deletes it


def check_overwrite(runs, task):
    out = runs.main.config.output_dir
    assert not os.path.exists(os.path.join(out, "notes.txt"))  # replaced: overwrite=True
    foreign = runs.folder / f"foreign-{task}"
    foreign.mkdir(exist_ok=True)
    (foreign / "notes.txt").write_text("keep me")
    refused_fast(fine_tune_fast(runs, output_dir=str(foreign)), "output_dir", "overwrite")
    assert (foreign / "notes.txt").read_text() == "keep me"


def check_backup_steps(runs, task):
    """No backup before step 4, one from the first execution that reaches it (the
    default, 500, is past the end of the run)."""
    backups = runs.main.seen.backups
    first = min(step for step, _ in backups if step >= MAIN["backup_steps"])
    assert backups == [(step, step >= first) for step, _ in backups], backups


def check_verbose(runs, task):
    out = runs.main.stdout
    assert "Epoch 1/2" in out and "Epoch 2/2" in out
    assert re.search(r"^\d+/\d+ - \d+s - loss: ", out, re.M), out  # one line per epoch
    assert "\r" not in out and "embeddings" in out and "trainable" in out
    assert runs.det_a.stdout == "" and runs.det_b.stdout == ""  # 0: silent


def check_qa_serving_option(name: str, value):
    def check(runs, task):
        assert runs.main.result.serving.info[name] == value
        assert getattr(runs.main.result.config, name) == value
    return check


def expected_cloze(runs, cloze: int, per_sentence: int) -> int:
    train = get_task("qa").read(runs.train_file, runs.main.result.config)[
        :MAIN["max_train_examples"]]
    return len(qa_lib.cloze_questions(train, cloze, seed=MAIN["seed"], per_sentence=per_sentence))


def check_cloze(runs, task):
    """Each context has one sentence with three spans to blank: 3 per context, capped
    at cloze=2."""
    made = runs.main.metrics["cloze_questions"]
    assert made == expected_cloze(runs, 2, 3) == 2 * MAIN["max_train_examples"]
    assert expected_cloze(runs, 8, 3) > made
    assert runs.det_a.metrics["cloze_questions"] == 0


def check_cloze_per_sentence(runs, task):
    assert runs.main.metrics["cloze_questions"] > expected_cloze(runs, 2, 1)


def check_top_k(runs, task):
    result = runs.main.result
    assert result.serving.info["top_k"] == 2
    row = result.predict([["the movie .", "it is good .", "a film .", "the plot ."]])[0]
    assert len(row["sentence_ids"]) == 2
    assert len(runs.det_a.result.predict([["a .", "b .", "c .", "d ."]])[0]["sentence_ids"]) == 3


def check_validation_split(runs, task):
    """12 examples: 3 held out (qa: whole contexts), validated on every epoch."""
    train_data, _, held = runs.choice.read
    assert len(held) == 3 and len(train_data) == (18 if task in SENTENCE_TASKS else 9)
    assert runs.choice.metrics["validation_split_examples"] == 3
    assert runs.det_a.read[2] is None and "validation_split_examples" not in runs.det_a.metrics


def check_monitor(runs, task):
    """The kept epoch is the best by the chosen metric (ties: the first)."""
    metrics, monitor = runs.choice.metrics, CHOICE_TASK[task]["monitor"]
    values = runs.choice.result.history[f"val_{monitor}"]
    pick = np.argmin if monitor in ("eval_loss", "mse") else np.argmax
    assert metrics["monitor"] == monitor and metrics["best_epoch"] == int(pick(values)) + 1
    assert metrics[monitor] == pytest.approx(values[metrics["best_epoch"] - 1], abs=1e-5)
    assert "best_epoch" not in runs.main.metrics


def check_patience(runs, task):
    """Patience 1: the run stops one epoch after its best, unless that was the last."""
    metrics = runs.choice.metrics
    trained, best = metrics["epochs_trained"], metrics["best_epoch"]
    assert len(runs.choice.result.history["loss"]) == trained
    if metrics["stopped_early"]:
        assert trained - best == 1 and trained < CHOICE["epochs"]
    else:
        assert trained == CHOICE["epochs"] and trained - best <= 1


def check_accumulation_steps(runs, task):
    """Each step takes 2 batches of 2: batches of up to 4 rows, half the steps."""
    run = runs.choice
    assert run.model.accumulation_steps == 2 and runs.det_a.model.accumulation_steps == 1
    assert max(rows for rows, _, _ in run.batches) == 4 < 2 * 4
    assert sum(rows for rows, _, _ in run.batches) == train_rows(run)


def check_class_weight(runs, task):
    """balanced: n / (classes x count) per label, in the run's info and its loss."""
    train_data, info, _ = runs.choice.read
    counts = np.bincount(train_data.labels, minlength=len(info["label_names"]))
    expected = len(train_data.labels) / (len(counts) * counts)
    np.testing.assert_allclose(runs.choice.result.info["class_weights"], expected, rtol=1e-6)
    assert "class_weights" not in runs.main.result.info


def check_swap_pairs(runs, task):
    """The 9 training pairs, then the same 9 swapped; validation is not swapped."""
    train_data, _, held = runs.choice.read
    assert train_data.texts[9:] == train_data.texts_pair[:9]
    assert train_data.texts_pair[9:] == train_data.texts[:9]
    assert len(held) == 3 and runs.choice.metrics["train_examples"] == 18
    assert runs.main.metrics["train_examples"] == MAIN["max_train_examples"]


def check_error_examples(runs, task):
    errors = runs.choice.result.errors
    assert errors and len(errors) == 3
    losses = [row["loss"] for row in errors]
    assert losses == sorted(losses, reverse=True)
    assert runs.det_a.result.errors is None  # no validation data: nothing to analyse


def check_embed(runs, task):
    """The export's `embed` signature as the config says: [CLS], L2-normalised, on the
    choice run; the unnormalised masked mean by default (main run)."""
    from keras_bert_ft.config import to_json
    from keras_bert_ft.encoders.hub_encoder import LayerGroups
    from keras_bert_ft.export.saved_model import signatures
    texts = tf.constant(["the movie was good and fun", "a plot"])
    for run, pooling, normalize in ((runs.choice, "cls", True), (runs.main, "mean", False)):
        result = run.result
        functions, described = signatures(result.serving, to_json(result.config))
        assert described["embed"] == {"inputs": ["text"], "pooling": pooling,
                                      "normalize": normalize}
        got = functions["embed"](texts)["embedding"].numpy()
        encoder = [m for m in result.model.submodules if isinstance(m, LayerGroups)][0]
        features = result.preprocessor(texts)
        sequence = encoder(features, training=False)["sequence_output"].numpy()
        mask = features["input_mask"].numpy()[..., None]
        want = sequence[:, 0] if pooling == "cls" else (sequence * mask).sum(1) / mask.sum(1)
        if normalize:
            want = want / np.linalg.norm(want, axis=1, keepdims=True)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def check_add_tokens(runs, task):
    """The main run's config with two words added builds the task's model on the grown
    vocabulary: the words tokenise whole, every old row is kept (the rows' values are
    checked in test_pretrain.py)."""
    import tempfile
    folder = tempfile.mkdtemp()
    words = os.path.join(folder, "words.txt")
    with open(words, "w") as f:
        f.write("funly\nplots\n")
    config = dataclasses.replace(runs.main.result.config, add_tokens=words, output_dir=None,
                                 mixed_precision="float32", strategy="cpu")
    model, encoder = build.build_model(get_task(task), config, runs.main.result.info,
                                       tf.distribute.get_strategy())
    preprocessor = build.build_preprocessor(encoder, config, get_task(task).needs_vocab)
    n = len(VOCAB)
    assert preprocessor.tokenize(tf.constant(["funly plots"])).to_list() == [[n, n + 1]]
    assert encoder.bert.get_embedding_table().shape[0] == n + 2


def check_log_gradient_norms(runs, task):
    """A norm per group and epoch in the main run's history (its trainable groups' > 0,
    frozen layer_0's 0); none in a run that leaves the option off."""
    history, groups = runs.main.result.history, runs.main.result.model.encoder.layer_groups()
    for group in [*groups, "head"]:
        assert len(history[f"grad_norm_{group}"]) == MAIN["epochs"], group
    assert history["grad_norm_layer_0"] == [0.0] * MAIN["epochs"]
    assert min(history["grad_norm_head"] + history["grad_norm_layer_1"]
               + history["grad_norm_embeddings"]) > 0
    assert not [k for k in runs.det_a.result.history if k.startswith("grad_norm_")]


HONOURED: Dict[str, Callable] = {
    "log_gradient_norms": check_log_gradient_norms,
    "embed_pooling": check_embed, "embed_normalize": check_embed,
    "validation_split": check_validation_split, "monitor": check_monitor,
    "patience": check_patience, "accumulation_steps": check_accumulation_steps,
    "class_weight": check_class_weight, "error_examples": check_error_examples,
    "swap_pairs": check_swap_pairs,
    "task": check_task, "encoder": check_encoder, "preprocessor": check_preprocessor,
    "lower_case": check_lower_case, "text_column": check_columns,
    "text_pair_column": check_columns, "label_column": check_columns,
    "label_separator": check_label_separator, "encoding": check_encoding,
    "max_train_examples": check_max_train_examples,
    "max_eval_examples": check_max_eval_examples, "trainable_layers": check_trainable_layers,
    "train_embeddings": check_train_embeddings, "reinit_layers": check_reinit_layers,
    "encoder_impl": check_encoder_impl, "seq_length": check_seq_length,
    "pooling": check_pooling, "head_units": check_head_units, "dropout": check_dropout,
    "epochs": check_epochs, "batch_size": check_batch_size,
    "learning_rate": check_learning_rate, "warmup_ratio": check_warmup_ratio,
    "weight_decay": check_weight_decay, "bias_correction": check_bias_correction,
    "clip_norm": check_clip_norm, "encoder_learning_rate": check_encoder_learning_rate,
    "layer_decay": check_layer_decay, "unfreeze_every": check_unfreeze,
    "unfreeze_unit": check_unfreeze, "padding": check_padding, "strategy": check_strategy,
    "tpu_address": check_tpu_address, "mixed_precision": check_mixed_precision,
    "jit_compile": check_jit_compile, "steps_per_execution": check_steps_per_execution,
    "seed": check_seed, "deterministic": check_deterministic, "output_dir": check_output_dir,
    "overwrite": check_overwrite, "backup_steps": check_backup_steps, "verbose": check_verbose,
    "doc_stride": check_qa_serving_option("doc_stride", 6),
    "max_query_length": check_qa_serving_option("max_query_length", 6),
    "max_answer_length": check_qa_serving_option("max_answer_length", 5),
    "n_best_size": check_qa_serving_option("n_best_size", 7),
    "add_tokens": check_add_tokens, "cloze": check_cloze, "cloze_per_sentence": check_cloze_per_sentence, "top_k": check_top_k,
}

# Task by task, so each task's runs are trained once and then used by all its checks.
# Pre-training's options (and the others' refusal for it) are checked in test_pretrain.py.
PAIRS = [(field, task) for task in FINE_TUNING_TASKS for field in FIELDS]


def test_the_matrix_covers_every_field_and_nothing_else():
    assert set(HONOURED) <= set(FIELDS), set(HONOURED) - set(FIELDS)
    assert set(REFUSE_VALUES) <= set(FIELDS), set(REFUSE_VALUES) - set(FIELDS)
    for name, field in FIELDS.items():
        if any(not applies(name, t) for t in TASKS):
            assert REFUSE_VALUES.get(name, field.default) != field.default, name


@pytest.mark.parametrize("field, task", PAIRS, ids=[f"{t}-{f}" for f, t in PAIRS])
def test_option_is_honoured_or_refused(field, task, matrix, tmp_path, capsys):
    if not applies(field, task):
        assert field in REFUSE_VALUES, f"no non-default value to refuse {field} with"
        value = REFUSE_VALUES[field]
        message = refused_fast(lambda: runner.fine_tune(
            str(tmp_path / "missing.tsv"), task=task, **{field: value}), field, repr(task))
        assert message.startswith(f"{field} does not apply to task {task!r}"), message
        flag = flag_of(field)
        start = time.perf_counter()
        with no_model_built():
            code = cli.main(["train", "--task", task, "--train", str(tmp_path / "missing"),
                             "--output", str(tmp_path / "out"), flag, str(value)])
        assert time.perf_counter() - start < 3.0
        err = capsys.readouterr().err.strip()
        assert code == 2 and "\n" not in err, err
        assert err.startswith(f"error: {flag} does not apply to --task {task}"), err
        assert not os.path.exists(tmp_path / "out")
        return
    assert field in HONOURED, (f"FineTuneConfig.{field} applies to {task} but "
                               "test_option_matrix.py has no check that it is honoured")
    HONOURED[field](matrix(task), task)
