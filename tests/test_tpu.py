"""TPU paths with the cluster resolver faked: the strategy chosen, fixed shapes and int32
batches per replica, the gs:// / local-path rules, the precision policy and the defaults."""

import os
import types
from unittest import mock

import numpy as np
import pytest
import tensorflow as tf

import keras_bert_ft as kbft
from keras_bert_ft.training import strategy as strategy_lib
from keras_bert_ft.training import tpu
from keras_bert_ft._keras import keras
from keras_bert_ft.errors import KbftError
from keras_bert_ft.encoders.native import make_encoder
from keras_bert_ft.data.examples import tokenize_examples
from keras_bert_ft.data.pipeline import training_input
from keras_bert_ft.training.build import precision_policy

from conftest import sentiment_rows


class FakeTPUStrategy(tf.distribute.TPUStrategy):
    """Passes `isinstance(..., TPUStrategy)`; builds each pipeline as a TPU host would."""

    def __init__(self, resolver, replicas=8, hosts=1):  # no super(): there is no TPU
        self._resolver, self._replicas, self._hosts = resolver, replicas, hosts
        self.pipelines = []

    num_replicas_in_sync = property(lambda self: self._replicas)
    cluster_resolver = property(lambda self: self._resolver)
    extended = property(lambda self: types.SimpleNamespace(should_checkpoint=True))

    def distribute_datasets_from_function(self, dataset_fn, options=None):
        self.pipelines = [dataset_fn(tf.distribute.InputContext(self._hosts, host, self._replicas))
                          for host in range(self._hosts)]
        return self.pipelines[0]


def fake_resolver(master="grpc://10.0.0.2:8470"):
    resolver = mock.MagicMock()
    resolver.master.return_value = master
    return resolver


@pytest.fixture
def fake_tpu_system(monkeypatch):
    """TPUClusterResolver finds a TPU; connecting and initialising do nothing."""
    resolver = fake_resolver()
    resolver_cls = mock.MagicMock(return_value=resolver)
    monkeypatch.setattr(tf.distribute.cluster_resolver, "TPUClusterResolver", resolver_cls)
    connect, init = mock.MagicMock(), mock.MagicMock()
    monkeypatch.setattr(tf.config, "experimental_connect_to_cluster", connect)
    monkeypatch.setattr(tf.tpu.experimental, "initialize_tpu_system", init)
    monkeypatch.setattr(tf.distribute, "TPUStrategy", FakeTPUStrategy)
    return types.SimpleNamespace(resolver=resolver, resolver_cls=resolver_cls, connect=connect,
                                 init=init)


@pytest.mark.parametrize("kind, address", [("tpu", "my-tpu"), ("tpu", "grpc://10.0.0.2:8470"),
                                           ("auto", "local")])
def test_get_strategy_picks_the_tpu_at_an_address(fake_tpu_system, kind, address):
    strategy = kbft.get_strategy(kind, tpu_address=address)
    assert isinstance(strategy, FakeTPUStrategy) and strategy.cluster_resolver is fake_tpu_system.resolver
    fake_tpu_system.resolver_cls.assert_called_once_with(tpu=address)
    fake_tpu_system.connect.assert_called_once_with(fake_tpu_system.resolver)
    fake_tpu_system.init.assert_called_once_with(fake_tpu_system.resolver)


def test_unnamed_tpu_falls_back_to_the_vms_own(monkeypatch):
    """Colab / $TPU_NAME first; on a TPU VM with neither, the attached ("local") TPU."""
    def resolver_cls(tpu):
        if tpu != "local":
            raise ValueError("Please provide a TPU Name to connect to.")
        return fake_resolver("")

    monkeypatch.setattr(tf.distribute.cluster_resolver, "TPUClusterResolver", resolver_cls)
    monkeypatch.setattr(strategy_lib, "_tpu_attached", lambda: True)
    assert strategy_lib.find_tpu("", required=True).master() == ""
    monkeypatch.setattr(strategy_lib, "_tpu_attached", lambda: False)
    with pytest.raises(KbftError, match="no TPU found: Please provide a TPU Name"):
        strategy_lib.find_tpu("", required=True)


