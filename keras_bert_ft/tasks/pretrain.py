"""Masked-LM pre-training on the user's own text: one more task of the one runner.

Input: plain-text files (or a list of strings), one text per line, blank lines skipped.
Texts are cut into word pieces by the encoder's vocab.txt tokenizer and packed, whole
texts in turn, into sequences of up to `seq_length` pieces (`[CLS] ... [SEP]`); a text
longer than that is split. Every piece carries the number of its word (`##` pieces
belong to the word before; without `whole_word_masking` each piece is a word of its
own): the runner feeds these numbers where other tasks feed labels.

Masking is BERT's, drawn in the graph inside `train_step` from the unmasked ids and the
word numbers, afresh at every step (so each epoch masks the text differently), seeded by
the run's seed, the replica and the optimizer's step (a resumed run draws the masks an
uninterrupted one draws): each word is chosen with probability `mask_rate` ([CLS],
[SEP] and padding never are); of the chosen pieces 80% become [MASK], 10% a random
token, 10% stay. Validation draws its mask from the run's seed and the batch's contents:
the same mask every epoch, so epochs compare. The loss is the cross-entropy over the
chosen pieces only; perplexity is its exponential.

The head is BERT's: dense hidden -> hidden + the encoder's activation + LayerNorm, then
the output projection TIED to the encoder's word-embedding table (the same variable, not
a copy) plus an output bias. Its weights come from `assets.extra/kbft_mlm_head.npz` in
the encoder's folder when there is one (`kbft convert` writes it from a checkpoint's
`cls.predictions.*`, a pretrain run from its own head), else from the SavedModel's `mlm`
sub-object (TF-Hub BERT encoders exported with one), else BERT's init.
"""

import dataclasses
import math
import os
from typing import List, Optional, Sequence

import numpy as np
import tensorflow as tf

from keras_bert_ft._keras import keras
from keras_bert_ft.data.preprocessing import read_vocab
from keras_bert_ft.errors import KbftError, bad_argument
from keras_bert_ft.tasks import base
from keras_bert_ft.tasks.models import FineTuneModel, encoder_inputs

HEAD_FILE = os.path.join("assets.extra", "kbft_mlm_head.npz")
# The head's weights by name: what `kbft convert` and a pretrain run write, in this order.
HEAD_WEIGHTS = ("transform/dense/kernel", "transform/dense/bias",
                "transform/layer_norm/gamma", "transform/layer_norm/beta", "output_bias")
_MASK, _RANDOM = 0.8, 0.9  # of the chosen pieces: < 0.8 [MASK], < 0.9 random, else kept
_READ_BATCH = 1024


# ---------------------------------------------------------------------------- data


@dataclasses.dataclass
class Texts:
    """Plain texts, one per example, and where they came from."""
    texts: List[str]
    source: str = "<memory>"

    def __len__(self):
        return len(self.texts)

    def take(self, n: int) -> "Texts":
        return dataclasses.replace(self, texts=self.texts[:n])

    def subset(self, indices: Sequence[int]) -> "Texts":
        return dataclasses.replace(self, texts=[self.texts[i] for i in indices])

    def concat(self, other: "Texts") -> "Texts":
        return dataclasses.replace(self, texts=self.texts + other.texts,
                                   source=f"{self.source} + {other.source}")


def load_texts(source, encoding: str = "utf-8", where: str = "train") -> Texts:
    """`Texts` from a text file, a list of text files (one text per line, blank lines
    skipped) or a list of strings."""
    if isinstance(source, Texts):
        return source
    paths = [source] if isinstance(source, (str, os.PathLike)) else None
    if paths is None:
        items = base.as_list(source, where)
        if all(isinstance(x, (str, os.PathLike)) and os.path.isfile(x) for x in items):
            paths = items
        elif all(isinstance(x, str) for x in items):
            texts = [x.strip() for x in items if x.strip()]
            if not texts:
                raise bad_argument(where, "<list>", "texts, at least one not blank")
            return Texts(texts)
        else:
            raise bad_argument(where, type(items[0]).__name__, "text files or strings")
    texts = []
    for path in map(os.fspath, paths):
        if not os.path.isfile(path):
            raise bad_argument(where, path, "an existing text file (not found)")
        try:
            with open(path, encoding=encoding) as f:
                texts += [line.strip() for line in f if line.strip()]
        except UnicodeDecodeError as err:
            raise KbftError(f"File {path!r} is not valid {encoding} text ({err.reason} at "
                            f"byte {err.start}); pass its encoding (--encoding). Received: "
                            f"encoding={encoding!r}", argument="encoding") from None
    if not texts:
        raise bad_argument(where, ", ".join(map(os.fspath, paths)),
                           "text files with at least one non-blank line")
    return Texts(texts, source=", ".join(map(os.fspath, paths)))


