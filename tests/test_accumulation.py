"""Gradient accumulation: a batch split into N micro-batches makes the same optimizer step
as the whole batch at once, under the default strategy and MirroredStrategy."""

import numpy as np
import pytest
import tensorflow as tf

import keras_bert_ft as kbft
from keras_bert_ft._keras import keras
from keras_bert_ft.data.preprocessing import Preprocessor
from keras_bert_ft.encoders import tfhub_format
from keras_bert_ft.encoders.hub_encoder import HubEncoder
from keras_bert_ft.errors import KbftError
from keras_bert_ft.tasks.models import FineTuneModel, build_classifier
from keras_bert_ft.training.optimization import create_optimizer
from keras_bert_ft.training.strategy import new_mirrored_strategy

from conftest import VOCAB, sentiment_rows


@pytest.fixture(scope="module")
def nodrop_encoder(tmp_path_factory, vocab_file):
    """A 1-layer, hidden-32 test encoder without dropout: micro-batches and the whole
    batch then compute the same numbers."""
    config = tfhub_format.bert_config(vocab_size=len(VOCAB), hidden_size=32, num_layers=1,
                                      num_heads=2, intermediate_size=64, max_seq_length=32,
                                      dropout=0.0)
    return tfhub_format.export_encoder(str(tmp_path_factory.mktemp("nodrop") / "encoder"),
                                       config, vocab_file=vocab_file, do_lower_case=True)


def sentiment_data(vocab_file, n):
    rows = sentiment_rows(n, seed=3)
    features = Preprocessor.from_vocab(vocab_file, seq_length=12)(
        tf.constant([r["sentence"] for r in rows]))
    labels = tf.constant([int(r["label"] == "pos") for r in rows])
    return features, labels


