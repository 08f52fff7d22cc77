"""Extractive summarisation (BERTSUM): a [CLS] per sentence, a score each, top-k as the summary.

A document is packed as `[CLS] s1 [SEP] [CLS] s2 [SEP] ...` with interval segment ids
(0 for s1, 1 for s2, 0 for s3, ...), cut at `seq_length`: a sentence that does not fit
whole is truncated when at least one of its pieces fits, and left out after that (it
is never chosen). Each sentence's [CLS] vector gives one logit; training is binary
cross-entropy against oracle labels; the summary is the `top_k` best-scored sentences,
in document order. Judged by ROUGE-1/2/L F-measures against reference summaries.

Sentence splitting (`split_sentences`, the same rule inside the export): a sentence
ends at `.`, `!` or `?` (plus any closing quotes or brackets) followed by whitespace,
or at a line break; sentences are stripped and empty ones dropped.
"""

import dataclasses
import json
import os
import re
from typing import List, Optional, Sequence

import numpy as np
import tensorflow as tf

from keras_bert_ft._keras import keras
from keras_bert_ft.tasks import heads
from keras_bert_ft.errors import KbftError, bad_argument
from keras_bert_ft.tasks.models import FineTuneModel, encoder_inputs
from keras_bert_ft.data.preprocessing import trim_to_longest
from keras_bert_ft.export.serving import ListServing
from keras_bert_ft.tasks import base
from keras_bert_ft.tasks.metrics import rouge_n, rouge_scores, rouge_tokens

# Closing quotes and brackets may follow the mark; the same pattern runs in Python's re
# and in TensorFlow's RE2.
_BOUNDARY = "([.!?][\"')\\]\u201d\u2019]*)[ \t\r\n\f]+"
_WHITESPACE = " \t\n\v\f\r"  # what tf.strings.strip removes


def split_sentences(document: str) -> List[str]:
    """The sentences of a document by the module's rule (see the module docstring)."""
    marked = re.sub(_BOUNDARY, "\\1\n", document)
    return [s.strip(_WHITESPACE) for s in marked.split("\n") if s.strip(_WHITESPACE)]


def tf_split_sentences(documents) -> tf.RaggedTensor:
    """`[batch]` documents -> `[batch, (sentences)]`, the same rule in graph ops."""
    marked = tf.strings.regex_replace(documents, _BOUNDARY, "\\1\n")
    sentences = tf.strings.strip(tf.strings.split(marked, "\n"))
    return tf.ragged.boolean_mask(sentences, tf.strings.length(sentences) > 0)


@dataclasses.dataclass
class Document:
    """A document's sentences, their oracle labels (1: in the summary) and reference."""
    sentences: List[str]
    labels: Optional[List[int]] = None
    reference: Optional[str] = None

    @property
    def target(self) -> str:
        """The reference summary, else the oracle-labelled sentences joined."""
        if self.reference is not None:
            return self.reference
        return " ".join(s for s, y in zip(self.sentences, self.labels or []) if y)


def greedy_oracle(sentences: Sequence[str], reference: str, max_sentences: int = 3) -> List[int]:
    """BERTSUM's oracle labels: greedily add the sentence that most raises ROUGE-1 +
    ROUGE-2 F of the selection against `reference`; stop when none raises it."""
    ref = rouge_tokens(reference)
    tokens = [rouge_tokens(s) for s in sentences]
    chosen, best = [], 0.0
    while len(chosen) < max_sentences:
        gains = []
        for i in range(len(sentences)):
            if i in chosen:
                continue
            picked = [t for j in sorted(chosen + [i]) for t in tokens[j]]
            gains.append((rouge_n(picked, ref, 1) + rouge_n(picked, ref, 2), i))
        if not gains or max(gains)[0] <= best:
            break
        best, i = max(gains, key=lambda g: (g[0], -g[1]))
        chosen.append(i)
    return [int(i in chosen) for i in range(len(sentences))]