def test_tpu_defaults_static_bfloat16_steps_per_execution():
    strategy = FakeTPUStrategy(fake_resolver(""))
    config = tpu.resolve_hardware_settings(kbft.FineTuneConfig(batch_size=64), strategy)
    assert (config.padding, config.mixed_precision, config.steps_per_execution) == \
        ("static", "mixed_bfloat16", tpu.TPU_STEPS_PER_EXECUTION)
    cpu = tpu.resolve_hardware_settings(kbft.FineTuneConfig(), tf.distribute.get_strategy())
    assert (cpu.padding, cpu.mixed_precision, cpu.steps_per_execution) == ("auto", "float32", 1)
    mine = tpu.resolve_hardware_settings(
        kbft.FineTuneConfig(batch_size=64, mixed_precision="float32", steps_per_execution=4),
        strategy)
    assert (mine.mixed_precision, mine.steps_per_execution) == ("float32", 4)


@pytest.mark.parametrize("overrides, message", [
    ({"padding": "bucketed"}, "padding must be 'static' or 'auto' on a TPU.*Received: padding='bucketed'"),
    ({"batch_size": 60}, "multiple of the 8 TPU cores.*Received: batch_size=60"),
    ({"mixed_precision": "mixed_float16"}, "float32 or mixed_bfloat16 on a TPU"),
    ({"output_dir": "/content/run"}, r"gs:// path on a TPU reached over the network.*'\[local\]'"),
])
def test_errors_what_a_tpu_cannot_run(overrides, message):
    strategy = FakeTPUStrategy(fake_resolver("grpc://10.0.0.2:8470"))
    config = kbft.FineTuneConfig(**{"batch_size": 64, **overrides})
    with pytest.raises(KbftError, match=message):
        tpu.resolve_hardware_settings(config, strategy)


def test_local_output_dir_is_fine_on_a_tpu_vm():
    strategy = FakeTPUStrategy(fake_resolver(""))  # attached TPU: master() is empty
    config = kbft.FineTuneConfig(batch_size=64, output_dir="/tmp/run")
    assert tpu.resolve_hardware_settings(config, strategy).output_dir == "/tmp/run"
    gs = kbft.FineTuneConfig(batch_size=64, output_dir="gs://bucket/run")
    assert tpu.resolve_hardware_settings(gs, FakeTPUStrategy(fake_resolver())).output_dir


def test_encoder_handles_readable_on_a_tpu(encoder2, monkeypatch):
    strategy = FakeTPUStrategy(fake_resolver())
    local = tpu.encoder_load_kwargs(encoder2, strategy)
    assert local["load_options"].experimental_io_device == "/job:localhost"
    assert tpu.encoder_load_kwargs("gs://bucket/bert_encoder", strategy) == {}
    assert tpu.encoder_load_kwargs(encoder2, tf.distribute.get_strategy()) == {}
    monkeypatch.delenv("TFHUB_MODEL_LOAD_FORMAT", raising=False)
    hub_url = "https://tfhub.dev/tensorflow/bert_en_uncased_L-12_H-768_A-12/4"
    assert "load_options" in tpu.encoder_load_kwargs(hub_url, strategy)
    assert os.environ["TFHUB_MODEL_LOAD_FORMAT"] == "UNCOMPRESSED"
    # The options reach both encoder paths: they load through this host's job.
    assert make_encoder(encoder2, "hub", **local).num_layers == 2
    assert make_encoder(encoder2, "native", **local).num_layers == 2


