"""NativeEncoder: a recognised TF-Hub BERT encoder rebuilt as ordinary Keras layers.

A `hub.KerasLayer` runs the SavedModel's restored graph: its dtype was fixed at export, so
a mixed-precision policy cannot reach its matmuls (tensorflow/hub #466, #790). When the
SavedModel is a BERT encoder of tf-models-official's layout (every TF-Hub BERT, Small
BERT and everything `kbft convert` writes), NativeEncoder builds the same network with
`official.nlp.modeling.networks.BertEncoder` under the current Keras policy, copies the
SavedModel's variables into it by name, and checks that both give the same outputs. It
keeps HubEncoder's interface and per-layer trainability (the same variable groups).
Encoders it does not recognise stay on the restored path (`make_encoder(impl="auto")`).

The check restores the whole SavedModel (its functions too) and runs it: seconds of every
run's start-up. A local SavedModel that passed it, with the same files (paths, sizes,
modification times), TensorFlow version and precision, is remembered in the cache folder
(paths.cache_dir): the next run reads its variables straight from the checkpoint and
builds the encoder without restoring or running the SavedModel.
"""

import collections
import concurrent.futures
import contextlib
import glob
import hashlib
import json
import os
import threading
from typing import Optional

import numpy as np
import tensorflow as tf

from keras_bert_ft._keras import keras, stored_value
from keras_bert_ft.encoders import presets
from keras_bert_ft.encoders.hub_encoder import (HubEncoder, LayerGroups, TrainableSpec, _load_error,
                                   check_local_handle, group_variables)
from keras_bert_ft.errors import KbftError, bad_argument

import tensorflow_hub as hub  # noqa: E402

IMPLS = ("auto", "native", "hub")
# Activations BERT encoders are exported with; the one whose outputs match is kept.
_ACTIVATIONS = ("exact_gelu", "tanh_gelu", "relu")


class NotRecognised(KbftError):
    """The SavedModel is not a BERT encoder NativeEncoder can rebuild."""


