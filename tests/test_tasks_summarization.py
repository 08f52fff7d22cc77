"""Summarisation pieces: a [CLS] per sentence, interval segments, truncation, sentence
splitting (Python and graph alike), oracle labels and the document readers."""

import json

import pytest
import tensorflow as tf

from keras_bert_ft.errors import KbftError
from keras_bert_ft.data.preprocessing import Preprocessor
from keras_bert_ft.tasks import base, summarization as sm

from conftest import VOCAB


@pytest.fixture(scope="module")
def pre(vocab_file):
    return Preprocessor.from_vocab(vocab_file, seq_length=12)


def test_each_sentence_gets_a_cls_and_alternating_segments(pre):
    sentences = tf.ragged.constant([["the movie", "was good .", "it is"], ["fun"], []])
    features, positions = sm.pack_sentences(pre, sentences, seq_length=12)
    ids = features["input_word_ids"].numpy()
    assert [VOCAB[i] for i in ids[0]] == ["[CLS]", "the", "movie", "[SEP]", "[CLS]", "was",
                                          "good", ".", "[SEP]", "[CLS]", "it", "[SEP]"]
    # The third sentence is cut to the one piece that fits.
    assert features["input_type_ids"].numpy()[0].tolist() == [0] * 4 + [1] * 5 + [0] * 3
    assert positions.to_list() == [[0, 4, 9], [0], []]
    assert features["input_mask"].numpy().sum(1).tolist() == [12, 3, 0]


def test_sentences_past_the_input_are_left_out(pre):
    sentences = tf.ragged.constant([["the movie was good", "it is", "fun"]])
    _, positions = sm.pack_sentences(pre, sentences, seq_length=8)
    assert positions.to_list() == [[0, -1, -1]]  # 6 + 4 tokens > 8: "it is" gets no piece
    features, labels = sm.featurize(
        pre, [sm.Document(["the movie was good", "it is", "fun"], [0, 1, 1])], seq_length=8)
    assert labels.tolist() == [[0, base.IGNORE, base.IGNORE]]
    assert features["cls_positions"].tolist() == [[0, 0, 0]]


def test_sentence_split_rule_is_the_same_in_python_and_graph():
    documents = ['The film was great. "Really!" Yes?  no\nnew line.', "one", "",
                 "Dr. Who (2005). Ends here.\t", "3.5 stars . . fine"]
    graph = sm.tf_split_sentences(tf.constant(documents)).to_list()
    assert [[s.decode() for s in row] for row in graph] == [sm.split_sentences(d) for d in documents]
    assert sm.split_sentences(documents[0]) == ["The film was great.", '"Really!"', "Yes?",
                                                "no", "new line."]
    assert sm.split_sentences(documents[3]) == ["Dr.", "Who (2005).", "Ends here."]


def test_greedy_oracle_and_readers(tmp_path):
    sentences = ["the cat sat on the mat", "dogs bark", "a cat on a mat sat"]
    assert sm.greedy_oracle(sentences, "the cat sat on the mat", 2) == [1, 0, 0]
    assert sm.greedy_oracle(sentences, "dogs bark and the cat sat", 3) == [1, 1, 0]
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"document": "Dogs bark. The cat sat on the mat.",
                                "summary": "the cat sat"}) + "\n"
                    + json.dumps({"sentences": ["a", "b"], "labels": [0, 1]}) + "\n")
    docs = sm.load_documents(str(path))
    assert docs[0].sentences == ["Dogs bark.", "The cat sat on the mat."]
    assert docs[0].labels == [0, 1] and docs[0].target == "the cat sat"
    assert docs[1].target == "b"
    with pytest.raises(KbftError, match="2 sentences but 1 labels"):
        sm.load_documents([{"sentences": ["a", "b"], "labels": [1]}])
    with pytest.raises(KbftError, match="neither labels nor a summary"):
        sm.fine_tune_summarization([{"sentences": ["a"]}], encoder="unused")
