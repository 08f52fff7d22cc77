"""Labelled text from files, DataFrames, Python lists or tensorflow-datasets -> tf.data.

Files are read with pandas: CSV, TSV (quoting off: SST-2 sentences contain `"`),
JSON lines. Strings like "NA" or "null" stay text, but a text must not be empty, and a
label must not be missing (empty, NaN, null): such rows are refused by number, never
turned into a class of their own. String labels are mapped to ids and the label names
kept, so predictions and exports can speak the user's labels.
Multi-label labels become multi-hot rows, regression labels floats. `"mrpc:<path>"`,
`"trec:<path>"`, `"trec-fine:<path>"` and `"cola:<path>"` read those datasets' own
formats (see `readers.py`).
"""

import csv
import dataclasses
import os
from typing import List, Optional, Sequence

import numpy as np
import pandas as pd
import tensorflow as tf

from keras_bert_ft.data import readers
from keras_bert_ft.errors import KbftError, bad_argument

FORMATS = ("csv", "tsv", "jsonl")
from keras_bert_ft.config import PADDINGS, SENTENCE_TASKS as TASKS
_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl",
             ".ndjson": "jsonl"}


@dataclasses.dataclass
class Examples:
    """Texts (and second texts for pairs), labels and the label names.

    Labels are int ids (classification), multi-hot float rows `[n, num_labels]`
    (multilabel) or float scores (regression, one label name: the score's)."""
    texts: List[str]
    labels: Optional[np.ndarray]
    label_names: List[str]
    texts_pair: Optional[List[str]] = None
    source: str = "<memory>"

    def __len__(self):
        return len(self.texts)

    @property
    def is_pair(self) -> bool:
        return self.texts_pair is not None

    def take(self, n: int) -> "Examples":
        """The first `n` examples."""
        return dataclasses.replace(
            self, texts=self.texts[:n],
            texts_pair=None if self.texts_pair is None else self.texts_pair[:n],
            labels=None if self.labels is None else self.labels[:n])

    def subset(self, indices: Sequence[int]) -> "Examples":
        """The examples at `indices`, in that order."""
        return dataclasses.replace(
            self, texts=[self.texts[i] for i in indices],
            texts_pair=None if self.texts_pair is None else [self.texts_pair[i] for i in indices],
            labels=None if self.labels is None else self.labels[np.asarray(indices, int)])

    def concat(self, other: "Examples") -> "Examples":
        """These examples, then `other`'s (read with the same label names: validation
        data is read against the training data's)."""
        if other.is_pair != self.is_pair or list(other.label_names) != list(self.label_names) \
                or (other.labels is None) != (self.labels is None):
            raise KbftError(f"{other.source} cannot join {self.source}: both need the same "
                            "label names and both pairs or both single texts")
        return dataclasses.replace(
            self, texts=self.texts + other.texts,
            texts_pair=None if self.texts_pair is None else self.texts_pair + other.texts_pair,
            labels=None if self.labels is None else np.concatenate([self.labels, other.labels]),
            source=f"{self.source} + {other.source}")


def read_table(source, *, format: Optional[str] = None, encoding: str = "utf-8-sig",
               where: str = "data",
               column_names: Optional[Sequence[str]] = None, split: str = "train"):
    """A pandas DataFrame from a path, a DataFrame, a dict of lists, a list of records or
    `"tfds:<name>"` (tensorflow-datasets, needs network or a local TFDS cache)."""
    if isinstance(source, pd.DataFrame):
        return source
    if isinstance(source, dict):
        return pd.DataFrame(source)
    if isinstance(source, (list, tuple)):
        if source and not isinstance(source[0], dict):
            raise bad_argument(where, type(source[0]).__name__,
                               "a list of dicts (records); for plain lists use "
                               "examples_from_lists(texts, labels)")
        return pd.DataFrame(list(source))
    if not isinstance(source, (str, os.PathLike)):
        raise bad_argument(where, type(source).__name__,
                           "a file path, a DataFrame, a dict of lists or a list of dicts")
    source = os.fspath(source)
    named = readers.split_spec(source)
    if named:
        return readers.read_named(*named)
    if source.startswith("tfds:"):
        return _read_tfds(source[5:], split)
    format = _file_format(source, format, where)
    header = None if column_names else "infer"
    try:
        if format == "jsonl":
            frame = pd.read_json(source, lines=True, encoding=encoding, dtype=False)
        else:
            frame = pd.read_csv(source, encoding=encoding, header=header,
                                names=list(column_names) if column_names else None,
                                **_csv_options(format))
    except UnicodeDecodeError as err:
        raise _not_text(source, encoding, err, f"position {err.start}") from None
    except (pd.errors.ParserError, ValueError) as err:
        raise _not_parsed(source, format, err) from None
    if frame.empty:
        raise bad_argument(where, source, "a file with at least one example (it is empty)")
    return frame


