"""Layer-wise learning rates: the configured factor per variable, and the step each variable
really takes in `model.fit`, alone, under MirroredStrategy and under XLA."""

import numpy as np
import pytest
import tensorflow as tf

from keras_bert_ft._keras import keras
from keras_bert_ft.encoders.hub_encoder import HubEncoder
from keras_bert_ft.errors import KbftError
from keras_bert_ft.training.layerwise import group_multipliers, layer_multipliers
from keras_bert_ft.tasks.models import build_classifier
from keras_bert_ft.training.optimization import AdamW
from keras_bert_ft.data.preprocessing import Preprocessor
from keras_bert_ft.training.strategy import new_mirrored_strategy

DECAY, RATIO, LR = 0.5, 0.1, 1e-2
# encoder rate x decay^(layers below the top): 4 layers, so embeddings sit 4 below.
EXPECTED = {"pooler": RATIO, "layer_3": RATIO, "layer_2": RATIO * DECAY,
            "layer_1": RATIO * DECAY ** 2, "layer_0": RATIO * DECAY ** 3,
            "embeddings": RATIO * DECAY ** 4}


def _model(encoder4):
    return build_classifier(HubEncoder(encoder4, trainable_layers="all"), 2)


def test_every_encoder_variable_gets_its_group_factor(encoder4):
    model = _model(encoder4)
    factors = layer_multipliers(model, layer_decay=DECAY, encoder_rate=RATIO)
    groups = model.encoder.layer_groups()
    assert len(factors) == sum(len(v) for v in groups.values())
    for group, variables in groups.items():
        for v in variables:
            assert factors[v.name.split(":")[0]] == pytest.approx(EXPECTED[group]), v.name
    head = [v for v in model.trainable_variables if v.name.startswith("logits")]
    assert head and all(v.name.split(":")[0] not in factors for v in head)  # base rate
    assert group_multipliers(groups) == {g: 1.0 for g in groups}


def _one_step(model, vocab_file, factors, jit_compile=False):
    model.compile(optimizer=AdamW(LR, weight_decay=None, epsilon=1e-12,
                                  learning_rate_multipliers=factors),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=jit_compile)
    pre = Preprocessor.from_vocab(vocab_file, seq_length=12)
    features = pre(tf.constant(["the movie was good", "bad plot", "great fun", "awful"] * 2))
    data = tf.data.Dataset.from_tensor_slices((features, tf.constant([1, 0, 1, 0] * 2))).batch(8)
    before = {v.name: v.numpy().copy() for v in model.trainable_variables}
    model.fit(data, epochs=1, verbose=0)
    return {name: float(np.max(np.abs(v.numpy() - before[name])))
            for name, v in ((v.name, v) for v in model.trainable_variables)}


# XLA is checked alone: over two *logical* CPUs it refuses the variables that live on
# the second one (xla/known_issues "tf.Variable on a different device").
@pytest.mark.parametrize("mode", ["default", "mirrored", "xla"])
def test_first_adam_step_of_each_variable_is_its_rate(encoder2, vocab_file, mode):
    # Adam's bias-corrected first step moves each weight by exactly lr (when its gradient
    # is not ~0), so the largest move of a variable is its own learning rate.
    strategy = (new_mirrored_strategy(["/cpu:0", "/cpu:1"]) if mode == "mirrored"
                else tf.distribute.get_strategy())
    with strategy.scope():
        model = _model(encoder2)
        factors = layer_multipliers(model, layer_decay=DECAY, encoder_rate=RATIO)
        steps = _one_step(model, vocab_file, factors, jit_compile=mode == "xla")
    expected = {"pooler": RATIO, "layer_1": RATIO, "layer_0": RATIO * DECAY,
                "embeddings": RATIO * DECAY ** 2}
    groups = model.encoder.layer_groups()
    for group, variables in groups.items():
        for v in variables:
            if "key/bias" in v.name:
                continue  # softmax ignores a shift of every key: its gradient is 0
            assert steps[v.name] == pytest.approx(LR * expected[group], rel=2e-3), v.name
    for v in model.trainable_variables:
        if v.name.startswith("logits"):
            assert steps[v.name] == pytest.approx(LR, rel=2e-3)


def test_weight_decay_follows_the_factor():
    var = tf.Variable([1.0], name="transformer/layer_0/output/kernel")
    opt = AdamW(0.1, weight_decay=0.5, learning_rate_multipliers={
        "transformer/layer_0/output/kernel": 0.2})
    opt.apply_gradients([(tf.constant([0.0]), var)])
    assert var.numpy()[0] == pytest.approx(1.0 - 0.1 * 0.2 * 0.5)
    assert opt.get_config()["learning_rate_multipliers"] == {
        "transformer/layer_0/output/kernel": 0.2}


def test_errors_bad_rates(encoder2):
    encoder = HubEncoder(encoder2)
    for kwargs, arg in [({"layer_decay": 0.0}, "layer_decay"), ({"layer_decay": 1.5}, "layer_decay"),
                        ({"encoder_rate": -1.0}, "encoder_rate")]:
        with pytest.raises(KbftError, match=f"Received: {arg}="):
            layer_multipliers(encoder, **kwargs)
