"""Tagging pieces: first-piece positions and labels, truncation, raw-string words, CoNLL reader."""

import pytest
import tensorflow as tf

from keras_bert_ft.errors import KbftError
from keras_bert_ft.data.preprocessing import Preprocessor
from keras_bert_ft.tasks import base, tagging

from conftest import VOCAB


@pytest.fixture(scope="module")
def pre(vocab_file):
    return Preprocessor.from_vocab(vocab_file, seq_length=8)


def test_labels_go_on_each_words_first_piece(pre):
    # "movies" -> movie ##s and "UNKNOWN!" -> [UNK] ! : two pieces each.
    words = tagging.TaggedSentences([["the", "movies", "UNKNOWN!", "good"]],
                                    [["O", "B-X", "B-Y", "I-Y"]])
    index = {"O": 0, "B-X": 1, "B-Y": 2, "I-Y": 3}
    features, labels = tagging.featurize(pre, words, index, seq_length=8)
    ids = features["input_word_ids"][0]
    assert [VOCAB[i] for i in ids[:8]] == ["[CLS]", "the", "movie", "##s", "[UNK]", "!",
                                            "good", "[SEP]"]
    ignore = base.IGNORE
    assert labels[0].tolist() == [ignore, 0, 1, ignore, 2, ignore, 3, ignore]


def test_words_past_the_input_get_no_position(pre):
    words = tf.ragged.constant([["the", "movies", "is", "good", "fun"], []], dtype=tf.string)
    features, first = tagging.encode_words(pre, words, seq_length=6)
    # room for 4 pieces: the movie ##s is | good fun are cut.
    assert first.to_list() == [[1, 2, 4, -1, -1], []]
    assert features["input_mask"].numpy().sum(1).tolist() == [6, 2]


def test_raw_strings_split_on_whitespace():
    words = tagging.tf_text_words(tf.constant(["the  movie\twas\n good", ""]))
    assert words.to_list() == [[b"the", b"movie", b"was", b"good"], []]


def test_read_conll_and_bad_input(tmp_path):
    path = tmp_path / "train.conll"
    path.write_text("-DOCSTART- -X- O\n\nEU NNP B-ORG\nrejects VBZ O\n\n\nPeter NNP B-PER\n")
    data = tagging.read_conll(str(path))
    assert data.words == [["EU", "rejects"], ["Peter"]]
    assert data.tags == [["B-ORG", "O"], ["B-PER"]]
    path.write_text("EU B-ORG\nlonely\n")
    with pytest.raises(KbftError, match="train.conll:2"):
        tagging.read_conll(str(path))
    with pytest.raises(KbftError, match="as many tags as words"):
        tagging.load_tagged([{"tokens": ["a", "b"], "tags": ["O"]}])
    assert tagging.load_tagged([(["a"], ["O"])]).tags == [["O"]]


def test_errors_one_tag_and_unknown_validation_tag():
    # The data are checked before any encoder loads.
    encoder2 = "not-loaded"
    one_tag = [{"tokens": ["a", "b"], "tags": ["O", "O"]}]
    with pytest.raises(KbftError, match="at least two different tags"):
        tagging.fine_tune_tagging(one_tag, encoder=encoder2, verbose=0)
    train = [{"tokens": ["a", "good"], "tags": ["O", "B-POS"]}]
    with pytest.raises(KbftError, match="unseen in training"):
        tagging.fine_tune_tagging(train, [{"tokens": ["x"], "tags": ["B-NEW"]}],
                                  encoder=encoder2, verbose=0)
    with pytest.raises(KbftError, match="Received: doc_strid"):
        tagging.fine_tune_tagging(train, encoder=encoder2, doc_strid=3)
