"""TaskServing: a task's raw-string serving function with the model and tokenizer it closes over.

Evaluation, `result.predict` and the export all run this same function, so the exported
model sees exactly what training and validation saw.
"""

import collections
import json
import weakref
from typing import Callable, Dict, List, Sequence

import numpy as np
import tensorflow as tf

from keras_bert_ft._keras import stored_value
from keras_bert_ft.errors import bad_argument

# serving -> its function with constant weights (`TaskServing.run`), kept off the module:
# an export would save it, weights and all
_CONSTANT_FNS = weakref.WeakKeyDictionary()
_UNCHANGED = "__weights_unchanged"


class TaskServing(tf.Module):
    """`serve_fn`: a tf.function over `[batch]` strings, one per name in `input_names`.

    Subclasses implement `serve`, naming its parameters after `input_names` (they name the
    signature's inputs), and set `task`.
    """

    task = ""
    input_names: Sequence[str] = ()
    # False while the model may still be trained (the runner's evaluations between
    # epochs): `run` calls `serve_fn`. True once the weights are final (a finished
    # `fine_tune`, a restored run or export): then a model that computes in a lower
    # precision than its variables (mixed_bfloat16, mixed_float16) is run through a copy
    # of `serve_fn` traced with the encoder's projection weights as constants in the
    # compute dtype (`encoders.native.constant_weights`), which checks on every call that
    # those variables still hold the values it was traced with, and is traced again when
    # they do not. (Float32 models keep `serve_fn`: as float32 constants their batch-1
    # calls were slower, 17.1 against 11.6 ms on the AMX CPU, docs/measurements.md.)
    weights_final = False

    def __init__(self, model, preprocessor, info: dict):
        super().__init__(name=f"kbft_{self.task}")
        self.model = model
        self.preprocessor = preprocessor
        self._casts_weights = any(
            getattr(layer, "compute_dtype", None) != getattr(layer, "variable_dtype", None)
            for layer in [model, *model.submodules] if hasattr(layer, "compute_dtype"))
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
        raise NotImplementedError

    # ------------------------------------------------------ the export's other signatures
    def examples_fn(self, features: Dict[str, str]):
        """`serve_examples`: serialized `tf.Example`s (`[batch]` strings, input `examples`)
        -> the outputs of `serve_fn`; `features` names the bytes feature that holds each of
        `input_names` (TFX / batch prediction feed these)."""
        missing = [name for name in self.input_names if name not in features]
        if missing:
            raise bad_argument("features", features, f"a feature name for each input "
                               f"({', '.join(self.input_names)})")
        spec = {features[name]: tf.io.FixedLenFeature([], tf.string)
                for name in self.input_names}

        def serve_examples(examples):
            parsed = tf.io.parse_example(examples, spec)
            return self.serve_fn(*[parsed[features[name]] for name in self.input_names])

        return tf.function(serve_examples, autograph=False, input_signature=[
            tf.TensorSpec([None], tf.string, name="examples")])

    def embed_fn(self, pooling: str = "mean", normalize: bool = False):
        """`embed`: `[batch]` strings (input `text`) -> `embedding` `[batch, hidden]`
        float32 from the fine-tuned encoder: the masked mean of the last layer, the [CLS]
        token or BERT's pooled output, L2-normalised when `normalize`. None when the model
        holds no single encoder (an ensemble)."""
        from keras_bert_ft.encoders.hub_encoder import LayerGroups
        from keras_bert_ft.data.preprocessing import trim_to_longest
        from keras_bert_ft.tasks.heads import POOLINGS, masked_mean
        if pooling not in POOLINGS:
            raise bad_argument("embed_pooling", pooling, f"one of {', '.join(POOLINGS)}")
        encoders = [layer for layer in self.model.submodules if isinstance(layer, LayerGroups)]
        if len(encoders) != 1:
            return None
        encoder = encoders[0]

        def embed(text):
            features = trim_to_longest(self.preprocessor(text))
            outputs = encoder({k: features[k] for k in ("input_word_ids", "input_mask",
                                                         "input_type_ids")}, training=False)
            if pooling == "pooled":
                vectors = outputs["pooled_output"]
            elif pooling == "cls":
                vectors = outputs["sequence_output"][:, 0]
            else:  # in float32 even under a mixed-precision policy
                vectors = masked_mean(tf.cast(outputs["sequence_output"], tf.float32),
                                      features["input_mask"])
            vectors = tf.cast(vectors, tf.float32)
            if normalize:
                vectors = tf.math.l2_normalize(vectors, axis=-1)
            return {"embedding": vectors}

        return tf.function(embed, autograph=False, input_signature=[
            tf.TensorSpec([None], tf.string, name="text")])

    def run(self, *columns, batch_size: int = 32) -> List[Dict[str, np.ndarray]]:
        """`serve_fn` over Python string lists in batches: numpy outputs per batch."""
        return run_batches(self._serve_batch, columns, batch_size)

    def _serve_batch(self, *batch) -> Dict[str, tf.Tensor]:
        if not (self.weights_final and self._casts_weights):
            return self.serve_fn(*batch)
        fn = _CONSTANT_FNS.get(self) or self._constant_fn()
        outputs = dict(fn(*batch))
        if not bool(outputs.pop(_UNCHANGED)):  # trained or loaded since: read them again
            outputs = dict(self._constant_fn()(*batch))
            outputs.pop(_UNCHANGED)
        return outputs

    def _constant_fn(self):
        """`serve` traced under `constant_weights`, with one more output: whether the
        variables it read as constants still hold the values it read (the first and last
        values of each, compared bit for bit)."""
        from keras_bert_ft.encoders.native import constant_weights

        def serve(*inputs):
            with constant_weights() as read:
                outputs = dict(self.serve(*inputs))
            outputs[_UNCHANGED] = _unchanged(read)
            return outputs

        spec = tf.TensorSpec([None], tf.string)
        # the concrete function: a tf.function call would first hash its captures (the
        # model's variables) to look it up, half a millisecond of every call
        fn = tf.function(serve, input_signature=[spec] * len(self.input_names),
                         autograph=False).get_concrete_function()
        _CONSTANT_FNS[self] = fn
        return fn


