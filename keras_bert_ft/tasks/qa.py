"""Span QA (SQuAD style): start/end logits over the sequence, long contexts in strided windows.

Question and context are packed as a pair, `[CLS] question [SEP] context window [SEP]`;
a context longer than one window is cut into windows whose starts lie `doc_stride`
word pieces apart (BERT's `run_squad` convention), all inside the graph, so the export
takes any context length. Answers map to and from the original text through the word
pieces' byte offsets. Decoding keeps the `n_best_size` best starts and ends of each
window, drops spans that end before they start, run past `max_answer_length` pieces,
leave the context, or start on a piece that has more context in another window, and
returns the span with the highest start + end logit over all windows of the question.
"""

import dataclasses
import json
import os
import re
from typing import List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from keras_bert_ft._keras import keras
from keras_bert_ft.tasks import heads
from keras_bert_ft.errors import KbftError, bad_argument
from keras_bert_ft.tasks.models import FineTuneModel, encoder_inputs
from keras_bert_ft.data.preprocessing import trim_to_longest
from keras_bert_ft.export.serving import TaskServing
from keras_bert_ft.tasks import base
from keras_bert_ft.tasks.metrics import squad_metrics

_NEG = -1e9  # logit of a position that cannot start or end an answer


@dataclasses.dataclass
class QAExample:
    """A question on a context with its gold answers (`answer_starts` in characters)."""
    question: str
    context: str
    answers: List[str] = dataclasses.field(default_factory=list)
    answer_starts: List[int] = dataclasses.field(default_factory=list)
    qid: str = ""
    title: str = ""


def read_squad(path: str, where: str = "data", encoding: str = "utf-8") -> List[dict]:
    """The articles (`data`) of a SQuAD v1.1 JSON file."""
    if not os.path.isfile(path):
        raise bad_argument(where, path, "an existing SQuAD JSON file (not found)")
    with open(path, encoding=encoding) as f:
        try:
            payload = json.load(f)
        except json.JSONDecodeError as err:
            raise KbftError(f"Could not parse {path!r} as JSON: {err}") from None
        except UnicodeDecodeError as err:
            raise KbftError(f"File {path!r} is not valid {encoding} text ({err.reason} at "
                            f"byte {err.start}); pass its encoding (--encoding). "
                            f"Received: encoding={encoding!r}", argument="encoding") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
        raise bad_argument(where, path, 'a SQuAD JSON file ({"data": [articles]})')
    return payload["data"]


def squad_examples(articles: Sequence[dict]) -> List[QAExample]:
    """One `QAExample` per question of SQuAD-layout articles."""
    out = []
    for article in articles:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                out.append(QAExample(
                    question=qa["question"], context=paragraph["context"],
                    answers=[a["text"] for a in qa.get("answers", [])],
                    answer_starts=[int(a["answer_start"]) for a in qa.get("answers", [])],
                    qid=str(qa.get("id", "")), title=article.get("title", "")))
    return out


def split_articles(source, train_articles: int = 38, encoding: str = "utf-8"
                   ) -> Tuple[List[QAExample], List[QAExample]]:
    """(train, held out) questions of a SQuAD file split by article, in file order: the
    first `train_articles` articles train, the rest are held out (XQuAD: 38 / 10)."""
    articles = (read_squad(source, "train", encoding) if isinstance(source, str)
                else list(source))
    if not 0 < train_articles < len(articles):
        raise bad_argument("train_articles", train_articles,
                           f"an int in [1, {len(articles) - 1}] (the file has "
                           f"{len(articles)} articles)")
    return squad_examples(articles[:train_articles]), squad_examples(articles[train_articles:])


