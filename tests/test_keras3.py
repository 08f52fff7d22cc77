"""Keras 3 next door: its callbacks, metrics, layers, optimizers and losses are refused in
one line that names the argument and the tf_keras class to use instead."""

import subprocess
import sys

import pytest

from keras_bert_ft._keras import check_tf_keras, is_other_keras, keras as tf_keras
from keras_bert_ft.errors import KbftError
from keras_bert_ft.tasks import models


@pytest.fixture(scope="module")
def keras3():
    keras = pytest.importorskip("keras", reason="needs the `keras` package (Keras 3)")
    if not keras.__version__.startswith("3"):
        pytest.skip(f"needs Keras 3; `keras` here is {keras.__version__}")
    return keras


def refusal(obj, name, kind):
    with pytest.raises(KbftError) as caught:
        check_tf_keras(obj, name, kind)
    message = str(caught.value)
    assert caught.value.argument == name
    assert "\n" not in message and f"Received: {name}=" in message
    return message


@pytest.mark.parametrize("kind, name, make, public", [
    ("callback", "callbacks[0]", lambda k: k.callbacks.EarlyStopping(), "callbacks.EarlyStopping"),
    ("metric", "metrics[1]", lambda k: k.metrics.AUC(), "metrics.AUC"),
    ("layer", "layer", lambda k: k.layers.Dense(3), "layers.Dense"),
    ("optimizer", "optimizer", lambda k: k.optimizers.Adam(), "optimizers.Adam"),
    ("loss", "loss", lambda k: k.losses.MeanSquaredError(), "losses.MeanSquaredError"),
    ("loss", "loss", lambda k: k.losses.mean_squared_error, "losses.mean_squared_error"),
])
def test_keras3_objects_are_refused_in_one_line(keras3, kind, name, make, public):
    message = refusal(make(keras3), name, kind)
    assert message.startswith(f"{name} is a Keras 3 {kind} (keras.{public}); keras_bert_ft "
                              f"runs on tf_keras (Keras 2): use tf_keras.{public} (")
    assert "from keras_bert_ft._keras import keras" in message


def test_a_subclass_of_a_keras3_base_is_refused_by_its_own_name(keras3):
    class Logger(keras3.callbacks.Callback):
        pass

    message = refusal(Logger(), "callbacks[2]", "callback")
    assert f"({__name__}.Logger)" in message
    assert "use a subclass of tf_keras.callbacks.Callback" in message


@pytest.mark.parametrize("kind, obj", [
    ("callback", tf_keras.callbacks.EarlyStopping()), ("metric", tf_keras.metrics.AUC()),
    ("layer", tf_keras.layers.Dense(3)), ("optimizer", tf_keras.optimizers.Adam()),
    ("loss", tf_keras.losses.MeanSquaredError()), ("loss", tf_keras.losses.mean_squared_error),
    ("metric", "accuracy"), ("loss", None)])
def test_tf_keras_objects_and_non_keras_values_pass(keras3, kind, obj):
    assert not is_other_keras(obj)
    check_tf_keras(obj, "x", kind)  # no error


@pytest.mark.parametrize("build", [
    lambda enc: models.build_classifier(enc, 2),
    lambda enc: models.build_multilabel_classifier(enc, 3),
    lambda enc: models.build_regressor(enc),
    lambda enc: models.build_task_model("classification", enc, 2)])
def test_builders_refuse_a_keras3_layer_as_encoder_before_building(keras3, monkeypatch, build):
    def no_building(*args, **kwargs):
        raise AssertionError("built something before refusing the encoder")

    monkeypatch.setattr(models, "HubEncoder", no_building)
    monkeypatch.setattr(models, "encoder_inputs", no_building)
    with pytest.raises(KbftError) as caught:
        build(keras3.layers.Dense(3))
    message = str(caught.value)
    assert caught.value.argument == "encoder" and "\n" not in message
    assert message.startswith("encoder is a Keras 3 layer (keras.layers.Dense); ")
    assert "use a handle (preset name, URL, local folder or gs:// path), a HubEncoder" in message


@pytest.mark.parametrize("encoder", [tf_keras.layers.Dense(3), 7])
def test_builders_refuse_what_is_not_an_encoder(monkeypatch, encoder):
    monkeypatch.setattr(models, "encoder_inputs", None)  # nothing may be built
    with pytest.raises(KbftError, match=r"^encoder must be a handle \(preset name, URL, local "
                                        r"folder or gs:// path\), a HubEncoder or a "
                                        r"NativeEncoder \(make_encoder\)\. Received: encoder="):
        models.build_classifier(encoder, 2)


def test_the_toolkit_never_imports_keras3():
    code = ("import sys, keras_bert_ft._keras, keras_bert_ft.tasks.models; "
            "print('keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip().splitlines()[-1] == "False"


@pytest.mark.parametrize("argument, name, make", [
    ("callbacks", "callbacks[0]", lambda k: [k.callbacks.EarlyStopping()]),
    ("metrics", "metrics[0]", lambda k: [k.metrics.AUC()]),
    ("optimizer", "optimizer", lambda k: k.optimizers.Adam())])
def test_fine_tune_refuses_keras3_objects_before_reading_anything(keras3, tmp_path, argument,
                                                                   name, make):
    import keras_bert_ft as kbft
    missing = str(tmp_path / "absent.tsv")  # refused before the data is read
    with pytest.raises(KbftError) as caught:
        kbft.fine_tune(missing, encoder=str(tmp_path / "absent-encoder"), verbose=0,
                       **{argument: make(keras3)})
    assert caught.value.argument == name and "\n" not in str(caught.value)
    assert str(caught.value).startswith(f"{name} is a Keras 3 ")
