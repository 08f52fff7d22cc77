"""NativeEncoder: the rebuilt encoder equals the SavedModel, keeps per-layer control, takes
mixed precision; make_encoder falls back to the restored graph for unknown encoders."""

import numpy as np
import pytest
import tensorflow as tf

from keras_bert_ft._keras import keras
from keras_bert_ft.encoders.hub_encoder import HubEncoder
from keras_bert_ft.errors import KbftError
from keras_bert_ft.encoders.native import NativeEncoder, NotRecognised, make_encoder

from test_encoder import unnamed_encoder  # noqa: F401  (a fixture)


def _inputs():
    ids = np.array([[2, 5, 6, 7, 3, 0], [2, 9, 10, 3, 0, 0]], dtype=np.int32)
    return {"input_word_ids": tf.constant(ids), "input_mask": tf.constant((ids > 0).astype(np.int32)),
            "input_type_ids": tf.zeros_like(ids)}


def test_native_matches_the_savedmodel_and_its_groups(encoder4):
    hub_encoder, native = HubEncoder(encoder4), NativeEncoder(encoder4)
    expected, got = hub_encoder(_inputs()), native(_inputs())
    for key in ("sequence_output", "pooled_output"):
        np.testing.assert_allclose(got[key].numpy(), expected[key].numpy(), atol=1e-5)
    assert native.activation in ("exact_gelu", "tanh_gelu")
    assert list(native.layer_groups()) == list(hub_encoder.layer_groups())
    for group, variables in hub_encoder.layer_groups().items():
        assert [v.name for v in native.layer_groups()[group]] == [v.name for v in variables]
    assert native.num_layers == 4 and native.max_seq_length == 32 and native.hidden_size == 32
    assert native.vocab_path.endswith("vocab.txt") and native.do_lower_case is True


def test_native_trains_exactly_the_chosen_layers(encoder4):
    encoder = NativeEncoder(encoder4, trainable_layers=1, train_pooler=False)
    inputs = {k: keras.Input((None,), dtype=tf.int32, name=k) for k in _inputs()}
    logits = keras.layers.Dense(2)(encoder(inputs)["pooled_output"])
    model = keras.Model(inputs, logits)
    model.compile(keras.optimizers.SGD(0.5), keras.losses.SparseCategoricalCrossentropy(True))
    before = {v.name: v.numpy().copy() for v in encoder.weights}
    model.fit(_inputs(), np.array([0, 1]), epochs=2, verbose=0)
    changed = {n for n, v in before.items()
               if not np.allclose(v, [w for w in encoder.weights if w.name == n][0].numpy())}
    assert changed and all(n.startswith("transformer/layer_3/") for n in changed)
    assert {v.name for v in encoder.trainable_weights} == {
        v.name for v in encoder.layer_groups()["layer_3"]}


def test_frozen_groups_run_in_inference_mode_while_training(encoder4):
    """Top 1 of 4 layers trainable: embeddings and layers 0-2 draw no dropout masks in a
    training call (the same outputs as inference), layer 3 does; with every group
    trainable, or `frozen_inference=False`, dropout runs everywhere, as in BertEncoder."""
    encoder = NativeEncoder(encoder4, trainable_layers=1)
    eval_out = encoder(_inputs(), training=False)
    first, second = (encoder(_inputs(), training=True) for _ in range(2))
    for i in range(3):
        np.testing.assert_allclose(first["encoder_outputs"][i].numpy(),
                                   eval_out["encoder_outputs"][i].numpy(), atol=1e-6)
    assert not np.allclose(first["sequence_output"].numpy(), second["sequence_output"].numpy())
    np.testing.assert_allclose(eval_out["sequence_output"].numpy(),
                               encoder.bert(_inputs(), training=False)["sequence_output"].numpy(),
                               atol=1e-6)
    for everywhere in (NativeEncoder(encoder4),
                       NativeEncoder(encoder4, trainable_layers=1, frozen_inference=False)):
        a, b = (everywhere(_inputs(), training=True)["encoder_outputs"][0] for _ in range(2))
        assert not np.allclose(a.numpy(), b.numpy())


def test_a_training_call_is_the_tf_models_graph_with_dropout_off(encoder4):
    """Every group trainable: the training call (`_forward`, not BertEncoder's functional
    graph) gives BertEncoder's outputs and gradients once dropout is off."""
    encoder = NativeEncoder(encoder4)
    dropouts = [m for m in encoder.bert.submodules if isinstance(m, keras.layers.Dropout)]
    assert len(dropouts) > 4
    for layer in dropouts:
        layer.rate = 0.0
    with tf.GradientTape(persistent=True) as tape:
        got, want = encoder(_inputs(), training=True), encoder.bert(_inputs(), training=True)
        losses = [tf.reduce_sum(out["sequence_output"] ** 2)
                  + tf.reduce_sum(out["pooled_output"] ** 2) for out in (got, want)]
    for key in ("sequence_output", "pooled_output"):
        np.testing.assert_allclose(got[key].numpy(), want[key].numpy(), atol=1e-5)
    variables = encoder.trainable_weights
    assert len(variables) == len(encoder.bert.weights)
    for variable, g, w in zip(variables, tape.gradient(losses[0], variables),
                              tape.gradient(losses[1], variables)):
        np.testing.assert_allclose(tf.convert_to_tensor(g).numpy(),
                                   tf.convert_to_tensor(w).numpy(), atol=1e-4,
                                   err_msg=variable.name)


