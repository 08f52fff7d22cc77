"""kbft tune: a grid of fine_tune trials chosen on validation only, the best kept and
exported, test data scored once with it; bad grids refused before anything trains."""

import contextlib
import io
import json
import os
import shutil
import time

import pytest

from keras_bert_ft import cli
from keras_bert_ft.errors import KbftError
from keras_bert_ft.research import tune as tune_lib
from keras_bert_ft.tasks import get_task
from keras_bert_ft.training import runner

from conftest import sentiment_rows, write_tsv


def flags(encoder, vocab):
    """Fixed settings of a tiny, fast trial (head only: the encoder stays frozen)."""
    return ["--encoder", encoder, "--preprocessor", vocab, "--epochs", "1",
            "--batch-size", "8", "--seq-length", "16", "--padding", "static",
            "--trainable-layers", "none", "--max-train-examples", "24", "--verbose", "0"]


@pytest.fixture(scope="module")
def test_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tune_data") / "test.tsv"
    return write_tsv(path, sentiment_rows(12, 2), ["sentence", "label"])


@pytest.fixture(scope="module")
def searched(tmp_path_factory, encoder2, vocab_file, sentiment_files, test_file):
    """`kbft tune` over a 2x2 grid, end to end, compared by eval_loss (lower is better;
    it differs between these tiny trials where accuracy ties); every trial's result and
    every evaluate call (which serving, how many examples) recorded on the way."""
    train, dev = sentiment_files
    out = str(tmp_path_factory.mktemp("tune") / "search")
    task = get_task("classification")
    trials, calls = [], []
    fine_tune, evaluate = runner.fine_tune, task.evaluate

    def recording_fine_tune(*args, **kwargs):
        trials.append(fine_tune(*args, **kwargs))
        return trials[-1]

    def recording_evaluate(serving, data, config, info):
        calls.append((serving, len(data)))
        return evaluate(serving, data, config, info)

    argv = ["tune", "--train", train, "--validation", dev, "--test", test_file,
            "--output", out, "--grid", "learning_rate=5e-3,1e-5", "--grid",
            "dropout=0,0.2", "--objective", "eval_loss", *flags(encoder2, vocab_file)]
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.setattr(runner, "fine_tune", recording_fine_tune)
        patch.setattr(task, "evaluate", recording_evaluate)
        assert cli.main(argv) == 0
    return {"out": out, "argv": argv, "printed": printed.getvalue(), "trials": trials,
            "calls": calls}


def read_json(*parts):
    with open(os.path.join(*parts)) as f:
        return json.load(f)


