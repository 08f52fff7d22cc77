"""training_input: the repeated stream is exactly epoch-after-epoch make_dataset, it can
start at any step, and an epoch's batch count is right even with length buckets."""

import numpy as np
import pytest
import tensorflow as tf

import keras_bert_ft as kbft
from keras_bert_ft.train_input import epoch_batches, training_input

from conftest import sentiment_rows


def batch_key(batch):
    features, labels = batch
    return (features["input_word_ids"].numpy().tobytes(), labels.numpy().tobytes())


@pytest.mark.parametrize("padding, drop", [("bucketed", False), ("static", True)])
def test_stream_is_the_epochs_in_order_and_resumes_at_a_step(vocab_file, padding, drop):
    rows = sentiment_rows(37) + [{"sentence": "what a great great fun film " * 3, "label": "pos"}] * 9
    examples = kbft.load_examples(rows, text_column="sentence", label_column="label")
    pre = kbft.Preprocessor.from_vocab(vocab_file, seq_length=32)
    epoch = kbft.make_dataset(examples, pre, batch_size=8, shuffle=True, seed=5,
                              padding=padding, drop_remainder=drop)
    epochs = [[batch_key(b) for b in epoch] for _ in range(3)]  # a fresh fit's 3 epochs
    steps = epoch_batches(examples, pre, batch_size=8, padding=padding, drop_remainder=drop)
    assert all(len(e) == steps for e in epochs)
    # Static drops the last partial batch; buckets each end with their own partial batch.
    assert steps == 46 // 8 if drop else steps > -(-46 // 8)
    assert epochs[0] != epochs[1]  # reshuffled every epoch
    expected = [key for e in epochs for key in e]
    stream = training_input(examples, pre, tf.distribute.get_strategy(), batch_size=8, seed=5,
                            padding=padding, drop_remainder=drop)
    assert stream.steps_per_epoch == steps and not stream.per_worker
    assert [batch_key(b) for b in stream.data.take(len(expected))] == expected
    start = steps + 2  # a backup taken after epoch 1 and two more steps
    resumed = training_input(examples, pre, tf.distribute.get_strategy(), batch_size=8, seed=5,
                             padding=padding, drop_remainder=drop, start_step=start,
                             steps_per_epoch=steps)
    assert [batch_key(b) for b in resumed.data.take(len(expected) - start)] == expected[start:]


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