def load_documents(source, *, max_oracle_sentences: int = 3,
                   encoding: str = "utf-8", where: str = "data") -> List[Document]:
    """`Document`s from a JSON-lines file or a list of records: `{"sentences": [...],
    "labels": [0/1 ...]}` (optionally `"summary"`), or `{"document": "...", "summary":
    "..."}` whose sentences are split by rule and labelled by `greedy_oracle`."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise bad_argument(where, path, "an existing JSON-lines file (not found)")
        with open(path, encoding=encoding) as f:
            try:
                source = [json.loads(line) for line in f if line.strip()]
            except json.JSONDecodeError as err:
                raise KbftError(f"Could not parse {path!r} as JSON lines: {err}. "
                                f"Received: {where}={path!r}") from None
            except UnicodeDecodeError as err:
                raise KbftError(f"File {path!r} is not valid {encoding} text ({err.reason} at "
                                f"byte {err.start}); pass its encoding (--encoding). "
                                f"Received: encoding={encoding!r}") from None
    rows = base.as_list(source, where)
    out = []
    for i, row in enumerate(rows):
        if isinstance(row, Document):
            out.append(row)
            continue
        if not isinstance(row, dict):
            raise bad_argument(where, type(row).__name__, "Document objects or records")
        summary = row.get("summary")
        if "sentences" in row:
            sentences = [str(s) for s in row["sentences"]]
        elif "document" in row:
            sentences = split_sentences(str(row["document"]))
        else:
            raise KbftError(f'Record {i} needs "sentences" or "document". Received: '
                            f"keys={sorted(row)}")
        labels = row.get("labels")
        if labels is None and summary is not None:
            labels = greedy_oracle(sentences, summary, max_oracle_sentences)
        if labels is not None and len(labels) != len(sentences):
            raise KbftError(f"Record {i} has {len(sentences)} sentences but {len(labels)} "
                            "labels.")
        out.append(Document(sentences, None if labels is None else [int(y) for y in labels],
                            summary))
    return out


# ---------------------------------------------------------------------------- graph


def pack_sentences(preprocessor, sentences: tf.RaggedTensor, seq_length: int):
    """Sentences `[batch, (sentences)]` -> model inputs (interval segment ids) and each
    sentence's [CLS] position `[batch, (sentences)]`, -1 for sentences left out."""
    pieces = preprocessor.tokenize(sentences.flat_values)  # [all sentences, (pieces)]
    count = tf.cast(pieces.row_lengths(), tf.int32)
    doc = tf.cast(sentences.value_rowids(), tf.int32)
    doc_start = tf.cast(sentences.row_starts(), tf.int32)
    cost = count + 2
    cumulative = tf.cumsum(cost, exclusive=True)
    before = cumulative - tf.gather(tf.concat([cumulative, [0]], 0), tf.gather(doc_start, doc))
    keep = tf.clip_by_value(seq_length - before - 2, 0, count)  # pieces kept per sentence
    kept = keep > 0
    size = tf.where(kept, keep + 2, 0)  # tokens per sentence in the input
    index = tf.ragged.range(size)  # token index within the sentence's slot
    sentence = tf.cast(index.value_rowids(), tf.int32)
    at = index.flat_values
    last = tf.gather(size, sentence) - 1  # the [SEP]
    piece = tf.gather(pieces.flat_values,
                      tf.gather(tf.cast(pieces.row_starts(), tf.int32), sentence)
                      + tf.clip_by_value(at - 1, 0, tf.gather(keep, sentence) - 1))
    tokens = tf.where(at == 0, preprocessor.cls_id, tf.where(at == last, preprocessor.sep_id, piece))
    parity = (tf.range(tf.size(doc)) - tf.gather(doc_start, doc)) % 2
    doc_splits = tf.gather(tf.concat([[0], tf.cumsum(size)], 0), sentences.row_splits)
    ids = tf.RaggedTensor.from_row_splits(tokens, doc_splits)
    types = ids.with_flat_values(tf.gather(parity, sentence))
    word_ids, mask = _pad(ids, seq_length, preprocessor.pad_id)
    type_ids, _ = _pad(types, seq_length, 0)
    position = tf.cumsum(size, exclusive=True)
    position = position - tf.gather(tf.concat([position, [0]], 0), tf.gather(doc_start, doc))
    features = {"input_word_ids": word_ids, "input_mask": mask, "input_type_ids": type_ids}
    return features, sentences.with_flat_values(tf.where(kept, position, -1))


