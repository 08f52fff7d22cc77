"""The one module that decides which Keras the toolkit uses: tf_keras (Keras 2).

`tensorflow_hub.KerasLayer` is a Keras-2 layer, so a Keras-3 model rejects it
(tensorflow/hub #903). Every other module takes `keras` from here, so users never
have to set `TF_USE_LEGACY_KERAS=1` themselves.
"""

import os

# tensorflow_hub and tf-models-official read this to pick tf_keras as well.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tf_keras as keras  # noqa: E402

__all__ = ["keras"]