def one_step(encoder, data, accumulation_steps, strategy=None):
    """Builds the tiny classifier afresh (same initial weights every time) and fits it one
    optimizer step on all of `data` as one batch."""
    strategy = strategy or tf.distribute.get_strategy()
    keras.utils.set_random_seed(7)
    with strategy.scope():
        model = build_classifier(HubEncoder(encoder), 2, head_units=(8,), dropout=0.0)
        model.accumulation_steps = accumulation_steps
        model.compile(optimizer=create_optimizer(1e-3, total_steps=1, warmup_ratio=0.0,
                                                 global_clipnorm=1.0),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    rows = int(tf.nest.flatten(data[0])[0].shape[0])
    before = [v.numpy() for v in model.trainable_variables]
    history = model.fit(tf.data.Dataset.from_tensor_slices(data).batch(rows), verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 1  # one step, whatever N is
    after = [v.numpy() for v in model.trainable_variables]
    assert len(after) > 12 and all(np.abs(a - b).max() > 0 for a, b in zip(after, before))
    return after, history.history


def assert_same_step(a, b, atol=1e-5):
    (weights_a, logs_a), (weights_b, logs_b) = a, b
    assert len(weights_a) == len(weights_b)
    for i, (x, y) in enumerate(zip(weights_a, weights_b)):
        np.testing.assert_allclose(x, y, atol=atol, rtol=0, err_msg=f"variable {i}")
    assert sorted(logs_a) == sorted(logs_b) == ["accuracy", "loss"]
    for key in logs_a:
        np.testing.assert_allclose(logs_a[key], logs_b[key], atol=1e-5, err_msg=key)


@pytest.fixture(scope="module")
def data32(vocab_file):
    return sentiment_data(vocab_file, 32)


@pytest.fixture(scope="module")
def one_batch_of_32(nodrop_encoder, data32):
    """The reference: one AdamW step on the 32 rows at once, default strategy."""
    return one_step(nodrop_encoder, data32, 1)


def test_four_micro_batches_of_8_step_like_one_batch_of_32(nodrop_encoder, data32,
                                                           one_batch_of_32):
    """AdamW with global clipping: the clip, weight decay, schedule and bias correction
    see one step of the summed gradient. (Adam's first step hardly depends on the
    gradient's scale; the SGD tests below check the scale.)"""
    assert_same_step(one_step(nodrop_encoder, data32, 4), one_batch_of_32)


def test_under_mirrored_strategy_over_two_cpus(nodrop_encoder, data32, one_batch_of_32):
    """Each replica splits its 16 rows into 4 micro-batches of 4; the step equals the one
    of 32 rows at once."""
    mirrored = new_mirrored_strategy(["/cpu:0", "/cpu:1"])
    assert mirrored.num_replicas_in_sync == 2
    assert_same_step(one_step(nodrop_encoder, data32, 4, mirrored), one_batch_of_32)


def test_fine_tune_with_accumulation_steps_4_trains_like_batch_size_32(nodrop_encoder,
                                                                      vocab_file):
    """The runner feeds batches of batch_size x accumulation_steps and the model splits
    them: 4 x 8 makes the same model as 32."""
    common = dict(encoder=nodrop_encoder, encoder_impl="hub", preprocessor=vocab_file,
                  seq_length=16, dropout=0.0, epochs=1, max_train_examples=32,
                  padding="dynamic", learning_rate=1e-3, clip_norm=1.0, seed=7, verbose=0)
    rows = sentiment_rows(40, seed=2)
    accumulated = kbft.fine_tune(rows, accumulation_steps=4, batch_size=8, **common)
    whole = kbft.fine_tune(rows, batch_size=32, **common)
    assert accumulated.model.accumulation_steps == 4 and whole.model.accumulation_steps == 1
    assert int(accumulated.model.optimizer.iterations.numpy()) == 1
    assert int(whole.model.optimizer.iterations.numpy()) == 1
    assert_same_step(([v.numpy() for v in accumulated.model.trainable_variables],
                      {k: accumulated.history[k] for k in ("loss", "accuracy")}),
                     ([v.numpy() for v in whole.model.trainable_variables],
                      {k: whole.history[k] for k in ("loss", "accuracy")}))


def tiny_model(seed=3):
    """An embedding model: its gradient is IndexedSlices, summed as dense."""
    keras.utils.set_random_seed(seed)
    ids = keras.Input((None,), dtype=tf.int32, name="ids")
    x = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(20, 4)(ids))
    return FineTuneModel(ids, keras.layers.Dense(2)(x))


def tiny_data(rows, weighted):
    rng = np.random.RandomState(0)
    x = rng.randint(0, 20, (rows, 5)).astype("int32")
    y = rng.randint(0, 2, rows)
    return (x, y, rng.rand(rows).astype("float32")) if weighted else (x, y)


def fit_tiny(steps, data, mixed=False, jit_compile=False):
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    try:
        model = tiny_model()
    finally:
        keras.mixed_precision.set_global_policy(previous)
    model.accumulation_steps = steps
    model.compile(keras.optimizers.SGD(0.5),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
                  jit_compile=jit_compile)
    # Under XLA the batch has a static size (drop_remainder), as on TPUs.
    batches = tf.data.Dataset.from_tensor_slices(data).batch(len(data[0]),
                                                             drop_remainder=jit_compile)
    history = model.fit(batches, verbose=0)
    return model, history.history


@pytest.mark.parametrize("rows, steps, weighted", [(30, 4, True), (7, 3, False), (3, 5, True)])
def test_sample_weights_sparse_gradients_and_more_steps_than_rows(rows, steps, weighted):
    """Plain SGD, whose step shows any error in the gradient's scale; (x, y,
    sample_weight) batches; 30 rows in 4 are micro-batches of 8, 8, 8, 6; 7 rows in 3 are
    3, 3, 1; 3 rows in 5 are 3 micro-batches of 1 (no empty one)."""
    data = tiny_data(rows, weighted)
    (big, big_logs), (small, small_logs) = fit_tiny(1, data), fit_tiny(steps, data)
    assert_same_step(([v.numpy() for v in small.trainable_variables], small_logs),
                     ([v.numpy() for v in big.trainable_variables], big_logs), atol=1e-6)


def test_static_batches_under_xla():
    """A static batch of 32 in 3 is micro-batches of 11 and 11 in the loop, then 10, all
    of static size, so XLA compiles the step."""
    data = tiny_data(32, True)
    (big, big_logs), (small, small_logs) = fit_tiny(1, data), fit_tiny(3, data, jit_compile=True)
    assert_same_step(([v.numpy() for v in small.trainable_variables], small_logs),
                     ([v.numpy() for v in big.trainable_variables], big_logs), atol=1e-6)


def test_mixed_precision_loss_scaling():
    """Under mixed_float16 the optimizer is a LossScaleOptimizer: the scaled micro-batch
    losses are unscaled before they add up, and the step is applied (not skipped)."""
    data = tiny_data(30, True)
    (big, _), (small, logs) = fit_tiny(1, data, mixed=True), fit_tiny(4, data, mixed=True)
    assert isinstance(small.optimizer, keras.mixed_precision.LossScaleOptimizer)
    assert int(small.optimizer.iterations.numpy()) == 1 and np.isfinite(logs["loss"][0])
    for x, y in zip(small.trainable_variables, big.trainable_variables):
        np.testing.assert_allclose(x.numpy(), y.numpy(), atol=1e-3, rtol=0)


def test_changing_the_steps_retraces_and_bad_values_are_refused():
    data = tiny_data(8, False)
    model, _ = fit_tiny(1, data)
    first = model.train_function
    model.accumulation_steps = 2
    model.fit(tf.data.Dataset.from_tensor_slices(data).batch(8), verbose=0)
    assert model.train_function is not first
    assert int(model.optimizer.iterations.numpy()) == 2
    for bad in (0, 2.0, True):
        model.accumulation_steps = bad
        with pytest.raises(KbftError, match=f"accumulation_steps must be an int >= 1. "
                                            f"Received: accumulation_steps={bad!r}"):
            model.fit(tf.data.Dataset.from_tensor_slices(data).batch(8), verbose=0)
