"""Runs a keras_bert_ft ONNX export with NumPy and onnxruntime only (no TensorFlow).

`kbft export --format onnx` copies this file beside `model.onnx` as
`kbft_onnx_runner.py`, so it runs without keras_bert_ft installed:

    python kbft_onnx_runner.py EXPORT_DIR "a gorgeous film" "a dull mess"

    >>> model = OnnxModel("runs/sst2/onnx")
    >>> model.predict(["a gorgeous film"])["probabilities"]

Its WordPiece tokenizer reproduces the export's (tensorflow-text's BERT tokenizer):
optional lower-casing (NFKD, case folding, combining marks removed), control characters
as spaces and format characters dropped, splits on whitespace, punctuation and CJK
ideographs, greedy
longest-match word pieces (`##` continuations), words over 100 UTF-8 bytes or with no
match become [UNK]; pairs are trimmed round-robin to fit the sequence length.
"""

import json
import os
import sys
import unicodedata
from typing import Dict, List, Optional, Sequence

import numpy as np

MAX_WORD_BYTES = 100


def _is_punctuation(char: str) -> bool:
    code = ord(char)
    if 33 <= code <= 47 or 58 <= code <= 64 or 91 <= code <= 96 or 123 <= code <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def _is_cjk(char: str) -> bool:
    code = ord(char)
    return (0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF or 0x20000 <= code <= 0x2A6DF
            or 0x2A700 <= code <= 0x2B73F or 0x2B740 <= code <= 0x2B81F
            or 0x2B820 <= code <= 0x2CEAF or 0xF900 <= code <= 0xFAFF
            or 0x2F800 <= code <= 0x2FA1F)


class WordPiece:
    """BERT's basic + WordPiece tokenization over a `vocab.txt` (ids are line numbers;
    a token listed twice keeps its first line)."""

    def __init__(self, vocab_file: str, lower_case: bool = True, unk_token: str = "[UNK]"):
        self.vocab: Dict[str, int] = {}
        with open(vocab_file, encoding="utf-8") as f:
            for i, line in enumerate(f.read().splitlines()):
                self.vocab.setdefault(line, i)
        self.lower_case = lower_case
        self.unk_id = self.vocab[unk_token]

    def _normalize(self, text: str) -> str:
        if self.lower_case:  # compatibility forms, case folding ("ß" -> "ss"), no accents
            text = unicodedata.normalize("NFKD", unicodedata.normalize("NFKD", text).casefold())
            text = "".join(c for c in text if unicodedata.category(c) != "Mn")
        return text

    def words(self, text: str) -> List[str]:
        out, word = [], []
        for char in self._normalize(text):
            category = unicodedata.category(char)
            if char.isspace() or category in ("Zs", "Zl", "Zp", "Cc"):  # control chars split
                out.append("".join(word))
                word = []
            elif category == "Cf":  # format characters (zero-width space, soft hyphen) vanish
                continue
            elif _is_punctuation(char) or _is_cjk(char):
                out += ["".join(word), char]
                word = []
            else:
                word.append(char)
        out.append("".join(word))
        return [w for w in out if w]

    def _pieces(self, word: str) -> List[int]:
        if len(word.encode("utf-8")) > MAX_WORD_BYTES:
            return [self.unk_id]
        ids, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    ids.append(self.vocab[piece])
                    break
                end -= 1
            if end == start:
                return [self.unk_id]
            start = end
        return ids

    def tokenize(self, text: str) -> List[int]:
        return [i for word in self.words(text) for i in self._pieces(word)]


def trim_round_robin(segments: Sequence[List[int]], budget: int) -> List[List[int]]:
    """At most `budget` ids in all, a piece from each segment in turn (the first first)."""
    if len(segments) == 1:
        return [list(segments[0][:budget])]
    a, b = segments
    first = min(len(a), max(budget - len(b), (budget + 1) // 2))
    return [list(a[:first]), list(b[:budget - first])]


class OnnxModel:
    """An ONNX export folder (`model.onnx`, `vocab.txt`, `tokenizer.json`) ready to run."""

    def __init__(self, folder: str, threads: Optional[int] = None):
        import onnxruntime as ort
        with open(os.path.join(folder, "tokenizer.json"), encoding="utf-8") as f:
            self.settings = json.load(f)
        self.tokenizer = WordPiece(os.path.join(folder, "vocab.txt"),
                                   lower_case=self.settings["lower_case"],
                                   unk_token=self.settings["unk_token"])
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(os.path.join(folder, "model.onnx"), options,
                                            providers=["CPUExecutionProvider"])

    def encode(self, texts: Sequence[str], texts_pair: Optional[Sequence[str]] = None):
        """int32 `input_word_ids`, `input_mask`, `input_type_ids`, padded to the longest."""
        s = self.settings
        rows = []
        for i, text in enumerate(texts):
            segments = [self.tokenizer.tokenize(text)]
            if texts_pair is not None:
                segments.append(self.tokenizer.tokenize(texts_pair[i]))
            segments = trim_round_robin(segments, s["seq_length"] - len(segments) - 1)
            ids, types = [s["cls_id"]], [0]
            for k, segment in enumerate(segments):
                ids += segment + [s["sep_id"]]
                types += [k] * (len(segment) + 1)
            rows.append((ids, types))
        length = max(len(ids) for ids, _ in rows)
        word_ids = np.full((len(rows), length), s["pad_id"], np.int32)
        mask = np.zeros((len(rows), length), np.int32)
        type_ids = np.zeros((len(rows), length), np.int32)
        for r, (ids, types) in enumerate(rows):
            word_ids[r, :len(ids)], mask[r, :len(ids)], type_ids[r, :len(ids)] = ids, 1, types
        return {"input_word_ids": word_ids, "input_mask": mask, "input_type_ids": type_ids}

    def predict(self, texts: Sequence[str], texts_pair: Optional[Sequence[str]] = None,
                batch_size: int = 64) -> Dict[str, np.ndarray]:
        """The export's numbers (and, for classification, `label` names) for raw texts."""
        if bool(self.settings["pair"]) != (texts_pair is not None):
            raise ValueError(f"This model takes {'text pairs' if self.settings['pair'] else 'one text'}"
                             " per example.")
        outputs: Dict[str, list] = {k: [] for k in self.settings["outputs"]}
        for start in range(0, len(texts), batch_size):
            pair = texts_pair[start:start + batch_size] if texts_pair is not None else None
            feed = self.encode(texts[start:start + batch_size], pair)
            for key, value in zip(self.settings["outputs"], self.session.run(
                    self.settings["outputs"], feed)):
                outputs[key].append(value)
        result = {k: np.concatenate(v) for k, v in outputs.items()}
        if self.settings["task"] == "classification" and len(texts):
            names = np.array(self.settings["label_names"], dtype=object)
            result["label"] = names[result["probabilities"].argmax(-1)]
        return result


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2:
        print("usage: python kbft_onnx_runner.py EXPORT_DIR TEXT [TEXT ...]", file=sys.stderr)
        return 2
    model = OnnxModel(argv[0])
    texts = argv[1:]
    pair = None
    if model.settings["pair"]:
        if len(texts) % 2:
            print("a pair model takes TEXT TEXT_PAIR ... (an even number of texts)", file=sys.stderr)
            return 2
        texts, pair = texts[0::2], texts[1::2]
    result = model.predict(texts, pair)
    for i, text in enumerate(texts):
        print(json.dumps({"text": text, **{k: np.asarray(v[i]).tolist() for k, v in result.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
