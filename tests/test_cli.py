"""kbft CLI end to end: train -> export -> reload in a bare process; predict, evaluate,
export, report, --help, and one-line errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from keras_bert_ft import cli
from keras_bert_ft.encoders.hub_encoder import HubEncoder
from keras_bert_ft.tasks.models import build_classifier
from keras_bert_ft.data.preprocessing import Preprocessor
from keras_bert_ft.training.runner import predict_probabilities

# A separate interpreter with only tensorflow and tensorflow_text imported.
BARE_LOADER = r"""
import json, sys
import tensorflow as tf
import tensorflow_text  # registers the tokenizer ops the export uses
assert "keras_bert_ft" not in sys.modules and "tensorflow_hub" not in sys.modules
args = json.loads(sys.argv[1])
serve = tf.saved_model.load(args["export"]).signatures["serving_default"]
inputs = {"text": tf.constant(args["texts"])}
if args.get("pairs"):
    inputs["text_pair"] = tf.constant(args["pairs"])
out = serve(**inputs)
print(json.dumps({"probabilities": out["probabilities"].numpy().tolist(),
                  "label": [x.decode() for x in out["label"].numpy()]}))
"""


def bare_predict(export_dir, texts, pairs=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, "-c", BARE_LOADER,
         json.dumps({"export": export_dir, "texts": texts, "pairs": pairs})],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def train_args(encoder, vocab, train, dev, out, *extra):
    return ["train", "--encoder", encoder, "--preprocessor", vocab, "--train", train,
            "--validation", dev, "--epochs", "2", "--batch-size", "8",
            "--learning-rate", "1e-3", "--trainable-layers", "1", "--seq-length", "16",
            "--output", out, "--verbose", "0", *extra]


def rebuild_from_checkpoint(run_dir, encoder, vocab, num_classes=2):
    """The in-memory model: the run's final checkpoint loaded into a fresh model."""
    model = build_classifier(HubEncoder(encoder), num_classes)
    ckpt = tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints")) or \
        os.path.join(run_dir, "checkpoints", "ckpt-002")
    model.load_weights(ckpt).expect_partial()
    return model, Preprocessor.from_vocab(vocab, seq_length=16)


@pytest.fixture(scope="module")
def single_run(tmp_path_factory, encoder4, vocab_file, sentiment_files):
    out = str(tmp_path_factory.mktemp("cli") / "run")
    assert cli.main(train_args(encoder4, vocab_file, *sentiment_files, out)) == 0
    return out


def test_train_writes_run_folder(single_run, capsys):
    metrics = json.load(open(os.path.join(single_run, "metrics.json")))
    assert {"accuracy", "f1", "mcc", "train_examples_per_second"} <= set(metrics)
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["train_examples_per_second"] > 0
    history = json.load(open(os.path.join(single_run, "history.json")))
    assert len(history["loss"]) == 2 and "val_accuracy" in history
    for name in ("history.png", "export/saved_model.pb", "run_config.json"):
        assert os.path.getsize(os.path.join(single_run, name)) > 0
    assert os.listdir(os.path.join(single_run, "logs"))
    assert any(f.endswith(".index") for f in os.listdir(os.path.join(single_run, "checkpoints")))
    assert not [f for f in os.listdir(single_run) if ".tmp" in f]


def test_train_records_the_seconds_of_each_phase(single_run):
    timings = json.load(open(os.path.join(single_run, "timings.json")))
    phases = timings["phases"]
    for name in ("read", "build", "tokenise", "compile", "first_step", "training",
                 "validation", "export", "write"):
        assert phases[name] >= 0.0, name
    # Building, tracing the first step, training and exporting all take real time.
    assert min(phases["build"], phases["first_step"], phases["export"]) > 0.01, phases
    assert timings["phases_total"] == pytest.approx(sum(phases.values()), abs=0.01)
    marks = timings["since_process_start"]
    assert (marks["fine_tune_called"] < marks["first_step_done"] < marks["training_done"]
            < marks["saved"]), marks
    # The phases of one run fit inside its wall-clock span (from the call to the save).
    inside = sum(v for k, v in phases.items() if k != "startup")
    assert inside <= marks["saved"] - marks["fine_tune_called"] + 0.05, (inside, marks)


def test_export_matches_in_memory_model_in_bare_process(single_run, encoder4, vocab_file):
    texts = ["the movie was great fun", "awful and boring", "zebra", ""]
    model, pre = rebuild_from_checkpoint(single_run, encoder4, vocab_file)
    expected = predict_probabilities(model, pre, texts)
    got = bare_predict(os.path.join(single_run, "export"), texts)
    np.testing.assert_allclose(got["probabilities"], expected, atol=1e-5)
    assert set(got["label"]) <= {"neg", "pos"}


def test_pair_training_export_matches_in_bare_process(tmp_path, encoder4, vocab_file, pair_files):
    out = str(tmp_path / "pair")
    args = train_args(encoder4, vocab_file, *pair_files, out, "--text-column", "a",
                      "--text-pair-column", "b", "--epochs", "1")
    assert cli.main(args) == 0
    texts, pairs = ["the film was good", "the film was bad"], ["it is fun", "it is fun"]
    model, pre = rebuild_from_checkpoint(out, encoder4, vocab_file)
    expected = predict_probabilities(model, pre, texts, pairs)
    got = bare_predict(os.path.join(out, "export"), texts, pairs)
    np.testing.assert_allclose(got["probabilities"], expected, atol=1e-5)
    assert set(got["label"]) <= {"0", "1"}