def pack(pieces: List[List[int]], continuation: np.ndarray, seq_length: int, *,
         cls_id: int, sep_id: int, pad_id: int, whole_words: bool = True):
    """Word-piece lists -> (ids, input_mask, word number per position) `[n, seq_length]`.

    Whole texts are packed in turn while they fit in `seq_length - 2` pieces; a longer
    text is split. A word's number is -1 at [CLS], [SEP] and padding; `##` pieces share
    the number of the piece before (with `whole_words`; else each piece has its own)."""
    budget = seq_length - 2
    chunks, current = [], []
    for text in pieces:
        if not text:
            continue
        if len(current) + len(text) > budget:
            if current:
                chunks.append(current)
            current = []
        while len(text) > budget:
            chunks.append(text[:budget])
            text = text[budget:]
        # A text starts a new word even after another one's ## piece.
        current = current + [-1 - t for t in text[:1]] + list(text[1:])
    if current:
        chunks.append(current)
    ids = np.full((len(chunks), seq_length), pad_id, np.int32)
    mask = np.zeros((len(chunks), seq_length), np.int32)
    words = np.full((len(chunks), seq_length), base.IGNORE, np.int32)
    for row, chunk in enumerate(chunks):
        mask[row, :len(chunk) + 2] = 1
        starts_text = np.array([t < 0 for t in chunk])
        chunk = np.array([-1 - t if t < 0 else t for t in chunk], np.int64)
        ids[row, 0], ids[row, 1:len(chunk) + 1], ids[row, len(chunk) + 1] = cls_id, chunk, sep_id
        new_word = np.ones(len(chunk), bool)
        if whole_words:
            new_word = starts_text | ~continuation[chunk]
            new_word[0] = True
        words[row, 1:len(chunk) + 1] = np.cumsum(new_word) - 1
    return ids, mask, words


def continuation_pieces(vocab: Sequence[str]) -> np.ndarray:
    """Per vocabulary id: is it a `##` piece (part of the word before)."""
    return np.array([token.startswith("##") for token in vocab], bool)


# ---------------------------------------------------------------------------- masking


def mask_tokens(ids, words, seed, *, mask_rate: float, mask_id: int, vocab_size: int,
                max_predictions: int):
    """BERT's masking of a batch: (masked ids, positions `[batch, P]`, labels `[batch, P]`).

    `words`: each position's word number (-1: never chosen). Each word is chosen with
    probability `mask_rate`, all its pieces together; of the chosen pieces 80% become
    `mask_id`, 10% a random id, 10% stay. At most `max_predictions` pieces per row are
    chosen (the first ones); `P = min(max_predictions, length)`, and labels are the
    original ids there, `IGNORE` where a row has fewer. `seed`: a stateless seed `[2]`."""
    ids = tf.convert_to_tensor(ids, tf.int32)
    words = tf.cast(words, tf.int32)
    shape = tf.shape(ids)
    seed = tf.cast(seed, tf.int64)
    draws = [tf.random.experimental.stateless_fold_in(seed, i) for i in range(3)]
    per_word = tf.random.stateless_uniform(shape, draws[0])  # word w: column w's draw
    chosen = (words >= 0) & (tf.gather(per_word, tf.maximum(words, 0), batch_dims=1)
                             < mask_rate)
    rank = tf.cumsum(tf.cast(chosen, tf.int32), axis=1, exclusive=True)
    chosen &= rank < max_predictions
    how = tf.random.stateless_uniform(shape, draws[1])
    random_ids = tf.random.stateless_uniform(shape, draws[2], minval=0, maxval=vocab_size,
                                             dtype=tf.int32)
    masked = tf.where(chosen & (how < _MASK), mask_id,
                      tf.where(chosen & (how < _RANDOM), random_ids, ids))
    length = shape[1]
    # A static count where the length is static (TPU, XLA: top_k needs a constant k).
    count = (min(max_predictions, ids.shape[1]) if ids.shape[1] is not None
             else tf.minimum(max_predictions, length))
    # Chosen positions first, in order: the largest scores are the earliest chosen.
    score = tf.where(chosen, length - tf.range(length)[None, :], 0)
    positions = tf.math.top_k(score, k=count, sorted=True).indices
    valid = tf.gather(chosen, positions, batch_dims=1)
    labels = tf.where(valid, tf.gather(ids, positions, batch_dims=1), base.IGNORE)
    return masked, tf.where(valid, positions, 0), labels


