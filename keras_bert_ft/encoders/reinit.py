"""Re-initialise the top K transformer layers and the pooler with BERT's own initialisation.

The top layers of a pre-trained encoder are specialised to the pre-training objective;
starting them afresh speeds up and stabilises fine-tuning on small data (Zhang et al.
2020, "Revisiting few-sample BERT fine-tuning"). BERT initialises weight matrices from
a normal distribution with standard deviation 0.02 truncated at two standard deviations,
biases to 0, and LayerNorm to scale 1 / offset 0.
"""

import re
from typing import List, Optional

import numpy as np
import tensorflow as tf

from keras_bert_ft.errors import bad_argument

STDDEV = 0.02  # BERT's initializer_range
_NORM = re.compile(r"layer_?norm", re.IGNORECASE)


def initial_value(variable, seed, stddev: float = STDDEV):
    """BERT's initial value for one variable, chosen by its name and rank.

    `seed` is a stateless seed pair; stateless draws need no generator variable, which a
    distribution strategy's scope would otherwise mirror.
    """
    name = variable.name.split(":")[0]
    shape, dtype = variable.shape, variable.dtype
    if _NORM.search(name):
        last = name.rsplit("/", 1)[-1]
        return tf.ones(shape, dtype) if last in ("gamma", "scale") else tf.zeros(shape, dtype)
    if name.endswith("bias") or len(shape) < 2:
        return tf.zeros(shape, dtype)
    return tf.cast(tf.random.stateless_truncated_normal(shape, seed=seed, stddev=stddev), dtype)


def reinitialize(groups, top_k: int, *, pooler: bool = True, seed: Optional[int] = None,
                 stddev: float = STDDEV) -> List[str]:
    """Re-initialises the top `top_k` `layer_i` groups (and the pooler) in place.

    Args:
        groups: the encoder's ordered groups (`HubEncoder.layer_groups()`).
        top_k: how many layers from the top, in [0, number of layers].
        pooler: also re-initialise the pooler's dense layer.
        seed: seeds the draws (same seed, same weights); None takes one from NumPy's
            global state (which `keras.utils.set_random_seed` seeds).

    Returns the names of the groups re-initialised.
    """
    layers = [g for g in groups if g.startswith("layer_")]
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 0 <= top_k <= len(layers):
        raise bad_argument("reinit_layers", top_k,
                           f"an int in [0, {len(layers)}] (this encoder has {len(layers)} layers)")
    chosen = layers[len(layers) - top_k:] if top_k else []
    if pooler and groups.get("pooler"):
        chosen.append("pooler")
    if seed is None:
        seed = int(np.random.randint(0, 2**31 - 1))
    count = 0
    for group in chosen:
        for variable in groups[group]:
            variable.assign(initial_value(variable, [seed, count], stddev))
            count += 1
    return chosen
