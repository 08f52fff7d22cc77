"""Span QA pieces: stride windows, answer positions through offsets, n-best decoding,
answers mapped back to the original text, the SQuAD reader and its article split."""

import os

import numpy as np
import pytest
import tensorflow as tf

from keras_bert_ft._keras import keras
from keras_bert_ft.tasks.models import encoder_inputs
from keras_bert_ft.data.preprocessing import Preprocessor
from keras_bert_ft.config import FineTuneConfig
from keras_bert_ft.tasks import base, qa

from conftest import SHARED_DATA, VOCAB

CONTEXT = "the movie was good and the plot was great and it is fun , not boring !"


@pytest.fixture(scope="module")
def pre(vocab_file):
    return Preprocessor.from_vocab(vocab_file, seq_length=16)


def windows(pre, questions, contexts, stride=4):
    return qa.make_windows(pre, tf.constant(questions), tf.constant(contexts), seq_length=16,
                           doc_stride=stride, max_query_length=4)


def test_long_contexts_split_into_stride_windows(pre):
    w = windows(pre, ["what is good ?", "who"], [CONTEXT, "it"])
    # 17 context pieces, 9 per window after [CLS] q(4) [SEP]: windows start at 0, 4, 8.
    assert w["example"].numpy().tolist() == [0, 0, 0, 1]
    piece = w["piece"].numpy()
    assert piece[:3, 6].tolist() == [0, 4, 8] and piece[2, 14] == 16
    assert (piece[:3, :6] == -1).all() and (piece[:3, 15] == -1).all()
    assert piece[3].tolist() == [-1, -1, -1, 0] + [-1] * 12  # [CLS] who [SEP] it [SEP]
    ids = w["features"]["input_word_ids"].numpy()
    assert [VOCAB[i] for i in ids[1, 8:11]] == ["plot", "was", "great"]  # pieces 6..8
    # Byte offsets point into the original context.
    starts, ends = w["starts"].numpy(), w["ends"].numpy()
    assert CONTEXT[starts[1, 8]:ends[1, 8]] == "plot"
    # Each piece has its most context in one window: piece 4 in window 0, 8 in window 1.
    max_context = w["max_context"].numpy()
    assert max_context[0, 6 + 4] and not max_context[1, 6 + 0]
    assert max_context[1, 6 + 4] and not max_context[0, 6 + 8] and not max_context[2, 6 + 0]
    assert w["features"]["input_type_ids"].numpy()[0].tolist() == [0] * 6 + [1] * 10


def test_answer_positions_only_in_windows_holding_the_answer(pre):
    start = CONTEXT.index("fun")
    example = qa.QAExample("what is good ?", CONTEXT, ["fun , not"], [start])
    config = FineTuneConfig(task="qa", seq_length=16, doc_stride=4, max_query_length=4)
    features, labels, skipped = qa.featurize(pre, [example], config)
    assert skipped == 0 and len(labels) == 3
    # fun , not = pieces 12..14: only window 2 (pieces 8..16) holds them, at 6 + 4.
    assert labels.tolist() == [[0, 0], [0, 0], [10, 12]]
    ids = features["input_word_ids"][2]
    assert [VOCAB[i] for i in ids[10:13]] == ["fun", ",", "not"]
    wrong = qa.QAExample("q", CONTEXT, ["fun"], [start + 1])  # text not at answer_start
    assert qa.answer_bytes(wrong) is None


def test_best_span_obeys_order_length_context_and_max_context():
    neg = -5.0
    start = tf.constant([[neg, 9.0, 1.0, 0.0, 8.0], [neg, 0.0, 7.0, 0.0, 0.0]])
    end = tf.constant([[neg, 0.0, 2.0, 9.0, 1.0], [neg, 0.0, 0.0, 5.0, 0.0]])
    context = tf.constant([[False, True, True, True, True]] * 2)
    can_start = context & tf.constant([[True, True, True, True, False]] * 2)
    # Both windows belong to question 0.
    window, s, e, score = qa.best_spans(start, end, can_start, context, tf.constant([0, 0]), 1,
                                        n_best_size=3, max_answer_length=2)
    # Window 0: 1->3 is too long (3 pieces), 4 may not start, so 1->2 (9+2=11);
    # window 1: 2->3 (7+5=12) wins.
    assert (window.numpy().tolist(), s.numpy().tolist(), e.numpy().tolist()) == ([1], [2], [3])
    assert score.numpy()[0] == pytest.approx(12.0)
    _, _, _, none = qa.best_spans(start, end, tf.zeros_like(context), context,
                                  tf.constant([0, 1]), 2, n_best_size=3, max_answer_length=2)
    assert np.isneginf(none.numpy()).all()


