"""HubEncoder: layer groups, per-layer trainability proven by training, and its errors."""

import numpy as np
import pytest
import tensorflow as tf

from keras_bert_ft._keras import keras
from keras_bert_ft.encoders.hub_encoder import HubEncoder, group_variables, resolve_layers
from keras_bert_ft.errors import KbftError
from keras_bert_ft.tasks.models import build_classifier
from keras_bert_ft.training.optimization import create_optimizer
from keras_bert_ft.data.preprocessing import Preprocessor


def _names(variables):
    return [v.name for v in variables]


def test_layer_groups_cover_every_variable_once(encoder4):
    encoder = HubEncoder(encoder4)
    groups = encoder.layer_groups()
    assert list(groups) == ["embeddings", "layer_0", "layer_1", "layer_2", "layer_3", "pooler"]
    grouped = [id(v) for vs in groups.values() for v in vs]
    assert len(grouped) == len(set(grouped)) == len(encoder.resolved_object.trainable_variables)
    assert all("transformer/layer_2/" in n for n in _names(groups["layer_2"]))
    assert any("word_embeddings" in n for n in _names(groups["embeddings"]))
    assert all("pooler" in n for n in _names(groups["pooler"]))
    assert encoder.num_layers == 4 and encoder.max_seq_length == 32


def test_tf1_bert_names_are_grouped():
    names = ["bert/embeddings/word_embeddings", "bert/embeddings/LayerNorm/gamma",
             "bert/encoder/layer_0/attention/self/query/kernel",
             "bert/encoder/layer_1/output/dense/bias", "bert/pooler/dense/kernel"]
    variables = [tf.Variable(tf.zeros([2]), name=n) for n in names]
    groups = group_variables(variables)
    assert {k: [v.name.split(":")[0] for v in vs] for k, vs in groups.items()} == {
        "embeddings": names[:2], "layer_0": [names[2]], "layer_1": [names[3]],
        "pooler": [names[4]]}


@pytest.mark.parametrize("spec, layers", [("all", [0, 1, 2, 3]), ("none", []), (1, [3]),
                                          (2, [2, 3]), (0, []), ([0, 2], [0, 2])])
def test_resolve_layers(spec, layers):
    assert resolve_layers(spec, 4) == layers


@pytest.mark.parametrize("spec", ["some", -1, 5, [4], [-1], True, 1.5, ["0"]])
def test_errors_bad_trainable_layers(encoder4, spec):
    with pytest.raises(KbftError, match=r"trainable_layers.*Received: trainable_layers="):
        HubEncoder(encoder4, trainable_layers=spec)


def test_trainable_groups_and_report(encoder4):
    encoder = HubEncoder(encoder4, trainable_layers=1)
    assert encoder.trainable_groups == ["layer_3", "pooler"]
    report = encoder.trainable_report()
    assert "layer_3" in report and "embeddings" in report and "trainable" in report
    rows = dict((g, t) for g, _, t in encoder.report_rows())
    assert rows == {"embeddings": False, "layer_0": False, "layer_1": False,
                    "layer_2": False, "layer_3": True, "pooler": True}
    all_layers = HubEncoder(encoder4, trainable_layers="all", train_pooler=False)
    assert all_layers.trainable_groups == ["embeddings", "layer_0", "layer_1", "layer_2", "layer_3"]
    frozen_emb = HubEncoder(encoder4, trainable_layers="all", train_embeddings=False)
    assert "embeddings" not in frozen_emb.trainable_groups
    n_trainable = len(encoder.trainable_weights)
    assert n_trainable + len(encoder.non_trainable_weights) == len(encoder.weights)


def _snapshot(model):
    return {v.name: v.numpy().copy() for v in model.variables}


def _fit_once(model, vocab_file, epochs=1):
    preprocessor = Preprocessor.from_vocab(vocab_file, seq_length=12)
    texts = tf.constant(["the movie was good", "bad plot", "great fun", "awful acting"] * 4)
    labels = tf.constant([1, 0, 1, 0] * 4)
    features = preprocessor(texts)
    dataset = tf.data.Dataset.from_tensor_slices((features, labels)).batch(8)
    model.fit(dataset, epochs=epochs, verbose=0)


