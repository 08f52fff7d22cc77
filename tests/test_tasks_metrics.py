"""Sequence-task metrics on hand-computed examples: entity spans and F1, SQuAD EM/F1, ROUGE."""

import numpy as np
import pytest

from keras_bert_ft.tasks.metrics import (entities, lcs_length, rouge_l, rouge_n, rouge_scores,
                                         rouge_tokens, squad_metrics, tagging_metrics)


def test_entities_follow_conlleval_chunking():
    tags = ["B-PER", "I-PER", "O", "B-LOC", "I-PER", "I-PER", "I-LOC"]
    # I-PER after B-LOC starts a new PER entity; a type change starts another one.
    assert entities(tags) == [("PER", 0, 1), ("LOC", 3, 3), ("PER", 4, 5), ("LOC", 6, 6)]
    assert entities(["O", "I-ORG", "I-ORG", "B-ORG"]) == [("ORG", 1, 2), ("ORG", 3, 3)]
    assert entities(["S-PER", "B-LOC", "E-LOC", "O"]) == [("PER", 0, 0), ("LOC", 1, 2)]
    assert entities([]) == [] and entities(["O", "O"]) == []


def test_tagging_metrics_exact_span_match_by_hand():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "O", "O", "B-LOC"], ["B-ORG", "B-LOC"]]
    m = tagging_metrics(gold, pred)
    # gold spans: PER(0-1), LOC(3), ORG; predicted: PER(0), LOC(3), ORG, LOC(1):
    # 2 of 4 predicted are right, 2 of 3 gold are found.
    assert m["entity_precision"] == pytest.approx(2 / 4)
    assert m["entity_recall"] == pytest.approx(2 / 3)
    assert m["entity_f1"] == pytest.approx(2 * (1 / 2) * (2 / 3) / (1 / 2 + 2 / 3))
    assert m["token_accuracy"] == pytest.approx(4 / 6)
    with pytest.raises(ValueError, match="sentence 0"):
        tagging_metrics([["O"]], [["O", "O"]])


def test_tagging_metrics_match_seqeval():
    seqeval = pytest.importorskip("seqeval.metrics", reason="seqeval is an optional cross-check")
    rng = np.random.RandomState(0)
    tags = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    gold = [list(rng.choice(tags, rng.randint(1, 9))) for _ in range(200)]
    pred = [[t if rng.rand() < 0.7 else rng.choice(tags) for t in s] for s in gold]
    assert tagging_metrics(gold, pred)["entity_f1"] == pytest.approx(seqeval.f1_score(gold, pred))


def test_squad_metrics_use_the_official_normalisation():
    m = squad_metrics([["The Eiffel Tower"], ["1990s", "the 1990s"], ["Paris"]],
                      ["eiffel tower!", "in the 1990s", "London"])
    # EM: articles and punctuation go; F1 of "in 1990s" vs "1990s" is 2/3.
    assert m["exact_match"] == pytest.approx(1 / 3)
    assert m["f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)


def test_rouge_by_hand():
    pred, ref = rouge_tokens("The cat sat on the mat."), rouge_tokens("the cat lay on the mat")
    assert pred == ["the", "cat", "sat", "on", "the", "mat"]
    assert rouge_n(pred, ref, 1) == pytest.approx(5 / 6)  # the x2, cat, on, mat
    assert rouge_n(pred, ref, 2) == pytest.approx(3 / 5)  # the cat, on the, the mat
    assert rouge_l(pred, ref) == pytest.approx(5 / 6)  # the cat on the mat
    assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4
    assert rouge_n([], ref, 1) == 0.0 and rouge_l(pred, []) == 0.0
    scores = rouge_scores(["the cat sat on the mat", "a dog"], ["the cat lay on the mat", "a dog"])
    assert scores["rouge1"] == pytest.approx((5 / 6 + 1) / 2)
    assert scores["rouge2"] == pytest.approx((3 / 5 + 1) / 2)
