"""kbft predict on files: CSV / TSV / JSON-lines outputs that keep every input column and
carry every label's probability, read and predicted in chunks (memory does not grow with
the file), written atomically, and bad flags refused before a model is built."""

import csv
import json
import os
import tracemalloc

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

import keras_bert_ft as kbft
from keras_bert_ft import cli
from keras_bert_ft.data import examples as data_lib
from keras_bert_ft.errors import KbftError
from keras_bert_ft.export import predictions

from conftest import sentiment_rows

TRAIN = dict(epochs=1, batch_size=8, learning_rate=1e-2, seq_length=16, verbose=0)
TEXTS = ['the movie was "great", and fun', "awful and boring", "the plot was not good",
         "what a film !", "love it", "hate the acting", "it is very bad", "fun fun fun"]


@pytest.fixture(scope="module")
def classifier(encoder2, vocab_file, tmp_path_factory):
    """(result, export folder) of a tiny sentiment classifier (labels neg, pos)."""
    folder = tmp_path_factory.mktemp("predict_classifier")
    result = kbft.fine_tune(sentiment_rows(48), encoder=encoder2, preprocessor=vocab_file,
                            **TRAIN)
    return result, result.export(str(folder / "export"))


def tagged_rows(n):
    words = ["good", "great", "bad", "awful", "plot", "acting"]
    rng = np.random.RandomState(0)
    rows = []
    for _ in range(n):
        picked = list(rng.choice(words, 2))
        tags = sorted({"pos" for w in picked if w in words[:2]}
                      | {"neg" for w in picked if w in words[2:4]})
        rows.append({"sentence": "the " + " and ".join(picked), "tags": tags,
                     "score": float(len(tags))})
    return rows


@pytest.fixture(scope="module")
def multilabel(encoder2, vocab_file):
    return kbft.fine_tune(tagged_rows(32), task="multilabel", label_column="tags",
                          label_separator="|", encoder=encoder2, preprocessor=vocab_file,
                          **TRAIN)


@pytest.fixture(scope="module")
def regression(encoder2, vocab_file):
    return kbft.fine_tune(tagged_rows(32), task="regression", label_column="score",
                          encoder=encoder2, preprocessor=vocab_file, **TRAIN)


def input_frame(n=len(TEXTS)):
    return pd.DataFrame({"id": [f"row-{i}" for i in range(n)],
                         "sentence": [TEXTS[i % len(TEXTS)] for i in range(n)],
                         "source": [f"batch {i % 3}" for i in range(n)]})


def write_input(path, frame=None):
    (frame if frame is not None else input_frame()).to_csv(path, index=False)
    return str(path)


def read_output(path, fmt):
    """Rows as dicts: strings for CSV / TSV (as kbft reads them), parsed JSON lines."""
    if fmt == "jsonl":
        return [json.loads(line) for line in open(path, encoding="utf-8")]
    frame = pd.read_csv(path, sep="\t" if fmt == "tsv" else ",", dtype=str,
                        keep_default_na=False,
                        quoting=csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL)
    return frame.to_dict("records")


def probabilities_of(rows, fmt, names):
    if fmt == "jsonl":
        assert all(list(r["probabilities"]) == names for r in rows)
        return np.array([[r["probabilities"][n] for n in names] for r in rows])
    return np.array([[float(r[f"prob_{n}"]) for n in names] for r in rows])


def leftovers(folder):
    return [f for f in os.listdir(folder) if f.endswith(".kbft-tmp")]


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_output_keeps_every_column_and_every_probability(classifier, tmp_path, fmt):
    result, _ = classifier
    source = write_input(tmp_path / "in.csv")
    out = str(tmp_path / f"predicted.{fmt}")
    assert predictions.predict_file(result, source, out, chunk_size=3) == len(TEXTS)
    rows = read_output(out, fmt)
    expected = input_frame()
    assert len(rows) == len(expected)
    names = result.label_names
    assert names == ["neg", "pos"]
    prediction_columns = (["label", "probabilities"] if fmt == "jsonl"
                          else ["label", "prob_neg", "prob_pos"])
    assert all(list(r) == ["id", "sentence", "source", *prediction_columns] for r in rows)
    for column in expected.columns:
        assert [r[column] for r in rows] == expected[column].tolist()
    probabilities = probabilities_of(rows, fmt, names)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probabilities, result.predict(TEXTS), rtol=0, atol=1e-6)
    assert [r["label"] for r in rows] == [names[i] for i in probabilities.argmax(-1)]
    assert leftovers(tmp_path) == []