def _compile(model):
    model.compile(optimizer=create_optimizer(1e-2, total_steps=10, warmup_ratio=0.0),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))


def _changed_groups(before, after, model):
    changed = {name for name in before if not np.array_equal(before[name], after[name])}
    encoder = model.encoder
    groups = {g: {v.name for v in vs} for g, vs in encoder.layer_groups().items()}
    encoder_names = set().union(*groups.values())
    result = {g for g, names in groups.items() if names & changed}
    if changed - encoder_names:
        result.add("head")
    # Every variable of a changed group changed: no half-frozen group.
    for g in result - {"head"}:
        assert groups[g] <= changed, g
    return result


def _train_top1_and_check(encoder4, vocab_file):
    encoder = HubEncoder(encoder4, trainable_layers=1)
    model = build_classifier(encoder, 2)
    _compile(model)
    before = _snapshot(model)
    _fit_once(model, vocab_file)
    return _changed_groups(before, _snapshot(model), model)


def test_fit_changes_exactly_top_layer_pooler_and_head(encoder4, vocab_file):
    assert _train_top1_and_check(encoder4, vocab_file) == {"layer_3", "pooler", "head"}


def test_fit_under_mirrored_strategy_changes_exactly_top_layer(encoder4, vocab_file):
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        encoder = HubEncoder(encoder4, trainable_layers=1)
        model = build_classifier(encoder, 2)
        _compile(model)
    before = _snapshot(model)
    _fit_once(model, vocab_file)
    assert _changed_groups(before, _snapshot(model), model) == {"layer_3", "pooler", "head"}


def test_set_trainable_layers_between_fits_takes_effect(encoder4, vocab_file):
    encoder = HubEncoder(encoder4, trainable_layers=1)
    model = build_classifier(encoder, 2)
    _compile(model)
    _fit_once(model, vocab_file)
    encoder.set_trainable_layers(2)
    before = _snapshot(model)
    _fit_once(model, vocab_file)
    assert _changed_groups(before, _snapshot(model), model) == {
        "layer_2", "layer_3", "pooler", "head"}
    encoder.set_trainable_layers("none", train_pooler=False)
    before = _snapshot(model)
    _fit_once(model, vocab_file)
    assert _changed_groups(before, _snapshot(model), model) == {"head"}


@pytest.fixture(scope="module")
def unnamed_encoder(tmp_path_factory):
    """A SavedModel encoder whose variables carry no per-layer names."""
    path = str(tmp_path_factory.mktemp("unnamed") / "encoder")
    inputs = {k: keras.Input((None,), dtype=tf.int32, name=k)
              for k in ("input_word_ids", "input_mask", "input_type_ids")}
    x = keras.layers.Embedding(40, 8, name="embed")(inputs["input_word_ids"])
    shared = keras.layers.Dense(8, name="block_0")
    x = shared(shared(x))  # one layer reused across depth, like ALBERT
    pooled = keras.layers.Dense(8, activation="tanh", name="pooler")(x[:, 0])
    keras.Model(inputs, {"sequence_output": x, "pooled_output": pooled}).save(
        path, save_format="tf")
    return path


def test_errors_encoder_without_layer_names(unnamed_encoder):
    with pytest.raises(KbftError, match="per-layer variable names.*layer_pattern"):
        HubEncoder(unnamed_encoder, trainable_layers=1)
    encoder = HubEncoder(unnamed_encoder, trainable_layers="all")  # all-or-nothing works
    assert encoder.num_layers == 0
    with pytest.raises(KbftError, match="per-layer variable names"):
        encoder.layer_groups()


def test_custom_layer_pattern(unnamed_encoder):
    encoder = HubEncoder(unnamed_encoder, trainable_layers=1, layer_pattern=r"block_(\d+)/")
    assert encoder.num_layers == 1
    # One layer of one: every layer trains, so the embeddings do too.
    assert encoder.trainable_groups == ["embeddings", "layer_0", "pooler"]
    encoder.set_trainable_layers(0)
    assert encoder.trainable_groups == ["pooler"]


def test_errors_handle_missing(tmp_path):
    with pytest.raises(KbftError, match="Received: encoder="):
        HubEncoder(str(tmp_path / "nope"))
    with pytest.raises(KbftError, match="no saved_model.pb"):
        HubEncoder(str(tmp_path))
