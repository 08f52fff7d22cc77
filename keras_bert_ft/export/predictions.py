"""A sentence model's predictions (classification, multilabel, regression) written as CSV,
TSV or JSON lines, for input files larger than memory.

Each output row is its input row (every column: ids and all) followed by the prediction:
classification `label` and every label's probability, multilabel `labels` (joined with the
run's label separator) and every label's probability, regression `score`. In CSV / TSV
each probability is a column `prob_<label>`; JSON lines keep them in one `probabilities`
mapping and multilabel `labels` as a list. A prediction field whose name is already an
input column (a labelled file's `label`) is written as `predicted_<name>`.

The input is read twice, a chunk at a time (`data.examples.read_table_chunks`): a first
pass checks it (its text columns exist, no text is empty, as `load_examples` requires)
before any model is built, the second runs the model chunk by chunk and writes each
chunk's rows as they come, so memory does not grow with the file. A file output is
written to a temporary file beside it and renamed at the end: never left half-written.
`kbft predict` is a thin layer over this module.
"""

import csv
import dataclasses
import json
import math
import os
import secrets
import sys
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np
import pandas as pd

from keras_bert_ft.data import examples as data_lib
from keras_bert_ft.data import readers
from keras_bert_ft.errors import KbftError, bad_argument
from keras_bert_ft.export.serving import concat_batches

FORMATS = data_lib.FORMATS  # csv, tsv, jsonl
DEFAULT_CHUNK_SIZE = 4096
BATCH_SIZE = 64
PREFIX = "predicted_"
_SHOWN_ROWS = 11  # check_filled names ten rows, then "..."
_TSV_BREAKERS = ("\t", "\n", "\r")


def output_format(output: Optional[str] = None, format: Optional[str] = None) -> str:
    """The output's format: `format` if given, else the one `output`'s name ends in
    (.csv, .tsv, .jsonl / .json / .ndjson: JSON lines); JSON lines on stdout. A `format`
    that contradicts `output`'s name is refused."""
    if format is not None and format not in FORMATS:
        raise bad_argument("format", format, f"one of {', '.join(FORMATS)}")
    if output is None:
        return format or "jsonl"
    suffix = os.path.splitext(output)[1].lower()
    implied = data_lib._SUFFIXES.get(suffix)
    if format is None:
        if implied is None:
            raise bad_argument("output", output, f"a file ending in "
                               f"{', '.join(data_lib._SUFFIXES)} (else give its format: "
                               f"{', '.join(FORMATS)})")
        return implied
    if implied is not None and implied != format:
        raise bad_argument("format", format, f"{implied} (or left out) for the output "
                           f"file {output!r}, whose name ends in {suffix}")
    return format


def check_output(output: str, *, overwrite: bool = False, inputs: Sequence = ()) -> None:
    """An output file that can be written: not a folder, in an existing writable folder,
    not one of `inputs`; an existing file only with `overwrite` (it is replaced whole,
    atomically, once every prediction is written)."""
    if not isinstance(output, (str, os.PathLike)) or not os.fspath(output):
        raise bad_argument("output", output, "a file path")
    output = os.fspath(output)
    if os.path.isdir(output):
        raise bad_argument("output", output, "a file path (it is a folder)")
    parent = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise bad_argument("output", output, "a file in an existing folder this user can write")
    if not os.path.lexists(output):
        return
    if not os.path.isfile(output):
        raise bad_argument("output", output, "a new file or a regular file to replace")
    for source in inputs:
        if (isinstance(source, (str, os.PathLike)) and os.path.isfile(source)
                and os.path.samefile(source, output)):
            raise bad_argument("output", output, "another file than the input")
    if not overwrite:
        raise bad_argument("output", output, "a new file (it exists: pass overwrite=True, "
                           "CLI: --overwrite, to replace it)")


def input_columns(source, text_column: str, text_pair_column: Optional[str] = None):
    """(text column, second text column) of `source`: a named dataset (`"mrpc:<path>"`)
    brings its own (`sentence`, `sentence2`), as in `load_examples`."""
    named = readers.split_spec(source)
    if named:
        return "sentence", "sentence2" if readers.READERS[named[0]].pair else None
    return text_column, text_pair_column


