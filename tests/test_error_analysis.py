"""Per-class metrics and the confusion matrix against hand-computed values, the error
analysis rows (highest loss first), and what `save_run` writes for them."""

import json
import os

import numpy as np
import pytest

import keras_bert_ft as kbft
from keras_bert_ft.config import make_config
from keras_bert_ft.data.examples import Examples
from keras_bert_ft.tasks import get_task, scores, sentence
from keras_bert_ft.training import run_folder

from conftest import pair_rows

PNG = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------ per-class metrics
def test_per_class_scores_and_confusion_matrix_by_hand():
    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0, 1, 0, 1, 2, 2]
    report = scores.classification_report(y_true, y_pred, ["a", "b", "c"])
    assert report["confusion_matrix"] == {"labels": ["a", "b", "c"],
                                          "matrix": [[2, 1, 0], [0, 1, 1], [0, 0, 1]]}
    per = report["per_class"]
    assert per["a"] == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8,
                                      "support": 3})
    assert per["b"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5,
                                      "support": 2})
    assert per["c"] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3,
                                      "support": 1})
    assert all(isinstance(v["support"], int) for v in per.values())


def test_a_class_never_predicted_scores_zero_not_nan():
    per = scores.classification_report([0, 1, 1], [0, 0, 0], ["x", "y"])["per_class"]
    assert per["y"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    assert per["x"] == pytest.approx({"precision": 1 / 3, "recall": 1.0, "f1": 0.5,
                                      "support": 1})


def test_classification_evaluate_adds_per_class_and_confusion():
    probabilities = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.7, 0.3]])
    labels = np.array([0, 0, 1, 1])
    found = sentence.evaluate("classification", labels, probabilities, ["neg", "pos"])
    assert found["confusion_matrix"]["matrix"] == [[1, 1], [1, 1]]
    assert found["per_class"]["pos"]["f1"] == pytest.approx(found["f1"])
    # eval_loss: the plain cross-entropy, -log p(true)
    assert found["eval_loss"] == pytest.approx(-np.log([0.9, 0.4, 0.8, 0.3]).mean())
    json.dumps(found)  # metrics.json takes it as is


def test_multilabel_per_class_at_each_threshold():
    labels = np.array([[1, 0], [1, 1], [0, 1], [0, 0]], np.float32)
    probs = np.array([[0.6, 0.2], [0.4, 0.9], [0.3, 0.5], [0.7, 0.1]], np.float32)
    found = sentence.evaluate("multilabel", labels, probs, ["a", "b"], thresholds=[0.35, 0.6])
    # a >= 0.35: predicted rows 0, 1, 3; true rows 0, 1 -> tp 2, P 2/3, R 1
    assert found["per_class"]["a"] == pytest.approx({"precision": 2 / 3, "recall": 1.0,
                                                     "f1": 0.8, "support": 2})
    # b >= 0.6: predicted row 1; true rows 1, 2 -> tp 1, P 1, R 1/2
    assert found["per_class"]["b"] == pytest.approx({"precision": 1.0, "recall": 0.5,
                                                     "f1": 2 / 3, "support": 2})
    assert found["f1_per_label"] == pytest.approx({"a": 0.8, "b": 2 / 3})
    assert "confusion_matrix" not in found


# ---------------------------------------------------------------- error analysis rows
class FakeServing:
    """Serving outputs given in advance (no model: nothing is cached)."""

    def __init__(self, outputs):
        self.outputs = outputs
        self.calls = 0

    def run(self, *columns, batch_size=64):
        self.calls += 1
        return [self.outputs]


def test_regression_rows_are_squared_errors_highest_first():
    data = Examples(["a", "b", "c", "d"], np.array([1.0, 2.0, 3.0, 4.0], np.float32),
                    ["score"])
    serving = FakeServing({"score": np.array([1.5, 0.0, 3.0, 5.0], np.float32)})
    rows = get_task("regression").error_analysis(
        serving, data, make_config(task="regression", error_examples=3),
        {"label_names": ["score"], "pair": False})
    assert [r["text"] for r in rows] == ["b", "d", "a"]
    assert [r["loss"] for r in rows] == pytest.approx([4.0, 1.0, 0.25])
    assert rows[0] == {"index": 1, "text": "b", "label": 2.0, "predicted": 0.0, "loss": 4.0}


def test_multilabel_rows_use_the_tuned_thresholds():
    data = Examples(["x", "y"], np.array([[1, 0], [0, 1]], np.float32), ["a", "b"])
    probs = np.array([[0.9, 0.2], [0.4, 0.3]], np.float32)
    info = {"label_names": ["a", "b"], "pair": False, "label_separator": "|",
            "thresholds": [0.35, 0.25]}
    rows = get_task("multilabel").error_analysis(
        FakeServing({"probabilities": probs}), data,
        make_config(task="multilabel", error_examples=5), info)
    assert [r["text"] for r in rows] == ["y", "x"]
    assert rows[0]["label"] == "b" and rows[0]["predicted"] == "a|b"
    assert rows[0]["probabilities"] == pytest.approx({"a": 0.4, "b": 0.3})
    expected = -(np.log(1 - 0.4) + np.log(0.3)) / 2
    assert rows[0]["loss"] == pytest.approx(expected, rel=1e-5)


def test_no_rows_without_labels_or_when_off():
    task = get_task("classification")
    info = {"label_names": ["neg", "pos"], "pair": False}
    serving = FakeServing({"probabilities": np.array([[0.5, 0.5]], np.float32)})
    labelled = Examples(["a"], np.array([0]), ["neg", "pos"])
    assert task.error_analysis(serving, labelled, make_config(error_examples=0), info) is None
    unlabelled = Examples(["a"], None, ["neg", "pos"])
    assert task.error_analysis(serving, unlabelled, make_config(), info) is None
    assert serving.calls == 0


