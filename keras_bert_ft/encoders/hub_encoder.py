"""HubEncoder: a TF-Hub BERT encoder as a Keras layer whose trainability is set per layer.

A `hub.KerasLayer` is all-or-nothing trainable (tensorflow/hub #247, #713). HubEncoder
keeps the SavedModel's variables in ordered groups (`embeddings`, `layer_0` ...,
`pooler`) and reports only the chosen groups as trainable, so `model.fit` computes
gradients for, and updates, exactly those.
"""

import collections
import os
import re
from typing import Dict, List, Optional, Sequence, Union

from keras_bert_ft._keras import keras  # noqa: F401  (selects tf_keras before hub)
from keras_bert_ft.encoders import presets
from keras_bert_ft.errors import KbftError, bad_argument

import tensorflow_hub as hub  # noqa: E402

# TF2 Model Garden names (`transformer/layer_3/...`) and TF1 BERT names
# (`bert/encoder/layer_3/...`). The one group captures the layer index.
DEFAULT_LAYER_PATTERN = r"(?:^|/)(?:transformer|encoder)/layer_(\d+)/"
_POOLER_PATTERN = r"pooler"
# A final LayerNorm outside the layers (pre-LN encoders) trains with the top layer.
_FINAL_NORM_PATTERN = r"^(?:transformer/)?(?:final_layer_norm|output_layer_norm|encoder_output_layer_norm)"

TrainableSpec = Union[str, int, Sequence[int]]


def group_variables(variables, layer_pattern: Optional[str] = None):
    """Splits encoder variables into ordered groups: embeddings, layer_0 ..., pooler.

    Every variable lands in exactly one group. Returns an `OrderedDict` name -> list,
    with no `layer_i` groups when no variable name matches `layer_pattern`.
    """
    pattern = re.compile(layer_pattern or DEFAULT_LAYER_PATTERN)
    if pattern.groups < 1:
        raise bad_argument("layer_pattern", layer_pattern,
                           "a regular expression with one group capturing the layer index")
    layers: Dict[int, List] = collections.defaultdict(list)
    embeddings, pooler, final_norm = [], [], []
    for var in variables:
        name = var.name
        match = pattern.search(name)
        if match:
            layers[int(match.group(1))].append(var)
        elif re.search(_POOLER_PATTERN, name):
            pooler.append(var)
        elif re.search(_FINAL_NORM_PATTERN, name):
            final_norm.append(var)
        else:
            embeddings.append(var)
    indices = sorted(layers)
    if indices and indices != list(range(len(indices))):
        raise KbftError(
            f"Encoder layer indices must run 0..N-1 without gaps. Received: "
            f"layer indices {indices} from layer_pattern={pattern.pattern!r}")
    if indices:
        layers[indices[-1]].extend(final_norm)
    else:
        embeddings.extend(final_norm)
    groups = collections.OrderedDict(embeddings=embeddings)
    for i in indices:
        groups[f"layer_{i}"] = layers[i]
    groups["pooler"] = pooler
    return groups


def resolve_layers(spec: TrainableSpec, num_layers: int) -> List[int]:
    """The trainable layer indices for a `trainable_layers` spec."""
    expected = ('"all", "none", an int k in [0, num_layers] (the top k layers) or a '
                f"list of layer indices in [0, {num_layers - 1}]")
    if isinstance(spec, str):
        if spec == "all":
            return list(range(num_layers))
        if spec == "none":
            return []
        raise bad_argument("trainable_layers", spec, expected)
    if isinstance(spec, bool):
        raise bad_argument("trainable_layers", spec, expected)
    if isinstance(spec, int):
        if not 0 <= spec <= num_layers:
            raise bad_argument("trainable_layers", spec,
                               f"{expected} (this encoder has {num_layers} layers)")
        return list(range(num_layers - spec, num_layers))
    if isinstance(spec, (list, tuple)):
        bad = [i for i in spec if isinstance(i, bool) or not isinstance(i, int)
               or not 0 <= i < num_layers]
        if bad:
            raise bad_argument("trainable_layers", list(spec),
                               f"{expected} (this encoder has {num_layers} layers; "
                               f"bad index {bad[0]!r})")
        return sorted(set(spec))
    raise bad_argument("trainable_layers", spec, expected)


def is_remote(handle: str) -> bool:
    return bool(re.match(r"^[a-z][a-z0-9+.-]*://", handle))


