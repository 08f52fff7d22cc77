"""Preprocessor: raw strings -> BERT's int32 input dict, with tensorflow-text, graph-only.

Everything here is TensorFlow ops, so the same object runs inside `tf.data` (on the
host, which TPUs need: tensorflow-text has no TPU kernels) and inside an exported
SavedModel that serves raw strings.
"""

import hashlib
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_text as text

from keras_bert_ft._keras import keras  # noqa: F401  (selects tf_keras before hub)
from keras_bert_ft.encoders import presets
from keras_bert_ft.errors import KbftError, bad_argument

INPUT_KEYS = ("input_word_ids", "input_mask", "input_type_ids")
_REQUIRED_TOKENS = ("[CLS]", "[SEP]", "[PAD]", "[UNK]")


def check_seq_length(seq_length, maximum: Optional[int] = None) -> int:
    """Validates `seq_length`: an int >= 3 ([CLS], one token, [SEP]) and <= `maximum`."""
    if isinstance(seq_length, bool) or not isinstance(seq_length, int) or seq_length < 3:
        raise bad_argument("seq_length", seq_length, "an int >= 3")
    if maximum is not None and seq_length > maximum:
        raise bad_argument("seq_length", seq_length,
                           f"<= {maximum}, the longest input this encoder takes")
    return seq_length


def read_vocab(vocab_file: str) -> List[str]:
    """The tokens of a WordPiece `vocab.txt`, one per line, checked for BERT's specials."""
    if not isinstance(vocab_file, str) or not tf.io.gfile.exists(vocab_file):
        raise bad_argument("vocab_file", vocab_file, "an existing vocab.txt file")
    with tf.io.gfile.GFile(vocab_file, "rb") as f:
        raw = f.read()
    try:
        tokens = raw.decode("utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise bad_argument("vocab_file", vocab_file,
                           f"a UTF-8 text file (bad byte at position {err.start})") from None
    missing = [t for t in _REQUIRED_TOKENS if t not in tokens]
    if missing:
        raise bad_argument("vocab_file", vocab_file,
                           f"a BERT WordPiece vocab with {', '.join(_REQUIRED_TOKENS)} "
                           f"(missing {', '.join(missing)})")
    return tokens


# What a FastBertTokenizer is compiled from, besides the vocab and the casing.
_FAST_SETTINGS = {"unknown_token": "[UNK]", "suffix_indicator": "##", "max_bytes_per_word": 100}
_TOKENIZER_CACHE = "tokenizers"


def fast_bert_tokenizer(tokens: Sequence[str], lower_case: bool) -> "text.FastBertTokenizer":
    """tensorflow-text's FastBertTokenizer for `tokens`, its two compiled models (the
    WordPiece trie and the normaliser's character tables) read from the cache folder
    (paths.cache_dir) when an earlier run compiled them for the same vocab, casing and
    tensorflow-text version. Compiling them takes about 0.3 s of every run's start; the
    cached bytes are the compiler's own output, so the ids are the same."""
    from keras_bert_ft.paths import cache_dir
    key = hashlib.sha1("\n".join([text.__version__, str(bool(lower_case)),
                                   repr(sorted(_FAST_SETTINGS.items())), *tokens])
                       .encode("utf-8")).hexdigest()[:24]
    folder = os.path.join(cache_dir(), _TOKENIZER_CACHE, key)
    settings = dict(token_out_type=tf.int64, lower_case_nfd_strip_accents=bool(lower_case),
                    **_FAST_SETTINGS)
    buffers = _read_cache(folder, ("wordpiece", "normalizer"))
    if buffers is not None:
        return text.FastBertTokenizer(
            fast_wordpiece_model_buffer=tf.constant(np.frombuffer(buffers["wordpiece"], np.uint8)),
            fast_bert_normalizer_model_buffer=tf.constant(
                np.frombuffer(buffers["normalizer"], np.uint8)), **settings)
    tokenizer = text.FastBertTokenizer(vocab=list(tokens), **settings)
    _write_cache(folder, {"wordpiece": tokenizer._fast_wordpiece_tokenizer._model,
                          "normalizer": tokenizer._fast_bert_normalizer._model})
    return tokenizer


def _read_cache(folder: str, names) -> Optional[Dict[str, bytes]]:
    """The cached files `names` of `folder`, each checked against the digest its index
    recorded; None when any is missing, unreadable or different."""
    import json
    try:
        with open(os.path.join(folder, "index.json")) as f:
            digests = json.load(f)
        found = {}
        for name in names:
            with open(os.path.join(folder, f"{name}.bin"), "rb") as f:
                found[name] = f.read()
            if hashlib.sha1(found[name]).hexdigest() != digests.get(name):
                return None
        return found
    except (OSError, ValueError, AttributeError):
        return None


