"""Linear CKA, the logistic probe, `kbft diff`, `kbft probe` and `kbft sweep-layers`."""

import json
import os

import numpy as np
import pytest

from keras_bert_ft import cli
from keras_bert_ft.config import FineTuneConfig, to_json
from keras_bert_ft.research import sweep
from keras_bert_ft.research.diff import diff_models
from keras_bert_ft.encoders.hub_encoder import HubEncoder
from keras_bert_ft.export.saved_model import export_saved_model
from keras_bert_ft.tasks.models import build_classifier
from keras_bert_ft.data.preprocessing import Preprocessor
from keras_bert_ft.research.probe import LogisticProbe, _softmax
from keras_bert_ft.research.representations import LinearCKA, linear_cka

from conftest import sentiment_rows


def _gram_cka(x, y):
    """Linear CKA the textbook way: HSIC of centred n x n Gram matrices."""
    n = x.shape[0]
    h = np.eye(n) - 1.0 / n
    k, l_ = h @ x @ x.T @ h, h @ y @ y.T @ h
    return np.sum(k * l_) / np.sqrt(np.sum(k * k) * np.sum(l_ * l_))


def test_linear_cka_matches_definition_and_invariances():
    rng = np.random.RandomState(0)
    x, y = rng.randn(60, 8), rng.randn(60, 5)
    assert linear_cka(x, y) == pytest.approx(_gram_cka(x, y), rel=1e-9)
    q, _ = np.linalg.qr(rng.randn(8, 8))
    assert linear_cka(x, 3.0 * x @ q + 7.0) == pytest.approx(1.0, abs=1e-9)
    batched = LinearCKA()
    for start in range(0, 60, 25):
        batched.update(x[start:start + 25], y[start:start + 25])
    assert batched.value() == pytest.approx(linear_cka(x, y), rel=1e-9)


def test_logistic_probe_reaches_the_regularised_optimum():
    rng = np.random.RandomState(1)
    x = rng.randn(200, 6) * [1, 5, 0.2, 1, 1, 3]
    y = (x[:, 0] + 0.2 * x[:, 1] + 0.3 * rng.randn(200) > 0).astype(int)
    probe = LogisticProbe(l2=1e-2, iterations=2000).fit(x, y, 2)
    z = probe._design(x)
    grad = z.T @ (_softmax(z @ probe.weights) - np.eye(2)[y]) / len(y)
    grad[:-1] += 1e-2 * probe.weights[:-1]
    assert np.abs(grad).max() < 1e-5
    assert np.mean(probe.predict(x) == y) > 0.9


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, encoder2, vocab_file):
    """A 'fine-tuned' run folder and export whose layer_1 and pooler moved, nothing else."""
    root = tmp_path_factory.mktemp("tuned")
    model = build_classifier(HubEncoder(encoder2), 2)
    rng = np.random.RandomState(0)
    groups = model.encoder.layer_groups()
    for v in groups["layer_1"] + groups["pooler"]:
        v.assign(v.numpy() + 0.5 * rng.randn(*v.shape).astype(np.float32))
    run = root / "run"
    model.save_weights(str(run / "checkpoints" / "ckpt-001"))
    config = to_json(FineTuneConfig(encoder=encoder2, encoder_impl="hub", seq_length=16,
                                    preprocessor=vocab_file))
    (run / "run_config.json").write_text(json.dumps(
        {**config, "label_names": ["neg", "pos"], "pair": False}))
    export = export_saved_model(model, Preprocessor.from_vocab(vocab_file, seq_length=16),
                                str(root / "export"), ["neg", "pos"],
                                metadata={"encoder": encoder2, "config": config})
    return str(run), export


def test_diff_moved_top_layer_from_run_and_export(encoder2, tuned):
    texts = [r["sentence"] for r in sentiment_rows(24)]
    run, export = tuned
    by_run = diff_models(encoder2, run, texts, seq_length=16)
    rows = {r["group"]: r for r in by_run["groups"]}
    assert rows["embeddings"]["relative_change"] == 0.0 and rows["embeddings"]["cka"] is None
    assert rows["layer_0"]["relative_change"] == 0.0
    assert rows["layer_0"]["cka"] == pytest.approx(1.0, abs=1e-6)
    assert rows["layer_1"]["relative_change"] > 0.1 and rows["layer_1"]["cka"] < 0.99
    assert rows["pooler"]["relative_change"] > 0.1
    assert by_run["summary"]["top_changes_more"] and by_run["summary"]["top_has_lower_cka"]
    by_export = diff_models(encoder2, export, texts, seq_length=16)
    for a, b in zip(by_run["groups"], by_export["groups"]):
        assert a["relative_change"] == pytest.approx(b["relative_change"], rel=1e-6)