def max_predictions(seq_length: int, mask_rate: float) -> int:
    """Predictions kept per sequence: twice the expected count, so the cap is rare."""
    return max(1, min(seq_length, math.ceil(2 * mask_rate * seq_length) + 2))


# ---------------------------------------------------------------------------- model


class MaskedLMHead(keras.layers.Layer):
    """BERT's MLM head: dense + activation + LayerNorm, then logits against the TIED word
    embedding table (the encoder's own variable, read at each call) plus an output bias.

    Call on `(sequence_output [batch, seq, hidden], positions [batch, P])`: logits
    `[batch, P, vocab]`, float32."""

    def __init__(self, embedding_table: tf.Variable, activation, name: str = "mlm", **kwargs):
        super().__init__(name=name, **kwargs)
        # A function, not an attribute: Keras would track the variable as this layer's
        # own, and it must stay the encoder's (its trainability, its layer group).
        self._table = lambda: embedding_table
        vocab, hidden = (int(d) for d in embedding_table.shape)
        init = keras.initializers.TruncatedNormal(stddev=0.02)  # BERT's init
        self.dense = keras.layers.Dense(hidden, activation=activation, kernel_initializer=init,
                                        name="transform_dense")
        self.layer_norm = keras.layers.LayerNormalization(epsilon=1e-12,
                                                          name="transform_layer_norm")
        self.vocab_size = vocab

    @property
    def embedding_table(self) -> tf.Variable:
        return self._table()

    def get_config(self):  # for TensorBoard's graph; the table is the encoder's to save
        return {"name": self.name, "vocab_size": self.vocab_size}

    def build(self, input_shape):
        self.output_bias = self.add_weight("output_bias", shape=(self.vocab_size,),
                                           initializer="zeros", dtype=tf.float32)
        super().build(input_shape)

    def call(self, sequence_output, positions):
        x = tf.gather(sequence_output, tf.cast(positions, tf.int32), batch_dims=1)
        x = self.layer_norm(self.dense(x))
        table = self.embedding_table
        logits = tf.matmul(x, tf.cast(table, x.dtype), transpose_b=True)
        return tf.cast(logits, tf.float32) + tf.cast(self.output_bias, tf.float32)

    def head_weights(self) -> dict:
        """The head's weights by `HEAD_WEIGHTS` name, as NumPy arrays."""
        values = [self.dense.kernel, self.dense.bias, self.layer_norm.gamma,
                  self.layer_norm.beta, self.output_bias]
        return {name: np.asarray(v.numpy(), np.float32) for name, v in zip(HEAD_WEIGHTS, values)}

    def set_head_weights(self, weights: dict) -> None:
        missing = [n for n in HEAD_WEIGHTS if n not in weights]
        if missing:
            raise KbftError(f"The MLM head file must hold {', '.join(HEAD_WEIGHTS)}. "
                            f"Received: missing {', '.join(missing)}")
        targets = [self.dense.kernel, self.dense.bias, self.layer_norm.gamma,
                   self.layer_norm.beta, self.output_bias]
        for name, var in zip(HEAD_WEIGHTS, targets):
            value = np.asarray(weights[name])
            if tuple(value.shape) != tuple(var.shape):
                raise KbftError(f"MLM head weight {name} must have shape {tuple(var.shape)} "
                                f"(the encoder's). Received: shape={tuple(value.shape)}")
            var.assign(value)