def test_kbft_predict_writes_files_and_stdout(classifier, tmp_path, capsys):
    """The CLI on an export: --input to a CSV file, --text to a CSV file, --input to
    stdout (JSON lines)."""
    result, export = classifier
    source = write_input(tmp_path / "in.csv")
    out = str(tmp_path / "predicted.csv")
    assert cli.main(["predict", "--model", export, "--input", source, "--output", out,
                     "--chunk-size", "3"]) == 0
    rows = read_output(out, "csv")
    assert [r["id"] for r in rows] == input_frame()["id"].tolist()
    assert [r["sentence"] for r in rows] == TEXTS
    np.testing.assert_allclose(probabilities_of(rows, "csv", result.label_names),
                               result.predict(TEXTS), rtol=0, atol=1e-6)

    out = str(tmp_path / "texts.csv")
    assert cli.main(["predict", "--model", export, "--text", TEXTS[0], "--text", TEXTS[1],
                     "--output", out]) == 0
    rows = read_output(out, "csv")
    assert [list(r) for r in rows] == [["text", "label", "prob_neg", "prob_pos"]] * 2
    assert [r["text"] for r in rows] == TEXTS[:2]
    np.testing.assert_allclose(probabilities_of(rows, "csv", result.label_names),
                               result.predict(TEXTS[:2]), rtol=0, atol=1e-6)

    capsys.readouterr()
    assert cli.main(["predict", "--model", export, "--input", source]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["id"] for r in lines] == input_frame()["id"].tolist()
    np.testing.assert_allclose(probabilities_of(lines, "jsonl", result.label_names),
                               result.predict(TEXTS), rtol=0, atol=1e-6)
    assert leftovers(tmp_path) == []


def test_labelled_input_keeps_its_label_and_adds_the_predicted_one(classifier, tmp_path):
    result, _ = classifier
    frame = input_frame().assign(label="pos", prob_pos="given")
    out = str(tmp_path / "p.csv")
    predictions.predict_file(result, write_input(tmp_path / "in.csv", frame), out)
    rows = read_output(out, "csv")
    assert list(rows[0]) == ["id", "sentence", "source", "label", "prob_pos",
                             "predicted_label", "prob_neg", "predicted_prob_pos"]
    assert {r["label"] for r in rows} == {"pos"} and {r["prob_pos"] for r in rows} == {"given"}
    np.testing.assert_allclose([float(r["predicted_prob_pos"]) for r in rows],
                               result.predict(TEXTS)[:, 1], rtol=0, atol=1e-6)


def test_json_lines_input_keeps_its_values(classifier, tmp_path):
    result, _ = classifier
    records = [{"id": 7, "sentence": TEXTS[0], "meta": {"a": [1, 2]}, "flag": None},
               {"sentence": TEXTS[1], "id": 8}]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in records) + "\n")
    predictions.predict_file(result, str(source), str(tmp_path / "p.jsonl"), chunk_size=1)
    rows = read_output(tmp_path / "p.jsonl", "jsonl")
    assert [{k: v for k, v in r.items() if k not in ("label", "probabilities")}
            for r in rows] == records
    predictions.predict_file(result, str(source), str(tmp_path / "p.csv"))
    rows = read_output(tmp_path / "p.csv", "csv")
    assert [r["id"] for r in rows] == ["7", "8"]
    assert [r["meta"] for r in rows] == ['{"a": [1, 2]}', ""]
    assert [r["flag"] for r in rows] == ["", ""]


def test_multilabel_and_regression_columns(multilabel, regression, tmp_path):
    source = write_input(tmp_path / "in.csv")
    names = multilabel.label_names
    assert names == ["neg", "pos"]
    predictions.predict_file(multilabel, source, str(tmp_path / "ml.csv"))
    predictions.predict_file(multilabel, source, str(tmp_path / "ml.jsonl"))
    rows = read_output(tmp_path / "ml.csv", "csv")
    assert list(rows[0]) == ["id", "sentence", "source", "labels", "prob_neg", "prob_pos"]
    probabilities = probabilities_of(rows, "csv", names)
    np.testing.assert_allclose(probabilities, multilabel.predict(TEXTS), rtol=0, atol=1e-6)
    thresholds = multilabel.info.get("thresholds") or [0.5] * len(names)
    chosen = [[n for n, p, t in zip(names, row, thresholds) if p >= t]
              for row in probabilities]
    assert [r["labels"] for r in rows] == ["|".join(c) for c in chosen]
    lines = read_output(tmp_path / "ml.jsonl", "jsonl")
    assert [r["labels"] for r in lines] == chosen
    assert [r["id"] for r in lines] == input_frame()["id"].tolist()

    predictions.predict_file(regression, source, str(tmp_path / "score.tsv"))
    rows = read_output(tmp_path / "score.tsv", "tsv")
    assert list(rows[0]) == ["id", "sentence", "source", "score"]
    np.testing.assert_allclose([float(r["score"]) for r in rows],
                               regression.predict(TEXTS).reshape(-1), rtol=0, atol=1e-6)