class NativeEncoder(LayerGroups, keras.layers.Layer):
    """A BERT encoder from a TF-Hub SavedModel, rebuilt natively; HubEncoder's interface.

    Args: as `HubEncoder` (handle, trainable_layers, train_embeddings, train_pooler,
        reinit_layers, reinit_pooler, reinit_seed), plus
        frozen_inference: frozen groups (embeddings, layers) run in inference mode while
            training, without dropout; False keeps dropout everywhere, as the restored
            SavedModel graph (one `training` flag for the whole encoder) must.
    Raises `NotRecognised` when the SavedModel's variables are not tf-models' BERT layout.

    Example:
        >>> keras.mixed_precision.set_global_policy("mixed_bfloat16")
        >>> encoder = NativeEncoder("minilm-l6", trainable_layers=2)  # bf16 matmuls
    """

    def __init__(self, handle: str, *, trainable_layers: TrainableSpec = "all",
                 train_embeddings: Optional[bool] = None, train_pooler: bool = True,
                 reinit_layers: int = 0, reinit_pooler: Optional[bool] = None,
                 reinit_seed: Optional[int] = None, frozen_inference: bool = True,
                 name: str = "encoder", load_options=None, **kwargs):
        if not isinstance(handle, str) or not handle:
            raise bad_argument("encoder", handle,
                               "a preset name, URL, local folder or gs:// path")
        super().__init__(name=name, **kwargs)
        self._requested_handle = handle
        self._layer_pattern = None
        self.frozen_inference = bool(frozen_inference)
        resolved = presets.resolve_encoder(handle)
        check_local_handle(resolved)
        key = _fingerprint(resolved) if load_options is None else None
        checked = _checked_activation(key)
        if checked:  # this SavedModel passed the check before: its variables suffice
            try:
                values, self.vocab_path, self.do_lower_case = read_saved_model(resolved)
                self.bert = _bert_encoder(_dims(values), checked)
                _assign(self.bert, values)
                self.activation = checked
            except (NotRecognised, OSError, ValueError, KeyError, IndexError,
                    tf.errors.OpError):
                checked = None  # read it the long way, as if never seen
        if not checked:
            with concurrent.futures.ThreadPoolExecutor(1) as thread:
                restored, probe, expected = thread.submit(
                    _load_reference, handle, resolved, load_options).result()
            self.vocab_path, self.do_lower_case = _vocab_info(restored)
            self.bert, self.activation = _rebuild(restored, probe, expected)
            _remember_check(key, self.activation)
        self._groups = group_variables(self.bert.weights)
        self._start_training_state(trainable_layers, train_embeddings, train_pooler,
                                   reinit_layers, reinit_pooler, reinit_seed)

    # `call` takes `output_range` (a head that reads only the first token passes 1)
    supports_output_range = True

    def call(self, inputs, training=None, output_range=None):
        """BertEncoder's outputs. `output_range=k`: the last layer computes its output for
        the first k tokens only (their keys and values still come from every token), so
        `sequence_output` holds k tokens and `pooled_output` is unchanged: a head that
        reads only [CLS] skips most of the last layer's work, training and serving."""
        every = {"embeddings", *(f"layer_{i}" for i in range(self.num_layers))}
        if not training:
            active = set()
        elif not self.frozen_inference:
            active = every
        else:
            active = set(self.trainable_groups) if self.trainable else set()
        return self._forward(inputs, active, output_range)

    @tf.autograph.experimental.do_not_convert  # plain Python loops: nothing to convert
    def _forward(self, inputs, active, output_range=None):
        """BertEncoder's forward pass, its own layers in its own order, with each frozen
        group in inference mode: a frozen layer is a fixed feature extractor, so it draws
        no dropout masks (as Keras runs a frozen BatchNormalization in inference mode).
        This saves the frozen layers' dropout work, and the trained layers see the
        features they will see when serving. A layer in inference mode runs as
        `inference_block` (the same math in fused ops). `output_range` reaches the last
        layer, which computes its queries for that many tokens only. Every call comes
        here, not through `self.bert`'s functional graph: that one is autograph-converted
        layer by layer as a training step is traced (two seconds before the first step),
        while this function and the blocks it calls run unconverted."""
        by_name = {layer.name: layer for layer in self.bert.layers}
        by_type = {type(layer).__name__: layer for layer in self.bert.layers}
        word = by_name["word_embeddings"](inputs["input_word_ids"])
        x = by_type["Add"]([word, by_name["position_embedding"](word),
                            by_name["type_embeddings"](inputs["input_type_ids"])])
        x = by_name["embeddings/layer_norm"](x)
        x = by_type["Dropout"](x, training="embeddings" in active)
        mask = by_type["SelfAttentionMask"](x, inputs["input_mask"])
        adder = None
        outputs = []
        for i in range(self.num_layers):
            block = by_name[f"transformer/layer_{i}"]
            last_range = output_range if i == self.num_layers - 1 else None
            if f"layer_{i}" in active:
                x = block([x, mask], training=True, output_range=last_range)
            else:
                if adder is None:
                    adder = attention_adder(mask, block.compute_dtype)
                x = inference_block(block, x, adder, last_range)
            outputs.append(x)
        return {"sequence_output": x, "pooled_output": by_name["pooler_transform"](x[:, 0, :]),
                "encoder_outputs": outputs}

    def _infer_output_signature(self, inputs, args, kwargs, input_masks):
        """The KerasTensors a functional model's construction gets from this layer, from
        shapes and dtypes alone. tf_keras would trace the whole forward pass into a
        scratch graph for them (a quarter second of every model build, before the
        training step traces it again). Equal to tf_keras' own
        (tests/test_native_encoder.py); any other call falls back to it."""
        from keras_bert_ft._keras import keras_tensors
        signature = self._output_signature(inputs, args, kwargs)
        outputs = None if signature is None else keras_tensors(signature)
        if outputs is None:
            return super()._infer_output_signature(inputs, args, kwargs, input_masks)
        self._maybe_build(inputs)
        self._set_save_spec(inputs, args, kwargs)
        return outputs

    def _output_signature(self, inputs, args, kwargs):
        """TensorSpecs of `call(inputs, output_range=...)`'s outputs, or None for a call
        this does not describe (other arguments, inputs other than BERT's three)."""
        if args or set(kwargs) - {"output_range", "training"}:
            return None
        output_range = kwargs.get("output_range")
        if not isinstance(inputs, dict) or set(inputs) != {"input_word_ids", "input_mask",
                                                           "input_type_ids"}:
            return None
        shape = inputs["input_word_ids"].shape
        if shape.rank != 2 or (output_range is not None and (
                isinstance(output_range, bool) or not isinstance(output_range, int))):
            return None
        batch, length = shape
        width = self.hidden_size
        by_name = {layer.name: layer for layer in self.bert.layers}
        norm = by_name[f"transformer/layer_{self.num_layers - 1}"]._output_layer_norm
        hidden = tf.TensorSpec([batch, length, width], norm.compute_dtype)
        last = length if output_range is None or length is None else \
            len(range(length)[:output_range])
        sequence = tf.TensorSpec([batch, last, width], norm.compute_dtype)  # the last layer's
        return {"sequence_output": sequence,
                "pooled_output": tf.TensorSpec([batch, width],
                                               by_name["pooler_transform"].compute_dtype),
                "encoder_outputs": [hidden] * (self.num_layers - 1) + [sequence]}

    @property
    def hidden_size(self) -> int:
        return int(self._groups["embeddings"][0].shape[-1])

    def add_embedding_rows(self, rows: np.ndarray, vocab_path: str) -> None:
        """Grows the word-embedding table by `rows` (new ids after the old ones, every old
        row kept) and takes `vocab_path` as the vocabulary (--add-tokens). Rebuilds the
        network under the current scope; trainability and re-initialisation are kept."""
        values = collections.OrderedDict((w.name.split(":")[0], w.numpy())
                                         for w in self.bert.weights)
        table = values["word_embeddings/embeddings"]
        values["word_embeddings/embeddings"] = np.concatenate(
            [table, np.asarray(rows, table.dtype).reshape(-1, table.shape[1])])
        self.bert = _bert_encoder(_dims(values), self.activation)
        _assign(self.bert, values)
        self._groups = group_variables(self.bert.weights)
        self.vocab_path = vocab_path

    @property
    def non_trainable_weights(self):
        chosen = {id(v) for v in self.trainable_weights}
        return [v for v in self.bert.weights if id(v) not in chosen]