def read_table_chunks(source, *, chunk_size: int, format: Optional[str] = None,
                      encoding: str = "utf-8-sig", where: str = "data"):
    """`read_table`'s rows as DataFrames of at most `chunk_size` rows, for files larger
    than memory: CSV / TSV are read by pandas in chunks (as `read_table` reads them:
    every cell a string), JSON lines one line at a time (every value as parsed, in
    object columns; a key a line lacks is NaN, a JSON null None). Named datasets,
    `tfds:` and in-memory data are read whole (`read_table`) and cut into chunks.
    The source and format are checked now; parse errors surface while iterating."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise bad_argument("chunk_size", chunk_size, "an int >= 1")
    path = os.fspath(source) if isinstance(source, (str, os.PathLike)) else None
    if path is None or readers.split_spec(path) or path.startswith("tfds:"):
        frame = read_table(source, format=format, encoding=encoding, where=where)
        return (frame.iloc[start:start + chunk_size]
                for start in range(0, len(frame), chunk_size))
    return _table_chunks(path, chunk_size, _file_format(path, format, where), encoding, where)


def _file_format(path: str, format: Optional[str], where: str) -> str:
    """The format of an existing data file: `format`, else its ending's."""
    if not os.path.isfile(path):
        raise bad_argument(where, path, "an existing file (not found)")
    format = format or _SUFFIXES.get(os.path.splitext(path)[1].lower())
    if format not in FORMATS:
        raise bad_argument("format", format, f"one of {', '.join(FORMATS)} (or a file "
                           f"ending in {', '.join(_SUFFIXES)}) for {path!r}")
    return format


def _csv_options(format: str) -> dict:
    """How CSV and TSV files are read: every cell a string, TSV without quoting."""
    return dict(sep="\t" if format == "tsv" else ",", keep_default_na=False, dtype=str,
                quoting=csv.QUOTE_NONE if format == "tsv" else csv.QUOTE_MINIMAL)


def _not_text(path: str, encoding: str, err: UnicodeDecodeError, where: str) -> KbftError:
    return KbftError(
        f"File {path!r} is not valid {encoding} text (byte 0x{err.object[err.start]:02x} "
        f"at {where}). Pass its encoding, e.g. encoding='latin-1' (CLI: --encoding "
        f"latin-1). Received: encoding={encoding!r}")


def _not_parsed(path: str, format: str, err: Exception) -> KbftError:
    first = (str(err).strip().splitlines() or ["parse error"])[0][:200]
    return KbftError(f"Could not parse {path!r} as {format}: {first}")


def _table_chunks(path: str, chunk_size: int, format: str, encoding: str, where: str):
    rows = 0
    try:
        if format == "jsonl":
            chunks = _json_line_chunks(path, chunk_size, encoding)
        else:
            chunks = pd.read_csv(path, encoding=encoding, chunksize=chunk_size,
                                 **_csv_options(format))
        for chunk in chunks:
            rows += len(chunk)
            yield chunk
    except UnicodeDecodeError as err:
        raise _not_text(path, encoding, err, f"a row after row {rows}") from None
    except (pd.errors.ParserError, ValueError) as err:
        if isinstance(err, KbftError):
            raise
        raise _not_parsed(path, format, err) from None
    if rows == 0:
        raise bad_argument(where, path, "a file with at least one example (it is empty)")


