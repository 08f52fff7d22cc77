"""Honest validation: a split carved from training, a test set scored once, early stopping
that keeps the best epoch's weights, and refusals before anything is built."""

import time

import numpy as np
import pytest

import keras_bert_ft as kbft
from keras_bert_ft._keras import keras
from keras_bert_ft.data.examples import Examples
from keras_bert_ft.errors import KbftError
from keras_bert_ft.export.saved_model import load_export, predict_export
from keras_bert_ft.tasks import get_task
from keras_bert_ft.tasks.base import split_validation
from keras_bert_ft.tasks.qa import QAExample

from conftest import sentiment_rows


def flipped(rows):
    """The same sentences with the other label: the better the model learns the
    training data, the worse it does here (an 'overfitting' run by construction)."""
    other = {"pos": "neg", "neg": "pos"}
    return [dict(row, label=other[row["label"]]) for row in rows]


class WeightsPerEpoch(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.weights = []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append(self.model.get_weights())


def same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def early(encoder2, tmp_path_factory):
    train = sentiment_rows(48)
    seen = WeightsPerEpoch()
    out = tmp_path_factory.mktemp("early") / "run"
    result = kbft.fine_tune(train, flipped(train), test=sentiment_rows(16, seed=9),
                            encoder=encoder2, epochs=4, batch_size=8, learning_rate=3e-3,
                            seq_length=16, monitor="eval_loss", patience=1, warmup_ratio=0,
                            callbacks=[seen], output_dir=str(out), backup_steps=0, verbose=0)
    result.seen = seen
    result.paths = result.save(str(out))
    return result


def test_early_stopping_keeps_the_best_epoch_not_the_last(early):
    metrics, seen = early.metrics, early.seen
    losses = early.history["val_eval_loss"]
    best = int(np.argmin(losses)) + 1
    assert metrics["monitor"] == "eval_loss" and metrics["best_epoch"] == best
    assert metrics["stopped_early"] and metrics["epochs_trained"] == best + 1 < 4
    assert len(seen.weights) == metrics["epochs_trained"] == len(losses)
    final = early.model.get_weights()
    assert same(final, seen.weights[best - 1])
    assert not same(final, seen.weights[-1])
    # The metrics reported are the kept epoch's.
    assert metrics["eval_loss"] == pytest.approx(losses[best - 1], abs=1e-5)


def test_the_export_serves_the_best_epoch(early):
    texts = ["good fun", "awful boring", "great love hate"]
    exported = predict_export(load_export(early.paths["export"]), texts)["probabilities"]
    np.testing.assert_allclose(exported, early.predict(texts), atol=1e-5)


def test_test_set_is_scored_once_and_reported_apart(early):
    test = early.metrics["test"]
    assert test["eval_examples"] == 16 and 0.0 <= test["accuracy"] <= 1.0
    assert test["accuracy"] != early.metrics["accuracy"] or test["eval_loss"] != early.metrics["eval_loss"]


def test_monitor_without_patience_keeps_best_and_trains_every_epoch(encoder2):
    train = sentiment_rows(32)
    result = kbft.fine_tune(train, flipped(train), encoder=encoder2, epochs=2, batch_size=8,
                            learning_rate=3e-3, seq_length=16, monitor="accuracy", verbose=0)
    accuracies = result.history["val_accuracy"]
    assert len(accuracies) == 2 and result.metrics["epochs_trained"] == 2
    assert not result.metrics["stopped_early"]
    assert result.metrics["best_epoch"] == int(np.argmax(accuracies)) + 1
    assert result.metrics["accuracy"] == pytest.approx(max(accuracies), abs=1e-6)


def test_validation_split_is_stratified_seeded_and_disjoint():
    labels = np.array([0] * 40 + [1] * 10)
    data = Examples([f"text {i}" for i in range(50)], labels, ["a", "b"])
    task = get_task("classification")
    train, held = split_validation(task, data, 0.2, seed=3)
    assert len(held) == 10 and len(train) == 40
    assert sorted(np.bincount(held.labels).tolist()) == [2, 8]  # 20% of each label
    assert not set(train.texts) & set(held.texts)
    again = split_validation(task, data, 0.2, seed=3)[1]
    other = split_validation(task, data, 0.2, seed=4)[1]
    assert again.texts == held.texts and other.texts != held.texts


def test_validation_split_keeps_qa_articles_whole():
    examples = [QAExample(f"q{i}", f"context {i // 3}", ["x"], [0], str(i), f"title {i // 3}")
                for i in range(30)]
    train, held = split_validation(get_task("qa"), examples, 0.3, seed=0)
    assert len(held) == 9 and len(train) == 21
    assert not {e.title for e in train} & {e.title for e in held}


def test_validation_split_run_reports_its_size(encoder2):
    result = kbft.fine_tune(sentiment_rows(40), encoder=encoder2, validation_split=0.25,
                            epochs=1, batch_size=8, seq_length=16, verbose=0)
    assert result.metrics["validation_split_examples"] == 10
    assert result.metrics["eval_examples"] == 10 and result.metrics["train_examples"] == 30


@pytest.mark.parametrize("options, needles", [
    (dict(patience=2), ["patience", "validation"]),
    (dict(monitor="accuracy"), ["monitor", "validation"]),
    (dict(monitor="rouge2", validation_split=0.2), ["monitor", "accuracy, f1, mcc"]),
    (dict(validation_split=0.2, with_validation=True), ["validation_split", "0 when"]),
    (dict(validation_split=0.7), ["validation_split", "<= 0.5"]),
])
def test_refused_before_anything_is_built(encoder2, options, needles):
    options = dict(options)
    validation = sentiment_rows(8) if options.pop("with_validation", False) else None
    start = time.perf_counter()
    with pytest.raises(KbftError) as err:
        kbft.fine_tune(sentiment_rows(8), validation, encoder=encoder2, verbose=0, **options)
    assert time.perf_counter() - start < 3
    message = str(err.value)
    assert "\n" not in message and all(n in message for n in needles), message