def test_cli_probe_and_diff_print_tables_and_write_json(encoder2, tuned, sentiment_files,
                                                        tmp_path, capsys):
    train, dev = sentiment_files
    path = str(tmp_path / "probe.json")
    assert cli.main(["probe", "--model", encoder2, "--train", train, "--validation", dev,
                     "--seq-length", "16", "--json", path]) == 0
    with open(path) as f:
        figures = json.load(f)
    assert [r["layer"] for r in figures["layers"]] == ["layer_0", "layer_1"]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in figures["layers"])
    assert figures["train_examples"] == 48 and figures["eval_examples"] == 16
    assert "layer_1" in capsys.readouterr().out
    path = str(tmp_path / "diff.json")
    assert cli.main(["diff", encoder2, tuned[0], "--data", dev, "--samples", "8",
                     "--seq-length", "16", "--json", path]) == 0
    assert "rel. change" in capsys.readouterr().out
    with open(path) as f:
        assert json.load(f)["texts"] == 8


def _run(name, k, quality, eps):
    return {"name": name, "k": k, "quality": quality, "examples_per_second": eps,
            "ms_per_example": 1000.0 / eps, "trainable_parameters": 10, "peak_memory_mib": 1.0}


def test_sweep_summary_recommends_smallest_k_within_a_point(tmp_path):
    layer_runs = [_run("top0", 0, 0.70, 300), _run("top1", 1, 0.855, 200),
                  _run("top2", 2, 0.86, 120)]
    full = _run("full", "full", 0.862, 100)
    figures = {"majority_baseline": 0.5, "num_layers": 2, "metric": "accuracy",
               "encoder": "tiny", "train_examples": 10, "runs": layer_runs + [full]}
    sweep._summarize(figures, layer_runs, full)
    assert figures["recommendation"]["k"] == 1
    assert layer_runs[1]["fraction_of_full_gain"] == pytest.approx(0.355 / 0.362)
    assert layer_runs[1]["speedup_vs_full"] == pytest.approx(2.0)
    assert "top 1 of 2" in sweep.format_table(figures)
    assert os.path.getsize(sweep.plot_sweep(figures, str(tmp_path / "s.png"))) > 1000
    assert sweep.majority_baseline([0, 0, 1], [0, 1, 1, 1]) == 0.25


def test_sweep_layers_in_process_writes_json_and_plot(encoder2, tmp_path):
    # Two runs keep it quick: k = 1 stands in for the whole model (include_full=False).
    figures = sweep.sweep_layers(
        sentiment_rows(24), sentiment_rows(12, seed=5), encoder=encoder2, layers=[1],
        include_full=False, head_depths=[1], poolings=["cls"], head_width=8, isolate=False,
        epochs=1, batch_size=8, learning_rate=1e-3, seq_length=16, verbose=0,
        output_dir=str(tmp_path))
    assert [r["name"] for r in figures["runs"]] == ["top1"]
    top1 = figures["runs"][0]
    assert top1["trainable_groups"] == ["layer_1", "pooler", "head"]
    assert top1["trainable_parameters"] == 8544 + 32 * 32 + 32 + 32 * 2 + 2  # layer, pooler, logits
    assert top1["speedup_vs_full"] == 1.0 and figures["full"]["name"] == "top1"
    assert top1["cpu_ms_per_example"] > 0 and top1["examples_per_second"] > 0
    heads = figures["head_comparison"]
    assert heads["trainable_layers"] == 1 and heads["runs"][0]["head_units"] == [8]
    assert heads["runs"][0]["pooling"] == "cls"
    with open(os.path.join(tmp_path, "sweep_layers.json")) as f:
        assert json.load(f)["recommendation"] == figures["recommendation"]
    assert os.path.isfile(os.path.join(tmp_path, "sweep_layers.png"))