def _json_line_chunks(path: str, chunk_size: int, encoding: str):
    import json
    records = []
    with open(path, encoding=encoding) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as err:
                reason = getattr(err, "msg", err)
                raise ValueError(f"line {number} is not JSON ({reason})") from None
            if not isinstance(record, dict):
                raise ValueError(f"line {number} is not a JSON object: {line.strip()[:80]!r}")
            records.append(record)
            if len(records) == chunk_size:
                yield pd.DataFrame(records, dtype=object)
                records = []
    if records:
        yield pd.DataFrame(records, dtype=object)


def load_examples(source, *, text_column: str, label_column: Optional[str] = None,
                  text_pair_column: Optional[str] = None,
                  label_names: Optional[Sequence[str]] = None,
                  format: Optional[str] = None, encoding: str = "utf-8-sig",
                  column_names: Optional[Sequence[str]] = None,
                  split: str = "train", task: str = "classification",
                  label_separator: str = ",", where: str = "data") -> Examples:
    """Reads labelled text into `Examples`.

    With `label_names` (from the training set) labels must be among them, so a
    validation file cannot silently carry a class the model never saw. A named dataset
    (`"mrpc:<path>"`, ...) brings its own columns: `sentence`, `sentence2`, `label`.
    `task="multilabel"` reads each label cell as a list or a `label_separator`-separated
    string of label names; `task="regression"` reads numbers.
    """
    frame = read_table(source, format=format, encoding=encoding,
                       column_names=column_names, split=split, where=where)
    name = source if isinstance(source, str) else "<data>"
    named = readers.split_spec(source)
    if named:
        text_column = "sentence"
        text_pair_column = "sentence2" if readers.READERS[named[0]].pair else None
        label_column = "label" if label_column is not None else None
    if len(frame) == 0:
        raise bad_argument(where, name, "at least one example (it is empty)")
    for arg, column in (("text_column", text_column), ("text_pair_column", text_pair_column),
                        ("label_column", label_column)):
        if column is not None and column not in frame.columns:
            raise bad_argument(arg, column, f"a column of {name} (it has: "
                               f"{', '.join(map(str, frame.columns))})")
    texts = _texts(frame[text_column])
    pair = _texts(frame[text_pair_column]) if text_pair_column else None
    check_filled(texts, f"text column {text_column!r}", where, name)
    if pair is not None:
        check_filled(pair, f"text column {text_pair_column!r}", where, name)
    labels, names = None, list(label_names or [])
    if label_column is not None:
        check_filled(frame[label_column].tolist(), f"label column {label_column!r}", where,
                     name, labels=True, empty_ok=task == "multilabel")
        labels, names = encode_task_labels(
            frame[label_column].tolist(), task, label_names, separator=label_separator,
            where=f"label_column {label_column!r} of {name}", column=label_column)
    return Examples(texts=texts, texts_pair=pair, labels=labels, label_names=names,
                    source=name)


def read_dataset(name: str, path: str, *, label_names: Optional[Sequence[str]] = None
                 ) -> Examples:
    """`Examples` of a public dataset file in its own format: `read_dataset("mrpc",
    "msr-para-test.tsv")`; names: mrpc, trec (6 coarse classes), trec-fine, cola."""
    if not isinstance(name, str) or name.lower() not in readers.READERS:
        raise bad_argument("name", name, f"one of {', '.join(readers.READERS)}")
    return load_examples(f"{name.lower()}:{path}", text_column="sentence",
                         label_column="label", label_names=label_names)


def examples_from_lists(texts: Sequence[str], labels: Optional[Sequence] = None,
                        texts_pair: Optional[Sequence[str]] = None,
                        label_names: Optional[Sequence[str]] = None,
                        task: str = "classification", label_separator: str = ","
                        ) -> Examples:
    """`Examples` from Python lists (multilabel: a list of label names per text)."""
    if not texts:
        raise bad_argument("texts", list(texts), "a non-empty list of strings")
    for arg, other in (("labels", labels), ("texts_pair", texts_pair)):
        if other is not None and len(other) != len(texts):
            raise bad_argument(arg, f"<{len(other)} items>",
                               f"as many items as texts ({len(texts)})")
    check_filled(list(texts), "texts", "texts", "<texts>")
    if texts_pair is not None:
        check_filled(list(texts_pair), "texts_pair", "texts_pair", "<texts_pair>")
    ids, names = (None, list(label_names or []))
    if labels is not None:
        check_filled(list(labels), "labels", "labels", "<labels>", labels=True,
                     empty_ok=task == "multilabel")
        ids, names = encode_task_labels(list(labels), task, label_names,
                                        separator=label_separator, where="labels")
    return Examples(texts=[str(t) for t in texts], labels=ids, label_names=names,
                    texts_pair=None if texts_pair is None else [str(t) for t in texts_pair])


