"""get_strategy: picks by hardware, never refuses CPU, names a bad kind."""

import pytest
import tensorflow as tf

from keras_bert_ft.errors import KbftError
from keras_bert_ft.training.strategy import get_strategy


def test_auto_on_cpu_is_default_strategy(caplog):
    caplog.set_level("INFO", logger="keras_bert_ft")
    strategy = get_strategy("auto")
    assert strategy.num_replicas_in_sync == 1
    assert not isinstance(strategy, (tf.distribute.MirroredStrategy, tf.distribute.TPUStrategy))
    assert "CPU" in caplog.text


def test_cpu_always_works():
    assert get_strategy("cpu").num_replicas_in_sync == 1


def test_mirrored_over_logical_cpus():
    strategy = get_strategy("mirrored")
    assert isinstance(strategy, tf.distribute.MirroredStrategy)


@pytest.mark.parametrize("kind", ["gpu", "tpu"])
def test_errors_missing_hardware(kind):
    with pytest.raises(KbftError, match=f"Received: strategy='{kind}'"):
        get_strategy(kind)


def test_errors_bad_kind():
    with pytest.raises(KbftError, match=r"one of auto, tpu, gpu, mirrored, cpu.*Received: strategy='tpuu'"):
        get_strategy("tpuu")


def test_tpu_address_needs_a_tpu_strategy():
    from keras_bert_ft.config import make_config
    with pytest.raises(KbftError, match="Received: tpu_address='local'"):
        make_config(strategy="cpu", tpu_address="local")
