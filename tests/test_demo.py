"""The embedded default encoder through the CLI, and the demo's data handling."""

import json
import os

import pytest

from keras_bert_ft import demo
from keras_bert_ft import cli
from keras_bert_ft.errors import KbftError

from conftest import SHARED_DATA

SST2 = os.path.join(SHARED_DATA, "sst2")


def test_demo_reads_a_given_folder_and_names_labels(tmp_path):
    (tmp_path / "train.tsv").write_text('sentence\tlabel\na "fine" film\t1\ndull\t0\n')
    (tmp_path / "test.tsv").write_text("sentence\tlabel\ngreat\t1\n")
    train, test, name = demo.load_sst2(str(tmp_path))
    assert train["label"].tolist() == ["positive", "negative"]
    assert train["sentence"].tolist()[0] == 'a "fine" film'
    assert name.endswith("test.tsv") and len(test) == 1


def test_errors_demo_folder_without_sst2(tmp_path):
    with pytest.raises(KbftError, match="Received: data="):
        demo.find_sst2(str(tmp_path))


@pytest.mark.slow
def test_train_with_minilm_preset_like_any_handle(tmp_path, capsys):
    if not os.path.isfile(os.path.join(SST2, "train.tsv")):
        pytest.skip(f"SST-2 not found at {SST2} (shared data is absent)")
    out = str(tmp_path / "run")
    argv = ["train", "--encoder", "minilm-l6", "--train", os.path.join(SST2, "train.tsv"),
            "--validation", os.path.join(SST2, "test.tsv"), "--max-train-examples", "96",
            "--max-eval-examples", "64", "--epochs", "1", "--batch-size", "16",
            "--learning-rate", "1e-4", "--trainable-layers", "1", "--seq-length", "48",
            "--output", out, "--verbose", "0"]
    assert cli.main(argv) == 0
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert metrics["eval_examples"] == 64 and 0.0 <= metrics["accuracy"] <= 1.0
    config = json.load(open(os.path.join(out, "run_config.json")))
    assert config["encoder"] == "minilm-l6" and config["label_names"] == ["0", "1"]
    assert cli.main(["predict", "--model", os.path.join(out, "export"),
                     "--text", "a gorgeous, moving film"]) == 0
    assert '"label"' in capsys.readouterr().out