def encode_labels(values: list, label_names: Optional[Sequence[str]] = None, *,
                  where: str = "labels"):
    """Label values -> (int ids, names). Names are sorted (numerically for numbers)."""
    check_filled(values, where, "labels", "<labels>", labels=True)
    keys = [_label_key(v) for v in values]
    unique = label_vocabulary(keys, label_names, where)
    index = {k: i for i, k in enumerate(unique)}
    return np.array([index[k] for k in keys], dtype=np.int32), unique


def label_vocabulary(seen, label_names: Optional[Sequence[str]], where: str) -> List[str]:
    """The label names: those `seen` (sorted, numerically for numbers) for training data,
    else `label_names`, which must hold every label seen."""
    if label_names is None:
        return sorted(set(seen), key=_sort_key)
    unique = [str(n) for n in label_names]
    unseen = sorted(set(seen) - set(unique), key=_sort_key)
    if unseen:
        raise KbftError(f"{where} has labels unseen in training: {unseen[:10]} "
                        f"(training labels: {unique[:20]}).")
    return unique


def encode_task_labels(values: list, task: str = "classification",
                       label_names: Optional[Sequence[str]] = None, *, separator: str = ",",
                       where: str = "labels", column: str = "score"):
    """Labels of a task -> (array, names): class ids, multi-hot rows or float scores."""
    if task == "classification":
        return encode_labels(values, label_names, where=where)
    if task == "multilabel":
        return encode_multilabels(values, label_names, separator=separator, where=where)
    if task == "regression":
        return encode_scores(values, where=where), list(label_names or [str(column)])
    raise bad_argument("task", task, f"one of {', '.join(TASKS)}")


def encode_multilabels(values: list, label_names: Optional[Sequence[str]] = None, *,
                       separator: str = ",", where: str = "labels"):
    """Per-example label lists (or `separator`-joined strings; empty = no label) ->
    (multi-hot float32 `[n, num_labels]`, names)."""
    rows = [_label_set(v, separator) for v in values]
    unique = label_vocabulary([k for row in rows for k in row], label_names, where)
    if not unique:
        raise KbftError(f"{where} has no labels at all (multilabel).")
    index = {k: i for i, k in enumerate(unique)}
    hot = np.zeros((len(rows), len(unique)), dtype=np.float32)
    for i, row in enumerate(rows):
        hot[i, [index[k] for k in row]] = 1.0
    return hot, unique


def _label_set(value, separator: str) -> List[str]:
    if isinstance(value, (list, tuple, set, np.ndarray)):
        keys = [_label_key(v) for v in value]
    else:
        keys = [k.strip() for k in _label_key(value).split(separator)]
    return sorted({k for k in keys if k})


def encode_scores(values: list, *, where: str = "labels") -> np.ndarray:
    """Regression targets -> float32 scores; an empty or non-numeric value is an error."""
    scores = np.empty(len(values), dtype=np.float32)
    for i, value in enumerate(values):
        try:
            scores[i] = float(_label_key(value))
        except ValueError:
            raise KbftError(f"{where} must hold numbers for regression (row {i}: "
                            f"{value!r}).") from None
    if not np.isfinite(scores).all():
        raise KbftError(f"{where} has non-finite scores (regression).")
    return scores


# Label cells that mean "no value": pandas and spreadsheets write these for a missing one.
_MISSING_LABELS = ("", "nan", "null", "<na>")


