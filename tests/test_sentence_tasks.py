"""Multi-label and regression end to end: train, evaluate with the task metric, export,
reload in a fresh process with identical outputs; the CLI's --task."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import keras_bert_ft as kbft
from keras_bert_ft import cli
from keras_bert_ft.export import saved_model as export_lib
from keras_bert_ft.errors import KbftError

from conftest import NEGATIVE, POSITIVE, write_tsv

NEUTRAL = ["plot", "acting", "film"]

# A separate interpreter with only tensorflow and tensorflow_text imported: every
# serving output of each export, as lists.
FRESH_LOADER = r"""
import json, sys
import tensorflow as tf
import tensorflow_text  # registers the tokenizer ops the export uses
assert "keras_bert_ft" not in sys.modules
args = json.loads(sys.argv[1])
result = {}
for name, export in args["exports"].items():
    serve = tf.saved_model.load(export).signatures["serving_default"]
    out = serve(text=tf.constant(args["texts"]))
    result[name] = {k: [x.decode() if isinstance(x, bytes) else x for x in v.numpy().tolist()]
                    for k, v in out.items()}
print(json.dumps(result))
"""


def fresh_predict(exports: dict, texts):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", FRESH_LOADER,
                           json.dumps({"exports": exports, "texts": texts})],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def tagged_rows(n, seed):
    """Three words each; labels: pos / neg when such a word occurs, question when the
    sentence asks; score: positive minus negative words."""
    rng = np.random.RandomState(seed)
    rows = []
    for _ in range(n):
        words = list(rng.choice(POSITIVE + NEGATIVE + NEUTRAL, 3))
        question = rng.rand() < 0.4
        labels = sorted({"pos" for w in words if w in POSITIVE}
                        | {"neg" for w in words if w in NEGATIVE}
                        | ({"question"} if question else set()))
        score = sum(w in POSITIVE for w in words) - sum(w in NEGATIVE for w in words)
        text = ("what " if question else "the ") + " and ".join(words) + (" ?" if question else "")
        rows.append({"sentence": text, "tags": labels, "score": float(score)})
    return rows


TEXTS = ["the good and fun and plot", "what awful and bad and film ?", "the acting", ""]
TRAIN = dict(epochs=3, batch_size=8, learning_rate=3e-3, seq_length=16, verbose=0)


@pytest.fixture(scope="module")
def multilabel(encoder2, tmp_path_factory):
    """Python API; labels as lists (train) and as comma-joined strings in a TSV file
    (validation)."""
    folder = tmp_path_factory.mktemp("multilabel")
    dev_rows = [dict(r, tags=",".join(r["tags"])) for r in tagged_rows(32, 1)]
    dev = write_tsv(folder / "dev.tsv", dev_rows, ["sentence", "tags"])
    result = kbft.fine_tune(tagged_rows(64, 0), dev, task="multilabel", encoder=encoder2,
                            label_column="tags", strategy="cpu", **TRAIN)
    result.export_dir = result.export(str(folder / "export"))
    return result


@pytest.fixture(scope="module")
def regression_run(encoder2, vocab_file, tmp_path_factory):
    """The CLI: kbft train --task regression."""
    folder = tmp_path_factory.mktemp("regression")
    train = write_tsv(folder / "train.tsv", tagged_rows(64, 0), ["sentence", "score"])
    dev = write_tsv(folder / "dev.tsv", tagged_rows(32, 1), ["sentence", "score"])
    out = str(folder / "run")
    assert cli.main(["train", "--task", "regression", "--encoder", encoder2, "--preprocessor",
                     vocab_file, "--train", train, "--validation", dev, "--label-column",
                     "score", "--output", out, "--epochs", "3", "--batch-size", "8",
                     "--learning-rate", "3e-3", "--seq-length", "16", "--verbose", "0"]) == 0
    predicted = str(folder / "predicted.jsonl")
    texts = [arg for t in TEXTS for arg in ("--text", t)]
    assert cli.main(["predict", "--model", os.path.join(out, "export"), *texts,
                     "--output", predicted]) == 0
    return out, dev, [json.loads(line) for line in open(predicted)]


def test_multilabel_trains_tunes_thresholds_and_exports(multilabel):
    metrics = multilabel.metrics
    assert multilabel.label_names == ["neg", "pos", "question"]
    assert len(multilabel.thresholds) == 3 and all(0 < t < 1 for t in multilabel.thresholds)
    assert metrics["f1_micro"] > 0.7, metrics
    # Thresholds are tuned on this validation data: each label's F1 is at least its F1
    # at 0.5, recomputed here from the model's own predictions.
    dev = tagged_rows(32, 1)
    labels = np.array([[n in r["tags"] for n in multilabel.label_names] for r in dev])
    at_half = kbft.multilabel_metrics(labels, multilabel.predict([r["sentence"] for r in dev]),
                                      [0.5] * 3, multilabel.label_names)
    assert at_half["f1_micro"] == pytest.approx(metrics["f1_micro_at_0.5"])
    for name, f1 in metrics["f1_per_label"].items():
        assert f1 >= at_half["f1_per_label"][name] - 1e-9, name
    meta = export_lib.read_metadata(multilabel.export_dir)
    assert meta["task"] == "multilabel"
    assert meta["thresholds"] == pytest.approx(multilabel.thresholds)
    probs = multilabel.predict(TEXTS)
    assert probs.shape == (4, 3) and ((probs > 0) & (probs < 1)).all()


def test_regression_cli_metrics_evaluate_predict(regression_run, capsys):
    out, dev = regression_run[:2]
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert {"pearson", "spearman", "mse", "eval_loss"} <= set(metrics)
    assert metrics["pearson"] > 0.8, metrics
    export = os.path.join(out, "export")
    assert export_lib.read_metadata(export)["label_names"] == ["score"]
    path = os.path.join(out, "evaluated.json")
    assert cli.main(["evaluate", "--model", export, "--data", dev, "--label-column", "score",
                     "--output", path]) == 0
    assert json.load(open(path))["pearson"] == pytest.approx(metrics["pearson"], abs=1e-5)
    capsys.readouterr()
    assert set(regression_run[2][0]) == {"text", "score"}
    assert [r["text"] for r in regression_run[2]] == TEXTS


def test_fresh_process_reload_gives_identical_outputs(multilabel, regression_run):
    got = fresh_predict({"multilabel": multilabel.export_dir,
                         "regression": os.path.join(regression_run[0], "export")}, TEXTS)
    # The same export loaded in this process (kbft predict, for regression): kbft predict
    # batches texts of equal token length together, so float sums may differ in the
    # last bits from one batch of all texts.
    np.testing.assert_allclose(got["regression"]["score"],
                               [r["score"] for r in regression_run[2]], rtol=0, atol=1e-6)
    here = export_lib.predict_export(export_lib.load_export(multilabel.export_dir), TEXTS)
    ml = got["multilabel"]
    assert set(ml) == set(here) == {"probabilities", "predictions", "labels"}
    assert ml["probabilities"] == here["probabilities"].tolist()
    assert ml["predictions"] == here["predictions"].tolist()
    assert ml["labels"] == [x.decode() for x in here["labels"]]
    # ... and the in-memory model, whose thresholds the export applies.
    np.testing.assert_allclose(ml["probabilities"], multilabel.predict(TEXTS), atol=1e-6)
    above = np.array(ml["probabilities"], np.float32) >= np.array(multilabel.thresholds,
                                                                  np.float32)
    assert ml["predictions"] == above.astype(int).tolist()
    assert ml["labels"] == [",".join(n for n, on in zip(multilabel.label_names, row) if on)
                            for row in above]


def test_errors_bad_task_and_constant_targets(encoder2):
    with pytest.raises(KbftError, match="Received: task='ranking'"):
        kbft.FineTuneConfig(task="ranking").validate()
    with pytest.raises(KbftError, match="targets that vary"):
        kbft.fine_tune({"sentence": ["a", "b"], "label": [1.0, 1.0]}, task="regression",
                       encoder=encoder2, verbose=0)