class MaskedLMModel(FineTuneModel):
    """Encoder + `MaskedLMHead`; its train and test steps mask the batch first (see the
    module doc). Its inputs: the encoder's three plus `masked_lm_positions`."""

    mask_rate = 0.15
    mask_id = 0
    mask_seed = 0
    max_predictions = 1

    def masked_batch(self, data, seed):
        x, words, _ = keras.utils.unpack_x_y_sample_weight(data)
        masked, positions, labels = mask_tokens(
            x["input_word_ids"], words, seed, mask_rate=self.mask_rate, mask_id=self.mask_id,
            vocab_size=self.get_layer("mlm").vocab_size, max_predictions=self.max_predictions)
        inputs = {"input_word_ids": masked, "input_mask": x["input_mask"],
                  "input_type_ids": x["input_type_ids"], "masked_lm_positions": positions}
        return inputs, labels

    def _replica(self):
        context = tf.distribute.get_replica_context()
        replica = context.replica_id_in_sync_group if context is not None else 0
        return tf.cast(replica, tf.int64)

    def train_step(self, data):
        # A fresh mask at every optimizer step (and replica); a resumed run restores
        # `iterations`, so it draws the masks of an uninterrupted run.
        seed = tf.stack([tf.cast(self.mask_seed, tf.int64) * 1024 + self._replica(),
                         tf.cast(self.optimizer.iterations, tf.int64)])
        return super().train_step(self.masked_batch(data, seed))

    def test_step(self, data):
        # A mask fixed by the batch's contents: validation batches keep their order, so
        # every epoch scores the same masked positions.
        x = keras.utils.unpack_x_y_sample_weight(data)[0]
        ids = tf.cast(x["input_word_ids"], tf.int64)
        weights = tf.range(1, tf.shape(ids, out_type=tf.int64)[1] + 1)[None, :]
        content = tf.reduce_sum(ids * weights) % 2147483647
        seed = tf.stack([tf.cast(self.mask_seed, tf.int64) * 1024 + 1023, content])
        return super().test_step(self.masked_batch(data, seed))


def build_masked_lm(encoder, *, mask_rate: float, mask_id: int, seed: int,
                    max_predictions: int, head_weights: Optional[dict] = None) -> MaskedLMModel:
    """The MLM model on a `NativeEncoder`; the head from `head_weights` or BERT's init."""
    from keras_bert_ft.encoders import native
    if not isinstance(encoder, native.NativeEncoder):
        raise bad_argument("encoder_impl", "hub", "native for task 'pretrain': the encoder "
                           f"{getattr(encoder, 'handle', encoder)!r} is not a BERT encoder "
                           "the toolkit can rebuild natively (its MLM head ties to the "
                           "native word-embedding table)")
    activation = {"exact_gelu": native.exact_gelu, "tanh_gelu": native.tanh_gelu,
                  "relu": keras.activations.relu}[encoder.activation]
    inputs = encoder_inputs()
    inputs["masked_lm_positions"] = keras.Input(shape=(None,), dtype=tf.int32,
                                                name="masked_lm_positions")
    sequence = encoder({k: inputs[k] for k in ("input_word_ids", "input_mask",
                                                "input_type_ids")})["sequence_output"]
    head = MaskedLMHead(encoder.bert.get_embedding_table(), activation)
    logits = head(sequence, inputs["masked_lm_positions"])
    model = MaskedLMModel(inputs=inputs, outputs=logits, name="masked_lm")
    if head_weights is not None:
        head.set_head_weights(head_weights)
    model.mask_rate, model.mask_id, model.mask_seed = float(mask_rate), int(mask_id), int(seed)
    model.max_predictions = int(max_predictions)
    return model


def read_head(encoder_dir: str) -> Optional[dict]:
    """The MLM head of an encoder SavedModel: the weights file kept beside it, else its
    `mlm` sub-object (TF-Hub BERT encoders exported with one), else None."""
    path = os.path.join(encoder_dir, HEAD_FILE)
    if not tf.io.gfile.exists(path):
        return _mlm_sub_object(encoder_dir)
    with tf.io.gfile.GFile(path, "rb") as f:
        import io
        with np.load(io.BytesIO(f.read())) as found:
            return {name: found[name] for name in found.files}


