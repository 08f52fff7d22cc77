"""`kbft ablate` / `ablate_layers`: each layer group of a run reverted to its pretrained
weights, the drop of the task's metric per group, and the refusals."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from keras_bert_ft import cli
from keras_bert_ft._keras import keras
from keras_bert_ft.export.restore import restore
from keras_bert_ft.research.ablate import group_values, pretrained_like, reverted

from conftest import sentiment_rows

GROUPS = ["embeddings", "layer_0", "layer_1", "pooler"]


@pytest.fixture(scope="module")
def restored(tiny_run):
    result = restore(tiny_run)
    encoder = result.model.encoder
    return result, encoder, group_values(pretrained_like(encoder, result.config.encoder))


def _head(model):
    ids = {id(v) for v in model.encoder.weights}
    return [v.numpy() for v in model.weights if id(v) not in ids]


def test_reverting_a_group_changes_exactly_its_weights(restored):
    result, encoder, pretrained = restored
    tuned, head = group_values(encoder), _head(result.model)
    for group in GROUPS:
        assert any(not np.array_equal(a, b) for a, b in zip(tuned[group], pretrained[group]))
        with reverted(encoder, pretrained, [group]):
            now = group_values(encoder)
            for other in GROUPS:
                want = pretrained[other] if other == group else tuned[other]
                assert all(np.array_equal(a, b) for a, b in zip(now[other], want)), other
            assert all(np.array_equal(a, b) for a, b in zip(_head(result.model), head))
    assert all(np.array_equal(a, b) for g in GROUPS
               for a, b in zip(group_values(encoder)[g], tuned[g]))


def test_reverting_every_group_is_the_pretrained_encoder_under_the_trained_head(restored,
                                                                                 tiny_run):
    result, encoder, pretrained = restored
    texts = tf.constant([r["sentence"] for r in sentiment_rows(6, seed=3)])
    features = result.preprocessor(texts)
    fresh = pretrained_like(encoder, result.config.encoder)  # loaded anew: independent
    pooled = fresh(features, training=False)["pooled_output"].numpy()
    dense = [layer for layer in result.model.layers if isinstance(layer, keras.layers.Dense)]
    kernel, bias = (w.numpy() for w in dense[-1].weights)
    with reverted(encoder, pretrained, GROUPS):
        got = result.model(features, training=False).numpy()
    np.testing.assert_allclose(got, pooled @ kernel + bias, rtol=1e-5, atol=1e-5)
    assert not np.allclose(result.model(features, training=False).numpy(), got, atol=1e-4)


def test_cli_ablate_writes_one_row_per_group(tiny_run, sentiment_files, tmp_path, capsys):
    _, dev = sentiment_files
    out = str(tmp_path / "ablate")
    assert cli.main(["ablate", tiny_run, "--validation", dev, "--output", out]) == 0
    printed = capsys.readouterr().out
    assert "all groups" in printed and "layer_1" in printed
    with open(os.path.join(out, "ablate.json")) as f:
        figures = json.load(f)
    assert [r["group"] for r in figures["groups"]] == GROUPS
    with open(os.path.join(tiny_run, "metrics.json")) as f:
        assert figures["unablated"] == pytest.approx(json.load(f)["accuracy"], abs=1e-9)
    for row in figures["groups"] + [figures["all_groups"]]:
        assert row["drop"] == pytest.approx(figures["unablated"] - row["accuracy"])
    with open(os.path.join(out, "ablate.tsv")) as f:
        lines = f.read().splitlines()
    assert lines[0].split("\t") == ["group", "accuracy", "drop"] and len(lines) == 1 + 4
    assert os.path.getsize(os.path.join(out, "ablate.png")) > 0
    assert cli.main(["ablate", tiny_run, "--validation", dev, "--output", out]) == 0  # ours


def test_errors_name_the_flag_before_any_model_is_built(tiny_run, sentiment_files, tmp_path,
                                                        capsys, monkeypatch):
    from keras_bert_ft.export import restore as restore_lib
    monkeypatch.setattr(restore_lib, "restore", lambda *a, **k: pytest.fail("model built"))
    _, dev = sentiment_files
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("someone else's")
    cases = [([str(tmp_path / "missing"), "--validation", dev], "error: run must be"),
             ([tiny_run, "--validation", dev, "--metric", "bleu"], "error: --metric must be"),
             ([tiny_run, "--validation", dev, "--output", str(foreign)],
              "error: --output must be a new or empty folder"),
             ([tiny_run, "--validation", dev, "--text-column", "nope"], "--text-column"),
             ([tiny_run, "--validation", str(tmp_path / "none.tsv")],
              "error: --validation must be an existing file")]
    for argv, start in cases:
        assert cli.main(["ablate", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert start in err and "\n" not in err, err
    assert os.listdir(foreign) == ["notes.txt"]
