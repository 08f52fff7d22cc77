"""AdamW: bias correction, weight-decay exclusions, warmup/decay schedule, growing var sets."""

import numpy as np
import pytest
import tensorflow as tf

from keras_bert_ft.errors import KbftError
from keras_bert_ft.training.optimization import AdamW, WarmupLinearDecay, create_optimizer


def test_schedule_warms_up_then_decays_linearly():
    schedule = WarmupLinearDecay(1.0, total_steps=100, warmup_steps=10)
    values = [float(schedule(s)) for s in (0, 5, 10, 55, 100, 120)]
    np.testing.assert_allclose(values, [0.0, 0.5, 1.0, 0.5, 0.0, 0.0], atol=1e-6)


@pytest.mark.parametrize("bias_correction, expected", [(True, 1e-2),
                                                       (False, 1e-2 * 0.1 / np.sqrt(0.001))])
def test_first_step_size_with_and_without_bias_correction(bias_correction, expected):
    var = tf.Variable([1.0, -1.0])
    opt = AdamW(1e-2, weight_decay=None, bias_correction=bias_correction, epsilon=1e-12)
    opt.apply_gradients([(tf.constant([0.3, -2.0]), var)])
    np.testing.assert_allclose(var.numpy(), [1.0 - expected, -1.0 + expected], rtol=1e-4)


def test_weight_decay_skips_layer_norm_and_bias():
    kernel = tf.Variable([1.0], name="dense/kernel")
    bias = tf.Variable([1.0], name="dense/bias")
    gamma = tf.Variable([1.0], name="transformer/layer_0/output_layer_norm/gamma")
    tf1_gamma = tf.Variable([1.0], name="bert/embeddings/LayerNorm/gamma")
    opt = AdamW(0.1, weight_decay=0.5)
    zero = tf.constant([0.0])
    opt.apply_gradients([(zero, v) for v in (kernel, bias, gamma, tf1_gamma)])
    assert kernel.numpy()[0] == pytest.approx(1.0 - 0.1 * 0.5)
    assert bias.numpy()[0] == gamma.numpy()[0] == tf1_gamma.numpy()[0] == 1.0


def test_variables_may_join_between_steps():
    a, b = tf.Variable([1.0], name="a"), tf.Variable([1.0], name="b")
    opt = AdamW(0.1, weight_decay=None)
    opt.apply_gradients([(tf.constant([1.0]), a)])
    opt.apply_gradients([(tf.constant([1.0]), a), (tf.constant([1.0]), b)])
    assert a.numpy()[0] < b.numpy()[0] < 1.0


def test_sparse_gradients_from_embeddings():
    table = tf.Variable(tf.ones([4, 2]), name="word_embeddings/embeddings")
    opt = AdamW(0.1, weight_decay=None)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.gather(table, [1, 1, 3]))
    opt.apply_gradients(zip(tape.gradient(loss, [table]), [table]))
    changed = np.any(table.numpy() != 1.0, axis=1)
    assert changed.tolist() == [False, True, False, True]


def test_create_optimizer_wires_schedule_and_errors():
    opt = create_optimizer(3e-5, total_steps=50, warmup_ratio=0.2, weight_decay=0.01)
    assert isinstance(opt.learning_rate, tf.Variable) or callable(opt._learning_rate)
    assert opt._learning_rate.warmup_steps == 10 and opt._learning_rate.peak == 3e-5
    with pytest.raises(KbftError, match="Received: learning_rate=0"):
        create_optimizer(0, total_steps=5)
    with pytest.raises(KbftError, match="Received: total_steps=0"):
        create_optimizer(1e-5, total_steps=0)
    with pytest.raises(KbftError, match="Received: warmup_ratio=1.5"):
        create_optimizer(1e-5, total_steps=5, warmup_ratio=1.5)


def _numpy_adamw(var, grads, rates, decay, b1=0.9, b2=0.999, eps=1e-6, bias_correction=True):
    """AdamW as written in the BERT-fine-tuning papers: decay by lr x decay, then Adam."""
    m = np.zeros_like(var)
    v = np.zeros_like(var)
    for t, (g, lr) in enumerate(zip(grads, rates), start=1):
        var = var - lr * decay * var
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        step = lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t) if bias_correction else lr
        var = var - step * m / (np.sqrt(v) + eps)
    return var


@pytest.mark.parametrize("bias_correction", [True, False])
@pytest.mark.parametrize("in_function", [True, False])
def test_steps_match_numpy_adamw_with_schedule_and_decay(bias_correction, in_function):
    rng = np.random.default_rng(0)
    start = rng.normal(size=(3, 4)).astype(np.float32)
    grads = rng.normal(size=(5, 3, 4)).astype(np.float32)
    schedule = WarmupLinearDecay(0.1, total_steps=5, warmup_steps=2)
    kernel, bias = tf.Variable(start, name="dense/kernel"), tf.Variable(start, name="dense/bias")
    opt = AdamW(schedule, weight_decay=0.1, bias_correction=bias_correction)

    def step(g):
        opt.apply_gradients([(g, kernel), (g, bias)])

    step = tf.function(step) if in_function else step
    for g in grads:
        step(tf.constant(g))
    rates = [float(schedule(t)) for t in range(5)]
    np.testing.assert_allclose(kernel.numpy(), _numpy_adamw(start, grads, rates, 0.1,
                                                            bias_correction=bias_correction),
                               rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(bias.numpy(), _numpy_adamw(start, grads, rates, 0.0,
                                                          bias_correction=bias_correction),
                               rtol=1e-4, atol=2e-5)