class LayerGroups:
    """Per-layer trainability over `self._groups` (embeddings, layer_0 ..., pooler -> their
    variables): what HubEncoder and NativeEncoder share."""

    def _start_training_state(self, trainable_layers, train_embeddings, train_pooler,
                              reinit_layers, reinit_pooler, reinit_seed) -> None:
        """Trainable groups and re-initialisation, once the groups are known."""
        self._trainable_groups = set()
        self.set_trainable_layers(trainable_layers, train_embeddings=train_embeddings,
                                  train_pooler=train_pooler)
        self.reinitialized_groups = []
        if reinit_layers or reinit_pooler:
            self.reinitialize(reinit_layers, pooler=reinit_pooler, seed=reinit_seed)

    def reinitialize(self, top_k: int, *, pooler: Optional[bool] = None,
                     seed: Optional[int] = None) -> List[str]:
        """Re-initialises the top `top_k` layers (and the pooler) with BERT's init."""
        from keras_bert_ft.encoders.reinit import reinitialize
        if top_k:
            self._require_layers(f"reinit_layers={top_k!r}")
        chosen = reinitialize(self._groups, top_k, seed=seed,
                              pooler=bool(top_k) if pooler is None else pooler)
        self.reinitialized_groups = chosen
        return chosen

    # ----------------------------------------------------------------- structure
    @property
    def handle(self) -> str:
        return self._requested_handle

    @property
    def num_layers(self) -> int:
        return sum(1 for g in self._groups if g.startswith("layer_"))

    @property
    def max_seq_length(self) -> Optional[int]:
        """Rows of the position-embedding table: the longest input the encoder takes."""
        for var in self._groups["embeddings"]:
            if "position" in var.name and len(var.shape) == 2:
                return int(var.shape[0])
        return None

    def layer_groups(self) -> "collections.OrderedDict[str, list]":
        """Ordered `embeddings`, `layer_0` ..., `pooler` -> their variables."""
        self._require_layers("layer_groups()")
        return collections.OrderedDict((k, list(v)) for k, v in self._groups.items())

    # -------------------------------------------------------------- trainability
    def set_trainable_layers(self, spec: TrainableSpec, *,
                             train_embeddings: Optional[bool] = None,
                             train_pooler: Optional[bool] = None) -> None:
        """Chooses the trainable groups; takes effect at the next `compile` / `fit`."""
        if spec not in ("all", "none"):
            self._require_layers(f"trainable_layers={spec!r}")
        layers = resolve_layers(spec, self.num_layers)
        if train_embeddings is None:
            train_embeddings = len(layers) == self.num_layers
        if train_pooler is None:
            train_pooler = getattr(self, "_train_pooler", True)
        self._train_pooler = bool(train_pooler)
        chosen = {f"layer_{i}" for i in layers}
        if train_embeddings:
            chosen.add("embeddings")
        if self._train_pooler:
            chosen.add("pooler")
        self._trainable_groups = chosen
        self._trainable_spec = spec

    @property
    def trainable_groups(self) -> List[str]:
        return [g for g in self._groups if g in self._trainable_groups]

    @property
    def trainable_weights(self):
        if not self.trainable:
            return []
        return [v for g in self.trainable_groups for v in self._groups[g]]

    def trainable_report(self) -> str:
        """A table of trainable / frozen parameters per group."""
        return format_report(self.report_rows())

    def report_rows(self):
        """(group, parameters, trainable) per group, in order."""
        active = set(self.trainable_groups) if self.trainable else set()
        return [(g, sum(int(v.shape.num_elements()) for v in vs), g in active)
                for g, vs in self._groups.items()]

    def _require_layers(self, what: str) -> None:
        if not self.num_layers:
            pattern = self._layer_pattern or DEFAULT_LAYER_PATTERN
            raise KbftError(
                f"{what} needs per-layer variable names, but no variable of encoder "
                f"{self._requested_handle!r} matches layer_pattern={pattern!r} (encoders "
                "that share one layer across depth, like ALBERT, have none). Pass "
                "layer_pattern=<regex with one group for the layer index>, or use "
                "trainable_layers='all' or 'none'.")


