"""build_classifier: pooling choices, head blocks, parameter report, errors."""

import numpy as np
import pytest
import tensorflow as tf

from keras_bert_ft.encoders.hub_encoder import HubEncoder
from keras_bert_ft.errors import KbftError
from keras_bert_ft.tasks.models import build_classifier
from keras_bert_ft.data.preprocessing import Preprocessor


@pytest.mark.parametrize("pooling", ["pooled", "cls", "mean"])
def test_poolings_give_logits(encoder2, vocab_file, pooling):
    model = build_classifier(HubEncoder(encoder2), 3, head_units=(16,), pooling=pooling)
    features = Preprocessor.from_vocab(vocab_file, seq_length=10)(tf.constant(["good", "bad fun"]))
    logits = model(features, training=False)
    assert logits.shape == (2, 3) and np.isfinite(logits.numpy()).all()
    assert "head_dense_0" in [layer.name for layer in model.layers]


def test_mean_pooling_ignores_padding(encoder2, vocab_file):
    model = build_classifier(HubEncoder(encoder2), 2, pooling="mean")
    pre = Preprocessor.from_vocab(vocab_file, seq_length=16)
    short = model(pre(tf.constant(["good fun"])), training=False)
    longer_pad = model(pre(tf.constant(["good fun"]), seq_length=24), training=False)
    np.testing.assert_allclose(short, longer_pad, atol=1e-6)
    cut = {k: v[:, :6] for k, v in pre(tf.constant(["good fun"])).items()}
    np.testing.assert_allclose(short, model(cut, training=False), atol=1e-5)


def test_report_includes_head(encoder2):
    model = build_classifier(HubEncoder(encoder2, trainable_layers="none", train_pooler=False), 2)
    rows = {g: (n, t) for g, n, t in model.report_rows()}
    assert rows["head"] == (32 * 2 + 2, True)
    assert not any(t for g, (_, t) in rows.items() if g != "head")
    assert "head" in model.trainable_report()


@pytest.mark.parametrize("kwargs, arg", [({"num_classes": 1}, "num_classes"),
                                         ({"pooling": "max"}, "pooling"),
                                         ({"dropout": 1.5}, "dropout"),
                                         ({"head_units": (0,)}, "head_units")])
def test_errors_bad_arguments(encoder2, kwargs, arg):
    kwargs = {"num_classes": 2, **kwargs}
    with pytest.raises(KbftError, match=f"Received: {arg}="):
        build_classifier(HubEncoder(encoder2), kwargs.pop("num_classes"), **kwargs)


@pytest.mark.parametrize("pooling, pooler_trains", [("pooled", True), ("cls", False),
                                                    ("mean", False)])
def test_the_pooler_trains_only_when_the_head_reads_it(encoder2, pooling, pooler_trains):
    encoder = HubEncoder(encoder2, trainable_layers=1)
    build_classifier(encoder, 2, pooling=pooling)
    assert ("pooler" in encoder.trainable_groups) is pooler_trains
    assert "layer_1" in encoder.trainable_groups and "layer_0" not in encoder.trainable_groups
    assert "embeddings" not in encoder.trainable_groups
