"""Per-layer representations of an encoder: load it from any source, run it on texts, compare.

A source is a pretrained encoder (preset, URL, folder), a `kbft train` run folder (its
latest checkpoint) or a keras_bert_ft export; each gives back a `HubEncoder` holding that
source's weights, and the preprocessor that goes with it. `layer_features` reads the
per-layer outputs every TF-Hub BERT encoder built by the Model Garden exposes
(`encoder_outputs`); `LinearCKA` compares two sets of representations (Kornblith et al.
2019) accumulated batch by batch, so the token count is not bounded by memory.
"""

import dataclasses
import os
from typing import Iterator, List, Optional

import numpy as np
import tensorflow as tf

from keras_bert_ft.errors import KbftError, bad_argument

REPRESENTATIONS = ("tokens", "cls", "mean")


@dataclasses.dataclass
class LoadedEncoder:
    """An encoder with a source's weights, its preprocessor and what the source was."""
    encoder: object
    preprocessor: object
    kind: str  # "pretrained", "run" or "export"
    source: str
    handle: str


def load_encoder(source: str, *, seq_length: int = 128, like=None,
                 name: str = "model") -> LoadedEncoder:
    """An encoder with the weights of `source`: a pretrained handle, or a run folder or an
    export read back by `export.restore` (every variable restored, or an error). A
    pretrained encoder is built like `like` (native or TF-Hub graph) when given, so two
    encoders compare variable by variable."""
    from keras_bert_ft.config import FineTuneConfig
    from keras_bert_ft.encoders.native import NativeEncoder, make_encoder
    from keras_bert_ft.export.restore import is_restorable, restore
    from keras_bert_ft.export.saved_model import METADATA_FILE
    from keras_bert_ft.training.build import build_preprocessor
    if not isinstance(source, str) or not source:
        raise bad_argument(name, source, "a preset, encoder folder, run folder or export")
    if is_restorable(source):
        result = restore(source, name=name)
        kind = "export" if os.path.isfile(os.path.join(source, METADATA_FILE)) else "run"
        config, encoder = result.config, result.model.encoder
    else:
        impl = "auto" if like is None else ("native" if isinstance(like, NativeEncoder) else "hub")
        kind, config = "pretrained", FineTuneConfig(encoder=source, encoder_impl=impl)
        encoder = make_encoder(source, impl)
    config = dataclasses.replace(config, seq_length=seq_length)
    return LoadedEncoder(encoder=encoder, preprocessor=build_preprocessor(encoder, config),
                         kind=kind, source=source, handle=config.encoder)


def load_pair(source_a: str, source_b: str, *, seq_length: int = 128):
    """Two encoders to compare: a run or export is read first, so a pretrained one is
    built the way it was."""
    from keras_bert_ft.export.restore import is_restorable
    if is_restorable(source_b) and not is_restorable(source_a):
        b = load_encoder(source_b, seq_length=seq_length, name="model_b")
        return load_encoder(source_a, seq_length=seq_length, like=b.encoder, name="model_a"), b
    a = load_encoder(source_a, seq_length=seq_length, name="model_a")
    return a, load_encoder(source_b, seq_length=seq_length, like=a.encoder, name="model_b")


def encode_texts(preprocessor, texts: List[str], texts_pair=None):
    """Token ids for all texts, cut to the longest real length among them."""
    from keras_bert_ft.data.preprocessing import trim_to_longest
    pair = None if texts_pair is None else tf.constant(list(texts_pair))
    return trim_to_longest(preprocessor(tf.constant(list(texts)), pair))


def layer_features(encoder, features, *, representation: str = "cls",
                   batch_size: int = 64) -> Iterator[List[np.ndarray]]:
    """Per batch, one array per layer: `[CLS]` or masked-mean vectors `[batch, hidden]`,
    or every real token's vector (`tokens`, `[real tokens, hidden]`)."""
    if representation not in REPRESENTATIONS:
        raise bad_argument("representation", representation,
                           f"one of {', '.join(REPRESENTATIONS)}")
    run = tf.function(lambda f: _encoder_outputs(encoder, f))
    total = int(features["input_word_ids"].shape[0])
    for start in range(0, total, batch_size):
        batch = {k: v[start:start + batch_size] for k, v in features.items()}
        outputs = run(batch)
        mask = batch["input_mask"].numpy().astype(bool)
        yield [_pool(out.numpy(), mask, representation) for out in outputs]


def _encoder_outputs(encoder, features):
    outputs = encoder(features, training=False)
    if not isinstance(outputs, dict) or "encoder_outputs" not in outputs:
        raise KbftError(
            "This encoder does not expose per-layer outputs ('encoder_outputs'); TF-Hub "
            "BERT encoders from the TF Model Garden (and `kbft convert`) do.")
    return list(outputs["encoder_outputs"])


def _pool(values: np.ndarray, mask: np.ndarray, representation: str) -> np.ndarray:
    if representation == "cls":
        return values[:, 0]
    if representation == "mean":
        weights = mask[:, :, None].astype(values.dtype)
        return (values * weights).sum(1) / np.maximum(weights.sum(1), 1.0)
    return values[mask]


def all_layer_features(encoder, features, *, representation: str = "cls",
                       batch_size: int = 64) -> List[np.ndarray]:
    """`layer_features` gathered over all batches: one `[examples, hidden]` array per layer."""
    per_layer: Optional[List[list]] = None
    for batch in layer_features(encoder, features, representation=representation,
                                batch_size=batch_size):
        per_layer = per_layer or [[] for _ in batch]
        for i, values in enumerate(batch):
            per_layer[i].append(values)
    return [np.concatenate(v) for v in per_layer or []]


class LinearCKA:
    """Linear CKA between paired rows of X and Y, accumulated batch by batch (float64).

    CKA = ||Xc^T Yc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F) with Xc, Yc column-centred;
    the centred cross-products are recovered from running sums, so it needs
    O(hidden^2) memory whatever the number of rows.
    """

    def __init__(self):
        self.n = 0
        self.sx = self.sy = self.xx = self.yy = self.xy = 0.0

    def update(self, x: np.ndarray, y: np.ndarray) -> None:
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"CKA needs paired rows: {x.shape[0]} vs {y.shape[0]}")
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        self.n += x.shape[0]
        self.sx = self.sx + x.sum(0)
        self.sy = self.sy + y.sum(0)
        self.xx = self.xx + x.T @ x
        self.yy = self.yy + y.T @ y
        self.xy = self.xy + x.T @ y

    def value(self) -> float:
        n = float(self.n)
        xx = self.xx - np.outer(self.sx, self.sx) / n
        yy = self.yy - np.outer(self.sy, self.sy) / n
        xy = self.xy - np.outer(self.sx, self.sy) / n
        denom = np.linalg.norm(xx) * np.linalg.norm(yy)
        return float(np.linalg.norm(xy) ** 2 / denom) if denom > 0 else 0.0


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of two `[n, features]` arrays with paired rows."""
    cka = LinearCKA()
    cka.update(x, y)
    return cka.value()