# The variables of tf-models' MaskedLM layer (the `mlm` sub-object), by name suffix.
_SUB_OBJECT_NAMES = dict(zip(HEAD_WEIGHTS, (
    "transform/dense/kernel", "transform/dense/bias", "transform/LayerNorm/gamma",
    "transform/LayerNorm/beta", "output_bias/bias")))


def _mlm_sub_object(encoder_dir: str) -> Optional[dict]:
    if not tf.io.gfile.exists(os.path.join(encoder_dir, "saved_model.pb")):
        return None
    from tensorflow.core.protobuf import saved_model_pb2
    with tf.io.gfile.GFile(os.path.join(encoder_dir, "saved_model.pb"), "rb") as f:
        nodes = saved_model_pb2.SavedModel.FromString(f.read()).meta_graphs[0]\
            .object_graph_def.nodes
    if "mlm" not in {child.local_name for child in nodes[0].children}:
        return None
    import tensorflow_hub as hub
    variables = hub.load(encoder_dir).mlm.variables
    head = {}
    for ours, theirs in _SUB_OBJECT_NAMES.items():
        found = [v for v in variables if v.name.split(":")[0].endswith(theirs)]
        if len(found) != 1:
            return None  # not the layout of tf-models' MaskedLM: a new head
        head[ours] = found[0].numpy()
    return head


def write_head(encoder_dir: str, weights: dict) -> str:
    path = os.path.join(encoder_dir, HEAD_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.savez(path, **{name: np.asarray(weights[name], np.float32) for name in HEAD_WEIGHTS})
    return path


# ---------------------------------------------------------------------------- metrics


class MaskedLMLoss(keras.metrics.Metric):
    """Cross-entropy per predicted piece over everything seen (`exp`: its exponential,
    the perplexity)."""

    def __init__(self, name: str = "mlm_loss", exp: bool = False, **kwargs):
        super().__init__(name=name, **kwargs)
        self.exp = exp
        self.total = self.add_weight("total", initializer="zeros", dtype=tf.float64)
        self.count = self.add_weight("count", initializer="zeros", dtype=tf.float64)

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = tf.cast(y_true, tf.int32)
        mask = tf.cast(y_true != base.IGNORE, tf.float64)
        losses = tf.keras.losses.sparse_categorical_crossentropy(
            tf.maximum(y_true, 0), tf.cast(y_pred, tf.float32), from_logits=True)
        self.total.assign_add(tf.reduce_sum(tf.cast(losses, tf.float64) * mask))
        self.count.assign_add(tf.reduce_sum(mask))

    def result(self):
        mean = tf.math.divide_no_nan(self.total, self.count)
        return tf.cast(tf.exp(mean) if self.exp else mean, tf.float32)

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)


# ---------------------------------------------------------------------------- task


class MaskedLMServing:
    """What the runner keeps of a pretrain run: the model and its preprocessor."""

    task = "pretrain"

    def __init__(self, model, preprocessor, info: dict):
        self.model, self.preprocessor, self.info = model, preprocessor, dict(info)