def make_encoder(handle: str, impl: str = "auto", **kwargs):
    """A NativeEncoder when `impl` is "native", or "auto" and the encoder is recognised;
    else a HubEncoder (the restored SavedModel graph)."""
    if impl not in IMPLS:
        raise bad_argument("encoder_impl", impl, f"one of {', '.join(IMPLS)}")
    if impl == "hub":
        return HubEncoder(handle, **kwargs)
    try:
        return NativeEncoder(handle, **{k: v for k, v in kwargs.items()
                                        if k != "layer_pattern"})
    except NotRecognised:
        if impl == "native":
            raise
        return HubEncoder(handle, **kwargs)


def _vocab_info(restored):
    vocab = getattr(restored, "vocab_file", None)
    path = vocab.asset_path.numpy().decode() if vocab is not None else None
    lower = bool(restored.do_lower_case.numpy()) if hasattr(restored, "do_lower_case") else None
    return path, lower


def _load_reference(handle, resolved, load_options):
    """The restored SavedModel, probe inputs and its outputs on them.

    Runs in a thread of its own, which no tf.distribute scope of the caller reaches: a
    restored function called under a MirroredStrategy / MultiWorkerMirroredStrategy scope
    fails ("...graph generated from the cross-replica context in an in-replica context").
    `load_options` let a TPU run read the files on this host.
    """
    try:
        restored = hub.load(resolved, options=load_options)
    except Exception as err:  # the hub resolver / loader raise many kinds
        raise _load_error(handle, resolved, err) from err
    probe = _probe_inputs(_dims(_values(restored)))
    return restored, probe, restored(probe, training=False)["sequence_output"].numpy()