def test_tpu_batches_are_static_int32_per_replica(vocab_file):
    examples = kbft.examples_from_lists(*zip(*[(r["sentence"], r["label"]) for r in sentiment_rows(40)]))
    pre = kbft.Preprocessor.from_vocab(vocab_file, seq_length=16)
    strategy = FakeTPUStrategy(fake_resolver(), replicas=8, hosts=2)
    train = training_input(tokenize_examples(examples, pre), np.asarray(examples.labels), strategy, batch_size=16, seed=3, padding="static",
                           drop_remainder=True)
    assert train.per_worker and train.steps_per_epoch == 40 // 16
    for pipeline in strategy.pipelines:
        features, labels = pipeline.element_spec
        assert labels.shape.as_list() == [2] and labels.dtype == tf.int32
        for spec in features.values():
            assert spec.shape.as_list() == [2, 16] and spec.dtype == tf.int32
    # Host 1 feeds replicas 4..7: rows 8..15 of each global batch, 2 rows per replica.
    global_batches = kbft.make_dataset(examples, pre, batch_size=16, shuffle=True, seed=3,
                                       padding="static", drop_remainder=True)
    iter(global_batches)  # the iterator fit opens and never reads (see train_input.py)
    first_global = next(iter(global_batches))
    host1 = [b for b in strategy.pipelines[1].take(4)]
    got = np.concatenate([f["input_word_ids"].numpy() for f, _ in host1])
    np.testing.assert_array_equal(got, first_global[0]["input_word_ids"].numpy()[8:16])
    np.testing.assert_array_equal(np.concatenate([lab.numpy() for _, lab in host1]),
                                  first_global[1].numpy()[8:16])


def test_errors_tpu_batches_must_be_static_ids(vocab_file):
    examples = kbft.examples_from_lists(["a good film", "a bad film"] * 8, [1, 0] * 8)
    pre = kbft.Preprocessor.from_vocab(vocab_file, seq_length=16)
    with pytest.raises(KbftError, match="a TPU needs fixed shapes.*padding='static'"):
        training_input(tokenize_examples(examples, pre), np.asarray(examples.labels), FakeTPUStrategy(fake_resolver()), batch_size=16, seed=0,
                       padding="dynamic", drop_remainder=True)
    with pytest.raises(KbftError, match="Received: drop_remainder=False"):
        training_input(tokenize_examples(examples, pre), np.asarray(examples.labels), FakeTPUStrategy(fake_resolver()), batch_size=16, seed=0,
                       padding="static", drop_remainder=False)
    fix = tpu.static_int32_batch(2, 4)
    ids = tf.data.Dataset.from_tensors(({"input_word_ids": tf.ones([2, 4], tf.int64)},
                                        tf.zeros([2], tf.int64))).map(fix)
    assert ids.element_spec[0]["input_word_ids"].dtype == tf.int32
    assert ids.element_spec[1].dtype == tf.int32
    floats = tf.data.Dataset.from_tensors({"input_word_ids": tf.ones([2, 4], tf.float32)})
    with pytest.raises(KbftError, match="integer token ids.*tokenise in tf.data on the host"):
        floats.map(fix)


def test_host_tokenisation_rule(encoder2):
    strings = keras.Input(shape=(), dtype=tf.string, name="text")
    model = keras.Model(strings, keras.layers.Lambda(lambda s: tf.strings.length(s))(strings))
    with pytest.raises(KbftError, match="tensorflow-text ops have no TPU kernels"):
        tpu.check_host_tokenisation(model)
    tpu.check_host_tokenisation(kbft.build_classifier(encoder2, 2))  # int32 ids: fine


def test_mixed_bfloat16_on_a_tpu_reaches_the_encoder_and_logits_stay_float32(encoder2):
    """The TPU default policy, applied as fine_tune applies it (native encoder path)."""
    config = tpu.resolve_hardware_settings(kbft.FineTuneConfig(batch_size=64, encoder=encoder2),
                                           FakeTPUStrategy(fake_resolver("")))
    with precision_policy(config.mixed_precision):
        model = kbft.build_classifier(make_encoder(encoder2), 2, head_units=(8,))
    assert keras.mixed_precision.global_policy().name == "float32"  # restored
    assert model.get_layer("head_dense_0").compute_dtype == "bfloat16"
    assert model.get_layer("encoder").compute_dtype == "bfloat16"
    assert model.get_layer("logits").compute_dtype == "float32"
    features = {"input_word_ids": tf.constant([[2, 5, 3, 0]]),
                "input_mask": tf.constant([[1, 1, 1, 0]]), "input_type_ids": tf.zeros([1, 4], tf.int32)}
    assert model(features).dtype == tf.float32