class ListServing(TaskServing):
    """A serving whose examples are lists (sentences as words, documents as sentences):
    `serve` splits raw strings and calls `serve_lists`, which `lists_fn` also runs on
    lists given directly; subclasses implement both and `decode` (outputs -> rows)."""

    def __init__(self, model, preprocessor, info: dict):
        super().__init__(model, preprocessor, info)
        self.lists_fn = tf.function(
            self.serve_lists, input_signature=[tf.RaggedTensorSpec([None, None], tf.string)],
            autograph=False)

    def serve_lists(self, lists: tf.RaggedTensor) -> Dict[str, tf.Tensor]:
        raise NotImplementedError

    def decode(self, outputs) -> List[dict]:
        raise NotImplementedError

    def predict_lists(self, rows, batch_size: int = 32) -> List[dict]:
        """Decoded outputs for examples given as lists (the graph of `serve`)."""
        return [row for batch in run_lists(self.lists_fn, rows, batch_size)
                for row in self.decode(batch)]


def _unchanged(read, ends: int = 8) -> tf.Tensor:
    """Whether each variable in `read` (`(variable, value read before)` pairs) now holds
    those values in its first and last `ends` values, bit for bit (NaN included):
    optimizer steps and weight loading rewrite every value, so these stand for the whole.
    One comparison per dtype: cheap beside the model."""
    now, then = collections.defaultdict(list), collections.defaultdict(list)
    for variable, value in read:
        flat, old = tf.reshape(stored_value(variable), [-1]), value.numpy().reshape(-1)
        if old.size > 2 * ends:
            flat = tf.concat([flat[:ends], flat[-ends:]], 0)
            old = np.concatenate([old[:ends], old[-ends:]])
        now[value.dtype].append(flat)
        then[value.dtype].append(old)
    same = [tf.constant(True)]
    for dtype in now:
        bits = {2: tf.int16, 4: tf.int32, 8: tf.int64}[dtype.size]
        same.append(tf.reduce_all(tf.equal(tf.bitcast(tf.concat(now[dtype], 0), bits),
                                           tf.bitcast(tf.constant(np.concatenate(then[dtype])),
                                                      bits))))
    return tf.reduce_all(tf.stack(same))


def run_batches(fn: Callable, columns, batch_size: int) -> List[Dict[str, np.ndarray]]:
    """`fn` over equal-length string columns in batches of `batch_size`."""
    n = len(columns[0])
    if any(len(c) != n for c in columns):
        raise bad_argument("inputs", [len(c) for c in columns], "lists of equal length")
    out = []
    for start in range(0, n, batch_size):
        batch = [tf.constant([str(x) for x in c[start:start + batch_size]], tf.string)
                 for c in columns]
        out.append({k: v.numpy() for k, v in fn(*batch).items()})
    return out


def run_lists(fn: Callable, rows, batch_size: int) -> List[Dict[str, np.ndarray]]:
    """`fn` over `[batch, (items)]` ragged strings built from Python lists of lists
    (sentences as words, documents as sentences), in batches: numpy outputs per batch."""
    out = []
    for start in range(0, len(rows), batch_size):
        batch = tf.ragged.constant([list(r) for r in rows[start:start + batch_size]],
                                   dtype=tf.string, ragged_rank=1)
        out.append({k: v.numpy() for k, v in fn(batch).items()})
    return out


def concat_batches(batches: List[Dict[str, np.ndarray]]) -> Dict[str, np.ndarray]:
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]} if batches else {}