def keyword_model(target_id):
    """A stand-in span model: start and end logits 10 on `target_id`, else 0."""
    inputs = encoder_inputs()
    logits = keras.layers.Lambda(lambda ids: tf.stack(
        [tf.cast(tf.equal(ids, target_id), tf.float32) * 10.0] * 2, -1))(inputs["input_word_ids"])
    return keras.Model(inputs, qa.SpanLogits()(logits, inputs["input_mask"]))


def test_answers_map_back_to_the_original_text(pre):
    config = FineTuneConfig(task="qa", seq_length=16, doc_stride=4, max_query_length=4)
    serving = qa.QAServing(keyword_model(VOCAB.index("movie")), pre, config)
    contexts = ["Zürich café movie", "the MOVIE was", "the plot was fun"]
    out = qa.decode(serving.run(["where ?"] * 3, contexts)[0])
    # Offsets are bytes ("ü", "é" take two); answer_start counts characters.
    assert out[0] == {"answer": "movie", "score": 20.0, "answer_start": len("Zürich café ")}
    assert out[1] == {"answer": "MOVIE", "score": 20.0, "answer_start": 4}  # original case
    # No "movie": every context piece scores 0, and ties go to the first one.
    assert out[2] == {"answer": "the", "score": 0.0, "answer_start": 0}


@pytest.mark.skipif(not os.path.isfile(os.path.join(SHARED_DATA, "xquad", "xquad.en.json")),
                    reason="needs ../shared/data/xquad/xquad.en.json")
def test_xquad_splits_by_article_deterministically():
    path = os.path.join(SHARED_DATA, "xquad", "xquad.en.json")
    train, held_out = qa.split_articles(path, 38)
    assert (len(train), len(held_out)) == (970, 220)
    assert not {e.title for e in train} & {e.title for e in held_out}
    assert held_out[0].title == qa.read_squad(path)[38]["title"]
    assert all(qa.answer_bytes(e) is not None for e in train)


def test_load_squad_records_and_errors():
    rows = qa.load_squad([{"question": "q?", "context": "c", "answers": ["c"], "answer_starts": [0]}])
    assert rows[0].answers == ["c"] and rows[0].answer_starts == [0]
    articles = [{"title": "t", "paragraphs": [{"context": "ab", "qas": [
        {"id": "1", "question": "q", "answers": [{"text": "b", "answer_start": 1}]}]}]}]
    assert qa.load_squad(articles)[0].qid == "1"
    with pytest.raises(ValueError, match="train_articles"):
        qa.split_articles(articles, 1)
    with pytest.raises(ValueError, match="Received: data"):
        qa.load_squad([1, 2])


def test_cloze_questions_blank_a_name_or_number_of_one_sentence():
    context = ("Ada Lovelace wrote the first program in 1843 for the engine. "
               "It ran on the Analytical Engine of Charles Babbage in London. Short one.")
    real = [qa.QAExample("who?", context, ["Ada Lovelace"], [0]),
            qa.QAExample("when?", context, ["1843"], [41])]  # the same context: used once
    made = qa.cloze_questions(real, seed=0)
    assert len(made) == 2  # "Short one." has under six words
    for ex in made:
        start, answer = ex.answer_starts[0], ex.answers[0]
        assert context[start:start + len(answer)] == answer
        assert qa.answer_bytes(ex) is not None
        assert "what" in ex.question and answer not in ex.question and ex.question.endswith("?")
        assert not ex.question.startswith("what")  # never a sentence's first word
    assert {e.answers[0] for e in made} <= {"1843", "Analytical Engine of Charles Babbage",
                                            "London"}
    assert len(qa.cloze_questions(real, per_context=1)) == 1
    assert qa.cloze_questions(real, seed=0) == made  # deterministic per seed
    # Several per sentence: each blanks another span of it.
    more = qa.cloze_questions(real, seed=0, per_sentence=3)
    assert sorted(e.answers[0] for e in more) == sorted(
        ["1843", "Analytical Engine of Charles Babbage", "London"])
    assert len({e.question for e in more}) == 3
    assert len(qa.cloze_questions(real, per_context=2, per_sentence=3)) == 2
