"""fine_tune (the Python entry point) and export_saved_model: callbacks, metrics, atomicity."""

import os

import numpy as np
import pytest
import tensorflow as tf

import keras_bert_ft as kbft
from keras_bert_ft.export import saved_model as export_lib
from keras_bert_ft._keras import keras
from keras_bert_ft.errors import KbftError

from conftest import sentiment_rows


class CountBatches(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.batches = 0

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1


@pytest.fixture(scope="module")
def result(encoder2):
    counter = CountBatches()
    res = kbft.fine_tune(sentiment_rows(40), sentiment_rows(12, seed=5), encoder=encoder2,
                         epochs=2, batch_size=8, learning_rate=1e-3, seq_length=16,
                         trainable_layers=1, callbacks=[counter], verbose=0)
    res.counter = counter
    return res


def test_user_callbacks_and_metrics(result):
    assert result.counter.batches == 2 * 5
    assert {"accuracy", "f1", "mcc", "eval_loss", "train_examples_per_second"} <= set(result.metrics)
    assert result.label_names == ["neg", "pos"] and not result.pair
    assert len(result.history["loss"]) == 2


def test_train_step_is_traced_once(result):
    """The optimizer's slots exist before the step is traced: a step that created them
    would be traced twice before its first run (seconds of every run's start)."""
    assert result.model.train_function.experimental_get_tracing_count() == 1


def test_default_preprocessor_comes_from_encoder_vocab(result):
    assert result.preprocessor.source.endswith("vocab.txt")
    assert result.preprocessor.lower_case is True


def test_export_carries_labels_and_matches(result, tmp_path):
    path = result.export(str(tmp_path / "export"))
    meta = export_lib.read_metadata(path)
    assert meta["label_names"] == ["neg", "pos"] and meta["pair"] is False
    loaded = export_lib.load_export(path)
    texts = ["the movie was great", "awful boring plot"]
    out = export_lib.predict_export(loaded, texts)
    np.testing.assert_allclose(out["probabilities"], result.predict(texts), atol=1e-5)
    names = [result.label_names[i] for i in result.predict(texts).argmax(-1)]
    assert [x.decode() for x in out["label"]] == names


def test_export_is_atomic_when_writing_fails(result, tmp_path, monkeypatch):
    path = str(tmp_path / "export")
    result.export(path)
    before = sorted(os.listdir(path))

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tf.saved_model, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        result.export(path)
    assert sorted(os.listdir(path)) == before
    assert [p for p in os.listdir(tmp_path) if p != "export"] == []
    export_lib.load_export(path)  # the old export still loads


def test_errors_one_class_and_bad_config(encoder2):
    with pytest.raises(KbftError, match="at least two different labels"):
        kbft.fine_tune({"sentence": ["a", "b"], "label": [1, 1]}, encoder=encoder2, verbose=0)
    with pytest.raises(KbftError, match="Received: epochs=0"):
        kbft.fine_tune(sentiment_rows(4), encoder=encoder2, epochs=0)


def test_public_api_names_import():
    for name in kbft.__all__:
        assert getattr(kbft, name) is not None, name


def test_throughput_counts_real_examples_not_padded_batches():
    from keras_bert_ft.training.runner import ThroughputCallback
    timer = ThroughputCallback(batch_size=32, examples_per_epoch=100)
    timer.on_epoch_begin(0)
    for step in range(6):  # 100 examples in length buckets: 6 batches, some partial
        timer.on_train_batch_end(step)
    timer.on_epoch_end(0)
    assert timer.batches == 5  # the first (tracing) batch is not timed
    assert timer.examples == 100 - 32
    assert timer.examples_per_second > 0


def test_throughput_with_steps_per_execution_counts_steps_not_callbacks():
    from keras_bert_ft.training.runner import ThroughputCallback
    timer = ThroughputCallback(batch_size=8, examples_per_epoch=1000)
    timer.on_epoch_begin(0)
    for last_step in (3, 7, 11):  # steps_per_execution=4: Keras reports each last step
        timer.on_train_batch_end(last_step)
    timer.on_epoch_end(0)
    assert timer.batches == 8 and timer.examples == 64


def test_auto_padding_is_static_on_tpu_and_bucketed_elsewhere():
    from unittest import mock
    from keras_bert_ft.training.runner import resolve_padding
    tpu = mock.MagicMock(spec=tf.distribute.TPUStrategy)
    assert resolve_padding("auto", tpu) == "static"
    assert resolve_padding("auto", tf.distribute.get_strategy()) == "bucketed"
    assert resolve_padding("dynamic", tpu) == "dynamic"
    with pytest.raises(KbftError, match="Received: padding='ragged'"):
        kbft.FineTuneConfig(padding="ragged").validate()


def test_speed_options_xla_steps_per_execution_and_mixed_bfloat16(encoder2):
    res = kbft.fine_tune(sentiment_rows(32), sentiment_rows(8, seed=5), encoder=encoder2,
                         epochs=1, batch_size=8, learning_rate=1e-3, seq_length=16,
                         padding="static", jit_compile=True, steps_per_execution=2,
                         mixed_precision="mixed_bfloat16", verbose=0)
    assert keras.mixed_precision.global_policy().name == "float32"  # restored after build
    dense = res.model.get_layer("logits")
    assert dense.compute_dtype == "float32"
    assert res.model.get_layer("head_dropout").dtype_policy.name == "mixed_bfloat16"
    assert res.predict(["great fun"]).dtype == np.float32
    assert res.metrics["train_examples_per_second"] > 0


def test_errors_bad_precision_and_steps_per_execution(encoder2):
    with pytest.raises(KbftError, match="Received: mixed_precision='float16'"):
        kbft.fine_tune(sentiment_rows(8), encoder=encoder2, mixed_precision="float16")
    with pytest.raises(KbftError, match="Received: steps_per_execution=0"):
        kbft.fine_tune(sentiment_rows(8), encoder=encoder2, steps_per_execution=0)