def _write_cache(folder: str, models: Dict[str, tf.Tensor]) -> None:
    """Writes each model's bytes, then the index of their digests (paths.write_whole); a
    cache folder that cannot be written only means the models are compiled again next
    time."""
    import json
    from keras_bert_ft.paths import write_whole
    contents = {f"{name}.bin": model.numpy().tobytes() for name, model in models.items()}
    contents["index.json"] = json.dumps(
        {name: hashlib.sha1(contents[f"{name}.bin"]).hexdigest() for name in models}).encode()
    try:
        for name, data in contents.items():  # the index last
            write_whole(os.path.join(folder, name), data)
    except OSError:
        pass


class Preprocessor(tf.Module):
    """Tokenises and packs single texts or pairs into `input_word_ids`, `input_mask`,
    `input_type_ids` (int32, `[batch, seq_length]`).

    Build it with `Preprocessor.from_vocab(...)`, `Preprocessor.from_hub(...)` or
    `Preprocessor.from_handle(...)` (either, by what the path holds). Pairs are
    truncated round-robin, as BERT's own packer does.

    Example:
        >>> pre = Preprocessor.from_vocab("vocab.txt", seq_length=64)
        >>> features = pre(tf.constant(["a fine film"]))
        >>> pair = pre(tf.constant(["a question?"]), tf.constant(["an answer."]))
    """

    def __init__(self, tokenizer, *, cls_id: int, sep_id: int, pad_id: int,
                 seq_length: int = 128, source: str = "", lower_case: Optional[bool] = None,
                 hub_module=None):
        super().__init__(name="preprocessor")
        self.seq_length = check_seq_length(seq_length)
        self._tokenizer = tokenizer
        self._hub_module = hub_module
        self.cls_id, self.sep_id, self.pad_id = int(cls_id), int(sep_id), int(pad_id)
        self.source = source
        self.lower_case = lower_case

    # ------------------------------------------------------------- construction
    @classmethod
    def from_vocab(cls, vocab_file: str, lower_case: bool = True,
                   seq_length: int = 128) -> "Preprocessor":
        """A WordPiece preprocessor from a BERT `vocab.txt`."""
        check_seq_length(seq_length)
        tokens = read_vocab(vocab_file)
        first = {}
        for i, tok in enumerate(tokens):
            first.setdefault(tok, i)
        if len(first) == len(tokens):
            # The C++ fast tokenizer: same ids as BertTokenizer (checked on 64k SST-2 and
            # MRPC sentences with accents and CJK), about 7x faster.
            tokenizer = fast_bert_tokenizer(tokens, lower_case)
        else:  # duplicate vocab lines: only the lookup-table tokenizer takes those
            keys = list(first)
            table = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(
                    tf.constant(keys), tf.constant([first[k] for k in keys], tf.int64)),
                default_value=first["[UNK]"])
            tokenizer = text.BertTokenizer(table, token_out_type=tf.int64,
                                           lower_case=lower_case, unknown_token="[UNK]")
        return cls(tokenizer, cls_id=first["[CLS]"], sep_id=first["[SEP]"],
                   pad_id=first["[PAD]"], seq_length=seq_length,
                   source=os.fspath(vocab_file), lower_case=lower_case)

    @classmethod
    def from_hub(cls, handle: str, seq_length: int = 128) -> "Preprocessor":
        """A preprocessor from a TF-Hub BERT preprocess SavedModel (`tokenize`,
        `bert_pack_inputs`), e.g. `bert_en_uncased_preprocess` or a converted one."""
        check_seq_length(seq_length)
        module = _load_hub_preprocessor(handle)
        special = module.tokenize.get_special_tokens_dict()
        ids = {k: int(v.numpy()) for k, v in special.items()}
        return cls(module.tokenize, cls_id=ids["start_of_sequence_id"],
                   sep_id=ids["end_of_segment_id"], pad_id=ids["padding_id"],
                   seq_length=seq_length, source=handle, hub_module=module)

    @classmethod
    def from_handle(cls, handle: str, *, lower_case: bool = True,
                    seq_length: int = 128) -> "Preprocessor":
        """`from_vocab` for a `.txt` file, else `from_hub` (preset names included)."""
        if not isinstance(handle, str) or not handle:
            raise bad_argument("preprocessor", handle,
                               "a vocab.txt file, a preset name or a preprocessor handle")
        if handle.endswith(".txt"):
            return cls.from_vocab(handle, lower_case=lower_case, seq_length=seq_length)
        return cls.from_hub(handle, seq_length=seq_length)

    # ------------------------------------------------------------------- graph
    def tokenize(self, texts) -> tf.RaggedTensor:
        """`[batch]` strings -> `[batch, (tokens)]` int32 word-piece ids."""
        texts = tf.convert_to_tensor(texts, tf.string)
        pieces = self._tokenizer(texts) if self._hub_module is not None \
            else self._tokenizer.tokenize(texts)
        if pieces.ragged_rank > 1:
            pieces = pieces.merge_dims(-2, -1)
        return tf.cast(pieces, tf.int32)

    def tokenize_with_offsets(self, texts):
        """`[batch]` strings -> ids `[batch, (tokens)]` int32 and each piece's start and
        end byte offsets (int64) in the original string (span QA, tagging)."""
        if self._hub_module is not None:
            raise KbftError("Word-piece offsets need a vocab.txt preprocessor (a TF-Hub "
                            f"preprocess model gives none). Received: preprocessor={self.source!r}")
        texts = tf.convert_to_tensor(texts, tf.string)
        pieces, starts, ends = self._tokenizer.tokenize_with_offsets(texts)
        if pieces.ragged_rank > 1:
            pieces, starts, ends = (t.merge_dims(-2, -1) for t in (pieces, starts, ends))
        return tf.cast(pieces, tf.int32), starts, ends

    def pack(self, segments: Sequence[tf.RaggedTensor],
             seq_length: Optional[int] = None) -> Dict[str, tf.Tensor]:
        """[CLS] a [SEP] (b [SEP]), trimmed round-robin and padded to `seq_length`."""
        seq_length = seq_length or self.seq_length
        segments = list(segments)
        budget = seq_length - len(segments) - 1
        trimmed = trim_round_robin(segments, budget)
        ids, type_ids = text.combine_segments(
            trimmed, start_of_sequence_id=self.cls_id, end_of_segment_id=self.sep_id)
        word_ids, mask = text.pad_model_inputs(ids, max_seq_length=seq_length,
                                               pad_value=self.pad_id)
        type_ids, _ = text.pad_model_inputs(type_ids, max_seq_length=seq_length)
        return {"input_word_ids": tf.cast(word_ids, tf.int32),
                "input_mask": tf.cast(mask, tf.int32),
                "input_type_ids": tf.cast(type_ids, tf.int32)}

    def __call__(self, texts, texts_b=None, seq_length: Optional[int] = None):
        segments = [self.tokenize(texts)]
        if texts_b is not None:
            segments.append(self.tokenize(texts_b))
        return self.pack(segments, seq_length)


