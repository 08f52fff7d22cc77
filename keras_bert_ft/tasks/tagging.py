"""Token classification: word-level tags from raw text, each word's label on its first piece.

Words are whitespace-separated (CoNLL tokens joined by spaces give back the same words);
each word is cut into word pieces on its own, its tag is trained and predicted on its
first piece, and the other pieces stay out of the loss. Words whose first piece falls
beyond `seq_length - 2` pieces get the empty tag "" (they were not seen). Judged by
entity-level F1 (exact span and type, seqeval-style) and per-word accuracy.
"""

import dataclasses
import os
from typing import List, Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_text as text

from keras_bert_ft._keras import keras
from keras_bert_ft.tasks import heads
from keras_bert_ft.errors import KbftError, bad_argument
from keras_bert_ft.tasks.models import FineTuneModel, encoder_inputs
from keras_bert_ft.data.preprocessing import trim_to_longest
from keras_bert_ft.export.serving import ListServing
from keras_bert_ft.tasks import base
from keras_bert_ft.tasks.metrics import tagging_metrics


@dataclasses.dataclass
class TaggedSentences:
    """Sentences as word lists, with one tag per word (or no tags, for prediction)."""
    words: List[List[str]]
    tags: Optional[List[List[str]]] = None
    source: str = "<memory>"

    def __len__(self):
        return len(self.words)

    def take(self, n: int) -> "TaggedSentences":
        return dataclasses.replace(self, words=self.words[:n],
                                   tags=None if self.tags is None else self.tags[:n])

    def subset(self, indices: Sequence[int]) -> "TaggedSentences":
        return dataclasses.replace(
            self, words=[self.words[i] for i in indices],
            tags=None if self.tags is None else [self.tags[i] for i in indices])

    def concat(self, other: "TaggedSentences") -> "TaggedSentences":
        """These sentences, then `other`'s (both tagged, or neither)."""
        if (other.tags is None) != (self.tags is None):
            raise KbftError(f"{other.source} cannot join {self.source}: both need tags, "
                            "or neither")
        return dataclasses.replace(
            self, words=self.words + other.words,
            tags=None if self.tags is None else self.tags + other.tags,
            source=f"{self.source} + {other.source}")


def read_conll(path: str, encoding: str = "utf-8", where: str = "data") -> TaggedSentences:
    """CoNLL-style columns: one word per line, the word first and its tag last, a blank
    line between sentences; `-DOCSTART-` lines are skipped."""
    if not os.path.isfile(path):
        raise bad_argument(where, path, "an existing CoNLL file (not found)")
    words, tags, sentence, sentence_tags = [], [], [], []
    try:
        with open(path, encoding=encoding) as f:
            lines = f.readlines()
    except UnicodeDecodeError as err:
        raise KbftError(f"File {path!r} is not valid {encoding} text ({err.reason} at byte "
                        f"{err.start}); pass its encoding (--encoding). Received: "
                        f"encoding={encoding!r}", argument="encoding") from None
    for number, line in enumerate(lines, 1):
        parts = line.split()
        if not parts or parts[0] == "-DOCSTART-":
            if sentence:
                words.append(sentence)
                tags.append(sentence_tags)
            sentence, sentence_tags = [], []
            continue
        if len(parts) < 2:
            raise KbftError(f"{path}:{number}: expected a word and a tag, separated by "
                            f"whitespace. Received: line={line.rstrip()!r}")
        sentence.append(parts[0])
        sentence_tags.append(parts[-1])
    if sentence:
        words.append(sentence)
        tags.append(sentence_tags)
    if not words:
        raise bad_argument(where, path, "a CoNLL file with at least one sentence (it is empty)")
    return TaggedSentences(words, tags, source=path)