def _pad(ragged, seq_length, value):
    dense = ragged.to_tensor(default_value=value, shape=[None, seq_length])
    mask = tf.sequence_mask(ragged.row_lengths(), seq_length, dtype=tf.int32)
    return tf.cast(dense, tf.int32), mask


class SentenceLogits(keras.layers.Layer):
    """The encoder's vectors at each sentence's [CLS] -> one logit per sentence."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = heads.logits_layer(1, name="sentence_logit")

    def call(self, sequence, positions):
        gathered = tf.gather(sequence, positions, batch_dims=1)
        return tf.squeeze(self.dense(gathered), -1)


def build_extractor(encoder, dropout: float = 0.1, head_units=()) -> FineTuneModel:
    """Encoder -> `sequence_output` at the [CLS] positions (`cls_positions` input) ->
    Dropout -> Dense(1): one logit per sentence `[batch, sentences]`."""
    inputs = encoder_inputs()
    positions = keras.Input(shape=(None,), dtype=tf.int32, name="cls_positions")
    sequence = heads.dense_blocks(encoder(inputs)["sequence_output"], tuple(head_units), dropout)
    logits = SentenceLogits(name="sentence_scores")(sequence, positions)
    return FineTuneModel(inputs={**inputs, "cls_positions": positions}, outputs=logits,
                         name="extractive_summarizer")


class SummarizationServing(ListServing):
    """`serving_default(document)` -> `summary` (the chosen sentences joined by a space,
    in document order), `sentences` and `sentence_ids` `[batch, top_k]` ("" / -1
    padding), `scores` per split sentence (-1 when left out) and `num_sentences`."""

    task = "summarization"
    input_names = ("document",)

    def __init__(self, model, preprocessor, top_k: int):
        self.top_k = int(top_k)
        super().__init__(model, preprocessor, {"top_k": self.top_k})

    def serve_lists(self, sentences: tf.RaggedTensor):
        features, positions = pack_sentences(self.preprocessor, sentences,
                                             self.preprocessor.seq_length)
        positions = positions.to_tensor(default_value=-1)
        features = dict(trim_to_longest(features), cls_positions=tf.maximum(positions, 0))
        scores = tf.sigmoid(tf.cast(self.model(features, training=False), tf.float32))
        scores = tf.where(positions >= 0, scores, -1.0)
        k = tf.minimum(self.top_k, tf.shape(scores)[1])
        top, chosen = tf.math.top_k(scores, k)
        chosen = tf.where(top >= 0, chosen, tf.shape(scores)[1])
        chosen = tf.sort(chosen, axis=1)  # document order; left-out slots sort last
        found = chosen < tf.shape(scores)[1]
        padded = sentences.to_tensor(default_value="")
        text = tf.where(found, tf.gather(padded, tf.minimum(chosen, tf.shape(padded)[1] - 1),
                                         batch_dims=1), "")
        summary = tf.strings.reduce_join(tf.ragged.boolean_mask(text, found), axis=1,
                                         separator=" ")
        return {"summary": summary, "sentences": text,
                "sentence_ids": tf.where(found, chosen, -1), "scores": scores,
                "num_sentences": tf.cast(sentences.row_lengths(), tf.int32)}

    def serve(self, document):
        return self.serve_lists(tf_split_sentences(document))

    def decode(self, outputs):
        return decode(outputs)


def decode(outputs) -> List[dict]:
    """One batch of serving outputs -> `[{"summary", "sentences", "sentence_ids"}, ...]`."""
    rows = []
    for i, summary in enumerate(outputs["summary"]):
        ids = [int(x) for x in outputs["sentence_ids"][i] if x >= 0]
        rows.append({"summary": summary.decode("utf-8"), "sentence_ids": ids,
                     "sentences": [s.decode("utf-8") for s in outputs["sentences"][i][:len(ids)]]})
    return rows


# ------------------------------------------------------------------------ training


def featurize(preprocessor, documents: Sequence[Document], seq_length: int,
              batch_size: int = 128):
    """Padded inputs with `cls_positions`, and labels `[docs, sentences]` (`IGNORE` for
    padding and for sentences left out of the input)."""
    width = max(1, max(len(d.sentences) for d in documents))
    features, labels = [], []
    for start in range(0, len(documents), batch_size):
        chunk = documents[start:start + batch_size]
        batch, positions = pack_sentences(
            preprocessor, tf.ragged.constant([d.sentences for d in chunk], dtype=tf.string,
                                             ragged_rank=1), seq_length)
        cls = np.zeros((len(chunk), width), np.int32)
        y = np.full((len(chunk), width), base.IGNORE, np.int32)
        for i, (doc, row) in enumerate(zip(chunk, positions.to_list())):
            for j, (position, label) in enumerate(zip(row, doc.labels)):
                if position >= 0:
                    cls[i, j], y[i, j] = position, label
        features.append(dict(base.pad_features(batch, seq_length), cls_positions=cls))
        labels.append(y)
    stacked = {k: np.concatenate([f[k] for f in features]) for k in features[0]}
    return stacked, np.concatenate(labels)


def evaluate(serving: SummarizationServing, documents: Sequence[Document]) -> dict:
    """ROUGE-1/2/L of the chosen sentences against each reference, and the F1 of the
    chosen sentence set against the oracle labels (when given)."""
    rows = serving.predict_lists([d.sentences for d in documents])
    metrics = rouge_scores([r["summary"] for r in rows], [d.target for d in documents])
    hits = chosen = gold = 0
    for row, doc in zip(rows, documents):
        if doc.labels is None:
            continue
        picked, wanted = set(row["sentence_ids"]), {i for i, y in enumerate(doc.labels) if y}
        hits, chosen, gold = hits + len(picked & wanted), chosen + len(picked), gold + len(wanted)
    if chosen and gold and hits:
        precision, recall = hits / chosen, hits / gold
        metrics["sentence_f1"] = 2 * precision * recall / (precision + recall)
    elif gold:
        metrics["sentence_f1"] = 0.0
    metrics["eval_documents"] = len(documents)
    return metrics


class SummarizationTask(base.Task):
    """Extractive summarisation (BERTSUM-style): a JSON-lines file or records (see
    `load_documents`): sentence lists with oracle labels, or documents with reference
    summaries (oracle labels by `greedy_oracle`, `top_k` sentences at most). Judged by
    ROUGE against the references."""

    name = "summarization"
    needs_vocab = True
    primary_metric = "rouge2"
    metric_names = ("rouge1", "rouge2", "rougeL", "sentence_f1")

    def read(self, source, config, info=None, where=None):
        where = where or ("train" if info is None else "validation")
        documents = load_documents(source, max_oracle_sentences=config.top_k,
                                   encoding=config.encoding, where=where)
        unlabelled = [i for i, d in enumerate(documents) if d.labels is None]
        if info is None and unlabelled:
            raise KbftError(f"Training document {unlabelled[0]} has neither labels nor a "
                            f"summary. Received: train={_name(source)}")
        return documents

    def featurize(self, data, preprocessor, config, info):
        labelled = [d for d in data if d.labels is not None]
        if not labelled:
            return None
        features, labels = featurize(preprocessor, labelled, config.seq_length)
        return base.Features(features, labels)

    def build_model(self, encoder, config, info):
        return build_extractor(encoder, config.dropout, config.head_units)

    def loss(self, info):
        return base.masked_binary_crossentropy

    def serving(self, model, preprocessor, config, info):
        return SummarizationServing(model, preprocessor, config.top_k)

    def evaluate(self, serving, data, config, info):
        return evaluate(serving, data), info

    def predict(self, serving, documents: Sequence, batch_size: int = 32) -> List[dict]:
        """`[{"summary", "sentences", "sentence_ids"}]` per document: raw strings (split
        by the module's rule, as the export does) or lists of sentences."""
        documents = base.as_list(documents, "documents")
        if all(isinstance(d, str) for d in documents):
            return [row for batch in serving.run(documents, batch_size=batch_size)
                    for row in decode(batch)]
        return serving.predict_lists(documents, batch_size)


def _name(source) -> str:
    return source if isinstance(source, str) else type(source).__name__


TASK = SummarizationTask()


def fine_tune_summarization(train, validation=None, config=None, **kwargs):
    """Fine-tunes an encoder for extractive summarisation (BERTSUM-style): `fine_tune(..., task='summarization')`."""
    from keras_bert_ft.training.runner import fine_tune
    return fine_tune(train, validation, config, **dict(kwargs, task='summarization'))