def test_chunks_of_three_give_the_same_output_as_one(classifier, tmp_path, monkeypatch):
    result, _ = classifier
    source = write_input(tmp_path / "in.csv", input_frame(20))
    sizes = []
    read = data_lib.read_table_chunks

    def counting(*args, **kwargs):
        for chunk in read(*args, **kwargs):
            sizes.append(len(chunk))
            yield chunk

    monkeypatch.setattr(data_lib, "read_table_chunks", counting)
    predictions.predict_file(result, source, str(tmp_path / "one.csv"), chunk_size=1000)
    sizes.clear()
    predictions.predict_file(result, source, str(tmp_path / "threes.csv"), chunk_size=3)
    assert sizes == ([3] * 6 + [2]) * 2  # the checking pass, then the predicting one
    one, threes = (read_output(tmp_path / f, "csv") for f in ("one.csv", "threes.csv"))
    assert [list(r) for r in one] == [list(r) for r in threes]
    for a, b in zip(one, threes):
        assert {k: v for k, v in a.items() if not k.startswith("prob_")} == \
               {k: v for k, v in b.items() if not k.startswith("prob_")}
        np.testing.assert_allclose([float(a["prob_neg"]), float(a["prob_pos"])],
                                   [float(b["prob_neg"]), float(b["prob_pos"])], atol=1e-6)


def test_memory_does_not_grow_with_the_file(classifier, tmp_path, monkeypatch):
    """20,000 rows in chunks of 500: no chunk read or predicted holds more than 500 rows,
    the peak Python memory stays well below holding the file, and every row comes out,
    in order, with its own prediction."""
    result, _ = classifier
    n, chunk_size = 20_000, 500
    words = ["good", "bad", "fun", "boring"]
    frame = pd.DataFrame({"id": range(n),
                          "sentence": [f"the movie was {words[i % 4]}" for i in range(n)],
                          "note": ["x" * 200 + str(i) for i in range(n)]})
    source = str(tmp_path / "big.csv")
    frame.to_csv(source, index=False)
    del frame
    read, run = data_lib.read_table_chunks, result.serving.run
    largest = {"read": 0, "predicted": 0}

    def counting_reader(*args, **kwargs):
        for chunk in read(*args, **kwargs):
            largest["read"] = max(largest["read"], len(chunk))
            yield chunk

    def counting_run(*columns, **kwargs):
        largest["predicted"] = max(largest["predicted"], len(columns[0]))
        return run(*columns, **kwargs)

    monkeypatch.setattr(data_lib, "read_table_chunks", counting_reader)
    monkeypatch.setattr(result.serving, "run", counting_run)
    result.predict(["warm up the serving function"])
    out = str(tmp_path / "big.predicted.csv")
    tracemalloc.start()
    try:
        data_lib.read_table(source)
        whole = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        assert predictions.predict_file(result, source, out, chunk_size=chunk_size) == n
        streamed = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert largest == {"read": chunk_size, "predicted": chunk_size}
    assert streamed < whole / 2, (streamed, whole)
    rows = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert len(rows) == n and rows["id"].tolist() == [str(i) for i in range(n)]
    assert (rows["note"] == ["x" * 200 + str(i) for i in range(n)]).all()
    expected = result.predict([f"the movie was {w}" for w in words])
    got = rows[["prob_neg", "prob_pos"]].astype(float).to_numpy()
    np.testing.assert_allclose(got, expected[np.arange(n) % 4], rtol=0, atol=1e-6)


