"""Preprocessor: tokenise + pack single texts and pairs, in graph and tf.data; its errors."""

import numpy as np
import pytest
import tensorflow as tf

from keras_bert_ft.errors import KbftError
from keras_bert_ft.data.preprocessing import Preprocessor, check_seq_length, trim_to_longest

from conftest import VOCAB


def ids(*tokens):
    return [VOCAB.index(t) for t in tokens]


def test_single_texts(vocab_file):
    pre = Preprocessor.from_vocab(vocab_file, seq_length=8)
    out = pre(tf.constant(["The MOVIE was good!", ""]))
    assert set(out) == {"input_word_ids", "input_mask", "input_type_ids"}
    assert all(v.dtype == tf.int32 and v.shape == (2, 8) for v in out.values())
    assert out["input_word_ids"][0].numpy().tolist() == ids(
        "[CLS]", "the", "movie", "was", "good", "!", "[SEP]", "[PAD]")
    assert out["input_word_ids"][1].numpy().tolist()[:3] == ids("[CLS]", "[SEP]", "[PAD]")
    assert out["input_mask"].numpy().tolist() == [[1] * 7 + [0], [1, 1] + [0] * 6]
    assert not out["input_type_ids"].numpy().any()


def test_unknown_words_and_wordpieces(vocab_file):
    pre = Preprocessor.from_vocab(vocab_file, seq_length=8)
    out = pre(tf.constant(["films zebra"]))["input_word_ids"][0].numpy().tolist()
    assert out[:5] == ids("[CLS]", "film", "##s", "[UNK]", "[SEP]")


def test_pairs_truncate_round_robin(vocab_file):
    pre = Preprocessor.from_vocab(vocab_file, seq_length=9)
    out = pre(tf.constant(["the movie was very good"]), tf.constant(["it is bad"]))
    # 9 = [CLS] + [SEP] * 2 + 6 tokens: 3 from each segment.
    assert out["input_word_ids"][0].numpy().tolist() == ids(
        "[CLS]", "the", "movie", "was", "[SEP]", "it", "is", "bad", "[SEP]")
    assert out["input_type_ids"][0].numpy().tolist() == [0] * 5 + [1] * 4


def test_from_hub_matches_from_vocab(vocab_file, hub_preprocessor):
    a = Preprocessor.from_vocab(vocab_file, seq_length=12)
    b = Preprocessor.from_hub(hub_preprocessor, seq_length=12)
    texts, pairs = tf.constant(["The film, very fun.", "who?"]), tf.constant(["bad", "a b"])
    for left, right in ((a(texts), b(texts)), (a(texts, pairs), b(texts, pairs))):
        for key in left:
            np.testing.assert_array_equal(left[key], right[key])


def test_runs_inside_tf_data(vocab_file):
    pre = Preprocessor.from_vocab(vocab_file, seq_length=10)
    ds = tf.data.Dataset.from_tensor_slices((["good fun", "bad"], ["it is", "what"]))
    ds = ds.batch(2).map(lambda a, b: trim_to_longest(pre(a, b)))
    batch = next(iter(ds))
    assert batch["input_word_ids"].shape == (2, 8)  # 6 real tokens, rounded up to 8


def test_trim_to_longest_keeps_at_least_real_tokens():
    mask = tf.constant([[1] * 9 + [0] * 7, [1] * 3 + [0] * 13])
    out = trim_to_longest({"input_mask": mask, "input_word_ids": mask, "input_type_ids": mask})
    assert out["input_mask"].shape == (2, 16)
    out = trim_to_longest({"input_mask": mask[:, :10], "input_word_ids": mask[:, :10],
                           "input_type_ids": mask[:, :10]})
    assert out["input_mask"].shape == (2, 10)


@pytest.mark.parametrize("value", [0, 2, -5, "8", 2.5, True])
def test_errors_seq_length_too_small(vocab_file, value):
    with pytest.raises(KbftError, match=f"Received: seq_length={value!r}"):
        Preprocessor.from_vocab(vocab_file, seq_length=value)


def test_errors_seq_length_above_encoder_maximum():
    with pytest.raises(KbftError, match=r"<= 32.*Received: seq_length=64"):
        check_seq_length(64, maximum=32)


def test_errors_vocab_without_specials(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("[PAD]\n[UNK]\nthe\nmovie\n")
    with pytest.raises(KbftError, match=r"missing \[CLS\], \[SEP\].*Received: vocab_file="):
        Preprocessor.from_vocab(str(path))


def test_errors_vocab_missing(tmp_path):
    with pytest.raises(KbftError, match="Received: vocab_file="):
        Preprocessor.from_vocab(str(tmp_path / "none.txt"))


def test_errors_preprocessor_handle_missing(tmp_path):
    with pytest.raises(KbftError, match="Received: encoder="):
        Preprocessor.from_hub(str(tmp_path / "nothing"))


def test_fast_tokenizer_models_are_cached_and_checked(vocab_file, tmp_path, monkeypatch):
    """The compiled WordPiece and normaliser models are written to the cache folder once
    and read back by the next preprocessor of the same vocab and casing (the same ids);
    a changed cache file fails its digest and is compiled again; another casing is
    another entry."""
    import os
    import tensorflow_text as text
    monkeypatch.setenv("KBFT_CACHE_DIR", str(tmp_path))
    texts = tf.constant(["The MOVIE was good!", "films zebra, Déjà vu"])
    first = Preprocessor.from_vocab(vocab_file, seq_length=12)(texts)["input_word_ids"]
    [entry] = os.listdir(tmp_path / "tokenizers")
    folder = tmp_path / "tokenizers" / entry
    assert sorted(os.listdir(folder)) == ["index.json", "normalizer.bin", "wordpiece.bin"]
    built = []
    original = text.FastWordpieceTokenizer.__init__

    def counting(self, vocab=None, *args, **kwargs):
        built.append(vocab is not None)
        return original(self, vocab, *args, **kwargs)

    monkeypatch.setattr(text.FastWordpieceTokenizer, "__init__", counting)
    again = Preprocessor.from_vocab(vocab_file, seq_length=12)(texts)["input_word_ids"]
    assert built == [False]  # read from the cache, not compiled
    assert again.numpy().tolist() == first.numpy().tolist()
    (folder / "wordpiece.bin").write_bytes(b"not a model")
    redone = Preprocessor.from_vocab(vocab_file, seq_length=12)(texts)["input_word_ids"]
    assert built == [False, True]  # compiled again, and the cache rewritten
    assert redone.numpy().tolist() == first.numpy().tolist()
    Preprocessor.from_vocab(vocab_file, lower_case=False, seq_length=12)
    assert len(os.listdir(tmp_path / "tokenizers")) == 2