def test_output_range_computes_the_first_token_alone_with_the_same_values(encoder4):
    """`output_range=1`: the last layer's output for [CLS] only, equal to the full pass's
    first token; `pooled_output`, and so a classifier's logits and gradients, unchanged.
    build_classifier hands it to the encoder for `pooled` and `cls` heads, not `mean`."""
    from keras_bert_ft.tasks.models import build_classifier
    encoder = NativeEncoder(encoder4)
    full, first = encoder(_inputs()), encoder(_inputs(), output_range=1)
    assert first["sequence_output"].shape[1] == 1 and full["sequence_output"].shape[1] == 6
    np.testing.assert_allclose(first["sequence_output"][:, 0].numpy(),
                               full["sequence_output"][:, 0].numpy(), atol=1e-6)
    np.testing.assert_allclose(first["pooled_output"].numpy(), full["pooled_output"].numpy(),
                               atol=1e-6)
    for pooling, sliced in (("pooled", True), ("cls", True), ("mean", False)):
        model = build_classifier(NativeEncoder(encoder4), 3, dropout=0.0, pooling=pooling)
        node_kwargs = model.get_layer("encoder").inbound_nodes[-1].call_kwargs
        assert ("output_range" in node_kwargs) == sliced, pooling
        if not sliced:
            continue
        assert model(_inputs(), training=True).shape == (2, 3)  # dropout: values differ
        with tf.GradientTape(persistent=True) as tape:
            logits = model(_inputs(), training=False)
            pooled = model.get_layer("encoder")(_inputs(), training=False)
            features = (pooled["pooled_output"] if pooling == "pooled"
                        else pooled["sequence_output"][:, 0])
            reference = model.get_layer("logits")(features)
            losses = tf.reduce_sum(logits ** 2), tf.reduce_sum(reference ** 2)
        np.testing.assert_allclose(logits.numpy(), reference.numpy(), atol=1e-5)
        variables = model.get_layer("encoder").trainable_weights
        got = tape.gradient(losses[0], variables)
        want = tape.gradient(losses[1], variables)
        assert sum(w is not None for w in want) > len(variables) // 2
        for variable, g, w in zip(variables, got, want):
            if w is None:  # the pooler, under `cls` pooling
                assert g is None, variable.name
                continue
            np.testing.assert_allclose(tf.convert_to_tensor(g).numpy(),
                                       tf.convert_to_tensor(w).numpy(), atol=1e-5,
                                       err_msg=variable.name)


def test_inference_block_equals_the_tf_models_block_and_its_gradients(encoder4):
    """`inference_block` (the encoder's forward for a layer in inference mode) against
    tf-models' own TransformerEncoderBlock call: outputs and gradients (a frozen layer
    under a trained one passes gradients through), with padding masked, and with
    `output_range`."""
    from keras_bert_ft.encoders.native import attention_adder, inference_block
    encoder = NativeEncoder(encoder4)
    block = encoder.bert.get_layer("transformer/layer_1")
    inputs = _inputs()
    x = tf.random.stateless_normal((2, 6, 32), seed=(1, 2))
    mask = tf.cast(inputs["input_mask"][:, None, :] * tf.ones((2, 6, 1), tf.int32), tf.float32)
    adder = attention_adder(mask, tf.float32)
    for output_range in (None, 2):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            want = block([x, mask], training=False, output_range=output_range)
            got = inference_block(block, x, adder, output_range)
            losses = tf.reduce_sum(got ** 3), tf.reduce_sum(want ** 3)
        assert got.shape == want.shape == (2, output_range or 6, 32)
        np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5)
        sources = [x] + block.trainable_weights
        names = ["x"] + [v.name for v in block.trainable_weights]
        for name, a, b in zip(names, tape.gradient(losses[0], sources),
                              tape.gradient(losses[1], sources)):
            assert a is not None and b is not None, name
            np.testing.assert_allclose(tf.convert_to_tensor(a).numpy(),
                                       tf.convert_to_tensor(b).numpy(), atol=1e-4,
                                       err_msg=name)


def test_inference_block_under_mixed_bfloat16_is_the_block_within_its_rounding(encoder4):
    """Under mixed_bfloat16 `inference_block` keeps the activation in bfloat16, fused into
    the first matmul, where tf-models computes it in float32: the outputs stay within
    bfloat16's rounding of the block's own (layer norms in float32, as the block's)."""
    from keras_bert_ft.encoders.native import attention_adder, inference_block
    from keras_bert_ft.training.build import precision_policy
    with precision_policy("mixed_bfloat16"):
        encoder = NativeEncoder(encoder4)
    block = encoder.bert.get_layer("transformer/layer_1")
    inputs = _inputs()
    x = tf.random.stateless_normal((2, 6, 32), seed=(1, 2))
    mask = tf.cast(inputs["input_mask"][:, None, :] * tf.ones((2, 6, 1), tf.int32), tf.float32)
    want = block([x, mask], training=False)
    got = inference_block(block, x, attention_adder(mask, tf.bfloat16))
    assert got.dtype == want.dtype == tf.float32
    difference = np.abs(got.numpy() - want.numpy())
    assert difference.max() < 0.1 and difference.mean() < 0.02, difference.max()