def test_a_failure_leaves_no_output_and_keeps_the_old_file(classifier, tmp_path, monkeypatch):
    result, _ = classifier
    source = write_input(tmp_path / "in.csv")
    out = tmp_path / "p.csv"
    out.write_text("earlier predictions\n")
    with pytest.raises(KbftError, match="exists"):
        predictions.predict_file(result, source, str(out))
    calls = []

    def failing(*columns, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("interrupted")
        return run(*columns, **kwargs)

    run = result.serving.run
    monkeypatch.setattr(result.serving, "run", failing)
    with pytest.raises(RuntimeError, match="interrupted"):
        predictions.predict_file(result, source, str(out), chunk_size=3, overwrite=True)
    assert out.read_text() == "earlier predictions\n" and leftovers(tmp_path) == []
    monkeypatch.undo()
    predictions.predict_file(result, source, str(out), overwrite=True)
    assert len(read_output(out, "csv")) == len(TEXTS) and leftovers(tmp_path) == []


def error_of(argv, capsys):
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    return err.strip()


def test_bad_format_and_output_refused_before_a_model_is_built(classifier, tmp_path,
                                                               capsys, monkeypatch):
    _, export = classifier
    source = write_input(tmp_path / "in.csv")
    monkeypatch.setattr(cli.app, "_restore", lambda *a, **k: pytest.fail("model built"))
    base = ["predict", "--model", export, "--input", source]
    assert error_of(base + ["--format", "xml"], capsys) == (
        "error: --format must be one of csv, tsv, jsonl. Received: --format='xml'")
    err = error_of(base + ["--output", str(tmp_path / "p.jsonl"), "--format", "csv"], capsys)
    assert err.startswith("error: --format must be jsonl") and "--format='csv'" in err
    err = error_of(base + ["--output", str(tmp_path / "p.txt")], capsys)
    assert err.startswith("error: --output must be a file ending in .csv")
    existing = tmp_path / "old.csv"
    existing.write_text("mine\n")
    err = error_of(base + ["--output", str(existing)], capsys)
    assert err.startswith("error: --output must be a new file") and "--overwrite" in err
    assert existing.read_text() == "mine\n"
    err = error_of(base + ["--output", source, "--overwrite"], capsys)
    assert "another file than the input" in err
    (tmp_path / "folder.csv").mkdir()
    err = error_of(base + ["--output", str(tmp_path / "folder.csv")], capsys)
    assert "it is a folder" in err
    err = error_of(base + ["--text-column", "body"], capsys)
    assert err == (f"error: --text-column must be a column of {source} (it has: id, "
                   "sentence, source). Received: --text-column='body'")
    tabbed = write_input(tmp_path / "tab.csv", input_frame().assign(sentence="a\tb"))
    err = error_of(["predict", "--model", export, "--input", tabbed, "--output",
                    str(tmp_path / "p.tsv")], capsys)
    assert err.startswith("error: --output must be csv or jsonl for this data: row 1 "
                          "column 'sentence' holds a tab")
    assert leftovers(tmp_path) == [] and not os.path.exists(tmp_path / "p.tsv")


def test_empty_texts_refused_as_load_examples_refuses_them(classifier, tmp_path, capsys,
                                                           monkeypatch):
    _, export = classifier
    frame = input_frame(14)
    frame.loc[[2, 5, 13], "sentence"] = ["", "  ", ""]
    source = write_input(tmp_path / "in.csv", frame)
    with pytest.raises(KbftError) as whole:
        data_lib.load_examples(source, text_column="sentence", where="input")
    with pytest.raises(KbftError) as chunked:
        predictions.scan_input(source, text_column="sentence", chunk_size=4)
    assert str(chunked.value) == str(whole.value)
    assert "rows 3, 6, 14 have one" in str(whole.value)
    monkeypatch.setattr(cli.app, "_restore", lambda *a, **k: pytest.fail("model built"))
    err = error_of(["predict", "--model", export, "--input", source, "--chunk-size", "2"],
                   capsys)
    assert err.startswith("error: --input must be data with no empty value in text "
                          "column 'sentence'; rows 3, 6, 14 have one")


def test_batches_hold_texts_of_equal_token_length_and_outputs_keep_input_order(classifier):
    """`run` orders texts by their token count before batching (little padding), and
    returns each text's own output in the input order."""
    result, _ = classifier
    serving = result.serving
    texts = ["good", "the movie was very very boring and long", "bad", "fun fun",
             "the movie was good", "boring"]
    lengths = serving.token_lengths(texts)
    packed = serving.preprocessor(tf.constant(texts))["input_mask"].numpy().sum(axis=1)
    np.testing.assert_array_equal(lengths, packed)
    seen = []
    serve, batch_fn = serving.serve_fn, serving._serve_batch

    def recording(*batch):
        seen.append([x.decode() for x in batch[0].numpy()])
        return batch_fn(*batch)

    serving._serve_batch = recording
    try:
        together = serving.run(texts, batch_size=2)[0]["probabilities"]
    finally:
        del serving._serve_batch
    by_text = dict(zip(texts, lengths))
    assert [by_text[t] for batch in seen for t in batch] == sorted(lengths.tolist())
    for text, row in zip(texts, together):
        np.testing.assert_allclose(row, serve(tf.constant([text]))["probabilities"].numpy()[0],
                                   atol=1e-6)
