"""class_weight: the per-label weights `describe` resolves, the weighted loss against a
numpy reference (alone, and compiled in a model under MirroredStrategy), refusals."""

import numpy as np
import pytest
import tensorflow as tf

import keras_bert_ft as kbft
from keras_bert_ft import cli
from keras_bert_ft._keras import keras
from keras_bert_ft.config import make_config
from keras_bert_ft.data.examples import Examples
from keras_bert_ft.errors import KbftError
from keras_bert_ft.tasks import get_task
from keras_bert_ft.tasks.sentence import WeightedSparseCrossentropy, resolve_class_weights

from conftest import sentiment_rows, write_tsv


def toy(labels, names=("neg", "pos")):
    return Examples([f"text {i}" for i in range(len(labels))], np.asarray(labels, np.int32),
                    list(names))


def numpy_weighted_ce(labels, logits, weights):
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    ce = -log_p[np.arange(len(labels)), labels]
    return float(np.sum(ce * np.asarray(weights)[labels]) / len(labels))


def imbalanced_rows(n_neg, n_pos, seed=0):
    rows = sentiment_rows(2 * max(n_neg, n_pos), seed)
    return ([r for r in rows if r["label"] == "neg"][:n_neg]
            + [r for r in rows if r["label"] == "pos"][:n_pos])


def test_balanced_weights_on_a_1_to_3_set():
    # 2 neg, 6 pos: n / (k * count) = 8 / (2 * 2) and 8 / (2 * 6)
    train = toy([0, 1, 1, 0, 1, 1, 1, 1])
    info = get_task("classification").describe(train, make_config(class_weight="balanced"))
    assert info["class_weights"] == pytest.approx([2.0, 2 / 3])
    counts = np.bincount(train.labels)
    # Balanced: every class carries the same total weight, and the mean weight is 1.
    assert counts * np.asarray(info["class_weights"]) == pytest.approx([4.0, 4.0])
    assert np.mean(np.asarray(info["class_weights"])[train.labels]) == pytest.approx(1.0)


def test_balanced_with_three_classes_matches_the_rule():
    labels = [0] * 5 + [1] * 3 + [2] * 2
    weights = resolve_class_weights("balanced", labels, ["a", "b", "c"])
    assert weights == pytest.approx([10 / (3 * 5), 10 / (3 * 3), 10 / (3 * 2)])


def test_mapping_weights_and_unmentioned_names_weigh_one():
    info = get_task("classification").describe(toy([0, 1, 1, 1]),
                                               make_config(class_weight={"pos": 5}))
    assert info["class_weights"] == [1.0, 5.0]


def test_no_class_weight_leaves_info_and_loss_as_before():
    task = get_task("classification")
    info = task.describe(toy([0, 1, 1, 1]), make_config())
    assert "class_weights" not in info
    assert isinstance(task.loss(info), keras.losses.SparseCategoricalCrossentropy)
    assert isinstance(task.loss(dict(info, class_weights=[1.0, 2.0])),
                      WeightedSparseCrossentropy)


def test_unknown_label_name_is_refused_in_one_line():
    with pytest.raises(KbftError) as err:
        get_task("classification").describe(toy([0, 1, 1, 1]),
                                            make_config(class_weight={"pos": 5, "posi": 2}))
    message = str(err.value)
    assert "\n" not in message and err.value.argument == "class_weight"
    assert message.startswith("class_weight must be keyed by label names of the training "
                              "data (neg, pos); 'posi' is not one")
    assert "Received: class_weight={'pos': 5, 'posi': 2}" in message


def test_all_zero_weights_are_refused():
    with pytest.raises(KbftError, match=r"at least one weight > 0"):
        resolve_class_weights({"neg": 0, "pos": 0}, [0, 1], ["neg", "pos"])