def check_filled(values, what: str, where: str, source, *, labels: bool = False,
                 empty_ok: bool = False) -> None:
    """The one check that every text is non-empty and every label present (not empty,
    NaN or null: never a class of its own). `empty_ok`: an empty cell is a value (a
    multilabel example with no label); NaN and null still are not. Raises a `KbftError`
    naming the rows (row 1 is the first example) and `where` (the CLI shows its flag)."""
    if labels:
        refused = _MISSING_LABELS[1:] if empty_ok else _MISSING_LABELS
        bad = [i for i, v in enumerate(values)
               if not isinstance(v, (list, tuple, set, np.ndarray))
               and _label_key(v).lower() in refused]
        kind = "NaN or null" if empty_ok else "empty, NaN or null"
    else:
        bad = [i for i, v in enumerate(values) if not str(v).strip()]
        kind = "empty"
    if bad:
        rows = ", ".join(str(i + 1) for i in bad[:10]) + (" ..." if len(bad) > 10 else "")
        raise bad_argument(where, source, f"data with no {kind} value in {what}; "
                           f"row{'s' if len(bad) > 1 else ''} {rows} "
                           f"{'have' if len(bad) > 1 else 'has'} one (row 1 is the first "
                           "example): fill in or drop those rows")


def _label_key(value) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        value = int(value)
    return str(value).strip()


def _sort_key(key: str):
    try:
        return (0, float(key), key)
    except ValueError:
        return (1, 0.0, key)


def _texts(column) -> List[str]:
    return ["" if v is None or (isinstance(v, float) and np.isnan(v))
            else v.decode("utf-8") if isinstance(v, bytes) else str(v)
            for v in column.tolist()]


def _read_tfds(name: str, split: str):
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise ImportError("tensorflow-datasets is needed for 'tfds:' data: "
                          "pip install tensorflow-datasets") from None
    try:
        dataset, info = tfds.load(name, split=split, with_info=True)
    except Exception as err:  # download and builder errors come in many kinds
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise KbftError(f"Could not load tensorflow-datasets {name!r} split {split!r} "
                        f"({first}); it needs network or a prepared TFDS cache "
                        f"(TFDS_DATA_DIR). Received: data='tfds:{name}'") from None
    frame = tfds.as_dataframe(dataset, info)
    for key, feature in info.features.items():
        names = getattr(feature, "names", None)
        if names and key in frame:
            frame[key] = [names[int(i)] for i in frame[key]]
    return frame


def tokenize_examples(examples: Examples, preprocessor, chunk: int = 2048):
    """Every example's ids as arrays `[n, seq_length]`, tokenised in large batches."""
    parts = []
    for start in range(0, len(examples), chunk):
        pair = examples.texts_pair[start:start + chunk] if examples.is_pair else None
        features = preprocessor(tf.constant(examples.texts[start:start + chunk]),
                                None if pair is None else tf.constant(pair))
        parts.append({k: v.numpy() for k, v in features.items()})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def make_dataset(examples: Examples, preprocessor, *, batch_size: int,
                 shuffle: bool = False, seed: int = 0, padding: str = "dynamic",
                 drop_remainder: bool = False, with_labels: bool = True,
                 batch_rows: Optional[slice] = None) -> tf.data.Dataset:
    """Batches of `(features, labels)` (features alone without labels), tokenised with
    `preprocessor` once, batched by the training pipeline (data/pipeline.py).

    `padding="dynamic"` cuts each batch to its longest example (rounded up to 8);
    `"bucketed"` also groups examples of similar length into the same batch (shuffled
    within and across buckets), so short texts stop paying for long ones; it changes
    the order, so use it for training only. `"static"` keeps every batch at
    `preprocessor.seq_length` (TPUs need fixed shapes). `batch_rows` keeps only those
    rows of each batch (one worker's share of a global batch).
    """
    from keras_bert_ft.data import pipeline
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise bad_argument("batch_size", batch_size, "an int >= 1")
    if padding not in PADDINGS:
        raise bad_argument("padding", padding, f"one of {', '.join(PADDINGS)}")
    labels = None
    if with_labels and examples.labels is not None:
        integer = np.issubdtype(np.asarray(examples.labels).dtype, np.integer)
        labels = np.asarray(examples.labels, np.int32 if integer else np.float32)
    return pipeline.batches(tokenize_examples(examples, preprocessor), labels,
                            batch_size=batch_size, shuffle=shuffle, seed=seed,
                            padding=padding, drop_remainder=drop_remainder,
                            batch_rows=batch_rows)