def test_mixed_bfloat16_reaches_the_native_encoder(encoder4):
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        native = NativeEncoder(encoder4)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    out = native(_inputs())
    # Transformer blocks compute in bfloat16 (tf-models keeps LayerNorm in float32).
    assert native.bert.get_layer("transformer/layer_0").compute_dtype == "bfloat16"
    assert all(v.dtype == tf.float32 for v in native.weights)  # variables stay float32
    reference = HubEncoder(encoder4)(_inputs())["sequence_output"].numpy()
    np.testing.assert_allclose(tf.cast(out["sequence_output"], tf.float32).numpy(), reference,
                               atol=0.15)


def test_make_encoder_falls_back_for_unrecognised_encoders(unnamed_encoder, encoder2):  # noqa: F811
    assert isinstance(make_encoder(encoder2), NativeEncoder)
    assert isinstance(make_encoder(encoder2, "hub"), HubEncoder)
    assert isinstance(make_encoder(unnamed_encoder, "auto"), HubEncoder)
    with pytest.raises(NotRecognised, match="no variable"):
        make_encoder(unnamed_encoder, "native")
    with pytest.raises(KbftError, match="Received: encoder_impl='fast'"):
        make_encoder(encoder2, "fast")


def test_saved_model_variables_are_read_without_restoring_it(encoder4):
    import tensorflow_hub as hub
    from keras_bert_ft.encoders import native
    restored = hub.load(encoder4)
    values, vocab, lower = native.read_saved_model(encoder4)
    expected = native._values(restored)
    assert list(values) == list(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(values[name], value.numpy())
    assert (vocab, lower) == native._vocab_info(restored)


def test_a_checked_encoder_is_built_from_its_variables_the_next_time(encoder4, tmp_path,
                                                                      monkeypatch):
    """The second NativeEncoder of the same files skips restoring and running the
    SavedModel (the check passed before) and gives the same outputs; changed files are
    checked again."""
    import os
    from keras_bert_ft.encoders import native
    monkeypatch.setenv("KBFT_CACHE_DIR", str(tmp_path / "cache"))
    first = NativeEncoder(encoder4)
    assert os.path.isfile(tmp_path / "cache" / "native_encoder_checks.json")
    loads = []
    real = native._load_reference
    monkeypatch.setattr(native, "_load_reference", lambda *a: loads.append(a) or real(*a))
    second = NativeEncoder(encoder4)
    assert loads == [] and second.activation == first.activation
    assert (second.vocab_path, second.do_lower_case) == (first.vocab_path, first.do_lower_case)
    for key in ("sequence_output", "pooled_output"):
        np.testing.assert_allclose(second(_inputs())[key].numpy(),
                                   first(_inputs())[key].numpy(), atol=1e-6)
    pb = os.path.join(encoder4, "saved_model.pb")
    stat = os.stat(pb)
    os.utime(pb, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # "changed" files
    NativeEncoder(encoder4)
    assert len(loads) == 1


def test_an_unwritable_cache_only_means_checking_every_time(encoder4, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("KBFT_CACHE_DIR", str(blocker / "cache"))
    assert NativeEncoder(encoder4).activation in ("exact_gelu", "tanh_gelu")


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_functional_construction_signature_equals_tf_keras_traced_one(encoder4, policy):
    """NativeEncoder gives a functional model's construction its KerasTensors from shapes
    and dtypes instead of tracing the forward pass: they equal the ones tf_keras' own
    `_infer_output_signature` traces, with and without `output_range` and a fixed length;
    a call it does not describe (an extra argument) falls back to tracing."""
    from keras_bert_ft.training.build import precision_policy
    with precision_policy(policy):
        encoder = NativeEncoder(encoder4)
    described = lambda out: tf.nest.map_structure(
        lambda t: (t.shape.as_list(), t.dtype.name), out)
    for length in (None, 6):
        inputs = {k: keras.Input((length,), dtype=tf.int32, name=k) for k in _inputs()}
        for kwargs in ({}, {"output_range": 1}, {"output_range": 2, "training": False}):
            assert encoder._output_signature(inputs, (), kwargs) is not None
            got = encoder._infer_output_signature(inputs, (), kwargs, None)
            traced = keras.layers.Layer._infer_output_signature(encoder, inputs, (), kwargs,
                                                                None)
            assert described(got) == described(traced), (length, kwargs)
    assert encoder._output_signature(inputs, (), {"extra": 1}) is None
    assert encoder._output_signature(inputs["input_word_ids"], (), {}) is None
    model = keras.Model(inputs, encoder(inputs, output_range=1)["pooled_output"])
    np.testing.assert_allclose(model(_inputs()).numpy(),
                               encoder(_inputs())["pooled_output"].numpy(), atol=1e-6)