@dataclasses.dataclass
class InputFile:
    """Checked input (see `scan_input`): its text columns, every column seen and the row
    count; `chunks()` reads it again, `chunk_size` rows at a time."""
    source: object
    text_column: str
    text_pair_column: Optional[str]
    columns: List
    rows: int
    encoding: str = "utf-8-sig"
    chunk_size: int = DEFAULT_CHUNK_SIZE
    where: str = "input"

    @classmethod
    def from_texts(cls, texts: Sequence[str], pairs: Optional[Sequence[str]] = None,
                   chunk_size: int = DEFAULT_CHUNK_SIZE) -> "InputFile":
        """In-memory texts (`kbft predict --text`): columns `text` (and `text_pair`)."""
        frame = {"text": [str(t) for t in texts]}
        if pairs is not None:
            frame["text_pair"] = [str(t) for t in pairs]
        return cls(pd.DataFrame(frame), "text", None if pairs is None else "text_pair",
                   list(frame), len(texts), chunk_size=chunk_size, where="text")

    @property
    def name(self) -> str:
        return (os.fspath(self.source) if isinstance(self.source, (str, os.PathLike))
                else "<data>")

    def chunks(self) -> Iterator[pd.DataFrame]:
        return data_lib.read_table_chunks(self.source, chunk_size=self.chunk_size,
                                          encoding=self.encoding, where=self.where)


def scan_input(source, *, text_column: str, text_pair_column: Optional[str] = None,
               encoding: str = "utf-8-sig", chunk_size: int = DEFAULT_CHUNK_SIZE,
               where: str = "input", tsv_argument: Optional[str] = None) -> InputFile:
    """Reads `source` through once, a chunk at a time, and checks it as `load_examples`
    would: the text columns exist (checked on the first chunk) and no text is empty (the
    rows named as `check_filled` names them). `tsv_argument`: the output is TSV (the
    argument that chose it); a cell holding a tab or line break is refused, as TSV
    cells cannot hold them."""
    text_column, text_pair_column = input_columns(source, text_column, text_pair_column)
    data = InputFile(source, text_column, text_pair_column, [], 0, encoding, chunk_size,
                     where)
    wanted = [("text_column", text_column), ("text_pair_column", text_pair_column)]
    wanted = [(arg, c) for arg, c in wanted if c is not None]
    seen: Dict = {}  # every column, in first-seen order
    empty = {c: [] for _, c in wanted}
    for chunk in data.chunks():
        seen.update(dict.fromkeys(chunk.columns))
        if data.rows == 0:
            for arg, column in wanted:
                if column not in seen:
                    raise bad_argument(arg, column, f"a column of {data.name} (it has: "
                                       f"{', '.join(map(str, seen))})")
        for _, column in wanted:
            if len(empty[column]) < _SHOWN_ROWS:
                texts = _column_texts(chunk, column)
                empty[column] += [data.rows + i for i, t in enumerate(texts)
                                  if not t.strip()][:_SHOWN_ROWS - len(empty[column])]
        if tsv_argument:
            _check_tsv_cells(chunk, data.rows, tsv_argument)
        data.rows += len(chunk)
    data.columns = list(seen)
    for _, column in wanted:
        if empty[column]:
            bad = set(empty[column])
            # check_filled numbers the values it is given from row 1: hand it every row
            # up to the last empty one seen (lazily), the empty ones empty
            data_lib.check_filled(("" if i in bad else "-" for i in range(max(bad) + 1)),
                                  f"text column {column!r}", where, data.name)
    return data


