"""Several seeds: same seed -> identical metrics (determinism switch), mean ± std, degenerate
runs flagged, the best run kept; `kbft train --seeds`."""

import json
import os

import pytest
from tensorflow.python.framework import config as tf_config

import keras_bert_ft as kbft
from keras_bert_ft import cli
from keras_bert_ft.errors import KbftError
from keras_bert_ft.research.seeds import degenerate_flags, prior_loss, resolve_seeds, summarize

from conftest import sentiment_rows


@pytest.fixture
def determinism_off_after():
    yield
    tf_config.disable_op_determinism()  # the switch is process-wide


def test_same_seed_twice_gives_identical_metrics(encoder2, determinism_off_after):
    runs = [kbft.fine_tune(sentiment_rows(24), sentiment_rows(12, seed=5), encoder=encoder2,
                           epochs=1, batch_size=8, learning_rate=1e-3, seq_length=16,
                           seed=11, deterministic=True, dropout=0.3, verbose=0)
            for _ in range(2)]
    assert tf_config.is_op_determinism_enabled()
    first, second = (dict(r.metrics) for r in runs)
    first.pop("train_examples_per_second"), second.pop("train_examples_per_second")
    assert first == second
    assert runs[0].history == runs[1].history


def test_summary_and_degenerate_flags():
    s = summarize([0.5, 0.7, 0.6])
    assert s["mean"] == pytest.approx(0.6) and s["std"] == pytest.approx(0.1)
    assert summarize([0.4])["std"] == 0.0
    prior = prior_loss([0, 0, 0, 1], 2)  # -(.75 ln .75 + .25 ln .25)
    assert prior == pytest.approx(0.5623, abs=1e-4)
    assert degenerate_flags([0.7] * 9 + [0.3], prior, 2) == []
    assert degenerate_flags([0.7] * 10, prior, 1) == ["one_class", "loss_not_falling"]
    assert resolve_seeds(3, first=5) == [5, 6, 7] and resolve_seeds([4, 2]) == [4, 2]
    with pytest.raises(KbftError, match="Received: seeds=0"):
        resolve_seeds(0)


def test_cli_train_seeds_reports_and_keeps_best(encoder2, vocab_file, sentiment_files,
                                                tmp_path, capsys):
    train, dev = sentiment_files
    out = str(tmp_path / "run")
    code = cli.main(["train", "--encoder", encoder2, "--preprocessor", vocab_file,
                     "--train", train, "--validation", dev, "--epochs", "1",
                     "--batch-size", "8", "--learning-rate", "1e-3", "--seq-length", "16",
                     "--seeds", "2", "--seed", "4", "--metric", "mcc",
                     "--bias-correction", "false", "--clip-norm", "1.0",
                     "--layer-decay", "0.8", "--reinit-layers", "1", "--trainable-layers", "1",
                     "--unfreeze-every", "1", "--output", out, "--verbose", "0"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "mcc:" in printed and "± " in printed
    with open(os.path.join(out, "seeds.json")) as f:
        seeds = json.load(f)
    assert [r["seed"] for r in seeds["runs"]] == [4, 5]
    assert seeds["summary"]["mcc"]["runs"] == 2 and "accuracy" in seeds["summary"]
    best = max(seeds["runs"], key=lambda r: r["mcc"])
    assert seeds["best_seed"] == best["seed"]
    with open(os.path.join(out, "metrics.json")) as f:
        assert json.load(f)["mcc"] == best["mcc"]
    with open(os.path.join(out, "run_config.json")) as f:
        config = json.load(f)
    assert config["bias_correction"] is False and config["layer_decay"] == 0.8
    assert config["reinit_layers"] == 1 and config["unfreeze_every"] == 1
    assert os.path.isfile(os.path.join(out, "export", "saved_model.pb"))
    assert os.path.isfile(os.path.join(out, "checkpoints", "ckpt-best.index"))