def load_tagged(source, encoding: str = "utf-8", where: str = "data") -> TaggedSentences:
    """`TaggedSentences` from a CoNLL file, a list of `{"tokens": [...], "tags": [...]}`
    records (`words` also works for `tokens`) or a list of `(words, tags)` pairs."""
    if isinstance(source, TaggedSentences):
        return source
    if isinstance(source, (str, os.PathLike)):
        return read_conll(os.fspath(source), encoding, where)
    rows = base.as_list(source, where)
    words, tags = [], []
    for i, row in enumerate(rows):
        if isinstance(row, dict):
            w, t = row.get("tokens", row.get("words")), row.get("tags")
        elif isinstance(row, (list, tuple)) and len(row) == 2:
            w, t = row
        else:
            raise bad_argument(where, type(row).__name__, 'records {"tokens": [...], '
                               '"tags": [...]} or (words, tags) pairs')
        if w is None or t is None or len(w) != len(t):
            raise KbftError(f"Sentence {i} needs as many tags as words. Received: "
                            f"words={w!r}, tags={t!r}")
        words.append([str(x) for x in w])
        tags.append([str(x) for x in t])
    return TaggedSentences(words, tags)


# ---------------------------------------------------------------------------- graph


def encode_words(preprocessor, words: tf.RaggedTensor, seq_length: int):
    """Word lists `[batch, (words)]` -> packed model inputs and each word's first-piece
    position `[batch, (words)]` (-1 for a word with no piece inside the input)."""
    pieces = preprocessor.tokenize(words.flat_values)  # [all words, (pieces)]
    counts = tf.cast(pieces.row_lengths(), tf.int32)
    total = tf.cumsum(counts, exclusive=True)
    before_sentence = tf.gather(tf.concat([total, [tf.reduce_sum(counts)]], 0),
                                tf.cast(words.row_starts(), tf.int32))
    first = 1 + total - tf.gather(before_sentence, tf.cast(words.value_rowids(), tf.int32))
    valid = (counts > 0) & (first <= seq_length - 2)
    first = words.with_flat_values(tf.where(valid, first, -1))
    per_sentence = tf.RaggedTensor.from_row_splits(pieces, words.row_splits).merge_dims(1, 2)
    return preprocessor.pack([per_sentence], seq_length), first


class TaggingServing(ListServing):
    """`serving_default(text)`: whitespace words, their tags and tag ids, `num_words`."""

    task = "tagging"
    input_names = ("text",)

    def __init__(self, model, preprocessor, tag_names: Sequence[str]):
        self.tag_names = tf.constant(list(tag_names), tf.string)
        super().__init__(model, preprocessor, {"tag_names": list(tag_names)})

    def serve_lists(self, words: tf.RaggedTensor):
        features, first = encode_words(self.preprocessor, words, self.preprocessor.seq_length)
        probabilities = tf.nn.softmax(tf.cast(
            self.model(trim_to_longest(features), training=False), tf.float32), axis=-1)
        positions = first.to_tensor(default_value=-1)
        seen = positions >= 0
        per_word = tf.gather(probabilities, tf.maximum(positions, 0), batch_dims=1)
        tag_ids = tf.where(seen, tf.argmax(per_word, axis=-1, output_type=tf.int32), -1)
        return {"words": words.to_tensor(default_value=""),
                "tags": tf.where(seen, tf.gather(self.tag_names, tf.maximum(tag_ids, 0)), ""),
                "tag_ids": tag_ids,
                "scores": tf.where(seen, tf.reduce_max(per_word, axis=-1), 0.0),
                "num_words": tf.cast(words.row_lengths(), tf.int32)}

    def serve(self, text):
        return self.serve_lists(tf_text_words(text))

    def decode(self, outputs):
        return decode(outputs)


def tf_text_words(texts) -> tf.RaggedTensor:
    """`[batch]` strings -> `[batch, (words)]`, split on whitespace."""
    return text.WhitespaceTokenizer().tokenize(texts)


def decode(outputs) -> List[dict]:
    """One batch of serving outputs -> `[{"words": [...], "tags": [...]}, ...]`."""
    rows = []
    for i, n in enumerate(outputs["num_words"]):
        rows.append({"words": [w.decode("utf-8") for w in outputs["words"][i][:n]],
                     "tags": [t.decode("utf-8") for t in outputs["tags"][i][:n]]})
    return rows


# ---------------------------------------------------------------------------- model