def load_squad(source, where: str = "data", encoding: str = "utf-8") -> List[QAExample]:
    """`QAExample`s from a SQuAD JSON path, a list of SQuAD articles, a list of
    `QAExample`, or records `{"question", "context", "answers", "answer_starts"}`."""
    if isinstance(source, (str, os.PathLike)):
        return squad_examples(read_squad(os.fspath(source), where, encoding))
    rows = base.as_list(source, where)
    if all(isinstance(r, QAExample) for r in rows):
        return rows
    if all(isinstance(r, dict) and "paragraphs" in r for r in rows):
        return squad_examples(rows)
    if all(isinstance(r, dict) and "question" in r and "context" in r for r in rows):
        return [QAExample(r["question"], r["context"], list(r.get("answers", [])),
                          [int(s) for s in r.get("answer_starts", [])], str(r.get("qid", i)))
                for i, r in enumerate(rows)]
    raise bad_argument(where, type(rows[0]).__name__, "a SQuAD JSON path, SQuAD articles, "
                       "QAExample objects or {question, context, answers, answer_starts} records")


# Cloze questions: a sentence of the context with one span replaced by a wh-word.
_SENTENCE = re.compile(r"[^.!?]+(?:[.!?]+|$)")
_SPAN = re.compile(
    r"\b\d[\d,.]*(?:\s(?:percent|million|billion|years?|km|miles))?\b"  # numbers, years
    r"|\b[A-Z][\w'-]+(?:\s(?:of|the|de|and|for)\s[A-Z][\w'-]+|\s[A-Z][\w'-]+)*")  # names


def cloze_questions(examples: Sequence[QAExample], per_context: int = 8,
                    seed: int = 0, per_sentence: int = 1) -> List[QAExample]:
    """Synthetic questions from the contexts of `examples` (Lewis et al. 2019's cloze
    questions): a sentence whose name or number span (not its first word) is replaced
    by "what", answered by that span. They teach span selection on the training
    contexts only, which helps when a few hundred real questions are all there is.

    Args:
        examples: questions whose distinct contexts are used; their answers are not.
        per_context: at most this many cloze questions per context.
        per_sentence: at most this many per sentence, each blanking another span.

    Example:
        >>> train = train + cloze_questions(train)  # then fine_tune_qa(train, ...)
    """
    rng = np.random.RandomState(seed)
    out, seen = [], set()
    for ex in examples:
        if ex.context in seen:
            continue
        seen.add(ex.context)
        made = []
        for sentence in _SENTENCE.finditer(ex.context):
            text = sentence.group()
            lead = len(text) - len(text.lstrip())
            spans = [m for m in _SPAN.finditer(text) if m.start() > lead]
            if not spans or len(text.split()) < 6:
                continue
            # one pick draws as before per_sentence existed: same seed, same questions
            picks = ([rng.randint(len(spans))] if per_sentence == 1 else
                     sorted(rng.choice(len(spans), min(per_sentence, len(spans)), replace=False)))
            for span in (spans[i] for i in picks):
                question = (text[lead:span.start()] + "what" + text[span.end():]).strip()
                question = question.rstrip(".!?") + "?"
                made.append(QAExample(question, ex.context, [span.group()],
                                      [sentence.start() + span.start()],
                                      qid=f"cloze-{len(out) + len(made)}", title=ex.title))
        if len(made) > per_context:
            made = [made[i] for i in sorted(rng.choice(len(made), per_context, replace=False))]
        out.extend(made)
    return out


# ---------------------------------------------------------------------------- graph


