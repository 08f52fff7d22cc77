"""Pooling and Dense+Dropout blocks that sit between the encoder and a task's logits."""

from typing import Sequence

import tensorflow as tf

from keras_bert_ft._keras import keras
from keras_bert_ft.config import POOLINGS  # noqa: F401  (re-exported: the one list)
from keras_bert_ft.errors import bad_argument


def masked_mean(sequence_output, mask):
    """Mean of `sequence_output` `[batch, tokens, hidden]` over the real (unmasked) tokens."""
    mask = tf.cast(mask, sequence_output.dtype)[:, :, None]
    total = tf.reduce_sum(sequence_output * mask, axis=1)
    return total / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)


class MaskedMeanPooling(keras.layers.Layer):
    """Mean of `sequence_output` over the real (unmasked) tokens."""

    def call(self, sequence_output, mask):
        return masked_mean(sequence_output, mask)


def pool(encoder_outputs, input_mask, pooling: str):
    """One vector per example: BERT's `pooled_output`, the [CLS] token, or a masked mean."""
    if pooling == "pooled":
        return encoder_outputs["pooled_output"]
    if pooling == "cls":
        return keras.layers.Lambda(lambda s: s[:, 0], name="cls_token")(
            encoder_outputs["sequence_output"])
    if pooling == "mean":
        return MaskedMeanPooling(name="mean_pooling")(encoder_outputs["sequence_output"],
                                                      input_mask)
    raise bad_argument("pooling", pooling, f"one of {', '.join(POOLINGS)}")


def dense_blocks(x, head_units: Sequence[int], dropout: float):
    """Dropout, then for each width a Dense(ReLU) + Dropout block."""
    if not 0.0 <= float(dropout) < 1.0:
        raise bad_argument("dropout", dropout, "a float in [0, 1)")
    bad = [u for u in head_units if isinstance(u, bool) or not isinstance(u, int) or u < 1]
    if bad:
        raise bad_argument("head_units", tuple(head_units), "a sequence of positive ints")
    x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    for i, units in enumerate(head_units):
        x = keras.layers.Dense(units, activation="relu", name=f"head_dense_{i}",
                               kernel_initializer=_init())(x)
        x = keras.layers.Dropout(dropout, name=f"head_dropout_{i}")(x)
    return x


def _init():
    # BERT's own initialiser for new dense layers.
    return keras.initializers.TruncatedNormal(stddev=0.02)


def logits_layer(units: int, name: str = "logits"):
    # float32 even under a mixed-precision policy: softmax and loss need the range.
    return keras.layers.Dense(units, name=name, kernel_initializer=_init(), dtype="float32")