def test_cli_names_the_flag_before_building_a_model(tmp_path, capsys):
    train = write_tsv(tmp_path / "train.tsv", sentiment_rows(8), ["sentence", "label"])
    code = cli.main(["train", "--encoder", str(tmp_path / "no-encoder-needed"),
                     "--train", train, "--class-weight", "pos=2,nope=3",
                     "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: --class-weight must be keyed by label names of the "
                             "training data (neg, pos); 'nope' is not one")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("dtype", [tf.float32, tf.float16])
def test_weighted_loss_equals_numpy_reference(dtype):
    rng = np.random.RandomState(0)
    labels = rng.randint(0, 3, size=10)
    logits = rng.randn(10, 3).astype(np.float32)
    weights = [0.5, 2.0, 3.0]
    loss = WeightedSparseCrossentropy(weights)
    value = float(loss(tf.constant(labels[:, None]), tf.constant(logits, dtype)))
    tolerance = 1e-5 if dtype == tf.float32 else 2e-3
    assert value == pytest.approx(numpy_weighted_ce(labels, logits, weights), rel=tolerance)
    # Keras' own class_weight rule: sample weights, summed, over the batch size.
    keras_value = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(
        labels, logits, sample_weight=np.asarray(weights)[labels])
    assert value == pytest.approx(float(keras_value), rel=tolerance)
    # Weights of 1 are the plain loss.
    plain = WeightedSparseCrossentropy([1.0, 1.0, 1.0])(labels, logits)
    assert float(plain) == pytest.approx(float(
        keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, logits)), rel=1e-6)
    restored = WeightedSparseCrossentropy.from_config(loss.get_config())
    assert restored.class_weights == weights


def test_mirrored_model_reduces_over_the_global_batch():
    """Compiled in a model over 2 replicas, the loss is the numpy reference: each
    replica's weighted sum is divided by the global batch, as Keras does."""
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    rng = np.random.RandomState(1)
    x = rng.randn(16, 4).astype(np.float32)
    labels = np.asarray([0] * 12 + [1] * 4)
    weights = resolve_class_weights("balanced", labels, ["neg", "pos"])
    with strategy.scope():
        inputs = keras.Input((4,))
        model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
        model.compile(loss=WeightedSparseCrossentropy(weights))
    logits = model.predict(x, verbose=0)
    reference = numpy_weighted_ce(labels, logits, weights)
    assert model.evaluate(x, labels, batch_size=8, verbose=0) == pytest.approx(reference,
                                                                               rel=1e-5)


def test_fine_tune_trains_with_the_weighted_loss(encoder2, vocab_file):
    train = imbalanced_rows(12, 4)
    result = kbft.fine_tune(train, sentiment_rows(8, seed=3), encoder=encoder2,
                            preprocessor=vocab_file, epochs=1, batch_size=8, seq_length=16,
                            class_weight="balanced", error_examples=3, verbose=0)
    assert result.info["class_weights"] == pytest.approx([16 / 24, 16 / 8])
    assert isinstance(result.model.loss, WeightedSparseCrossentropy)
    task = get_task("classification")
    data = task.read(train, result.config, result.info)
    features = task.featurize(data, result.preprocessor, result.config, result.info)
    logits = result.model(features.features, training=False).numpy()
    reference = numpy_weighted_ce(features.labels, logits, result.info["class_weights"])
    evaluated = result.model.evaluate(features.features, features.labels, batch_size=8,
                                      verbose=0)
    assert evaluated[0] == pytest.approx(reference, rel=1e-4)
    # The runner keeps the error analysis of the validation data (plain -log p(true)).
    assert len(result.errors) == 3 and result.errors[0]["loss"] >= result.errors[-1]["loss"]
    # eval_loss in the metrics stays the plain (unweighted) cross-entropy.
    val = task.read(sentiment_rows(8, seed=3), result.config, result.info)
    probabilities = result.predict(val.texts)
    plain = -np.log(probabilities[np.arange(len(val)), val.labels]).mean()
    assert result.metrics["eval_loss"] == pytest.approx(plain, rel=1e-5)
