"""enable_determinism: the same seed gives the same numbers, run after run, on CPU.

Seeds Python, NumPy and TensorFlow and turns on TensorFlow's deterministic op
implementations. Both are process-wide and cannot be undone, so call it once, at the
start of a run (`FineTuneConfig(deterministic=True)` / `kbft train --deterministic`).
"""

import logging

import tensorflow as tf

from keras_bert_ft._keras import keras

logger = logging.getLogger("keras_bert_ft")


def enable_determinism(seed: int) -> None:
    """Seeds every random generator with `seed` and makes TensorFlow ops deterministic.

    On GPU, some ops have no deterministic kernel and then raise an error naming
    themselves instead of silently varying (tensorflow.org/api_docs: enable_op_determinism).
    """
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    logger.info("keras_bert_ft: deterministic ops on, seed %d", seed)