def trim_round_robin(segments: Sequence[tf.RaggedTensor], budget) -> List[tf.RaggedTensor]:
    """Cuts one or two `[batch, (pieces)]` segments to at most `budget` pieces in all,
    taking a piece from each in turn (the first segment first), as tensorflow-text's
    `RoundRobinTrimmer` does, with core TensorFlow ops only: its `TFText>RoundRobinTrim`
    op is newer than the tensorflow-text that TF Serving's model server bundles."""
    if not 1 <= len(segments) <= 2:
        raise bad_argument("segments", len(segments), "one or two segments (a text or a pair)")
    lengths = [s.row_lengths() for s in segments]
    budget = tf.cast(budget, lengths[0].dtype)
    if len(segments) == 1:
        keep = [tf.minimum(lengths[0], budget)]
    else:
        # Turn by turn the first gets ceil(budget / 2) and the second the rest, unless
        # one runs out: then the other takes what it leaves.
        first = tf.minimum(lengths[0], tf.maximum(budget - lengths[1], (budget + 1) // 2))
        keep = [first, tf.minimum(lengths[1], budget - first)]
    out = []
    for segment, count in zip(segments, keep):
        starts = tf.cast(segment.row_starts(), count.dtype)
        index = tf.ragged.range(starts, starts + count).flat_values
        out.append(tf.RaggedTensor.from_row_lengths(
            tf.gather(segment.flat_values, index), tf.cast(count, segment.row_splits.dtype),
            validate=False))
    return out


def trim_to_longest(features: Dict[str, tf.Tensor], multiple: int = 8):
    """Cuts a padded batch to its longest example, rounded up to `multiple`.

    Padding is most of the work on short texts (SST-2); attention masks make the
    result identical to the fully padded batch.
    """
    full = tf.shape(features["input_mask"])[1]
    longest = tf.reduce_max(tf.reduce_sum(features["input_mask"], axis=1))
    length = tf.minimum(full, (longest + multiple - 1) // multiple * multiple)
    length = tf.maximum(length, 1)
    return {k: v[:, :length] if k in INPUT_KEYS else v for k, v in features.items()}


def _load_hub_preprocessor(handle: str):
    resolved = presets.resolve_preprocessor(handle)
    from keras_bert_ft.encoders.hub_encoder import check_local_handle, is_remote
    check_local_handle(resolved)
    import tensorflow_hub as hub
    try:
        module = hub.load(resolved)
    except Exception as err:  # resolver and loader raise many kinds
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        if is_remote(resolved) and not resolved.startswith("gs://"):
            raise KbftError(
                f"Could not download preprocessor handle {handle!r} ({reason}). With no "
                "network, pass a local copy of the preprocess model or the encoder's "
                "vocab.txt instead.") from err
        raise KbftError(f"Could not load preprocessor handle {handle!r}: {reason}") from err
    if not (hasattr(module, "tokenize") and hasattr(module, "bert_pack_inputs")):
        raise bad_argument("preprocessor", handle,
                           "a BERT preprocess SavedModel with `tokenize` and "
                           "`bert_pack_inputs`")
    return module
