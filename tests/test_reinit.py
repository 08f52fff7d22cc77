"""Re-initialising the top K layers and the pooler: BERT's statistics, nothing else touched."""

import numpy as np
import pytest
import tensorflow as tf

from keras_bert_ft.encoders.hub_encoder import HubEncoder
from keras_bert_ft.errors import KbftError
from keras_bert_ft.training.strategy import new_mirrored_strategy

# A normal(0, 0.02) truncated at 2 standard deviations has standard deviation 0.02 x 0.8796.
TRUNCATED_STD = 0.02 * 0.87962566


def _values(group):
    return {v.name: v.numpy().copy() for v in group}


def test_top_layers_and_pooler_get_bert_init(encoder4):
    encoder = HubEncoder(encoder4)
    groups = encoder.layer_groups()
    for g in ("layer_2", "layer_3", "pooler"):  # move them far from any init first
        for v in groups[g]:
            v.assign(3.0 + tf.random.normal(v.shape))
    kept = {g: _values(groups[g]) for g in ("embeddings", "layer_0", "layer_1")}
    assert encoder.reinitialize(2, seed=7) == ["layer_2", "layer_3", "pooler"]
    for g, values in kept.items():
        for v in groups[g]:
            np.testing.assert_array_equal(v.numpy(), values[v.name])
    kernels = []
    for v in groups["layer_2"] + groups["layer_3"] + groups["pooler"]:
        name, value = v.name, v.numpy()
        if "layer_norm" in name:
            assert np.all(value == (1.0 if name.endswith("gamma:0") else 0.0)), name
        elif "bias" in name:
            assert np.all(value == 0.0), name
        else:
            kernels.append(value.ravel())
    kernels = np.concatenate(kernels)
    assert kernels.size > 10000
    assert np.max(np.abs(kernels)) <= 0.04 + 1e-7  # truncated at 2 stddev
    assert abs(kernels.mean()) < 0.001
    assert kernels.std() == pytest.approx(TRUNCATED_STD, rel=0.03)


def test_same_seed_same_weights_and_works_under_mirrored(encoder2):
    a = HubEncoder(encoder2, reinit_layers=1, reinit_seed=3)
    b = HubEncoder(encoder2, reinit_layers=1, reinit_seed=3)
    pristine = HubEncoder(encoder2)
    assert a.reinitialized_groups == ["layer_1", "pooler"]
    top = lambda e: e.layer_groups()["layer_1"][0].numpy()  # noqa: E731
    np.testing.assert_array_equal(top(a), top(b))
    assert not np.array_equal(top(a), top(pristine))
    with new_mirrored_strategy(["/cpu:0", "/cpu:1"]).scope():
        mirrored = HubEncoder(encoder2, reinit_layers=1, reinit_seed=3)
    np.testing.assert_array_equal(top(mirrored), top(a))
    with pytest.raises(KbftError, match="Received: reinit_layers=3"):
        pristine.reinitialize(3)