def build_tagger(encoder, num_tags: int, dropout: float = 0.1,
                 head_units: Sequence[int] = ()) -> FineTuneModel:
    """Encoder -> `sequence_output` -> Dropout (+ Dense blocks) -> Dense: logits
    `[batch, seq, tags]`."""
    inputs = encoder_inputs()
    sequence = encoder(inputs)["sequence_output"]
    x = heads.dense_blocks(sequence, tuple(head_units), dropout)
    logits = heads.logits_layer(num_tags, name="tag_logits")(x)
    return FineTuneModel(inputs=inputs, outputs=logits, name="tagger")


def featurize(preprocessor, sentences: TaggedSentences, tag_index: dict, seq_length: int,
              batch_size: int = 256):
    """Padded model inputs and per-piece labels (the word's tag on its first piece,
    `IGNORE` elsewhere), through the same `encode_words` as serving."""
    features, labels = [], []
    for start in range(0, len(sentences), batch_size):
        words = sentences.words[start:start + batch_size]
        batch, first = encode_words(
            preprocessor, tf.ragged.constant(words, dtype=tf.string, ragged_rank=1), seq_length)
        features.append(base.pad_features(batch, seq_length))
        y = np.full((len(words), seq_length), base.IGNORE, np.int32)
        for i, positions in enumerate(first.to_list()):
            for position, tag in zip(positions, sentences.tags[start + i]):
                if position >= 0:
                    y[i, position] = tag_index[tag]
        labels.append(y)
    return base.stack(features), np.concatenate(labels)


def evaluate(serving: TaggingServing, sentences: TaggedSentences) -> dict:
    predicted = [row["tags"] for row in serving.predict_lists(sentences.words)]
    metrics = tagging_metrics(sentences.tags, predicted)
    metrics["eval_sentences"] = len(sentences)
    return metrics


class TaggingTask(base.Task):
    """Word-level tagging (NER, POS, chunking): CoNLL files, `{"tokens", "tags"}` records
    or `(words, tags)` pairs (see `load_tagged`). Judged by entity-level F1."""

    name = "tagging"
    token_labels = True
    needs_vocab = True
    primary_metric = "entity_f1"
    metric_names = ("entity_f1", "entity_precision", "entity_recall", "token_accuracy")

    def read(self, source, config, info=None, where=None):
        where = where or ("train" if info is None else "validation")
        sentences = load_tagged(source, config.encoding, where=where)
        if info is not None:
            if sentences.tags is None:
                raise bad_argument(where, sentences.source, "tagged sentences")
            base.check_labels_known({t for tags in sentences.tags for t in tags},
                                    info["tag_names"], f"{where} {sentences.source}")
        return sentences

    def describe(self, train, config):
        tag_names = sorted({t for tags in train.tags for t in tags})
        if len(tag_names) < 2:
            raise bad_argument("train", train.source, "sentences with at least two different "
                               f"tags (found only {tag_names})")
        return {"tag_names": tag_names}

    def featurize(self, data, preprocessor, config, info):
        if data.tags is None:
            return None
        index = {t: i for i, t in enumerate(info["tag_names"])}
        features, labels = featurize(preprocessor, data, index, config.seq_length)
        return base.Features(features, labels)

    def build_model(self, encoder, config, info):
        return build_tagger(encoder, len(info["tag_names"]), config.dropout, config.head_units)

    def loss(self, info):
        return base.masked_sparse_crossentropy

    def serving(self, model, preprocessor, config, info):
        return TaggingServing(model, preprocessor, info["tag_names"])

    def evaluate(self, serving, data, config, info):
        return evaluate(serving, data), info

    def predict(self, serving, texts: Sequence[str], batch_size: int = 32) -> List[dict]:
        """`[{"words": [...], "tags": [...]}]` per raw string, as the export returns them."""
        texts = base.as_list(texts, "texts")
        return [row for batch in serving.run(texts, batch_size=batch_size)
                for row in decode(batch)]


TASK = TaggingTask()


def fine_tune_tagging(train, validation=None, config=None, **kwargs):
    """Fine-tunes an encoder for word-level tagging (NER, POS, chunking): `fine_tune(..., task='tagging')`."""
    from keras_bert_ft.training.runner import fine_tune
    return fine_tune(train, validation, config, **dict(kwargs, task='tagging'))