class HubEncoder(LayerGroups, hub.KerasLayer):
    """A TF-Hub-format BERT encoder with per-layer trainability.

    Args:
        handle: a preset name (`"minilm-l6"`), a tfhub.dev/Kaggle URL, a local folder or
            a `gs://` path of a BERT encoder SavedModel (inputs `input_word_ids`,
            `input_mask`, `input_type_ids`; outputs `pooled_output`, `sequence_output`).
        trainable_layers: `"all"`, `"none"`, an int k (the top k transformer layers) or a
            list of layer indices.
        train_embeddings: whether the embeddings train; `None` means "only when every
            layer trains".
        train_pooler: whether the pooler dense layer trains.
        layer_pattern: a regex with one group capturing the layer index, for encoders
            whose variables are named differently from the TF2 / TF1 BERT names.
        reinit_layers: re-initialise the top k transformer layers with BERT's init
            (truncated normal 0.02, biases 0, LayerNorm 1/0) after loading.
        reinit_pooler: re-initialise the pooler too; `None` means "when reinit_layers > 0".
        reinit_seed: seed of the re-initialisation draws.

    Example:
        >>> encoder = HubEncoder("minilm-l6", trainable_layers=2)
        >>> print(encoder.trainable_report())
    """

    def __init__(self, handle: str, *, trainable_layers: TrainableSpec = "all",
                 train_embeddings: Optional[bool] = None, train_pooler: bool = True,
                 layer_pattern: Optional[str] = None, reinit_layers: int = 0,
                 reinit_pooler: Optional[bool] = None, reinit_seed: Optional[int] = None,
                 name: str = "encoder", **kwargs):
        if not isinstance(handle, str) or not handle:
            raise bad_argument("encoder", handle,
                               "a preset name, URL, local folder or gs:// path")
        self._requested_handle = handle
        resolved = presets.resolve_encoder(handle)
        check_local_handle(resolved)
        try:
            super().__init__(resolved, trainable=True, name=name, **kwargs)
        except KbftError:
            raise
        except Exception as err:  # the hub resolver / loader raise many kinds
            raise _load_error(handle, resolved, err) from err
        self._layer_pattern = layer_pattern
        self._groups = group_variables(self._func.trainable_variables, layer_pattern)
        if not self._groups["embeddings"] and not self.num_layers:
            raise KbftError(f"Encoder {handle!r} has no trainable variables to group.")
        self._start_training_state(trainable_layers, train_embeddings, train_pooler,
                                   reinit_layers, reinit_pooler, reinit_seed)

    @property
    def hidden_size(self) -> int:
        return int(self._func.trainable_variables[0].shape[-1])

    @property
    def non_trainable_weights(self):
        chosen = {id(v) for v in self.trainable_weights}
        everything = self._trainable_weights + self._non_trainable_weights
        return [v for v in everything if id(v) not in chosen]


def format_report(rows) -> str:
    """Renders (group, parameters, trainable) rows as a fixed-width table."""
    lines = [f"{'group':<14}{'parameters':>14}  trainable", "-" * 36]
    total = trainable = 0
    for group, count, is_trainable in rows:
        lines.append(f"{group:<14}{count:>14,}  {'yes' if is_trainable else 'no'}")
        total += count
        trainable += count if is_trainable else 0
    lines.append("-" * 36)
    lines.append(f"{'trainable':<14}{trainable:>14,}  ({100.0 * trainable / max(total, 1):.1f}%)")
    lines.append(f"{'frozen':<14}{total - trainable:>14,}")
    return "\n".join(lines)


def check_local_handle(handle: str) -> None:
    if is_remote(handle):
        return
    if not os.path.isdir(handle):
        raise bad_argument("encoder", handle,
                           "a preset name, a URL, or an existing local folder holding a "
                           "SavedModel (this path does not exist)")
    if not (os.path.exists(os.path.join(handle, "saved_model.pb"))
            or os.path.exists(os.path.join(handle, "saved_model.pbtxt"))):
        raise bad_argument("encoder", handle,
                           "a folder holding a SavedModel (no saved_model.pb in it)")


def _load_error(requested: str, resolved: str, err: Exception) -> KbftError:
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if is_remote(resolved) and not resolved.startswith("gs://"):
        return KbftError(
            f"Could not download encoder handle {requested!r} ({reason[:200]}). With no "
            "network, download the model elsewhere (tfhub.dev/Kaggle, "
            "'?tf-hub-format=compressed'), unpack it and pass the local folder or a gs:// "
            "path instead, e.g. --encoder /path/to/bert_en_uncased_L-12_H-768_A-12_4")
    return KbftError(f"Could not load encoder handle {requested!r}: {reason[:300]}")