class PretrainTask(base.Task):
    """Masked-LM pre-training on plain text (see the module doc); judged by the held-out
    MLM loss and perplexity. The run writes a TF-Hub-format encoder + preprocessor."""

    name = "pretrain"
    token_labels = True  # the word numbers are cut with the inputs
    needs_vocab = True
    primary_metric = "eval_loss"
    metric_names = ("eval_loss", "perplexity")

    def read(self, source, config, info=None, where=None):
        where = where or ("train" if info is None else "validation")
        return load_texts(source, config.encoding, where=where)

    def describe(self, train, config):
        return {"mask_rate": config.mask_rate, "whole_word_masking": config.whole_word_masking}

    def featurize(self, data, preprocessor, config, info):
        vocab = read_vocab(preprocessor.source)
        pieces = []
        for start in range(0, len(data), _READ_BATCH):
            pieces += preprocessor.tokenize(
                tf.constant(data.texts[start:start + _READ_BATCH])).to_list()
        ids, mask, words = pack(pieces, continuation_pieces(vocab), config.seq_length,
                                cls_id=preprocessor.cls_id, sep_id=preprocessor.sep_id,
                                pad_id=preprocessor.pad_id,
                                whole_words=config.whole_word_masking)
        features = {"input_word_ids": ids, "input_mask": mask,
                    "input_type_ids": np.zeros_like(ids)}
        return base.Features(features, words, {"train_sequences": int(len(ids)),
                                                "train_pieces": int((words >= 0).sum())})

    def build_model(self, encoder, config, info):
        vocab = _vocab(encoder, config)
        if "[MASK]" not in vocab:
            raise bad_argument("preprocessor", config.preprocessor or config.encoder,
                               "a vocabulary with a [MASK] token (masked-LM pre-training)")
        from keras_bert_ft.encoders import presets
        head = read_head(presets.resolve_encoder(config.encoder))
        info["mlm_head"] = "checkpoint" if head is not None else "initialised"
        added = getattr(encoder, "added_pieces", None)
        if head is not None and added:  # --add-tokens: a bias per new word, as its rows
            from keras_bert_ft.encoders.added_tokens import mean_rows
            head["output_bias"] = np.concatenate(
                [head["output_bias"], mean_rows(head["output_bias"], added)])
        if config.verbose:
            print(f"MLM head: {'from the checkpoint' if head is not None else 'BERT init'}")
        return build_masked_lm(encoder, mask_rate=config.mask_rate,
                               mask_id=vocab.index("[MASK]"), seed=config.seed,
                               max_predictions=max_predictions(config.seq_length,
                                                               config.mask_rate),
                               head_weights=head)

    def loss(self, info):
        return base.masked_sparse_crossentropy

    def fit_metrics(self, info):
        return [MaskedLMLoss(), MaskedLMLoss("perplexity", exp=True)]

    def serving(self, model, preprocessor, config, info):
        return MaskedLMServing(model, preprocessor, info)

    def evaluate(self, serving, data, config, info):
        from keras_bert_ft.data.pipeline import batches
        features = self.featurize(data, serving.preprocessor, config, info)
        found = serving.model.evaluate(
            batches(features.features, features.labels, batch_size=config.batch_size,
                    token_labels=True), verbose=0, return_dict=True)
        return {"eval_loss": float(found["mlm_loss"]), "perplexity": float(found["perplexity"]),
                "eval_sequences": len(features), "mlm_head": info.get("mlm_head")}, info

    def predict(self, serving, *inputs, batch_size: int = 32):
        raise KbftError("A pretrain run makes no predictions: fine-tune the encoder it "
                        "writes (kbft train --encoder OUTPUT/encoder).")

    def save_model(self, result, output_dir: str) -> dict:
        """OUTPUT/encoder (with the MLM head) and OUTPUT/preprocessor, each written whole."""
        from keras_bert_ft.encoders.convert import write_trained_encoder
        head = result.model.get_layer("mlm").head_weights()
        result.metrics.setdefault("mlm_head", result.info.get("mlm_head"))
        return write_trained_encoder(result.model.encoder, result.preprocessor, output_dir,
                                     mlm_head=head)


def _vocab(encoder, config) -> List[str]:
    from keras_bert_ft.training.build import encoder_vocab
    path = config.preprocessor if (config.preprocessor or "").endswith(".txt") else None
    return read_vocab(path or encoder_vocab(encoder)[0])


TASK = PretrainTask()


def pretrain(texts, validation=None, config=None, **kwargs):
    """Further pre-trains an encoder (masked LM) on your own text: `fine_tune(..., task=
    'pretrain')`, then, with `output_dir`, the run folder with `encoder/` (the MLM head
    inside) and `preprocessor/` for `kbft train --encoder OUTPUT/encoder`.

    Example:
        >>> result = pretrain(["notes.txt"], encoder="minilm-l6", output_dir="out", epochs=1)
        >>> result.metrics["perplexity"]
    """
    from keras_bert_ft.training.runner import fine_tune
    result = fine_tune(texts, validation, config, **dict(kwargs, task="pretrain"))
    if result.config.output_dir:
        result.save(result.config.output_dir)
    return result