@pytest.fixture(scope="module")
def run(encoder2, vocab_file):
    """A tiny pair classifier and its validation data."""
    result = kbft.fine_tune(pair_rows(24), pair_rows(12, seed=1), encoder=encoder2,
                            preprocessor=vocab_file, text_column="a", text_pair_column="b",
                            epochs=1, batch_size=8, seq_length=16, error_examples=0,
                            verbose=0)
    task = get_task("classification")
    val = task.read(pair_rows(12, seed=1), result.config, result.info)
    return result, task, val


def test_rows_sorted_by_loss_with_the_worst_example(run):
    result, task, val = run
    config = make_config(result.config, error_examples=5)
    rows = task.error_analysis(result.serving, val, config, result.info)
    probabilities = result.predict(val.texts, val.texts_pair)
    losses = -np.log(probabilities[np.arange(len(val)), val.labels])
    worst = int(np.argmax(losses))
    assert len(rows) == 5
    assert [r["loss"] for r in rows] == sorted((r["loss"] for r in rows), reverse=True)
    assert rows[0]["index"] == worst and rows[0]["loss"] == pytest.approx(losses[worst],
                                                                          rel=1e-5)
    assert rows[0]["text"] == val.texts[worst] and rows[0]["text_pair"] == val.texts_pair[worst]
    assert list(rows[0]) == ["index", "text", "text_pair", "label", "predicted",
                             "probability", "loss"]
    for row in rows:
        i = row["index"]
        assert row["label"] == result.label_names[val.labels[i]]
        predicted = int(np.argmax(probabilities[i]))
        assert row["predicted"] == result.label_names[predicted]
        assert row["probability"] == pytest.approx(probabilities[i, predicted], rel=1e-5)


def test_evaluate_and_error_analysis_serve_the_data_once(run, monkeypatch):
    result, task, _ = run
    val = task.read(pair_rows(12, seed=1), result.config, result.info)  # a new object
    served = []
    original = task._outputs
    monkeypatch.setattr(task, "_outputs", lambda *a, **k: served.append(1) or original(*a, **k))
    config = make_config(result.config, error_examples=3)
    task.evaluate(result.serving, val, config, result.info)
    rows = task.error_analysis(result.serving, val, config, result.info)
    assert len(served) == 1 and len(rows) == 3
    # Changed weights (another epoch, a restored checkpoint) are served again.
    weights = result.model.get_weights()
    try:
        result.model.set_weights([w * 0.5 for w in weights])
        changed = task.error_analysis(result.serving, val, config, result.info)
    finally:
        result.model.set_weights(weights)
    assert len(served) == 2
    assert [r["loss"] for r in changed] != [r["loss"] for r in rows]
    # So is other data of the same length.
    other = task.read(pair_rows(12, seed=2), result.config, result.info)
    task.error_analysis(result.serving, other, config, result.info)
    assert len(served) == 3


def test_save_run_writes_confusion_and_errors(run, tmp_path):
    result, task, val = run
    config = make_config(result.config, error_examples=4)
    metrics, _ = task.evaluate(result.serving, val, config, result.info)
    metrics["test"], _ = task.evaluate(result.serving, val.take(6), config, result.info)
    errors = task.error_analysis(result.serving, val, config, result.info)
    saved = type(result)(**{**vars(result), "metrics": metrics})
    saved.errors = errors
    out = str(tmp_path / "run")
    paths = run_folder.save_run(saved, out, export=False)

    matrix = json.load(open(os.path.join(out, "confusion_matrix.json")))
    assert matrix == metrics["confusion_matrix"] and matrix["labels"] == result.label_names
    assert np.sum(matrix["matrix"]) == len(val)
    for name in ("confusion_matrix.png", "test_confusion_matrix.png"):
        with open(os.path.join(out, name), "rb") as f:
            assert f.read(8) == PNG
    assert paths["confusion_matrix"].endswith("confusion_matrix.png")

    lines = open(os.path.join(out, "errors.tsv"), encoding="utf-8").read().splitlines()
    header = lines[0].split("\t")
    assert header == ["index", "text", "text_pair", "label", "predicted", "probability",
                      "loss"]
    table = [dict(zip(header, line.split("\t"))) for line in lines[1:]]
    assert len(table) == 4
    assert [int(r["index"]) for r in table] == [r["index"] for r in errors]
    assert [float(r["loss"]) for r in table] == pytest.approx([r["loss"] for r in errors],
                                                              rel=1e-5)
    assert not [f for f in os.listdir(out) if ".tmp" in f]


def test_write_tsv_keeps_one_line_per_row(tmp_path):
    path = run_folder.write_tsv(str(tmp_path / "t.tsv"),
                                [{"text": "a\tb\nc", "probabilities": {"x": 0.5}, "loss": 1 / 3}])
    assert open(path).read() == 'text\tprobabilities\tloss\na b c\t{"x": 0.5}\t0.333333\n'


def test_a_later_run_without_them_leaves_no_stale_copies(run, tmp_path):
    result, _, _ = run
    out = str(tmp_path / "again")
    first = type(result)(**{**vars(result), "errors": [{"text": "a", "loss": 1.0}]})
    assert "confusion_matrix" in first.metrics
    run_folder.save_run(first, out, export=False)
    assert {"confusion_matrix.json", "confusion_matrix.png", "errors.tsv"} <= set(os.listdir(out))
    plain = type(result)(**{**vars(result), "metrics": {"pearson": 0.5}, "errors": None})
    run_folder.save_run(plain, out, export=False)
    names = set(os.listdir(out))
    assert "metrics.json" in names
    assert not names & {"confusion_matrix.json", "confusion_matrix.png", "errors.tsv"}
