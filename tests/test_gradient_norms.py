"""`log_gradient_norms`: per-group norms of the applied gradient in the fit logs, the run
folder's history.json, TensorBoard and gradient_norms.png; nothing when off."""

import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf

import keras_bert_ft as kbft
from keras_bert_ft._keras import keras
from keras_bert_ft.cli.app import build_parser
from keras_bert_ft.data.preprocessing import Preprocessor
from keras_bert_ft.encoders import tfhub_format
from keras_bert_ft.encoders.hub_encoder import HubEncoder
from keras_bert_ft.tasks.models import build_classifier
from keras_bert_ft.training.strategy import get_strategy

from conftest import VOCAB, sentiment_rows

GROUPS = ["embeddings", "layer_0", "layer_1", "pooler", "head"]


@pytest.fixture(scope="module")
def still_encoder(tmp_path_factory, vocab_file):
    """The tiny 2-layer encoder without dropout: training steps are deterministic."""
    config = tfhub_format.bert_config(vocab_size=len(VOCAB), hidden_size=32, num_layers=2,
                                      num_heads=2, intermediate_size=64, max_seq_length=32,
                                      dropout=0.0)
    return tfhub_format.export_encoder(str(tmp_path_factory.mktemp("still") / "encoder"),
                                       config, vocab_file=vocab_file, do_lower_case=True)


def _batch(vocab_file, n=8):
    rows = sentiment_rows(n)
    features = Preprocessor.from_vocab(vocab_file, seq_length=16)(
        tf.constant([r["sentence"] for r in rows]))
    labels = np.array([int(r["label"] == "pos") for r in rows])
    return {k: v.numpy() for k, v in features.items()}, labels


def _direct_norms(model, x, y):
    """The per-group gradient norms of the batch's mean loss, by one tf.GradientTape."""
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    with tf.GradientTape() as tape:
        loss = loss_fn(y, model(x, training=True))
    grads = tape.gradient(loss, model.trainable_variables)
    owner = {id(v): g for g, vs in model.encoder.layer_groups().items() for v in vs}
    squares = dict.fromkeys(GROUPS, 0.0)
    for g, v in zip(grads, model.trainable_variables):
        squares[owner.get(id(v), "head")] += float(np.sum(tf.convert_to_tensor(g).numpy()
                                                          .astype(np.float64) ** 2))
    return {g: np.sqrt(s) for g, s in squares.items()}


@pytest.mark.parametrize("kind, accumulation", [("cpu", 1), ("mirrored", 1), ("mirrored", 2)])
def test_logged_norms_equal_one_tape_on_the_batch(still_encoder, vocab_file, kind,
                                                  accumulation):
    strategy = get_strategy(kind)
    x, y = _batch(vocab_file)
    with strategy.scope():
        model = build_classifier(HubEncoder(still_encoder), 2, dropout=0.0)
        model.compile(optimizer=keras.optimizers.SGD(1e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    want = _direct_norms(model, x, y)
    model.accumulation_steps = accumulation
    model.log_gradient_norms = True
    history = model.fit(x, y, batch_size=len(y), epochs=1, shuffle=False, verbose=0).history
    for group in GROUPS:
        np.testing.assert_allclose(history[f"grad_norm_{group}"][0], want[group],
                                   rtol=1e-5, atol=1e-8, err_msg=group)
        assert want[group] > 0


def test_norms_reach_history_tensorboard_and_plot_only_when_on(encoder2, tmp_path):
    on = kbft.fine_tune(sentiment_rows(16), encoder=encoder2, epochs=2, batch_size=8,
                        seq_length=16, trainable_layers=1, log_gradient_norms=True,
                        output_dir=str(tmp_path / "on"), backup_steps=0, verbose=0)
    on.save(str(tmp_path / "on"), export=False)
    for group in GROUPS:
        assert len(on.history[f"grad_norm_{group}"]) == 2
    assert on.history["grad_norm_embeddings"] == [0.0, 0.0]  # frozen: no gradient
    assert on.history["grad_norm_layer_0"] == [0.0, 0.0]
    assert all(v > 0 for g in ("layer_1", "pooler", "head")
               for v in on.history[f"grad_norm_{g}"])
    with open(tmp_path / "on" / "history.json") as f:
        assert json.load(f)["grad_norm_layer_1"] == on.history["grad_norm_layer_1"]
    assert os.path.getsize(tmp_path / "on" / "gradient_norms.png") > 0
    tags = set()
    for path in glob.glob(str(tmp_path / "on" / "logs" / "train" / "events.out.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(v.tag for v in event.summary.value)
    assert {f"epoch_grad_norm_{g}" for g in GROUPS} <= tags
    restored = kbft.restore(str(tmp_path / "on"))  # the norms' metrics are not weights
    assert restored.history["grad_norm_head"] == on.history["grad_norm_head"]

    off = kbft.fine_tune(sentiment_rows(16), encoder=encoder2, epochs=1, batch_size=8,
                         seq_length=16, output_dir=str(tmp_path / "on"), backup_steps=0,
                         verbose=0)
    off.save(str(tmp_path / "on"), export=False)
    assert not [k for k in off.history if k.startswith("grad_norm")]
    assert not os.path.exists(tmp_path / "on" / "gradient_norms.png")  # the stale one went


def test_cli_flag_comes_from_the_config():
    args = build_parser().parse_args(["train", "--train", "t.tsv", "--log-gradient-norms"])
    assert args.log_gradient_norms is True
    with pytest.raises(kbft.KbftError, match="log_gradient_norms must be True or False"):
        kbft.FineTuneConfig(log_gradient_norms="yes").validate()