def test_predict_evaluate_export_and_report(single_run, sentiment_files, tmp_path, capsys):
    export = os.path.join(single_run, "export")
    assert cli.main(["predict", "--model", export, "--text", "great fun", "--text", "bad"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r["text"] for r in rows] == ["great fun", "bad"]
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-5 for r in rows)
    metrics_path = str(tmp_path / "m.json")
    assert cli.main(["evaluate", "--model", export, "--data", sentiment_files[1],
                     "--output", metrics_path]) == 0
    run_metrics = json.load(open(os.path.join(single_run, "metrics.json")))
    assert json.load(open(metrics_path))["accuracy"] == pytest.approx(run_metrics["accuracy"])
    re_export = str(tmp_path / "re_export")
    assert cli.main(["export", "--run", single_run, "--output", re_export]) == 0
    texts = ["great fun", "boring plot"]
    np.testing.assert_allclose(bare_predict(re_export, texts)["probabilities"],
                               bare_predict(export, texts)["probabilities"], atol=1e-6)
    capsys.readouterr()
    assert cli.main(["report", "--encoder", os.path.dirname(export) + "/../" + "x"]) == 2


def test_report_command(encoder4, capsys):
    assert cli.main(["report", "--encoder", encoder4, "--trainable-layers", "1"]) == 0
    out = capsys.readouterr().out
    # layer_3: 4 attention dense (32*32+32) + 2 LayerNorms (2*32) + 32*64+64 + 64*32+32
    # = 8,544; pooler 32*32+32 = 1,056.
    assert "layers: 4" in out and "layer_3" in out and "trainable              9,600" in out


@pytest.mark.parametrize("command", ["train", "evaluate", "predict", "export", "report",
                                     "convert", "demo"])
def test_help_for_each_command(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    assert "--" in capsys.readouterr().out


def _one_line_error(capsys, argv, pattern):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert pattern in err, err


def test_errors_are_one_line(tmp_path, encoder4, vocab_file, sentiment_files, capsys):
    train, dev = sentiment_files
    out = str(tmp_path / "o")
    base = lambda *extra: train_args(encoder4, vocab_file, train, dev, out, *extra)  # noqa: E731
    _one_line_error(capsys, base("--train", str(tmp_path / "missing.tsv")), "Received: --train=")
    _one_line_error(capsys, base("--label-column", "stars"), "Received: --label-column='stars'")
    _one_line_error(capsys, base("--seq-length", "2"), "Received: --seq-length=2")
    _one_line_error(capsys, base("--seq-length", "64"), "<= 32")
    _one_line_error(capsys, base("--trainable-layers", "9"), "Received: --trainable-layers=9")
    _one_line_error(capsys, base("--trainable-layers", "0,7"), "bad index 7")
    _one_line_error(capsys, base("--encoder", str(tmp_path / "nope")), "Received: --encoder=")
    unseen = tmp_path / "unseen.tsv"
    unseen.write_text("sentence\tlabel\nfun\tmaybe\n")
    _one_line_error(capsys, base("--validation", str(unseen)), "unseen in training: ['maybe']")
    empty = tmp_path / "empty.tsv"
    empty.write_text("sentence\tlabel\n")
    _one_line_error(capsys, base("--train", str(empty)), "at least one example")
    latin = tmp_path / "latin.tsv"
    latin.write_bytes("sentence\tlabel\ncaf\xe9\tpos\nbad\tneg\n".encode("latin-1"))
    _one_line_error(capsys, base("--train", str(latin)), "--encoding latin-1")
    bad_vocab = tmp_path / "vocab.txt"
    bad_vocab.write_text("[PAD]\n[UNK]\nthe\n")
    _one_line_error(capsys, base("--preprocessor", str(bad_vocab)), "missing [CLS], [SEP]")
    assert not os.path.exists(out) or not os.path.exists(os.path.join(out, "export"))


def test_errors_url_handle_offline(capsys, monkeypatch, tmp_path, sentiment_files):
    # Point the hub resolver at a port nothing listens on: a download that fails fast
    # here exactly as it does with no network.
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "hub-cache"))
    url = "http://127.0.0.1:9/tensorflow/bert_en_uncased_L-12_H-768_A-12/4"
    _one_line_error(capsys, ["report", "--encoder", url], "Could not download encoder handle")
    _one_line_error(capsys, ["train", "--encoder", url, "--train", sentiment_files[0],
                             "--output", str(tmp_path / "run")],
                    "pass the local folder or a gs:// path")


def test_the_kbft_command_ends_at_once_with_its_output_and_exit_code(monkeypatch):
    """`kbft` (the console script) ends its process without Python's teardown of
    TensorFlow: what it printed to a pipe (buffered) still arrives whole, and the exit
    code is main's; under TF_CONFIG (a multi-worker cluster) it exits the ordinary way."""
    import keras_bert_ft.cli.app as app
    proc = subprocess.run([sys.executable, "-m", "keras_bert_ft.cli", "doctor"],
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.rstrip().splitlines()[-1].endswith("warning(s)"), proc.stdout[-500:]
    exits = []
    monkeypatch.setattr(app, "main", lambda: 2)
    monkeypatch.setattr(app.os, "_exit", exits.append)
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(SystemExit):  # _exit recorded, so the ordinary exit follows
        app.console()
    assert exits == [2]
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {}}')
    with pytest.raises(SystemExit) as ended:
        app.console()
    assert exits == [2] and ended.value.code == 2