def make_windows(preprocessor, question, context, *, seq_length: int, doc_stride: int,
                 max_query_length: int) -> dict:
    """Questions and contexts `[batch]` -> one row per window `[windows, seq_length]`.

    Returns the packed model inputs and `example` (the question each window belongs
    to), `piece` (each position's context piece index, -1 outside the context),
    `starts` / `ends` (byte offsets of those pieces in the context, -1 elsewhere) and
    `max_context` (whether this window gives the piece its most context on both sides).
    """
    questions = preprocessor.tokenize(question)[:, :max_query_length]
    pieces, starts, ends = preprocessor.tokenize_with_offsets(context)
    question_len = tf.cast(questions.row_lengths(), tf.int32)
    context_len = tf.cast(pieces.row_lengths(), tf.int32)
    room = seq_length - 3 - question_len
    windows = 1 + (tf.maximum(context_len - room, 0) + doc_stride - 1) // doc_stride
    example = tf.repeat(tf.range(tf.size(windows)), windows)
    first = tf.ragged.range(windows).flat_values * doc_stride
    length = tf.maximum(tf.minimum(tf.gather(room, example),
                                   tf.gather(context_len, example) - first), 0)
    # One entry per (window, context piece): flat ops are much cheaper to trace than
    # ragged broadcasting.
    local = tf.ragged.range(first, first + length)
    row = tf.cast(local.value_rowids(), tf.int32)
    piece = local.flat_values  # context piece index
    ex_row = tf.gather(example, row)
    flat = piece + tf.gather(tf.cast(pieces.row_starts(), tf.int32), ex_row)
    features = preprocessor.pack(
        [tf.gather(questions, example), local.with_flat_values(tf.gather(pieces.flat_values, flat))],
        seq_length)
    in_window = piece - tf.gather(first, row)
    span = tf.gather(length, row)
    score = tf.cast(tf.minimum(in_window, span - 1 - in_window), tf.float32) \
        + 0.01 * tf.cast(span, tf.float32)
    best = tf.math.unsorted_segment_max(score, flat, tf.shape(pieces.flat_values)[0])
    # The first context piece sits after [CLS] question [SEP].
    where = tf.stack([row, tf.gather(question_len, ex_row) + 2 + in_window], axis=1)
    shape = tf.stack([tf.size(example), seq_length])

    def place(values, fill):
        return tf.tensor_scatter_nd_update(tf.fill(shape, tf.cast(fill, values.dtype)),
                                           where, values)

    return {"features": features, "example": example,
            "piece": place(piece, -1),
            "starts": place(tf.gather(starts.flat_values, flat), -1),
            "ends": place(tf.gather(ends.flat_values, flat), -1),
            "max_context": place(score >= tf.gather(best, flat), False)}


