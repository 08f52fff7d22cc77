"""Data loading: files, DataFrames, lists, tfds; label mapping; the errors users hit."""

import pandas as pd
import numpy as np
import pytest

from keras_bert_ft.data import examples as data_lib
from keras_bert_ft.errors import KbftError
from keras_bert_ft.data.preprocessing import Preprocessor


def test_tsv_with_quotes_kept_verbatim(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_text('sentence\tlabel\nhe said "hi\t1\nNA\t0\n"quoted" text\t1\n')
    ex = data_lib.load_examples(str(path), text_column="sentence", label_column="label")
    assert ex.texts == ['he said "hi', "NA", '"quoted" text']
    assert ex.labels.tolist() == [1, 0, 1] and ex.label_names == ["0", "1"]


def test_csv_jsonl_dataframe_lists_and_records(tmp_path):
    csv_path = tmp_path / "d.csv"
    csv_path.write_text('text,label\n"a, b",pos\nc,neg\n')
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text('{"text": "a, b", "label": "pos"}\n{"text": "c", "label": "neg"}\n')
    frame = pd.DataFrame({"text": ["a, b", "c"], "label": ["pos", "neg"]})
    sources = [str(csv_path), str(jsonl), frame, frame.to_dict("list"),
               frame.to_dict("records")]
    for source in sources:
        ex = data_lib.load_examples(source, text_column="text", label_column="label")
        assert ex.texts == ["a, b", "c"], source
        assert ex.label_names == ["neg", "pos"] and ex.labels.tolist() == [1, 0]
    ex = data_lib.examples_from_lists(["x", "y"], ["b", "a"], texts_pair=["p", "q"])
    assert ex.is_pair and ex.labels.tolist() == [1, 0] and ex.texts_pair == ["p", "q"]


def test_utf8_bom_and_latin1(tmp_path):
    bom = tmp_path / "bom.tsv"
    bom.write_bytes("\ufeffQuality\ttext\n1\tcafé\n".encode("utf-8"))
    ex = data_lib.load_examples(str(bom), text_column="text", label_column="Quality")
    assert ex.texts == ["café"]
    latin = tmp_path / "latin.tsv"
    latin.write_bytes("text\tlabel\ncaf\xe9\t1\n".encode("latin-1"))
    with pytest.raises(KbftError, match=r"not valid utf-8-sig.*0xe9.*Received: encoding="):
        data_lib.load_examples(str(latin), text_column="text", label_column="label")
    ex = data_lib.load_examples(str(latin), text_column="text", label_column="label",
                                encoding="latin-1")
    assert ex.texts == ["café"]


def test_headerless_with_column_names(tmp_path):
    path = tmp_path / "cola.tsv"
    path.write_text("gj04\t1\t\tOur friends won't buy this.\ngj04\t0\t*\tThey drank the pub.\n")
    ex = data_lib.load_examples(str(path), text_column="sentence", label_column="label",
                                column_names=["source", "label", "orig", "sentence"])
    assert ex.texts[1] == "They drank the pub." and ex.labels.tolist() == [1, 0]


def test_validation_uses_training_label_ids(tmp_path):
    train = data_lib.examples_from_lists(["a", "b", "c"], ["x", "y", "z"])
    dev = data_lib.examples_from_lists(["d"], ["z"], label_names=train.label_names)
    assert dev.labels.tolist() == [2]


def test_errors_missing_file(tmp_path):
    with pytest.raises(KbftError, match="Received: data="):
        data_lib.load_examples(str(tmp_path / "no.tsv"), text_column="t", label_column="l")


def test_errors_missing_column(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_text("sentence\tlabel\nx\t1\n")
    with pytest.raises(KbftError, match=r"it has: sentence, label.*Received: label_column='y'"):
        data_lib.load_examples(str(path), text_column="sentence", label_column="y")


def test_errors_empty_dataset(tmp_path):
    empty = tmp_path / "e.tsv"
    empty.write_text("sentence\tlabel\n")
    with pytest.raises(KbftError, match="at least one example"):
        data_lib.load_examples(str(empty), text_column="sentence", label_column="label")
    blank = tmp_path / "blank.tsv"
    blank.write_text("")
    with pytest.raises(KbftError):
        data_lib.load_examples(str(blank), text_column="sentence", label_column="label")


def test_errors_unseen_validation_labels():
    with pytest.raises(KbftError, match=r"unseen in training: \['maybe'\]"):
        data_lib.examples_from_lists(["a"], ["maybe"], label_names=["no", "yes"])


def test_errors_unknown_format(tmp_path):
    path = tmp_path / "d.parquet"
    path.write_text("x")
    with pytest.raises(KbftError, match="Received: format=None"):
        data_lib.load_examples(str(path), text_column="t", label_column="l")


def test_errors_tfds_offline(monkeypatch):
    import tensorflow_datasets as tfds

    def offline(*args, **kwargs):
        raise ConnectionError("Failed to resolve 'storage.googleapis.com'")

    monkeypatch.setattr(tfds, "load", offline)
    with pytest.raises(KbftError, match=r"tensorflow-datasets 'glue/sst2'.*network"):
        data_lib.load_examples("tfds:glue/sst2", text_column="sentence", label_column="label")


def test_make_dataset_dynamic_and_static(vocab_file):
    pre = Preprocessor.from_vocab(vocab_file, seq_length=16)
    ex = data_lib.examples_from_lists(["good", "the movie was very good fun"] * 3, [1, 0] * 3)
    dynamic = list(data_lib.make_dataset(ex, pre, batch_size=4))
    assert [f["input_word_ids"].shape[1] for f, _ in dynamic] == [8, 8]
    static = list(data_lib.make_dataset(ex, pre, batch_size=4, padding="static",
                                        drop_remainder=True))
    assert len(static) == 1 and static[0][0]["input_word_ids"].shape == (4, 16)
    shuffled = data_lib.make_dataset(ex, pre, batch_size=6, shuffle=True, seed=3)
    labels = next(iter(shuffled))[1].numpy()
    assert sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1]
    with pytest.raises(KbftError, match="Received: batch_size=0"):
        data_lib.make_dataset(ex, pre, batch_size=0)


def test_real_sst2_and_mrpc_formats():
    import os
    from conftest import SHARED_DATA
    if not os.path.isdir(SHARED_DATA):
        pytest.skip(f"shared datasets not found at {SHARED_DATA}")
    sst = data_lib.load_examples(os.path.join(SHARED_DATA, "sst2", "test.tsv"),
                                 text_column="sentence", label_column="label")
    assert len(sst) == 872 and sst.label_names == ["0", "1"]
    mrpc = data_lib.load_examples(os.path.join(SHARED_DATA, "mrpc", "msr-para-val.tsv"),
                                  text_column="#1 String", text_pair_column="#2 String",
                                  label_column="Quality")
    assert len(mrpc) == 500 and mrpc.is_pair and set(mrpc.labels.tolist()) == {0, 1}


def test_bucketed_batches_group_lengths_and_keep_every_example(vocab_file):
    pre = Preprocessor.from_vocab(vocab_file, seq_length=32)
    short, longer = "good", " ".join(["the movie was very good fun"] * 3)
    texts = [short if i % 2 else longer for i in range(40)]
    ex = data_lib.examples_from_lists(texts, list(range(40)))
    batches = list(data_lib.make_dataset(ex, pre, batch_size=8, shuffle=True,
                                         padding="bucketed"))
    seen = sorted(int(y) for _, labels in batches for y in labels.numpy())
    assert seen == list(range(40))  # each example exactly once
    widths = sorted({f["input_word_ids"].shape[1] for f, _ in batches})
    assert widths == [8, 24]  # short texts never padded to the long ones' length
    for features, labels in batches:
        parity = {int(y) % 2 for y in labels.numpy()}
        assert len(parity) == 1  # one length bucket per batch