def read_saved_model(folder: str):
    """(trainable variable name -> value, vocab path, do_lower_case) of a local TF-Hub
    SavedModel, read from its checkpoint and object graph without restoring it: the
    same names and values as `_values(hub.load(folder))` and `_vocab_info`."""
    from tensorflow.core.protobuf import saved_model_pb2, trackable_object_graph_pb2
    with open(os.path.join(folder, "saved_model.pb"), "rb") as f:
        meta = saved_model_pb2.SavedModel.FromString(f.read()).meta_graphs[0]
    nodes = meta.object_graph_def.nodes
    reader = tf.train.load_checkpoint(os.path.join(folder, "variables", "variables"))
    graph = trackable_object_graph_pb2.TrackableObjectGraph.FromString(
        reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
    if len(graph.nodes) != len(nodes):
        raise NotRecognised("the checkpoint's object graph differs from the SavedModel's")

    def value(i):
        keys = [a.checkpoint_key for a in graph.nodes[i].attributes
                if a.name == "VARIABLE_VALUE"]
        return reader.get_tensor(keys[0])

    values = collections.OrderedDict(
        (node.variable.name, value(i)) for i, node in enumerate(nodes)
        if node.WhichOneof("kind") == "variable" and node.variable.trainable)
    root = {child.local_name: child.node_id for child in nodes[0].children}
    vocab = lower = None
    if "vocab_file" in root and nodes[root["vocab_file"]].WhichOneof("kind") == "asset":
        asset = meta.asset_file_def[nodes[root["vocab_file"]].asset.asset_file_def_index]
        vocab = os.path.join(folder, "assets", asset.filename)
    if "do_lower_case" in root and nodes[root["do_lower_case"]].WhichOneof("kind") == "variable":
        lower = bool(value(root["do_lower_case"]))
    return values, vocab, lower


_CHECKS_FILE = "native_encoder_checks.json"
_CHECKS_KEPT = 256


def _fingerprint(resolved: str) -> Optional[str]:
    """What the check's verdict depends on: a local SavedModel's files (path, sizes,
    modification times), TensorFlow's version and the compute precision. None for a
    remote handle (nothing to stat; it is checked every time)."""
    from keras_bert_ft.encoders.hub_encoder import is_remote
    if is_remote(resolved):
        return None
    folder = os.path.abspath(resolved)
    files = [os.path.join(folder, "saved_model.pb"),
             *sorted(glob.glob(os.path.join(folder, "variables", "variables.*")))]
    try:
        stats = [(os.path.relpath(p, folder), os.stat(p)) for p in files]
        stats = [f"{name}:{st.st_size}:{st.st_mtime_ns}" for name, st in stats]
    except OSError:
        return None
    compute = keras.mixed_precision.global_policy().compute_dtype
    return hashlib.sha1("|".join([folder, tf.__version__, compute, *stats]).encode()).hexdigest()


def _checks_path() -> str:
    from keras_bert_ft.paths import cache_dir
    return os.path.join(cache_dir(), _CHECKS_FILE)


def _read_checks() -> dict:
    try:
        with open(_checks_path()) as f:
            found = json.load(f)
        return found if isinstance(found, dict) else {}
    except (OSError, ValueError):
        return {}


def _checked_activation(key: Optional[str]) -> Optional[str]:
    activation = _read_checks().get(key) if key else None
    return activation if activation in _ACTIVATIONS else None


def _remember_check(key: Optional[str], activation: str) -> None:
    """Adds a passed check to the cache (written whole, then renamed into place); a cache
    folder that cannot be written only means the check runs again next time."""
    if not key:
        return
    checks = _read_checks()
    checks.pop(key, None)
    checks[key] = activation
    checks = dict(list(checks.items())[-_CHECKS_KEPT:])  # the most recent ones
    from keras_bert_ft.paths import write_whole
    try:
        write_whole(_checks_path(), json.dumps(checks).encode())
    except OSError:
        pass


def _values(restored):
    return collections.OrderedDict(
        (v.name.split(":")[0], v) for v in restored.trainable_variables)


def _rebuild(restored, probe, expected):
    """(BertEncoder holding the restored weights, activation name) or NotRecognised."""
    values = _values(restored)
    dims = _dims(values)
    for activation in _ACTIVATIONS:
        bert = _bert_encoder(dims, activation)
        _assign(bert, values)
        got = bert(probe, training=False)["sequence_output"]
        if np.allclose(tf.cast(got, tf.float32).numpy(), expected,
                       atol=_tolerance(), rtol=0):
            return bert, activation
    raise NotRecognised("the rebuilt BERT encoder's outputs differ from the SavedModel's "
                        f"for every activation in {_ACTIVATIONS}")


def _dims(values) -> dict:
    def shape(name):
        if name not in values:
            raise NotRecognised(f"no variable {name!r}")
        return tuple(values[name].shape)

    vocab_size, width = shape("word_embeddings/embeddings")
    hidden, num_heads, head_size = shape("transformer/layer_0/self_attention/query/kernel")
    if width != hidden or num_heads * head_size != hidden:
        raise NotRecognised("embedding width differs from the hidden size")
    num_layers = 0
    while f"transformer/layer_{num_layers}/self_attention/query/kernel" in values:
        num_layers += 1
    return {"vocab_size": vocab_size, "hidden_size": hidden, "num_heads": num_heads,
            "num_layers": num_layers,
            "intermediate_size": shape("transformer/layer_0/intermediate/kernel")[1],
            "max_positions": shape("position_embedding/embeddings")[0],
            "type_vocab_size": shape("type_embeddings/embeddings")[0]}


def attention_adder(mask, dtype):
    """[batch, 1, queries, keys]: 0 where a query may attend, a large negative where not;
    what tf_keras' masked Softmax adds to the scores (-1e9, float16's lowest in float16)."""
    negative = tf.float16.min if dtype == tf.float16 else -1e9
    return (1.0 - tf.cast(mask, dtype)[:, None]) * tf.constant(negative, dtype)


_TRACING = threading.local()


@contextlib.contextmanager
def constant_weights():
    """Functions traced within it read the projection weights of every layer in inference
    mode (the kernels and biases of `inference_block`'s matmuls) as constants in the
    compute dtype, taken from the variables now: the oneDNN matmul then keeps its packed
    copy of each weight between calls instead of casting (mixed precision) and packing it
    on every call, most of a short sentence's serving time. Yields the list of
    `(variable, value)` read, so that the caller can tell when the variables have changed
    since (`export.serving`). Other weights (embeddings, layer norms, heads) stay variables."""
    previous = getattr(_TRACING, "read", None)
    _TRACING.read = []
    try:
        yield _TRACING.read
    finally:
        _TRACING.read = previous


def _weights(variables, dtype, shape):
    """The variables reshaped to `shape` and joined along the last axis, in `dtype`: one
    constant under `constant_weights` (joined once, when traced), else read and cast."""
    read = getattr(_TRACING, "read", None)
    if read is None:
        parts = [tf.reshape(tf.cast(v, dtype), shape) for v in variables]
        return parts[0] if len(parts) == 1 else tf.concat(parts, -1)
    with tf.init_scope():  # eager, whatever graph is being traced
        values = [stored_value(v) for v in variables]
        read.extend(zip(variables, values))
        joined = np.concatenate([tf.cast(v, dtype).numpy().reshape(shape) for v in values], -1)
    return tf.constant(joined)


def _dense(x, layers, units: int):
    """EinsumDense layers of a transformer block applied to `[tokens, width]` as one 2-D
    matmul plus bias_add (several layers of one input: their kernels joined, `units`
    outputs each): TensorFlow's CPU graph rewriting fuses these (and a following GELU /
    ReLU) into one oneDNN kernel, which it does not do for einsum + add."""
    kernel = _weights([layer.kernel for layer in layers], x.dtype, (-1, units))
    return tf.nn.bias_add(tf.matmul(x, kernel),
                          _weights([layer.bias for layer in layers], x.dtype, [units]))


@contextlib.contextmanager
def portable_ops():
    """Functions traced within it use only ops that converters to other runtimes know:
    `_permute` transposes floats as they are (tf2onnx has no Bitcast)."""
    previous = getattr(_TRACING, "portable", False)
    _TRACING.portable = True
    try:
        yield
    finally:
        _TRACING.portable = previous


def _permute(x, perm):
    """`tf.transpose` of the values' bits: oneDNN's transpose, which TensorFlow runs for
    float tensors, spends some 50 microseconds a call setting up, most of a short
    sentence's head split; the same permutation of int16 / int32 runs in microseconds."""
    if getattr(_TRACING, "portable", False):
        return tf.transpose(x, perm)
    bits, inverse = {2: tf.int16, 4: tf.int32, 8: tf.int64}[x.dtype.size], np.argsort(perm)

    @tf.custom_gradient
    def permute(x):  # bitcasts have no gradient: the gradient is the inverse permutation
        return (tf.bitcast(tf.transpose(tf.bitcast(x, bits), perm), x.dtype),
                lambda dy: tf.transpose(dy, inverse))

    return permute(x)


def _layer_norm(layer, x):
    """A block's LayerNormalization (last axis, centred and scaled, as tf-models builds
    them) in float32, in fewer ops than the Keras layer's call: a dozen of them run per
    layer per call, and at a few tokens each op's dispatch outweighs its arithmetic."""
    x = tf.cast(x, tf.float32)
    centred = x - tf.reduce_mean(x, -1, keepdims=True)
    variance = tf.reduce_mean(tf.square(centred), -1, keepdims=True)
    return (centred * tf.math.rsqrt(variance + layer.epsilon) * tf.cast(layer.gamma, tf.float32)
            + tf.cast(layer.beta, tf.float32))


# no Python control flow on tensors: autograph (which Keras applies to every layer's call)
# would only spend a second converting it when the model is first built
@tf.autograph.experimental.do_not_convert
def inference_block(block, x, adder, output_range=None):
    """tf-models' TransformerEncoderBlock (post-norm, as `_bert_encoder` builds it) in
    inference mode: its own variables and layer norms, the projections as 2-D matmuls
    with fused bias and activation. Equal to `block([x, mask], training=False)` within
    float rounding (tests/test_native_encoder.py) and about 10% faster on CPU, where the
    einsums' separate bias adds and GELU cost as much as a matmul. Under mixed_bfloat16
    tf-models computes the activation in float32 between two bfloat16 matmuls; here it
    stays in the compute dtype, so it fuses into the first matmul's kernel (applied to
    its float32 sums) and the second reads bfloat16 as the block's own does: half again
    the serving throughput on a bfloat16 CPU, within bfloat16 rounding. `output_range=k`: the
    output for the first k tokens only. It reads the block's sublayers by tf-models-official
    2.20's attribute names (the version setup.cfg pins)."""
    attention = block._attention_layer
    heads, size = attention._num_heads, attention._key_dim
    x = tf.cast(x, block.compute_dtype)  # under mixed precision, layer norms stay float32
    width = x.shape[-1]
    batch, length = tf.shape(x)[0], tf.shape(x)[1]
    query_x = x if output_range is None else x[:, :output_range]
    queries = tf.shape(query_x)[1]

    def split(t, n, parts):  # [batch * n, parts * heads * size] -> parts x [batch, heads, n, size]
        t = _permute(tf.reshape(t, (batch, n, parts, heads, size)), (2, 0, 3, 1, 4))
        return tf.unstack(t, parts)

    # the projections of one input as one matmul, their heads split by one transpose
    flat = tf.reshape(x, (-1, width))
    projections = [attention._query_dense, attention._key_dense, attention._value_dense]
    if output_range is None:
        query, key, value = split(_dense(flat, projections, heads * size), length, 3)
    else:
        query, = split(_dense(tf.reshape(query_x, (-1, width)), projections[:1],
                              heads * size), queries, 1)
        key, value = split(_dense(flat, projections[1:], heads * size), length, 2)
    query *= tf.cast(1.0 / np.sqrt(size), x.dtype)
    scores = tf.matmul(query, key, transpose_b=True)
    scores += adder if output_range is None else adder[:, :, :output_range]
    context = tf.matmul(tf.nn.softmax(scores), value)
    context = tf.reshape(_permute(context, (0, 2, 1, 3)), (-1, heads * size))
    attended = tf.reshape(_dense(context, [attention._output_dense], width),
                          (batch, queries, width))
    y = _layer_norm(block._attention_layer_norm, query_x + attended)
    inner = block._intermediate_activation_layer.activation(_dense(
        tf.cast(tf.reshape(y, (-1, width)), x.dtype), [block._intermediate_dense],
        block._inner_dim))
    out = tf.cast(_dense(inner, [block._output_dense], width), y.dtype)
    return _layer_norm(block._output_layer_norm, y + tf.reshape(out, (batch, queries, width)))


def exact_gelu(x):
    return keras.activations.gelu(x, approximate=False)


def tanh_gelu(x):
    return keras.activations.gelu(x, approximate=True)


@tf.autograph.experimental.do_not_convert
def _bert_encoder(dims, activation):
    """tf-models' BertEncoder; its layers take the current Keras mixed-precision policy.
    Built with autograph off: Keras would otherwise convert every block's `call` to graph
    code as it wires the functional model (two seconds of each build), and the blocks need
    no conversion (`_forward` calls them unconverted; a traced `self.bert` call converts
    them then, if ever)."""
    from official.nlp.modeling import networks

    inner = {"exact_gelu": exact_gelu, "tanh_gelu": tanh_gelu,
             "relu": keras.activations.relu}[activation]
    with tf.init_scope():
        return networks.BertEncoder(
            vocab_size=dims["vocab_size"], hidden_size=dims["hidden_size"],
            num_layers=dims["num_layers"], num_attention_heads=dims["num_heads"],
            inner_dim=dims["intermediate_size"], inner_activation=inner,
            max_sequence_length=dims["max_positions"],
            type_vocab_size=dims["type_vocab_size"], output_dropout=0.1,
            attention_dropout=0.1, dict_outputs=True,
            # every variable is assigned from the SavedModel (`_assign` checks the
            # names): drawing 22M random numbers first took a second of each build
            initializer=keras.initializers.Zeros())


def _assign(bert, values) -> None:
    names = [w.name.split(":")[0] for w in bert.weights]
    if sorted(names) != sorted(values):
        missing = sorted(set(values) - set(names))[:3]
        extra = sorted(set(names) - set(values))[:3]
        raise NotRecognised(f"variables differ (SavedModel only: {missing}; "
                            f"rebuilt only: {extra})")
    for weight, name in zip(bert.weights, names):
        if tuple(weight.shape) != tuple(values[name].shape):
            raise NotRecognised(f"{name}: shape {tuple(values[name].shape)} vs "
                                f"{tuple(weight.shape)}")
        weight.assign(values[name])


def _probe_inputs(dims):
    length = min(8, dims["max_positions"])
    ids = np.arange(2 * length, dtype=np.int32).reshape(2, length) % dims["vocab_size"]
    mask = np.ones_like(ids)
    mask[1, length // 2:] = 0
    return {"input_word_ids": tf.constant(ids), "input_mask": tf.constant(mask),
            "input_type_ids": tf.constant(np.zeros_like(ids))}


def _tolerance() -> float:
    compute = keras.mixed_precision.global_policy().compute_dtype
    return 1e-4 if compute == "float32" else 0.15  # bfloat16 keeps 8 bits of mantissa
