"""Readers for public datasets in their published formats: MRPC, TREC (coarse / fine), CoLA.

Each reader turns one file into a DataFrame with the columns `sentence`, `label` (and
`sentence2` for pairs), whatever the file itself calls them. Anywhere the toolkit takes
data (`fine_tune`, `load_examples`, `kbft train --train`), `"<name>:<path>"` selects a
reader, e.g. `"mrpc:data/mrpc/msr-para-train.tsv"` or `"trec-fine:data/trec/TREC.test"`.
"""

import csv
import os
from typing import Callable, Dict, NamedTuple, Optional, Tuple

import pandas as pd

from keras_bert_ft.errors import KbftError, bad_argument


class Reader(NamedTuple):
    read: Callable[[str], pd.DataFrame]
    pair: bool
    about: str


def _read_tsv(path: str, encoding: str, names=None) -> pd.DataFrame:
    # Quoting off: MRPC and CoLA sentences contain `"` characters.
    return pd.read_csv(path, sep="\t", encoding=encoding, quoting=csv.QUOTE_NONE,
                       keep_default_na=False, dtype=str,
                       header=None if names else "infer", names=names)


def read_mrpc(path: str) -> pd.DataFrame:
    """MRPC `msr-para-*.tsv`: UTF-8 with a byte-order mark, header
    `Quality #1 ID #2 ID #1 String #2 String`, CRLF line ends, quoting off."""
    frame = _read_tsv(path, "utf-8-sig")
    expected = ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]
    if list(frame.columns) != expected:
        raise KbftError(f"{path!r} is not an MRPC file: its header is "
                        f"{list(frame.columns)}, expected {expected}.")
    return pd.DataFrame({"sentence": frame["#1 String"], "sentence2": frame["#2 String"],
                         "label": frame["Quality"], "id1": frame["#1 ID"],
                         "id2": frame["#2 ID"]})


def _read_trec(path: str, fine: bool) -> pd.DataFrame:
    # TREC.train is ISO-8859-1, not UTF-8 (TREC.test is plain ASCII).
    with open(path, encoding="iso-8859-1") as f:
        lines = [line.rstrip("\r\n") for line in f]
    labels, questions = [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        label, _, question = line.partition(" ")
        coarse, colon, _ = label.partition(":")
        if not colon or not coarse.isupper() or not question.strip():
            raise KbftError(f"{path!r} line {number} is not `COARSE:fine question` "
                            f"(TREC format): {line[:80]!r}")
        labels.append(label if fine else coarse)
        questions.append(question.strip())
    return pd.DataFrame({"sentence": questions, "label": labels})


def read_trec(path: str) -> pd.DataFrame:
    """TREC question classification, the 6 coarse classes (`NUM:dist` -> `NUM`)."""
    return _read_trec(path, fine=False)


def read_trec_fine(path: str) -> pd.DataFrame:
    """TREC question classification, the 50 fine classes (`NUM:dist`)."""
    return _read_trec(path, fine=True)


def read_cola(path: str) -> pd.DataFrame:
    """CoLA `*.tsv`: no header; source, label (1 acceptable, 0 not), original mark, sentence."""
    frame = _read_tsv(path, "utf-8", names=["source", "label", "original", "sentence"])
    if not frame["label"].isin(["0", "1"]).all():
        raise KbftError(f"{path!r} is not a CoLA file: column 2 must be 0 or 1.")
    return frame[["sentence", "label", "source"]]


READERS: Dict[str, Reader] = {
    "mrpc": Reader(read_mrpc, True, "MRPC paraphrase pairs (msr-para-*.tsv)"),
    "trec": Reader(read_trec, False, "TREC questions, 6 coarse classes (TREC.train/test)"),
    "trec-fine": Reader(read_trec_fine, False, "TREC questions, 50 fine classes"),
    "cola": Reader(read_cola, False, "CoLA acceptability (in_domain_*.tsv, no header)"),
}


def split_spec(source) -> Optional[Tuple[str, str]]:
    """`"mrpc:path"` -> `("mrpc", "path")`; None when `source` names no reader."""
    if not isinstance(source, (str, os.PathLike)):
        return None
    name, colon, path = os.fspath(source).partition(":")
    if colon and name.lower() in READERS:
        return name.lower(), path
    return None


def read_named(name: str, path: str) -> pd.DataFrame:
    """The DataFrame of reader `name` for `path`, with a clear error for a bad name or path."""
    if name not in READERS:
        raise bad_argument("dataset", name, f"one of {', '.join(READERS)}")
    if not os.path.isfile(path):
        raise bad_argument("data", f"{name}:{path}", "an existing file (not found)")
    frame = READERS[name].read(path)
    if frame.empty:
        raise bad_argument("data", f"{name}:{path}", "a file with at least one example")
    return frame
