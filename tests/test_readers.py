"""Dataset readers (MRPC, TREC, CoLA) on small files in their real formats, and on the
real files of ../shared/data when they are there; multilabel and regression labels."""

import os

import numpy as np
import pytest

import keras_bert_ft as kbft
from keras_bert_ft.data import examples as data_lib
from keras_bert_ft.errors import KbftError

from conftest import SHARED_DATA

MRPC = ("\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\r\n"
        '1\t702876\t702977\tHe called "the witness", then left.\tHe left after "the witness".\r\n'
        "0\t2108705\t2108831\tA bought B.\tB sold A.\r\n")


def test_mrpc_bom_crlf_quotes_and_pairs(tmp_path):
    path = tmp_path / "msr-para-train.tsv"
    path.write_bytes(MRPC.encode("utf-8"))
    ex = kbft.read_dataset("mrpc", str(path))
    assert ex.is_pair and ex.labels.tolist() == [1, 0] and ex.label_names == ["0", "1"]
    assert ex.texts[0] == 'He called "the witness", then left.'
    assert ex.texts_pair[1] == "B sold A."
    # The same through any data argument: "mrpc:<path>" brings its own columns.
    same = data_lib.load_examples(f"mrpc:{path}", text_column="ignored", label_column="x")
    assert same.texts_pair == ex.texts_pair and same.labels.tolist() == [1, 0]
    bad = tmp_path / "other.tsv"
    bad.write_text("a\tb\n1\t2\n")
    with pytest.raises(KbftError, match="not an MRPC file"):
        kbft.read_dataset("mrpc", str(bad))


def test_trec_latin1_coarse_and_fine(tmp_path):
    path = tmp_path / "TREC.train"
    path.write_bytes("NUM:dist How far is Rhe\xefms ?\nHUM:ind Who was Galileo ?\n"
                     "NUM:date When did it end ?\n".encode("iso-8859-1"))
    coarse = kbft.read_dataset("trec", str(path))
    assert coarse.texts[0] == "How far is Rheïms ?" and not coarse.is_pair
    assert coarse.label_names == ["HUM", "NUM"] and coarse.labels.tolist() == [1, 0, 1]
    fine = data_lib.load_examples(f"trec-fine:{path}", text_column="s", label_column="l")
    assert fine.label_names == ["HUM:ind", "NUM:date", "NUM:dist"]
    path.write_text("not a trec line\n")
    with pytest.raises(KbftError, match="line 1 is not `COARSE:fine question`"):
        kbft.read_dataset("trec", str(path))


def test_cola_headerless_and_errors(tmp_path):
    path = tmp_path / "in_domain_dev.tsv"
    path.write_text('gj04\t1\t\tOur friends won\'t buy "this".\ngj04\t0\t*\tThey drank the pub.\n')
    ex = kbft.read_dataset("cola", str(path))
    assert ex.texts == ['Our friends won\'t buy "this".', "They drank the pub."]
    assert ex.labels.tolist() == [1, 0]
    with pytest.raises(KbftError, match="Received: name='sst'"):
        kbft.read_dataset("sst", str(path))
    with pytest.raises(KbftError, match="an existing file"):
        kbft.read_dataset("cola", str(tmp_path / "missing.tsv"))
    # Only known reader names are prefixes: a Windows-like "c:..." path stays a path.
    assert data_lib.readers.split_spec("c:/data/x.tsv") is None


def test_multilabel_and_regression_labels(tmp_path):
    path = tmp_path / "ml.tsv"
    path.write_text("sentence\tlabel\na\tsports, politics\nb\t\nc\tpolitics\n")
    ex = data_lib.load_examples(str(path), text_column="sentence", label_column="label",
                                task="multilabel")
    assert ex.label_names == ["politics", "sports"]
    assert ex.labels.tolist() == [[1, 1], [0, 0], [1, 0]]
    lists = data_lib.examples_from_lists(["x", "y"], [["b"], ["a", "b"]], task="multilabel")
    assert lists.labels.tolist() == [[0, 1], [1, 1]]
    with pytest.raises(KbftError, match=r"unseen in training: \['c'\]"):
        data_lib.examples_from_lists(["x"], ["c|a"], task="multilabel", label_separator="|",
                                     label_names=["a", "b"])
    scores = data_lib.examples_from_lists(["x", "y"], ["0.5", 3], task="regression")
    assert scores.labels.dtype == np.float32 and scores.labels.tolist() == [0.5, 3.0]
    with pytest.raises(KbftError, match="must hold numbers"):
        data_lib.examples_from_lists(["x"], ["high"], task="regression")


REAL = [("mrpc", "mrpc/msr-para-test.tsv", 1725, 2, True),
        ("trec", "trec/TREC.train", 5452, 6, False),
        ("trec-fine", "trec/TREC.test", 500, None, False),
        ("cola", "cola/in_domain_dev.tsv", 527, 2, False)]


@pytest.mark.parametrize("name,relative,count,classes,pair", REAL)
def test_real_files(name, relative, count, classes, pair):
    path = os.path.join(SHARED_DATA, relative)
    if not os.path.isfile(path):
        pytest.skip(f"{relative} not found under ../shared/data (the project's shared "
                    "datasets are absent on this machine)")
    ex = kbft.read_dataset(name, path)
    assert len(ex) == count and ex.is_pair == pair
    assert all(t.strip() for t in ex.texts)
    if classes:
        assert len(ex.label_names) == classes
    else:  # TREC fine labels keep their coarse prefix
        assert all(":" in n for n in ex.label_names)
