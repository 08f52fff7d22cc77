"""`kbft probe --compare-pretrained` / `compare_pretrained`: the same probe on the
pretrained encoder a run started from and on the run's fine-tuned one."""

import json
import os

import pytest

from keras_bert_ft import cli
from keras_bert_ft.research.probe import compare_pretrained, probe_layers


def test_before_and_after_are_probe_layers_of_each_encoder(tiny_run, encoder2,
                                                           sentiment_files, tmp_path):
    train, dev = sentiment_files
    options = dict(seq_length=16, iterations=200)
    figures = compare_pretrained(tiny_run, train, dev, output=str(tmp_path / "c.json"),
                                 plot=str(tmp_path / "c.png"), **options)
    before = probe_layers(encoder2, train, dev, **options)
    after = probe_layers(tiny_run, train, dev, **options)
    assert [r["layer"] for r in figures["layers"]] == ["layer_0", "layer_1"]
    for row, b, a in zip(figures["layers"], before["layers"], after["layers"]):
        assert row["before"] == b["accuracy"] and row["after"] == a["accuracy"]
        assert row["difference"] == pytest.approx(a["accuracy"] - b["accuracy"])
    assert figures["encoder"] == encoder2 and figures["before"]["kind"] == "pretrained"
    assert figures["after"]["kind"] == "run"
    with open(tmp_path / "c.json") as f:
        assert json.load(f)["layers"] == figures["layers"]
    assert os.path.getsize(tmp_path / "c.png") > 0


def test_cli_compare_prints_both_columns_and_refuses_a_pretrained_model(
        tiny_run, encoder2, sentiment_files, tmp_path, capsys):
    train, dev = sentiment_files
    assert cli.main(["probe", "--model", tiny_run, "--compare-pretrained", "--train", train,
                     "--validation", dev, "--seq-length", "16",
                     "--plot", str(tmp_path / "p.png")]) == 0
    out = capsys.readouterr().out
    assert "pretrained" in out and "fine-tuned" in out and "difference" in out
    assert os.path.getsize(tmp_path / "p.png") > 0
    assert cli.main(["probe", "--model", encoder2, "--compare-pretrained", "--train", train,
                     "--validation", dev]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --model must be a kbft train --output folder"), err