class PredictionWriter:
    """Rows to `output` in `format` (csv, tsv, jsonl), or to stdout when `output` is None.
    A file is written to a temporary file beside it and renamed over `output` when the
    `with` block ends without an error (else removed): never left half-written. CSV is
    quoted where needed; TSV is not quoted (as kbft reads TSV), so a cell holding a tab
    or line break is refused, naming `argument`."""

    def __init__(self, output: Optional[str], format: str, *, overwrite: bool = False,
                 argument: str = "format"):
        self.output, self.format, self.overwrite = output, format, overwrite
        self.argument = argument
        self.rows = 0
        self._file = self._temp = self._csv = None

    def __enter__(self) -> "PredictionWriter":
        if self.output is None:
            self._file = sys.stdout
        else:
            folder, base = os.path.split(os.path.abspath(self.output))
            self._temp = os.path.join(folder, f".{base}.{secrets.token_hex(4)}.kbft-tmp")
            fd = os.open(self._temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            self._file = os.fdopen(fd, "w", encoding="utf-8", newline="")
        if self.format == "csv":
            self._csv = csv.writer(self._file, lineterminator="\n")
        return self

    def header(self, columns: Sequence) -> None:
        """The CSV / TSV header (JSON lines have none)."""
        if self.format != "jsonl":
            self._write_cells([[_cell(c) for c in columns]], header=True)

    def write(self, rows: Sequence) -> None:
        """Rows: dicts (jsonl) or lists of cells in header order (csv, tsv)."""
        if self.format == "jsonl":
            self._file.write("".join(json.dumps(row, default=_json_value) + "\n"
                                     for row in rows))
        else:
            self._write_cells([[_cell(v) for v in row] for row in rows])
        self.rows += len(rows)

    def _write_cells(self, rows, header: bool = False) -> None:
        if self.format == "csv":
            self._csv.writerows(rows)
            return
        for i, row in enumerate(rows):
            for j, cell in enumerate(row):
                if any(c in cell for c in _TSV_BREAKERS):
                    raise _tsv_refusal(self.argument, None if header else self.rows + i,
                                       f"cell {j + 1}")
        self._file.write("".join("\t".join(row) + "\n" for row in rows))

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.output is None:
            self._file.flush()
            return
        self._file.close()
        if exc_type is None and os.path.lexists(self.output) and not self.overwrite:
            os.remove(self._temp)  # it appeared while predicting: never replaced unasked
            raise bad_argument("output", self.output, "a new file (it was created while "
                               "predicting; pass overwrite=True, CLI: --overwrite)")
        if exc_type is None:
            os.replace(self._temp, self.output)
        elif os.path.exists(self._temp):
            os.remove(self._temp)


class PredictionFields:
    """The names and values of a sentence task's prediction fields, after the input's own
    `columns` (a name already among them gets the prefix `predicted_`)."""

    def __init__(self, task: str, label_names: Sequence[str], format: str,
                 columns: Sequence = (), label_separator: str = ","):
        if task not in ("classification", "multilabel", "regression"):
            raise bad_argument("task", task, "classification, multilabel or regression "
                               "(other tasks' predictions are written as JSON lines)")
        self.task, self.format = task, format
        self.label_names = [str(n) for n in label_names]
        self.separator = label_separator
        taken = {str(c) for c in columns}

        def free(name: str) -> str:
            while name in taken:
                name = PREFIX + name
            taken.add(name)
            return name

        if task == "regression":
            self.names = [free("score")]
            return
        self.names = [free("labels" if task == "multilabel" else "label")]
        if format == "jsonl":
            self.names.append(free("probabilities"))
        else:
            self.names += [free(f"prob_{n}") for n in self.label_names]

    def values(self, outputs: Dict[str, np.ndarray]) -> List[list]:
        """Per example, the values of `names` from a batch of serving outputs."""
        if self.task == "regression":
            return [[score] for score in outputs["score"].tolist()]
        probabilities = outputs["probabilities"].tolist()
        if self.task == "multilabel":
            chosen = [b.decode() for b in outputs["labels"]]
            if self.format == "jsonl":
                chosen = [c.split(self.separator) if c else [] for c in chosen]
        else:
            chosen = [b.decode() for b in outputs["label"]]
        if self.format == "jsonl":
            return [[c, dict(zip(self.label_names, p))]
                    for c, p in zip(chosen, probabilities)]
        return [[c, *p] for c, p in zip(chosen, probabilities)]


def write_predictions(result, data: InputFile, writer: PredictionWriter, *,
                      batch_size: int = BATCH_SIZE) -> int:
    """Runs `result`'s serving over `data` a chunk at a time and writes each chunk's rows
    (input columns, then the prediction) as it comes. Returns the rows written."""
    fields = PredictionFields(result.task, result.label_names, writer.format, data.columns,
                              result.info.get("label_separator", ","))
    writer.header([*data.columns, *fields.names])
    written = 0
    for chunk in data.chunks():
        columns = [_column_texts(chunk, data.text_column)]
        if data.text_pair_column is not None:
            columns.append(_column_texts(chunk, data.text_pair_column))
        outputs = concat_batches(result.serving.run(*columns, batch_size=batch_size))
        predicted = fields.values(outputs)
        if writer.format == "jsonl":
            rows = [{**_present(row), **dict(zip(fields.names, values))}
                    for row, values in zip(chunk.to_dict("records"), predicted)]
        else:
            rows = [[*row, *values] for row, values in zip(
                chunk.reindex(columns=data.columns).itertuples(index=False, name=None),
                predicted)]
        writer.write(rows)
        written += len(rows)
    if written != data.rows:
        raise KbftError(f"{data.name} changed while predicting: {data.rows} rows when it "
                        f"was checked, {written} now. Nothing was written.")
    return written


@dataclasses.dataclass
class PredictionJob:
    """Checked input and output (`plan_file`): `run(result)` writes the predictions."""
    data: InputFile
    output: Optional[str] = None
    format: str = "jsonl"
    overwrite: bool = False
    argument: str = "format"  # the argument that chose a TSV output, for its errors

    def run(self, result, batch_size: int = BATCH_SIZE) -> int:
        """Writes `result`'s predictions for every row; returns the rows written."""
        with PredictionWriter(self.output, self.format, overwrite=self.overwrite,
                              argument=self.argument) as writer:
            return write_predictions(result, self.data, writer, batch_size=batch_size)


def plan_file(input, output: Optional[str] = None, *, text_column: str,
              text_pair_column: Optional[str] = None, pair: bool = False,
              format: Optional[str] = None, encoding: str = "utf-8-sig",
              chunk_size: int = DEFAULT_CHUNK_SIZE, overwrite: bool = False
              ) -> PredictionJob:
    """Checks everything about predicting `input` into `output` before a model is built:
    the output (`output_format`, `check_output`), the columns against the model's
    (`pair`: it takes text pairs) and the whole input (`scan_input`)."""
    fmt = output_format(output, format)
    if output is not None:
        check_output(output, overwrite=overwrite, inputs=[input])
    text_column, text_pair_column = input_columns(input, text_column, text_pair_column)
    if pair and text_pair_column is None:
        raise bad_argument("text_pair_column", None, "the column of the second texts: "
                           "this model takes text pairs")
    if text_pair_column is not None and not pair:
        raise bad_argument("text_pair_column", text_pair_column, "left out: this model "
                           "takes single texts")
    argument = "format" if format is not None else "output"
    data = scan_input(input, text_column=text_column, text_pair_column=text_pair_column,
                      encoding=encoding, chunk_size=chunk_size,
                      tsv_argument=argument if fmt == "tsv" else None)
    return PredictionJob(data, output, fmt, overwrite, argument)


def predict_file(result, input, output: Optional[str] = None, *,
                 format: Optional[str] = None, text_column: Optional[str] = None,
                 text_pair_column: Optional[str] = None, encoding: Optional[str] = None,
                 chunk_size: int = DEFAULT_CHUNK_SIZE, overwrite: bool = False) -> int:
    """Predictions of a sentence model (`fine_tune`'s result or `restore(path)`) for every
    row of `input` (a CSV / TSV / JSON-lines file of any size, a named dataset, a
    DataFrame), written to `output` (.csv, .tsv, .jsonl; None: JSON lines on stdout).
    Columns and encoding default to the run's own. Returns the rows written."""
    config = result.config
    job = plan_file(input, output, format=format, overwrite=overwrite,
                    text_column=text_column or config.text_column,
                    text_pair_column=(text_pair_column if text_pair_column is not None
                                      else config.text_pair_column),
                    pair=bool(result.info.get("pair")), chunk_size=chunk_size,
                    encoding=encoding or config.encoding)
    return job.run(result)


def _column_texts(chunk: pd.DataFrame, column) -> List[str]:
    """The texts of `column` as `load_examples` reads them (a missing value: "")."""
    if column not in chunk.columns:
        return [""] * len(chunk)
    return data_lib._texts(chunk[column])


def _check_tsv_cells(chunk: pd.DataFrame, first_row: int, argument: str) -> None:
    for column in chunk.columns:
        if any(c in str(column) for c in _TSV_BREAKERS):
            raise _tsv_refusal(argument, None, f"column name {column!r}")
        for i, value in enumerate(chunk[column].tolist()):
            cell = _cell(value)
            if any(c in cell for c in _TSV_BREAKERS):
                raise _tsv_refusal(argument, first_row + i, f"column {column!r}")


def _tsv_refusal(argument: str, row: Optional[int], where: str) -> KbftError:
    at = "the header" if row is None else f"row {row + 1}"
    return bad_argument(argument, "tsv", f"csv or jsonl for this data: {at} {where} holds "
                        "a tab or line break, which an unquoted TSV cell cannot")


def _present(row: dict) -> dict:
    """An input row without the keys its JSON line lacked (NaN in the chunk)."""
    return {k: v for k, v in row.items() if not (isinstance(v, float) and math.isnan(v))}


def _cell(value) -> str:
    """One CSV / TSV cell: missing values empty, lists and mappings as JSON."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (bool, list, tuple, dict)):
        return json.dumps(value, default=_json_value)
    return str(value)


def _json_value(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