def test_grid_writes_table_plot_summary_and_best_export(searched):
    out = searched["out"]
    rows = read_json(out, "tune_results.json")["trials"]
    assert [r["point"] for r in rows] == [
        {"learning_rate": 5e-3, "dropout": 0.0}, {"learning_rate": 5e-3, "dropout": 0.2},
        {"learning_rate": 1e-5, "dropout": 0.0}, {"learning_rate": 1e-5, "dropout": 0.2}]
    assert all(r["train_seconds"] > 0 and "eval_loss" in r["metrics"] for r in rows)
    with open(os.path.join(out, "tune_results.tsv")) as f:
        lines = f.read().splitlines()
    assert lines[0].split("\t")[:7] == ["trial", "best", "status", "learning_rate",
                                         "dropout", "eval_loss", "train_seconds"]
    assert len(lines) == 5 and [l.split("\t")[1] == "*" for l in lines[1:]] == \
        [r["best"] for r in rows]
    with open(os.path.join(out, "tune_results.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    summary = read_json(out, "tune_summary.json")
    assert summary["chosen_on"] == "validation" and summary["trials"] == 4
    assert os.path.isfile(os.path.join(out, "best", "export", "saved_model.pb"))
    best = summary["best_trial"]
    printed = searched["printed"]  # the table, the best marked
    assert printed.split()[:5] == ["trial", "learning_rate", "dropout", "eval_loss", "seconds"]
    assert [line.split()[:2] for line in printed.splitlines()
            if line.split()[1:2] == ["*"]] == [[str(best), "*"]]


def test_best_trial_is_the_argmin_of_a_loss_objective(searched):
    out = searched["out"]
    rows = read_json(out, "tune_results.json")["trials"]
    values = [r["objective"] for r in rows]
    assert values == [r["metrics"]["eval_loss"] for r in rows] and len(set(values)) > 1
    summary = read_json(out, "tune_summary.json")
    assert summary["objective"] == "eval_loss" and summary["direction"] == "min"
    best = rows[values.index(min(values))]  # the first of equal ones
    assert summary["best_trial"] == best["trial"] and summary["best_point"] == best["point"]
    assert [r["trial"] for r in rows if r["best"]] == [best["trial"]]
    assert summary["validation_metrics"] == best["metrics"]
    saved = read_json(out, "best", "run_config.json")  # the kept model is that trial's
    assert {k: saved[k] for k in best["point"]} == best["point"]


def test_test_data_scored_once_with_the_best_trial(searched):
    out, calls = searched["out"], searched["calls"]
    summary = read_json(out, "tune_summary.json")
    best = next(r for r in searched["trials"]
                if {k: getattr(r.config, k) for k in summary["best_point"]}
                == summary["best_point"])
    test_calls = [serving for serving, n in calls if n == 12]
    assert len(test_calls) == 1 and test_calls[0] is best.serving
    # Each trial scores validation only: after every epoch and at the end (which reuses
    # the last epoch's outputs).
    epochs = searched["trials"][0].config.epochs
    assert len([n for _, n in calls if n == 16]) == 4 * (epochs + 1)
    assert summary["test_metrics"]["eval_examples"] == 12
    assert summary["validation_metrics"]["eval_examples"] == 16
    rows = read_json(out, "tune_results.json")["trials"]
    assert all("test" not in r["metrics"] for r in rows)
    assert read_json(out, "best", "metrics.json")["test"] == summary["test_metrics"]
    assert "test (scored once, best trial only): eval_loss" in searched["printed"]


def test_rerun_resumes_the_finished_search(searched, tmp_path, capsys, monkeypatch):
    """The same flags on a finished search folder: nothing trains or exports again; the
    best run is restored from OUTPUT/best and scored on --test; the table printed."""
    copy = str(tmp_path / "copy")
    shutil.copytree(searched["out"], copy)
    exported = os.path.join(copy, "best", "export", "saved_model.pb")
    written = os.stat(exported).st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("a finished trial was trained again")

    monkeypatch.setattr(runner, "fine_tune", no_training)
    argv = list(searched["argv"])
    argv[argv.index("--output") + 1] = copy
    assert cli.main(argv) == 0
    summary = read_json(copy, "tune_summary.json")
    assert f"best: trial {summary['best_trial']} " in capsys.readouterr().out
    assert os.stat(exported).st_mtime_ns == written  # the export of the same best trial
    first = read_json(searched["out"], "tune_summary.json")
    assert summary["best_trial"] == first["best_trial"]
    assert summary["test_metrics"]["eval_loss"] == pytest.approx(
        first["test_metrics"]["eval_loss"], rel=1e-5)


def test_objective_defaults_to_monitor_else_the_tasks_main_metric():
    from keras_bert_ft.config import make_config
    from keras_bert_ft.tasks.base import LOWER_IS_BETTER
    task = get_task("classification")
    assert tune_lib._objective(None, make_config(), task, LOWER_IS_BETTER) == ("accuracy", "max")
    assert tune_lib._objective(None, make_config(monitor="eval_loss", patience=1), task,
                               LOWER_IS_BETTER) == ("eval_loss", "min")
    assert tune_lib._objective("mcc", make_config(monitor="eval_loss", patience=1), task,
                               LOWER_IS_BETTER) == ("mcc", "max")
    assert tune_lib._objective(None, make_config(task="regression"), get_task("regression"),
                               LOWER_IS_BETTER) == ("pearson", "max")


@pytest.mark.parametrize("extra,message", [
    (["--grid", "learning_rat=1e-5"], "--grid learning_rat must be a FineTuneConfig field"),
    (["--grid", "learning_rate=2e-5,abc"],
     "--grid learning_rate must be a number. Received: --grid learning_rate='abc'"),
    (["--grid", "learning_rate=2e-5,-1"],
     "--grid learning_rate must be a number > 0"),
    (["--grid", "doc_stride=64,128"], "--grid doc_stride does not apply to task"),
    (["--epochs", "2", "--grid", "epochs=1,2"],
     "--grid epochs must be left out, or the fixed setting --epochs"),
    (["--grid", "seed=0,1"], "--grid seed must be left out"),
    (["--grid", "label_column=a,b"], "--grid label_column must be left out"),
    (["--search", "random"], "--max-trials must be an int >= 1"),
    (["--objective", "bleu"], "--objective must be one of accuracy, f1, mcc, eval_loss"),
])
def test_bad_grids_are_refused_before_training(extra, message, sentiment_files, tmp_path,
                                               capsys, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("trained before refusing")

    monkeypatch.setattr(runner, "fine_tune", no_training)
    train, _ = sentiment_files
    start = time.perf_counter()
    argv = ["tune", "--train", train, "--validation-split", "0.25", "--output",
            str(tmp_path / "o"), *extra]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert message in err, err
    assert time.perf_counter() - start < 5
    assert not os.path.exists(tmp_path / "o")  # nothing written either


def test_no_validation_is_refused(sentiment_files, tmp_path, capsys):
    train, _ = sentiment_files
    assert cli.main(["tune", "--train", train, "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: tune needs --validation or --validation-split"), err
    with pytest.raises(KbftError, match="tune needs validation or validation_split"):
        tune_lib.tune(train, output_dir=str(tmp_path / "o"))


def test_python_errors_name_the_grid_field(sentiment_files, tmp_path):
    train, dev = sentiment_files
    out = str(tmp_path / "o")
    with pytest.raises(KbftError, match=r"^grid dropout must be a number >= 0 and <= 0.99\. "
                                        r"Received: grid dropout=1\.5$"):
        tune_lib.tune(train, dev, grid={"dropout": [0.1, 1.5]}, output_dir=out)
    with pytest.raises(KbftError, match="grid learning_rate must be left out, or the fixed "
                                        "setting learning_rate"):
        tune_lib.tune(train, dev, grid={"learning_rate": [2e-5, 3e-5]}, output_dir=out,
                      learning_rate=3e-5)
    with pytest.raises(KbftError, match="grid point seq_length=68 max_query_length=100 "
                                        "must give a valid config: max_query_length must"):
        tune_lib.tune(train, dev, task="qa", grid={"seq_length": [68, 128],
                                                    "max_query_length": [60, 100]},
                      output_dir=out)
    assert not os.path.exists(out)


def test_default_grid_is_the_bert_papers_less_fixed_fields(sentiment_files, tmp_path,
                                                            monkeypatch):
    from keras_bert_ft.training.fault_tolerance import NonFiniteLoss
    seen = []

    def diverge(train, validation, config):
        seen.append((config.learning_rate, config.epochs))
        raise NonFiniteLoss("loss became nan")

    monkeypatch.setattr(runner, "fine_tune", diverge)
    train, dev = sentiment_files
    with pytest.raises(KbftError, match="diverged"):
        tune_lib.tune(train, dev, output_dir=str(tmp_path / "a"), verbose=0)
    assert seen == [(lr, e) for lr in (2e-5, 3e-5, 5e-5) for e in (2, 3, 4)]
    seen.clear()
    with pytest.raises(KbftError, match="diverged"):
        tune_lib.tune(train, dev, output_dir=str(tmp_path / "b"), verbose=0, epochs=1)
    assert seen == [(2e-5, 1), (3e-5, 1), (5e-5, 1)]


def test_random_search_samples_distinct_points_with_the_seed(sentiment_files, tmp_path,
                                                             monkeypatch):
    """`max_trials` of the 6 points, no repeats, the same ones for the same seed; trials
    that diverge are recorded as such and the search goes on."""
    from keras_bert_ft.training.fault_tolerance import NonFiniteLoss
    seen = []

    def diverge(train, validation, config):
        seen.append((config.learning_rate, config.epochs))
        raise NonFiniteLoss("loss became nan")

    monkeypatch.setattr(runner, "fine_tune", diverge)
    train, dev = sentiment_files
    grid = {"learning_rate": [1e-5, 2e-5, 3e-5], "epochs": [1, 2]}
    for name in ("a", "b"):
        with pytest.raises(KbftError, match="Every trial of .* diverged"):
            tune_lib.tune(train, dev, grid=grid, search="random", max_trials=4, seed=7,
                          output_dir=str(tmp_path / name), verbose=0)
    assert seen[:4] == seen[4:] and len(set(seen[:4])) == 4
    with open(tmp_path / "a" / "tune_results.json") as f:
        rows = json.load(f)["trials"]
    assert [r["status"] for r in rows] == ["diverged"] * 4 and not any(r["best"] for r in rows)


@pytest.fixture(scope="module")
def refitted(tmp_path_factory, encoder2, vocab_file, sentiment_files, test_file):
    """`kbft tune --refit` over two points, every fine_tune call and evaluate call
    recorded: the trials, then the refit on training + validation data."""
    train, dev = sentiment_files
    out = str(tmp_path_factory.mktemp("tune_refit") / "search")
    task = get_task("classification")
    calls, evaluated = [], []
    fine_tune, evaluate = runner.fine_tune, task.evaluate

    def recording_fine_tune(train, validation, config, **kwargs):
        calls.append({"train": train, "validation": validation, "config": config,
                      "kwargs": kwargs, "result": fine_tune(train, validation, config, **kwargs)})
        return calls[-1]["result"]

    def recording_evaluate(serving, data, config, info):
        evaluated.append((serving, len(data)))
        return evaluate(serving, data, config, info)

    argv = ["tune", "--train", train, "--validation", dev, "--test", test_file,
            "--output", out, "--grid", "learning_rate=5e-3,1e-5", "--refit",
            "--monitor", "eval_loss", *flags(encoder2, vocab_file)]
    argv[argv.index("--epochs", argv.index("--monitor")) + 1] = "2"
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.setattr(runner, "fine_tune", recording_fine_tune)
        patch.setattr(task, "evaluate", recording_evaluate)
        assert cli.main(argv) == 0
    return {"out": out, "calls": calls, "evaluated": evaluated,
            "printed": printed.getvalue(), "argv": argv}


def test_refit_trains_the_best_point_on_training_and_validation_data(refitted):
    out, calls = refitted["out"], refitted["calls"]
    assert len(calls) == 3  # two trials, then the refit
    summary = read_json(out, "tune_summary.json")
    best = calls[summary["best_trial"] - 1]
    refit = calls[-1]
    assert refit["validation"] is None and refit["config"].validation_split == 0
    assert refit["config"].learning_rate == summary["best_point"]["learning_rate"]
    assert refit["config"].monitor is None and refit["config"].output_dir == \
        os.path.join(out, "refit")
    # 24 training examples (--max-train-examples) + the 16 validation ones
    assert best["result"].metrics["train_examples"] == 24
    assert refit["result"].metrics["train_examples"] == 40
    assert summary["refit"]["train_examples"] == 40
    # the epochs the best trial kept (its best epoch by eval_loss)
    kept = best["result"].metrics["best_epoch"]
    assert summary["refit"]["epochs_trained"] == kept == \
        len(refit["result"].history["loss"])
    assert os.path.isfile(os.path.join(out, "refit", "export", "saved_model.pb"))
    assert os.path.isfile(os.path.join(out, "best", "export", "saved_model.pb"))
    assert f"refit: trial {summary['best_trial']}'s settings on training + validation " \
        "data (40 examples" in refitted["printed"]


def test_refit_is_the_one_model_scored_on_test(refitted):
    out, evaluated = refitted["out"], refitted["evaluated"]
    summary = read_json(out, "tune_summary.json")
    test_calls = [serving for serving, n in evaluated if n == 12]
    assert test_calls == [refitted["calls"][-1]["result"].serving]
    assert summary["test_scored_on"] == "refit"
    assert summary["test_metrics"] == read_json(out, "refit", "metrics.json")["test"]
    assert "test" not in read_json(out, "best", "metrics.json")
    assert "test (scored once, the refit model only): eval_loss" in refitted["printed"]


def test_refit_with_validation_split_trains_on_every_training_example(
        sentiment_files, tmp_path, encoder2, vocab_file):
    train, _ = sentiment_files
    result = tune_lib.tune(train, None, grid={"learning_rate": [5e-3]}, refit=True,
                           validation_split=0.25, output_dir=str(tmp_path / "s"),
                           encoder=encoder2, preprocessor=vocab_file, epochs=1,
                           batch_size=8, seq_length=16, trainable_layers="none",
                           max_train_examples=24, verbose=0)
    assert result.best.metrics["train_examples"] == 18
    assert result.best.metrics["validation_split_examples"] == 6
    assert result.refit.metrics["train_examples"] == 24
    assert "validation_split_examples" not in result.refit.metrics
    assert result.test_metrics is None and result.paths["refit_export"].endswith(
        os.path.join("refit", "export"))


def test_refit_is_refused_for_multilabel_before_training(sentiment_files, tmp_path, capsys,
                                                         monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("trained before the refusal")

    monkeypatch.setattr(runner, "fine_tune", no_training)
    train, dev = sentiment_files
    code = cli.main(["tune", "--task", "multilabel", "--train", train, "--validation", dev,
                     "--output", str(tmp_path / "s"), "--refit", "--grid",
                     "learning_rate=1e-5,2e-5"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--refit must be False for task 'multilabel'" in err and "thresholds" in err
    assert not os.path.exists(tmp_path / "s")


def test_refit_epochs_are_the_kept_ones_and_training_stops_there():
    import numpy as np
    from keras_bert_ft._keras import keras
    from keras_bert_ft.config import make_config
    config = make_config(epochs=3)
    assert tune_lib.refit_epochs({"metrics": {"best_epoch": 2}}, config) == 2
    assert tune_lib.refit_epochs({"metrics": {"accuracy": 0.5}}, config) == 3
    model = keras.Sequential([keras.layers.Dense(1, input_shape=(2,))])
    model.compile(loss="mse", optimizer="sgd")
    history = model.fit(np.ones((4, 2)), np.ones(4), epochs=3, verbose=0,
                        callbacks=[tune_lib.stop_after_epochs(2)])
    assert len(history.history["loss"]) == 2


def test_concat_joins_each_tasks_data_in_order():
    import numpy as np
    from keras_bert_ft.data.examples import Examples
    from keras_bert_ft.tasks.base import concat
    from keras_bert_ft.tasks.pretrain import Texts
    from keras_bert_ft.tasks.tagging import TaggedSentences
    a = Examples(["a", "b"], np.array([0, 1]), ["neg", "pos"], ["x", "y"], "train.tsv")
    b = Examples(["c"], np.array([1]), ["neg", "pos"], ["z"], "dev.tsv")
    joined = concat(a, b)
    assert joined.texts == ["a", "b", "c"] and joined.texts_pair == ["x", "y", "z"]
    assert joined.labels.tolist() == [0, 1, 1] and joined.source == "train.tsv + dev.tsv"
    with pytest.raises(KbftError, match="cannot join"):
        concat(a, Examples(["c"], np.array([1]), ["neg", "pos"]))  # single texts
    tagged = concat(TaggedSentences([["a"]], [["O"]]), TaggedSentences([["b", "c"]], [["B", "O"]]))
    assert tagged.words == [["a"], ["b", "c"]] and tagged.tags == [["O"], ["B", "O"]]
    assert concat(Texts(["a"]), Texts(["b"])).texts == ["a", "b"]
    assert concat([1, 2], [3]) == [1, 2, 3]  # qa and summarization: lists of examples


def test_refit_added_to_a_finished_search_trains_the_refit_only(refitted, tmp_path,
                                                                monkeypatch):
    copy = str(tmp_path / "copy")
    shutil.copytree(refitted["out"], copy)
    shutil.rmtree(os.path.join(copy, "refit"))
    calls = []
    fine_tune = runner.fine_tune

    def counting(train, validation, config, **kwargs):
        calls.append((validation, config.output_dir))
        return fine_tune(train, validation, config, **kwargs)

    monkeypatch.setattr(runner, "fine_tune", counting)
    argv = list(refitted["argv"])
    argv[argv.index("--output") + 1] = copy
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(argv) == 0
    assert calls == [(None, os.path.join(copy, "refit"))]
    assert read_json(copy, "refit", "metrics.json")["train_examples"] == 40
    assert os.path.isfile(os.path.join(copy, "refit", "export", "saved_model.pb"))
