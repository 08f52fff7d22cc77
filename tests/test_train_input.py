"""training_input: `fit` trains on exactly the batches it did on make_dataset itself, the
stream can start at any step, and an epoch's batch count is right with length buckets."""

import numpy as np
import pytest
import tensorflow as tf

import keras_bert_ft as kbft
from keras_bert_ft._keras import keras
from keras_bert_ft.data.examples import tokenize_examples
from keras_bert_ft.data.pipeline import epoch_batches, training_input

from conftest import sentiment_rows


class BatchProbe(keras.Model):
    """Trains nothing; reports a fingerprint of every batch `fit` feeds it."""

    def train_step(self, data):
        features, labels = data
        ids = tf.cast(features["input_word_ids"], tf.float64)
        weights = tf.cast(tf.reshape(tf.range(tf.size(ids)), tf.shape(ids)), tf.float64)
        key = tf.reduce_sum(ids * (weights + 1.0)) + tf.reduce_sum(tf.cast(labels, tf.float64))
        return {"key": key * 1000.0 + tf.cast(tf.shape(ids)[1], tf.float64)}


def fit_keys(data, epochs, steps_per_epoch=None):
    keys = []
    record = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: keys.append(float(logs["key"])))
    probe = BatchProbe()
    probe.compile()
    probe.fit(data, epochs=epochs, steps_per_epoch=steps_per_epoch, callbacks=[record], verbose=0)
    return keys


@pytest.mark.parametrize("padding, drop", [("bucketed", False), ("static", True)])
def test_stream_is_what_fit_trains_on_and_resumes_at_a_step(vocab_file, padding, drop):
    rows = sentiment_rows(37) + [{"sentence": "what a great great fun film " * 3, "label": "pos"}] * 9
    examples = kbft.load_examples(rows, text_column="sentence", label_column="label")
    pre = kbft.Preprocessor.from_vocab(vocab_file, seq_length=32)
    plain = kbft.make_dataset(examples, pre, batch_size=8, shuffle=True, seed=5,
                              padding=padding, drop_remainder=drop)
    expected = fit_keys(plain, epochs=3)  # what fit trains on, given the dataset itself
    features, labels = tokenize_examples(examples, pre), np.asarray(examples.labels)
    steps = epoch_batches(features, batch_size=8, padding=padding, drop_remainder=drop)
    # Static drops the last partial batch; buckets each end with their own partial batch.
    assert steps == 46 // 8 if drop else steps > -(-46 // 8)
    assert len(expected) == 3 * steps and expected[:steps] != expected[steps:2 * steps]
    stream = training_input(features, labels, tf.distribute.get_strategy(), batch_size=8, seed=5,
                            padding=padding, drop_remainder=drop, steps_per_epoch=steps)
    assert stream.steps_per_epoch == steps and not stream.per_worker
    assert fit_keys(stream.data, epochs=3, steps_per_epoch=steps) == expected
    start = steps + 2  # a backup taken after epoch 1 and two more steps
    resumed = training_input(features, labels, tf.distribute.get_strategy(), batch_size=8, seed=5,
                             padding=padding, drop_remainder=drop, start_step=start,
                             steps_per_epoch=steps)
    assert fit_keys(resumed.data, epochs=1, steps_per_epoch=len(expected) - start) == \
        expected[start:]


def test_worker_rows_rebuild_the_global_batch(vocab_file):
    """Two workers' `batch_rows` shares, side by side, are the one-machine global batch."""
    examples = kbft.load_examples(sentiment_rows(20), text_column="sentence",
                                  label_column="label")
    pre = kbft.Preprocessor.from_vocab(vocab_file, seq_length=16)
    common = dict(batch_size=8, shuffle=True, seed=1, padding="dynamic")
    whole = [b[1].numpy() for b in kbft.make_dataset(examples, pre, **common)]
    halves = [[b[1].numpy() for b in kbft.make_dataset(examples, pre, batch_rows=rows, **common)]
              for rows in (slice(0, 4), slice(4, 8))]
    assert [len(b) for b in whole] == [8, 8, 4]
    for i, batch in enumerate(whole):
        np.testing.assert_array_equal(np.concatenate([halves[0][i], halves[1][i]]), batch)
    assert len(halves[1][-1]) == 0  # the last partial batch leaves worker 2 an empty share