def best_spans(start_logits, end_logits, can_start, can_end, example, num_examples, *,
               n_best_size: int, max_answer_length: int):
    """The best span of each question over its windows.

    Args:
        start_logits, end_logits: `[windows, length]`.
        can_start, can_end: `[windows, length]` bool, where a span may start / end.
        example: `[windows]` the question of each window; `num_examples` questions.
    Returns:
        `(window, start, end, score)`, each `[num_examples]`; `score` is the start + end
        logit, `-inf` when the question has no valid span.
    """
    start_logits = tf.where(can_start, start_logits, _NEG)
    end_logits = tf.where(can_end, end_logits, _NEG)
    k = tf.minimum(n_best_size, tf.shape(start_logits)[1])
    top_start, start_at = tf.math.top_k(start_logits, k)
    top_end, end_at = tf.math.top_k(end_logits, k)
    width = end_at[:, None, :] - start_at[:, :, None]
    valid = ((width >= 0) & (width < max_answer_length)
             & (top_start > _NEG / 2)[:, :, None] & (top_end > _NEG / 2)[:, None, :])
    pair = tf.where(valid, top_start[:, :, None] + top_end[:, None, :], -np.inf)
    flat = tf.reshape(pair, [tf.shape(pair)[0], -1])
    best = tf.argmax(flat, axis=1, output_type=tf.int32)
    window_score = tf.reduce_max(flat, axis=1)
    start = tf.gather(start_at, best // k, batch_dims=1)
    end = tf.gather(end_at, best % k, batch_dims=1)
    question_best = tf.math.unsorted_segment_max(window_score, example, num_examples)
    windows = tf.range(tf.size(example))
    is_best = window_score >= tf.gather(question_best, example)
    window = tf.math.unsorted_segment_min(
        tf.where(is_best, windows, tf.size(example)), example, num_examples)
    window = tf.minimum(window, tf.size(example) - 1)
    # A segment max over only -inf gives the lowest float, not -inf.
    question_best = tf.where(question_best > _NEG, question_best, -np.inf)
    return window, tf.gather(start, window), tf.gather(end, window), question_best


class SpanLogits(keras.layers.Layer):
    """`[batch, seq, 2]` -> `[batch, 2, seq]` start/end logits, padding pushed to -1e4."""

    def call(self, logits, mask):
        logits = tf.transpose(tf.cast(logits, tf.float32), [0, 2, 1])
        return logits + (1.0 - tf.cast(mask, tf.float32))[:, None, :] * -1e4


def build_span_model(encoder, dropout: float = 0.1, head_units=()) -> FineTuneModel:
    """Encoder -> `sequence_output` -> Dropout (+ Dense blocks) -> Dense(2): start and end
    logits `[batch, 2, seq]`."""
    inputs = encoder_inputs()
    sequence = heads.dense_blocks(encoder(inputs)["sequence_output"], tuple(head_units), dropout)
    logits = heads.logits_layer(2, name="span_logits")(sequence)
    return FineTuneModel(inputs=inputs, outputs=SpanLogits(name="span")(logits, inputs["input_mask"]),
                         name="span_qa")


class QAServing(TaskServing):
    """`serving_default(question, context)` -> `answer` text, its `score` (start + end
    logit, `-inf` when no span fits) and `answer_start` (characters, -1 when none)."""

    task = "qa"
    input_names = ("question", "context")

    def __init__(self, model, preprocessor, config):
        self.options = dict(doc_stride=config.doc_stride,
                            max_query_length=config.max_query_length)
        self.decoding = dict(n_best_size=config.n_best_size,
                             max_answer_length=config.max_answer_length)
        super().__init__(model, preprocessor, {**self.options, **self.decoding})

    def serve(self, question, context):
        windows = make_windows(self.preprocessor, question, context,
                               seq_length=self.preprocessor.seq_length, **self.options)
        features = trim_to_longest(windows["features"])
        logits = self.model(features, training=False)
        length = tf.shape(logits)[2]
        piece = windows["piece"][:, :length]
        window, start, end, score = best_spans(
            logits[:, 0], logits[:, 1], (piece >= 0) & windows["max_context"][:, :length],
            piece >= 0, windows["example"], tf.size(question), **self.decoding)
        found = score > -np.inf
        begin = tf.gather(tf.gather(windows["starts"], window), start, batch_dims=1)
        finish = tf.gather(tf.gather(windows["ends"], window), end, batch_dims=1)
        begin = tf.where(found, begin, 0)
        answer = tf.strings.substr(context, begin, tf.where(found, finish - begin, 0))
        answer_start = tf.strings.length(tf.strings.substr(context, tf.zeros_like(begin), begin), unit="UTF8_CHAR")
        return {"answer": answer, "score": score,
                "answer_start": tf.where(found, answer_start, -1)}


def decode(outputs) -> List[dict]:
    """One batch of serving outputs -> `[{"answer", "score", "answer_start"}, ...]`."""
    return [{"answer": a.decode("utf-8"), "score": float(s), "answer_start": int(i)}
            for a, s, i in zip(outputs["answer"], outputs["score"], outputs["answer_start"])]


# ------------------------------------------------------------------------ training


def answer_bytes(example: QAExample) -> Optional[Tuple[int, int]]:
    """The first gold answer as a byte range of the UTF-8 context, or None when the
    text at `answer_starts[0]` is not the answer."""
    if not example.answers or not example.answer_starts:
        return None
    start, text = example.answer_starts[0], example.answers[0]
    if example.context[start:start + len(text)] != text:
        return None
    begin = len(example.context[:start].encode("utf-8"))
    return begin, begin + len(text.encode("utf-8"))


def featurize(preprocessor, examples: Sequence[QAExample], config,
              batch_size: int = 64):
    """Windows with start/end labels: positions of the answer's first and last pieces
    in windows that hold the whole answer, else [CLS] (0, 0). Returns padded features,
    labels `[windows, 2]` and how many examples were skipped (answer text not at
    `answer_start`, or no piece inside the answer)."""
    features, labels, skipped = [], [], 0
    usable = []
    for ex in examples:
        span = answer_bytes(ex)
        if span is None:
            skipped += 1
        else:
            usable.append((ex, span))
    for at in range(0, len(usable), batch_size):
        chunk = usable[at:at + batch_size]
        windows = make_windows(
            preprocessor, tf.constant([e.question for e, _ in chunk]),
            tf.constant([e.context for e, _ in chunk]), seq_length=config.seq_length,
            doc_stride=config.doc_stride, max_query_length=config.max_query_length)
        _, starts, ends = preprocessor.tokenize_with_offsets(
            tf.constant([e.context for e, _ in chunk]))
        targets = []
        for (_, (begin, end)), s, e in zip(chunk, starts.to_list(), ends.to_list()):
            inside = [i for i, (a, b) in enumerate(zip(s, e)) if b > begin and a < end]
            targets.append((inside[0], inside[-1]) if inside else None)
        piece, example = windows["piece"].numpy(), windows["example"].numpy()
        keep = np.array([targets[i] is not None for i in example])
        y = np.zeros((len(example), 2), np.int32)
        for w, i in enumerate(example):
            if targets[i] is not None:
                first, last = (np.flatnonzero(piece[w] == t) for t in targets[i])
                if first.size and last.size:
                    y[w] = first[0], last[0]
        skipped += sum(t is None for t in targets)
        padded = base.pad_features(windows["features"], config.seq_length)
        features.append({k: v[keep] for k, v in padded.items()})
        labels.append(y[keep])
    if not labels:
        return None, None, skipped
    return base.stack(features), np.concatenate(labels), skipped


def evaluate(serving: QAServing, examples: Sequence[QAExample], batch_size: int = 32) -> dict:
    """SQuAD v1.1 exact match and F1 of the served answers."""
    answered = [ex for ex in examples if ex.answers]
    batches = serving.run([e.question for e in answered], [e.context for e in answered],
                          batch_size=batch_size)
    predicted = [row["answer"] for batch in batches for row in decode(batch)]
    metrics = squad_metrics([e.answers for e in answered], predicted)
    metrics["eval_questions"] = len(answered)
    return metrics


class QATask(base.Task):
    """Extractive QA: a SQuAD v1.1 JSON path, SQuAD articles, `QAExample`s or records (see
    `load_squad`). Training uses each question's first answer; validation scores against
    all of them (SQuAD EM / F1). `cloze` adds cloze questions from the training contexts."""

    name = "qa"
    needs_vocab = True
    primary_metric = "f1"
    metric_names = ("f1", "exact_match")

    def split_groups(self, data):
        """Questions of one article (its title; else its context) stay on one side."""
        return [ex.title or ex.context for ex in data]

    def read(self, source, config, info=None, where=None):
        return load_squad(source, where=where or ("train" if info is None else "validation"),
                          encoding=config.encoding)

    def augment(self, train, config):
        if not config.cloze:
            return train
        return train + cloze_questions(train, config.cloze, seed=config.seed,
                                       per_sentence=config.cloze_per_sentence)

    def featurize(self, data, preprocessor, config, info):
        features, labels, skipped = featurize(preprocessor, data, config)
        if features is None:
            return None
        cloze = sum(ex.qid.startswith("cloze-") for ex in data)
        return base.Features(features, labels, {
            "train_examples": len(data) - cloze, "cloze_questions": cloze,
            "train_windows": int(len(labels)), "train_skipped": skipped})

    def build_model(self, encoder, config, info):
        return build_span_model(encoder, config.dropout, config.head_units)

    def combine(self, models):
        return SpanEnsemble(models)

    def loss(self, info):
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def serving(self, model, preprocessor, config, info):
        return QAServing(model, preprocessor, config)

    def evaluate(self, serving, data, config, info):
        return evaluate(serving, data), info

    def predict(self, serving, questions: Sequence[str], contexts: Sequence[str],
                batch_size: int = 32) -> List[dict]:
        """`[{"answer", "score", "answer_start"}]` per question, as the export returns them."""
        columns = base.as_list(questions, "questions"), base.as_list(contexts, "contexts")
        return [row for batch in serving.run(*columns, batch_size=batch_size)
                for row in decode(batch)]


TASK = QATask()


def fine_tune_qa(train, validation=None, config=None, **kwargs):
    """Fine-tunes an encoder for extractive QA: start/end logits over the sequence: `fine_tune(..., task='qa')`."""
    from keras_bert_ft.training.runner import fine_tune
    return fine_tune(train, validation, config, **dict(kwargs, task='qa'))


# ----------------------------------------------------------------------- ensembles


class SpanEnsemble(keras.Model):
    """Span models of one tokenizer -> the mean of their start/end logits `[batch, 2, seq]`."""

    def __init__(self, members: Sequence[keras.Model], name: str = "span_qa_ensemble", **kwargs):
        super().__init__(name=name, **kwargs)
        self.members = list(members)

    def call(self, inputs, training=False):
        logits = [member(inputs, training=training) for member in self.members]
        return tf.add_n(logits) / float(len(logits))

    def get_config(self):
        raise NotImplementedError("a SpanEnsemble is rebuilt from its members with "
                                  "tasks.qa.ensemble_qa, not from a config")


def ensemble_qa(members: Sequence, validation=None):
    """QA runs (say, one config under several seeds) -> one run that averages their start
    and end logits before decoding. On a few hundred questions single runs swing by a
    few F1 points across seeds; the average is steadier and usually beats each member.
    `predict`, `export` and `save` work as for one run; serving costs one forward pass
    per member.

    Args:
        members: qa results from `fine_tune_qa` or `restore_qa` with the same tokenizer
            and window/decoding settings (`seq_length`, `doc_stride`, `max_query_length`,
            `n_best_size`, `max_answer_length`).
        validation: optional SQuAD-style questions to score the ensemble on.

    Example:
        >>> runs = [fine_tune_qa(train, seed=s, cloze=8) for s in range(3)]
        >>> result = ensemble_qa(runs, held_out)
        >>> result.metrics["f1"], result.export("qa_export")
    """
    if not isinstance(members, (list, tuple)) or not members:
        raise bad_argument("members", members, "a non-empty list of qa results")
    for i, member in enumerate(members):
        if getattr(getattr(member, "config", None), "task", None) != "qa":
            raise bad_argument(f"members[{i}]", type(member).__name__,
                               "a qa result (from fine_tune_qa or restore_qa)")
    first = members[0]
    for i, member in enumerate(members[1:], 1):
        if member.serving.info != first.serving.info:
            raise bad_argument(f"members[{i}]", member.serving.info,
                               f"the window and decoding settings of members[0] "
                               f"({first.serving.info})")
        ours, theirs = member.preprocessor, first.preprocessor
        if (ours.source, ours.lower_case) != (theirs.source, theirs.lower_case):
            raise bad_argument(f"members[{i}]", f"tokenizer {ours.source!r}",
                               f"the tokenizer of members[0] ({theirs.source!r})")
    model = SpanEnsemble([member.model for member in members])
    serving = QAServing(model, first.preprocessor, first.config)
    metrics = {"members": len(members)}
    if validation is not None:
        metrics.update(evaluate(serving, load_squad(validation)))
    from keras_bert_ft.training.runner import FineTuneResult
    return FineTuneResult(model=model, serving=serving, config=first.config,
                          info=dict(first.info, members=len(members)), history={},
                          metrics=metrics, strategy=first.strategy)


def restore_qa(weights: str, config=None, *, strategy=None, **overrides):
    """A span model built as `fine_tune(..., task="qa")` builds it from `config` (the same
    encoder, `seq_length` and precision) with the weights `result.model.save_weights`
    wrote; no training. Runs trained in separate processes meet again this way, e.g. in
    `ensemble_qa`. Every variable must be found in `weights`.

    Example:
        >>> result.model.save_weights("seed1.h5")  # in the training process
        >>> member = restore_qa("seed1.h5", seq_length=384)
    """
    from keras_bert_ft.config import make_config
    from keras_bert_ft.export.restore import restore_weights
    from keras_bert_ft.training import build
    from keras_bert_ft.training.runner import FineTuneResult
    from keras_bert_ft.training.strategy import ensure_strategy
    if not isinstance(weights, str) or not (os.path.isfile(weights)
                                            or os.path.isfile(weights + ".index")):
        raise bad_argument("weights", weights,
                           "a weights file written by model.save_weights (.h5 or checkpoint)")
    config = make_config(config, **dict(overrides, task="qa"))
    strategy = ensure_strategy(strategy or config.strategy, config.tpu_address)
    model, encoder = build.build_model(TASK, config, {}, strategy)
    restore_weights(model, weights, where=f"weights={weights!r}")
    preprocessor = build.build_preprocessor(encoder, config, needs_vocab=True)
    return FineTuneResult(model=model, serving=QAServing(model, preprocessor, config),
                          config=config, info={}, history={}, metrics={}, strategy=strategy)
