"""Sequence-task metrics on gathered predictions: entity F1 (seqeval-style), SQuAD EM/F1, ROUGE.

Plain Python over predictions collected on the host, so they are exact under any
distribution strategy.
"""

import collections
import re
from typing import Dict, List, Sequence, Tuple

# --------------------------------------------------------------------------- tagging


def _split_tag(tag: str) -> Tuple[str, str]:
    """`B-PER` -> (`B`, `PER`), `O` (or an empty tag) -> (`O`, `_`), as seqeval's default
    scheme splits them: the first character is the prefix."""
    if not tag:
        tag = "O"
    return tag[0], tag[1:].split("-", 1)[-1] or "_"


def _ends(prev_prefix, prefix, prev_kind, kind) -> bool:
    return (prev_prefix in ("E", "S")
            or (prev_prefix in ("B", "I") and prefix in ("B", "S", "O"))
            or (prev_prefix not in ("O", ".") and prev_kind != kind))


def _starts(prev_prefix, prefix, prev_kind, kind) -> bool:
    return (prefix in ("B", "S")
            or (prev_prefix in ("E", "S", "O") and prefix in ("E", "I"))
            or (prefix not in ("O", ".") and prev_kind != kind))


def entities(tags: Sequence[str]) -> List[Tuple[str, int, int]]:
    """Entity spans `(type, first, last)` of one tag sequence (BIO / IOB1 / IOBES), by
    the chunking rules of conlleval and seqeval's default mode: an `I-X` after `O` or
    after another type starts a new entity."""
    spans = []
    prev_prefix, prev_kind, begin = "O", "", 0
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, kind = _split_tag(tag)
        if _ends(prev_prefix, prefix, prev_kind, kind):
            spans.append((prev_kind, begin, i - 1))
        if _starts(prev_prefix, prefix, prev_kind, kind):
            begin = i
        prev_prefix, prev_kind = prefix, kind
    return spans


def tagging_metrics(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]
                    ) -> Dict[str, float]:
    """Entity-level micro precision / recall / F1 (exact span and type) and per-word
    accuracy over sentences of word-level tags."""
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold sentences but {len(predicted)} predicted")
    true_spans, pred_spans = set(), set()
    correct = total = 0
    for i, (g, p) in enumerate(zip(gold, predicted)):
        if len(g) != len(p):
            raise ValueError(f"sentence {i}: {len(g)} gold tags but {len(p)} predicted")
        true_spans.update((i, *s) for s in entities(g))
        pred_spans.update((i, *s) for s in entities(p))
        correct += sum(a == b for a, b in zip(g, p))
        total += len(g)
    hits = len(true_spans & pred_spans)
    precision = hits / len(pred_spans) if pred_spans else 0.0
    recall = hits / len(true_spans) if true_spans else 0.0
    f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
    return {"entity_f1": f1, "entity_precision": precision, "entity_recall": recall,
            "token_accuracy": correct / total if total else 0.0}


# ---------------------------------------------------------------------------- SQuAD


def squad_metrics(answers: Sequence[Sequence[str]], predictions: Sequence[str]) -> Dict[str, float]:
    """SQuAD v1.1 exact match and F1 (fractions, best over each question's gold answers),
    by the official script in tf-models-official (its answer normalisation included)."""
    from official.nlp.tools import squad_evaluate_v1_1

    if len(answers) != len(predictions):
        raise ValueError(f"{len(answers)} questions but {len(predictions)} predictions")
    qas = [{"id": str(i), "answers": [{"text": t} for t in golds]}
           for i, golds in enumerate(answers)]
    dataset = [{"paragraphs": [{"qas": qas}]}]
    scores = squad_evaluate_v1_1.evaluate(dataset, {str(i): p for i, p in enumerate(predictions)})
    return {"exact_match": float(scores["exact_match"]), "f1": float(scores["final_f1"])}


# ---------------------------------------------------------------------------- ROUGE


def rouge_tokens(text: str) -> List[str]:
    """Lower-cased runs of ASCII letters and digits (rouge-score's tokeniser, no stemming)."""
    return re.findall(r"[a-z0-9]+", text.lower())


def _f_measure(overlap: int, predicted: int, reference: int) -> float:
    if overlap == 0:
        return 0.0
    precision, recall = overlap / predicted, overlap / reference
    return 2 * precision * recall / (precision + recall)


def rouge_n(predicted: Sequence[str], reference: Sequence[str], n: int) -> float:
    """ROUGE-N F-measure of two token lists (clipped n-gram overlap)."""
    grams = [collections.Counter(tuple(t[i:i + n]) for i in range(len(t) - n + 1))
             for t in (predicted, reference)]
    overlap = sum((grams[0] & grams[1]).values())
    return _f_measure(overlap, sum(grams[0].values()), sum(grams[1].values()))


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (dynamic programming, O(len a * len b))."""
    row = [0] * (len(b) + 1)
    for x in a:
        diagonal = 0
        for j, y in enumerate(b, 1):
            diagonal, row[j] = row[j], diagonal + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge_l(predicted: Sequence[str], reference: Sequence[str]) -> float:
    """ROUGE-L F-measure: LCS over the whole token sequences."""
    return _f_measure(lcs_length(predicted, reference), len(predicted), len(reference))


def rouge_scores(predictions: Sequence[str], references: Sequence[str]) -> Dict[str, float]:
    """Mean ROUGE-1, ROUGE-2 and ROUGE-L F-measures over summary / reference pairs."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(references)} references but {len(predictions)} predictions")
    totals = collections.Counter()
    for pred, ref in zip(predictions, references):
        p, r = rouge_tokens(pred), rouge_tokens(ref)
        totals["rouge1"] += rouge_n(p, r, 1)
        totals["rouge2"] += rouge_n(p, r, 2)
        totals["rougeL"] += rouge_l(p, r)
    n = max(len(predictions), 1)
    return {k: totals[k] / n for k in ("rouge1", "rouge2", "rougeL")}
