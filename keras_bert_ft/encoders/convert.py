"""Converts Hugging Face and original TF1 BERT checkpoints to a TF-Hub-format encoder + preprocessor.

`convert_hf_bert(SRC, OUT)` and `convert_tf1_bert(SRC, OUT)` both write

    OUT/encoder        SavedModel, TF-Hub encoder API (input_word_ids, input_mask,
                       input_type_ids -> pooled_output, sequence_output, encoder_outputs)
    OUT/preprocessor   SavedModel, TF-Hub preprocessor API (tokenize, bert_pack_inputs)
    OUT/kbft_convert.json   where it came from, for humans and `kbft` itself

and, when the checkpoint has BERT's MLM head (`cls.predictions.*`), keeps it as
`OUT/encoder/assets.extra/kbft_mlm_head.npz` for further pre-training (tasks/pretrain.py).
`write_trained_encoder` writes a pretrain run's encoder by the same writer.

The source is first read and checked into NumPy arrays named like the variables of the
public TF-Hub BERT encoders (`transformer/layer_0/self_attention/query/kernel`, ...), so
every problem is reported with the source's own tensor names before TensorFlow builds
anything. The export itself is tf-models-official's (via `tfhub_format`).
"""

import glob
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from keras_bert_ft.paths import check_output_folder
from keras_bert_ft.errors import KbftError, bad_argument

ENCODER_DIR = "encoder"
PREPROCESSOR_DIR = "preprocessor"
INFO_FILE = "kbft_convert.json"

# What each source's `hidden_act` means. HF "gelu" is the exact erf form, but the
# original Google BERT's "gelu" is the tanh approximation, which is also what
# tf-models' own "gelu" string means. "exact" is passed as a callable (see `_activation`).
_HF_ACTIVATIONS = {"gelu": "exact", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh",
                   "gelu_fast": "tanh", "relu": "relu"}
_TF1_ACTIVATIONS = {"gelu": "tanh", "relu": "relu"}


@dataclass
class _Source:
    """A checked checkpoint: its shape, its weights in TF-Hub names and layouts, its vocab."""
    kind: str
    src_dir: str
    dims: Dict[str, int]
    activation: str  # "exact" | "tanh" | "relu"
    weights: Dict[str, np.ndarray]
    vocab_file: str
    do_lower_case: bool
    # BERT's MLM head (tasks/pretrain.py HEAD_WEIGHTS names), when the source has one.
    mlm_head: Optional[Dict[str, np.ndarray]] = None


# ----------------------------------------------------------------------------- public


def convert_hf_bert(src_dir: str, out_dir: str, *, seq_length: int = 128,
                    do_lower_case: Optional[bool] = None, overwrite: bool = False,
                    src_name: str = "src_dir", out_name: str = "out_dir") -> str:
    """Converts a Hugging Face BERT folder (config.json, vocab.txt, *.safetensors).

    `do_lower_case=None` reads it from tokenizer_config.json / tokenizer.json, else
    guesses it from the vocabulary. Returns `out_dir`. `src_name` / `out_name`: what
    errors call the two folders (the CLI passes its flags' names).
    """
    _check_seq_length(seq_length)
    check_output_folder(out_dir, out_name, overwrite=overwrite)
    source = read_hf_bert(src_dir, do_lower_case=do_lower_case, name=src_name)
    return _write(source, out_dir, seq_length=seq_length, overwrite=overwrite,
                  name=out_name)


def convert_tf1_bert(src_dir: str, out_dir: str, *, seq_length: int = 128,
                     do_lower_case: Optional[bool] = None, overwrite: bool = False,
                     src_name: str = "src_dir", out_name: str = "out_dir") -> str:
    """Converts an original Google BERT folder (bert_model.ckpt.*, bert_config.json, vocab.txt).

    `do_lower_case=None` takes it from the folder name ("uncased_L-12_..." / "cased_...")
    or else from the vocabulary. Returns `out_dir`. `src_name` / `out_name` as for
    `convert_hf_bert`.
    """
    _check_seq_length(seq_length)
    check_output_folder(out_dir, out_name, overwrite=overwrite)
    source = read_tf1_bert(src_dir, do_lower_case=do_lower_case, name=src_name)
    return _write(source, out_dir, seq_length=seq_length, overwrite=overwrite,
                  name=out_name)


def detect_format(src_dir: str) -> str:
    """"hf" or "tf1", from the files in `src_dir`."""
    _check_src_dir(src_dir)
    if os.path.isfile(os.path.join(src_dir, "config.json")):
        return "hf"
    if os.path.isfile(os.path.join(src_dir, "bert_config.json")):
        return "tf1"
    raise bad_argument("src_dir", src_dir, "a Hugging Face BERT folder (config.json) "
                       "or an original TF1 BERT folder (bert_config.json)")


def convert_checkpoint(src_dir: str, out_dir: str, *, seq_length: int = 128,
                       do_lower_case: Optional[bool] = None, overwrite: bool = False) -> str:
    """`convert_hf_bert` or `convert_tf1_bert`, whichever `detect_format` picks."""
    convert = {"hf": convert_hf_bert, "tf1": convert_tf1_bert}[detect_format(src_dir)]
    return convert(src_dir, out_dir, seq_length=seq_length, do_lower_case=do_lower_case,
                   overwrite=overwrite)


# ----------------------------------------------------------------------------- Hugging Face


def read_hf_bert(src_dir: str, *, do_lower_case: Optional[bool] = None,
                 name: str = "src_dir") -> _Source:
    """Reads and checks a Hugging Face BERT folder into TF-Hub-named NumPy weights.
    `name`: what errors call `src_dir`."""
    _check_src_dir(src_dir, name)
    config = _read_json(src_dir, "config.json", name)
    model_type = config.get("model_type")
    if model_type != "bert":
        raise KbftError(
            f"{name} must hold a BERT checkpoint (config.json model_type 'bert'; RoBERTa, "
            "DistilBERT, GPT-2 etc. use other layouts or tokenizers). "
            f"Received: {name}={src_dir!r} with model_type={model_type!r}", argument=name)
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise KbftError(
            "config.json position_embedding_type must be 'absolute'. Received: "
            f"position_embedding_type={config['position_embedding_type']!r} in {name}="
            f"{src_dir!r}", argument=name)
    dims = _dims(config, "config.json", src_dir, name, {
        "vocab_size": "vocab_size", "hidden_size": "hidden_size",
        "num_layers": "num_hidden_layers", "num_heads": "num_attention_heads",
        "intermediate_size": "intermediate_size", "max_positions": "max_position_embeddings",
        "type_vocab_size": "type_vocab_size"})
    if config.get("embedding_size", dims["hidden_size"]) != dims["hidden_size"]:
        raise KbftError("config.json embedding_size must equal hidden_size (factorised "
                        f"embeddings are ALBERT's). Received: embedding_size="
                        f"{config['embedding_size']!r} in {name}={src_dir!r}", argument=name)
    activation = _pick_activation(config.get("hidden_act", "gelu"), _HF_ACTIVATIONS,
                                  "config.json", src_dir, name)
    eps = float(config.get("layer_norm_eps", 1e-12))
    if not np.isclose(eps, 1e-12, rtol=0, atol=1e-13):
        # tf-models' BertEncoder hard-codes 1e-12; against unit-variance activations
        # a different epsilon changes outputs by about that relative amount only.
        warnings.warn(f"{src_dir}: layer_norm_eps={eps} is exported as 1e-12.")

    vocab_file = _require_file(src_dir, "vocab.txt", name)
    tensors, files = _load_safetensors(src_dir, name)
    prefix = _hf_prefix(tensors, files, src_dir, name)
    weights = {}
    missing = []
    for tfhub_name, hf_name, shape, transform in _hf_plan(dims):
        key = _hf_key(tensors, prefix + hf_name)
        if key is None:
            missing.append(prefix + hf_name)
            continue
        value = tensors[key]
        if tuple(value.shape) != shape:
            raise KbftError(
                f"Tensor {key!r} in {', '.join(files)} must have shape {shape} (from "
                f"config.json). Received: shape={tuple(value.shape)} in {name}={src_dir!r}",
                argument=name)
        weights[tfhub_name] = transform(value.astype(np.float32))
    if missing:
        raise KbftError(
            f"{name} must hold every BERT tensor; {len(missing)} missing from "
            f"{', '.join(files)}: {', '.join(missing[:8])}"
            f"{' ...' if len(missing) > 8 else ''}. Received: {name}={src_dir!r}",
            argument=name)

    _check_vocab(vocab_file, dims["vocab_size"])
    if do_lower_case is None:
        do_lower_case = _hf_lower_case(src_dir, vocab_file, name)
    head = _read_head({tfhub: _hf_key(tensors, hf) for tfhub, hf, _, _ in _hf_head_plan(dims)},
                      lambda key: tensors[key], _hf_head_plan(dims), ", ".join(files),
                      src_dir, name)
    return _Source("hf", src_dir, dims, activation, weights, vocab_file, do_lower_case, head)


def _hf_head_plan(dims) -> List[Tuple[str, str, tuple, Callable]]:
    """(head weight, HF tensor, HF shape, HF->Keras layout) of BERT's MLM head
    (`BertForPreTraining` / `BertForMaskedLM`; the decoder is the tied embedding table)."""
    h, keep = dims["hidden_size"], np.asarray
    return [("transform/dense/kernel", "cls.predictions.transform.dense.weight", (h, h),
             np.transpose),
            ("transform/dense/bias", "cls.predictions.transform.dense.bias", (h,), keep),
            ("transform/layer_norm/gamma", "cls.predictions.transform.LayerNorm.weight", (h,),
             keep),
            ("transform/layer_norm/beta", "cls.predictions.transform.LayerNorm.bias", (h,),
             keep),
            ("output_bias", "cls.predictions.bias", (dims["vocab_size"],), keep)]


def _tf1_head_plan(dims) -> List[Tuple[str, str, tuple, Callable]]:
    """As `_hf_head_plan`, for google-research/bert's `cls/predictions/*` variables."""
    h, keep = dims["hidden_size"], np.asarray
    return [("transform/dense/kernel", "cls/predictions/transform/dense/kernel", (h, h), keep),
            ("transform/dense/bias", "cls/predictions/transform/dense/bias", (h,), keep),
            ("transform/layer_norm/gamma", "cls/predictions/transform/LayerNorm/gamma", (h,),
             keep),
            ("transform/layer_norm/beta", "cls/predictions/transform/LayerNorm/beta", (h,),
             keep),
            ("output_bias", "cls/predictions/output_bias", (dims["vocab_size"],), keep)]


def _read_head(keys: Dict[str, Optional[str]], read: Callable, plan, files: str, src_dir,
               name) -> Optional[Dict[str, np.ndarray]]:
    """The MLM head's weights when the source has all of them, else None (a partial head
    is left out with a warning: pre-training starts a new one); a misshapen head is
    refused with the source's names."""
    found = {tfhub: key for tfhub, key in keys.items() if key is not None}
    if len(found) < len(plan):
        if found:
            missing = [theirs for ours, theirs, _, _ in plan if ours not in found]
            warnings.warn(f"{src_dir}: the MLM head is left out ({', '.join(missing)} "
                          f"missing from {files}).")
        return None
    head = {}
    for ours, theirs, shape, transform in plan:
        value = np.asarray(read(found[ours]))
        if tuple(value.shape) != shape:
            raise KbftError(f"Tensor {found[ours]!r} in {files} must have shape {shape} (from "
                            f"the config). Received: shape={tuple(value.shape)} in "
                            f"{name}={src_dir!r}", argument=name)
        head[ours] = transform(value.astype(np.float32))
    return head


def _hf_plan(dims) -> List[Tuple[str, str, tuple, Callable]]:
    """(TF-Hub variable, HF tensor, HF shape, HF->TF-Hub layout) for every weight.

    PyTorch Linear stores (out, in); Keras kernels are (in, out), and tf-models'
    attention keeps heads as a separate axis: q/k/v (H, heads, H/heads), output
    projection (heads, H/heads, H).
    """
    h, n, inner = dims["hidden_size"], dims["num_heads"], dims["intermediate_size"]
    d = h // n
    keep = np.asarray
    plan = [
        ("word_embeddings/embeddings", "embeddings.word_embeddings.weight",
         (dims["vocab_size"], h), keep),
        ("position_embedding/embeddings", "embeddings.position_embeddings.weight",
         (dims["max_positions"], h), keep),
        ("type_embeddings/embeddings", "embeddings.token_type_embeddings.weight",
         (dims["type_vocab_size"], h), keep),
        ("embeddings/layer_norm/gamma", "embeddings.LayerNorm.weight", (h,), keep),
        ("embeddings/layer_norm/beta", "embeddings.LayerNorm.bias", (h,), keep),
    ]
    for i in range(dims["num_layers"]):
        hf, tf_ = f"encoder.layer.{i}.", f"transformer/layer_{i}/"
        for part in ("query", "key", "value"):
            plan += [
                (f"{tf_}self_attention/{part}/kernel", f"{hf}attention.self.{part}.weight",
                 (h, h), lambda w: w.T.reshape(h, n, d)),
                (f"{tf_}self_attention/{part}/bias", f"{hf}attention.self.{part}.bias",
                 (h,), lambda b: b.reshape(n, d)),
            ]
        plan += [
            (f"{tf_}self_attention/attention_output/kernel",
             f"{hf}attention.output.dense.weight", (h, h), lambda w: w.T.reshape(n, d, h)),
            (f"{tf_}self_attention/attention_output/bias",
             f"{hf}attention.output.dense.bias", (h,), keep),
            (f"{tf_}self_attention_layer_norm/gamma",
             f"{hf}attention.output.LayerNorm.weight", (h,), keep),
            (f"{tf_}self_attention_layer_norm/beta",
             f"{hf}attention.output.LayerNorm.bias", (h,), keep),
            (f"{tf_}intermediate/kernel", f"{hf}intermediate.dense.weight", (inner, h),
             np.transpose),
            (f"{tf_}intermediate/bias", f"{hf}intermediate.dense.bias", (inner,), keep),
            (f"{tf_}output/kernel", f"{hf}output.dense.weight", (h, inner), np.transpose),
            (f"{tf_}output/bias", f"{hf}output.dense.bias", (h,), keep),
            (f"{tf_}output_layer_norm/gamma", f"{hf}output.LayerNorm.weight", (h,), keep),
            (f"{tf_}output_layer_norm/beta", f"{hf}output.LayerNorm.bias", (h,), keep),
        ]
    plan += [
        ("pooler_transform/kernel", "pooler.dense.weight", (h, h), np.transpose),
        ("pooler_transform/bias", "pooler.dense.bias", (h,), keep),
    ]
    return plan


def _load_safetensors(src_dir, name="src_dir") -> Tuple[Dict[str, np.ndarray], List[str]]:
    """All tensors of model.safetensors, or of the shards its index lists."""
    from safetensors.numpy import load_file

    index = os.path.join(src_dir, "model.safetensors.index.json")
    if os.path.isfile(os.path.join(src_dir, "model.safetensors")):
        files = ["model.safetensors"]
    elif os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        others = [n for n in ("pytorch_model.bin", "tf_model.h5") if
                  os.path.isfile(os.path.join(src_dir, n))]
        hint = (f" It has {', '.join(others)}, which this converter does not read (no "
                "torch); re-save it with save_pretrained(safe_serialization=True).") if others else ""
        raise KbftError(f"{name} must contain model.safetensors.{hint} Received: "
                        f"{name}={src_dir!r}", argument=name)
    tensors = {}
    for file in files:
        path = _require_file(src_dir, file, name)
        try:
            tensors.update(load_file(path))
        except Exception as e:  # bf16 (no NumPy dtype), truncated file, ...
            raise KbftError(f"{file} must be a readable float32/float16 safetensors file. "
                            f"Received: {path!r} ({e})") from None
    return tensors, files


def _hf_prefix(tensors, files, src_dir, name="src_dir") -> str:
    """"" for BertModel files, "bert." for BertFor* heads, whatever wraps it otherwise."""
    anchor = "embeddings.word_embeddings.weight"
    prefixes = sorted((k[:-len(anchor)] for k in tensors if k.endswith(anchor)), key=len)
    if not prefixes:
        raise KbftError(f"{name} must hold every BERT tensor; missing from "
                        f"{', '.join(files)}: {anchor} (nor bert.{anchor}). "
                        f"Received: {name}={src_dir!r}", argument=name)
    return prefixes[0]


def _hf_key(tensors, name) -> Optional[str]:
    """`name`, or its pre-2019 spelling (LayerNorm.gamma/beta instead of weight/bias)."""
    if name in tensors:
        return name
    old = name.replace("LayerNorm.weight", "LayerNorm.gamma").replace(
        "LayerNorm.bias", "LayerNorm.beta")
    return old if old in tensors else None


def _hf_lower_case(src_dir, vocab_file, name="src_dir") -> bool:
    """tokenizer_config.json, then tokenizer.json's normalizer, then the vocabulary."""
    lower, strip = None, None
    path = os.path.join(src_dir, "tokenizer_config.json")
    if os.path.isfile(path):
        cfg = _read_json(src_dir, "tokenizer_config.json", name)
        lower, strip = cfg.get("do_lower_case"), cfg.get("strip_accents")
    path = os.path.join(src_dir, "tokenizer.json")
    if lower is None and os.path.isfile(path):
        norm = _read_json(src_dir, "tokenizer.json", name).get("normalizer") or {}
        if norm.get("type") == "BertNormalizer":
            lower, strip = norm.get("lowercase"), norm.get("strip_accents")
    if lower is None:
        lower = _vocab_is_uncased(vocab_file)
    # TF-Text's BertTokenizer strips accents exactly when it lower-cases.
    if strip is not None and bool(strip) != bool(lower):
        raise KbftError(
            "The tokenizer's strip_accents must be null or equal do_lower_case (TF-Text "
            f"ties the two). Received: strip_accents={strip!r}, do_lower_case={lower!r} "
            f"in {name}={src_dir!r}", argument=name)
    return bool(lower)


# ----------------------------------------------------------------------------- TF1


def read_tf1_bert(src_dir: str, *, do_lower_case: Optional[bool] = None,
                  name: str = "src_dir") -> _Source:
    """Reads and checks an original BERT TF1 folder into TF-Hub-named NumPy weights.

    Renaming and head-splitting are done by tf-models' `tf1_bert_checkpoint_converter_lib`
    (the tool that made the public TF-Hub BERTs); this function checks the input first
    so that problems are reported with the TF1 names.
    """
    import tensorflow as tf
    from keras_bert_ft._keras import keras  # noqa: F401  (tf_keras before tf-models)
    from official.nlp.tools import tf1_bert_checkpoint_converter_lib as tf1_lib

    _check_src_dir(src_dir, name)
    config = _read_json(src_dir, "bert_config.json", name)
    dims = _dims(config, "bert_config.json", src_dir, name, {
        "vocab_size": "vocab_size", "hidden_size": "hidden_size",
        "num_layers": "num_hidden_layers", "num_heads": "num_attention_heads",
        "intermediate_size": "intermediate_size", "max_positions": "max_position_embeddings",
        "type_vocab_size": "type_vocab_size"})
    activation = _pick_activation(config.get("hidden_act", "gelu"), _TF1_ACTIVATIONS,
                                  "bert_config.json", src_dir, name)
    vocab_file = _require_file(src_dir, "vocab.txt", name)
    _check_vocab(vocab_file, dims["vocab_size"])
    ckpt = _tf1_checkpoint(src_dir, name)
    shapes = tf.train.load_checkpoint(ckpt).get_variable_to_shape_map()
    missing = []
    for variable, shape in _tf1_plan(dims):
        if variable not in shapes:
            missing.append(variable)
        elif tuple(shapes[variable]) != shape:
            raise KbftError(
                f"Variable {variable!r} in {os.path.basename(ckpt)} must have shape {shape} "
                f"(from bert_config.json). Received: shape={tuple(shapes[variable])} in "
                f"{name}={src_dir!r}", argument=name)
    if missing:
        raise KbftError(
            f"{name} must hold every BERT variable; {len(missing)} missing from "
            f"{os.path.basename(ckpt)}: {', '.join(missing[:8])}"
            f"{' ...' if len(missing) > 8 else ''}. Received: {name}={src_dir!r}",
            argument=name)

    wanted = [variable for variable, _, _, _ in _hf_plan(dims)]
    with tempfile.TemporaryDirectory() as tmp:
        renamed = os.path.join(tmp, "renamed")
        tf1_lib.convert(
            checkpoint_from_path=ckpt, checkpoint_to_path=renamed,
            num_heads=dims["num_heads"],
            name_replacements=tf1_lib.BERT_V2_NAME_REPLACEMENTS,
            permutations=tf1_lib.BERT_V2_PERMUTATIONS,
            exclude_patterns=["adam", "Adam", "global_step"])
        reader = tf.train.load_checkpoint(renamed)
        weights = {v: reader.get_tensor(v).astype(np.float32) for v in wanted}
    original = tf.train.load_checkpoint(ckpt)
    head = _read_head({ours: theirs if theirs in shapes else None
                       for ours, theirs, _, _ in _tf1_head_plan(dims)}, original.get_tensor,
                      _tf1_head_plan(dims), os.path.basename(ckpt), src_dir, name)

    if do_lower_case is None:
        base = os.path.basename(os.path.normpath(src_dir)).lower()
        do_lower_case = (True if "uncased" in base else False if "cased" in base
                         else _vocab_is_uncased(vocab_file))
    return _Source("tf1", src_dir, dims, activation, weights, vocab_file, do_lower_case, head)


def _tf1_plan(dims) -> List[Tuple[str, tuple]]:
    """(TF1 variable, shape) for every weight of google-research/bert's `BertModel`."""
    h, inner = dims["hidden_size"], dims["intermediate_size"]
    plan = [("bert/embeddings/word_embeddings", (dims["vocab_size"], h)),
            ("bert/embeddings/position_embeddings", (dims["max_positions"], h)),
            ("bert/embeddings/token_type_embeddings", (dims["type_vocab_size"], h)),
            ("bert/embeddings/LayerNorm/gamma", (h,)),
            ("bert/embeddings/LayerNorm/beta", (h,))]
    for i in range(dims["num_layers"]):
        p = f"bert/encoder/layer_{i}/"
        for dense, (n_in, n_out) in [("attention/self/query", (h, h)),
                                     ("attention/self/key", (h, h)),
                                     ("attention/self/value", (h, h)),
                                     ("attention/output/dense", (h, h)),
                                     ("intermediate/dense", (h, inner)),
                                     ("output/dense", (inner, h))]:
            plan += [(f"{p}{dense}/kernel", (n_in, n_out)), (f"{p}{dense}/bias", (n_out,))]
        for norm in ("attention/output/LayerNorm", "output/LayerNorm"):
            plan += [(f"{p}{norm}/gamma", (h,)), (f"{p}{norm}/beta", (h,))]
    plan += [("bert/pooler/dense/kernel", (h, h)), ("bert/pooler/dense/bias", (h,))]
    return plan


def _tf1_checkpoint(src_dir, name="src_dir") -> str:
    """The checkpoint prefix: bert_model.ckpt, else the folder's only *.index file."""
    if os.path.isfile(os.path.join(src_dir, "bert_model.ckpt.index")):
        return os.path.join(src_dir, "bert_model.ckpt")
    found = sorted(glob.glob(os.path.join(src_dir, "*.index")))
    if len(found) != 1:
        raise KbftError(
            f"{name} must contain one TF1 checkpoint (bert_model.ckpt.index + "
            f".data-*). Received: {name}={src_dir!r} with "
            f"{[os.path.basename(p) for p in found] or 'no *.index file'}", argument=name)
    return found[0][:-len(".index")]


# ----------------------------------------------------------------------------- export


def _activation(kind):
    """The `hidden_act` handed to tf-models' BertEncoder.

    tf-models maps the string "gelu" to the tanh approximation, so the exact (erf)
    GELU goes in as tf_keras' own function, whose default is approximate=False.
    tf-models passes callables through unchanged.
    """
    from keras_bert_ft._keras import keras

    return {"exact": keras.activations.gelu, "tanh": "gelu", "relu": "relu"}[kind]


def _write(source: _Source, out_dir: str, *, seq_length: int, overwrite: bool,
           name: str = "out_dir") -> str:
    """Exports `source` to a temp folder next to `out_dir`, then renames it into place."""
    dims = source.dims
    if seq_length > dims["max_positions"]:
        raise bad_argument("seq_length", seq_length,
                           f"at most max_position_embeddings={dims['max_positions']}")
    config = _tfhub_config(source)

    final = os.path.abspath(out_dir)
    parent = os.path.dirname(final)
    os.makedirs(parent, exist_ok=True)
    # Same folder as the target, so the final os.rename never crosses filesystems.
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}.partial-", dir=parent)
    try:
        _export(source, tmp, config, seq_length)
        _publish(tmp, final, overwrite, name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _export(source: _Source, folder: str, config, seq_length: int) -> None:
    """Writes `folder`/encoder (with the MLM head, when the source has one),
    `folder`/preprocessor and `folder`/kbft_convert.json."""
    from keras_bert_ft.encoders import tfhub_format
    from keras_bert_ft._keras import keras

    dims = source.dims
    # A preset may be converted on first use inside a user's mixed-precision run; the
    # exported encoder must still compute in float32.
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        os.chmod(folder, 0o777 & ~_umask())  # mkdtemp's 0700 would become out_dir's mode
        tfhub_format.export_encoder(
            os.path.join(folder, ENCODER_DIR), config, vocab_file=source.vocab_file,
            do_lower_case=source.do_lower_case, seed=None,
            set_weights=lambda encoder: _assign(encoder, source.weights))
        if source.mlm_head is not None:
            from keras_bert_ft.tasks.pretrain import write_head
            write_head(os.path.join(folder, ENCODER_DIR), source.mlm_head)
        tfhub_format.export_preprocessor(
            os.path.join(folder, PREPROCESSOR_DIR), vocab_file=source.vocab_file,
            do_lower_case=source.do_lower_case, seq_length=seq_length)
        info = {"format": source.kind, "src_dir": os.path.abspath(source.src_dir),
                "num_layers": dims["num_layers"], "hidden_size": dims["hidden_size"],
                "num_heads": dims["num_heads"], "activation": source.activation,
                "do_lower_case": source.do_lower_case, "seq_length": seq_length,
                "mlm_head": source.mlm_head is not None}
        with open(os.path.join(folder, INFO_FILE), "w", encoding="utf-8") as f:
            json.dump(info, f, indent=2)
    finally:
        keras.mixed_precision.set_global_policy(policy)


def _tfhub_config(source: _Source):
    from keras_bert_ft.encoders import tfhub_format
    dims = source.dims
    return tfhub_format.bert_config(
        vocab_size=dims["vocab_size"], hidden_size=dims["hidden_size"],
        num_layers=dims["num_layers"], num_heads=dims["num_heads"],
        intermediate_size=dims["intermediate_size"], max_seq_length=dims["max_positions"],
        type_vocab_size=dims["type_vocab_size"], hidden_act=_activation(source.activation))


_NATIVE_ACTIVATIONS = {"exact_gelu": "exact", "tanh_gelu": "tanh", "relu": "relu"}


def write_trained_encoder(encoder, preprocessor, run_dir: str,
                          mlm_head: Optional[Dict[str, np.ndarray]] = None) -> dict:
    """A trained `NativeEncoder` (and its vocab.txt `preprocessor`) as `run_dir`/encoder
    and `run_dir`/preprocessor in TF-Hub format, by the same writer as the converters:
    its variables are read into TF-Hub-named NumPy arrays. Written in a temp folder inside
    `run_dir`, then each folder renamed into place (a previous run's replaced)."""
    from keras_bert_ft.encoders.native import _dims
    weights = {w.name.split(":")[0]: np.asarray(w.numpy(), np.float32)
               for w in encoder.bert.weights}
    source = _Source("pretrain", preprocessor.source, _dims(weights),
                     _NATIVE_ACTIVATIONS[encoder.activation], weights, preprocessor.source,
                     bool(preprocessor.lower_case), mlm_head)
    source.src_dir = os.path.dirname(os.path.abspath(preprocessor.source))
    tmp = tempfile.mkdtemp(prefix=".model.partial-", dir=run_dir)
    paths = {}
    try:
        _export(source, tmp, _tfhub_config(source), preprocessor.seq_length)
        for part in (ENCODER_DIR, PREPROCESSOR_DIR):
            final = os.path.join(run_dir, part)
            os.chmod(os.path.join(tmp, part), 0o777 & ~_umask())
            _publish(os.path.join(tmp, part), final, True, "output_dir")
            paths[part] = final
        os.replace(os.path.join(tmp, INFO_FILE), os.path.join(run_dir, INFO_FILE))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return paths


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _assign(encoder, weights: Dict[str, np.ndarray]):
    """Fills a freshly built tf-models BertEncoder, variable by variable, by name."""
    unused = set(weights)
    for var in encoder.weights:
        name = var.name.split(":")[0]
        value = weights[name]  # KeyError here is a bug: the plan must cover the encoder
        if tuple(var.shape) != value.shape:
            raise AssertionError(f"{name}: encoder {tuple(var.shape)} vs {value.shape}")
        var.assign(value)
        unused.discard(name)
    if unused:
        raise AssertionError(f"weights not used by the encoder: {sorted(unused)}")


def _publish(tmp, final, overwrite, name="out_dir"):
    """Renames `tmp` to `final`; with `overwrite`, swaps out an existing folder."""
    try:
        os.rename(tmp, final)  # also replaces an empty folder (POSIX rename)
        return
    except OSError:
        if not (overwrite and os.path.isdir(final)):
            raise bad_argument(name, final, "a new or empty folder (another "
                               "process wrote it meanwhile?)") from None
    old = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}.old-", dir=os.path.dirname(final))
    os.rename(final, os.path.join(old, "previous"))
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------- checks


def _check_seq_length(seq_length):
    if isinstance(seq_length, bool) or not isinstance(seq_length, int) or seq_length < 3:
        raise bad_argument("seq_length", seq_length, "an int >= 3 ([CLS], a token, [SEP])")


def _check_src_dir(src_dir, name="src_dir"):
    if not isinstance(src_dir, (str, os.PathLike)) or not os.path.isdir(src_dir):
        raise bad_argument(name, src_dir, "an existing folder" + (
            " (it is a file)" if isinstance(src_dir, (str, os.PathLike))
            and os.path.exists(src_dir) else ""))


def _require_file(src_dir, file, name="src_dir") -> str:
    path = os.path.join(src_dir, file)
    if not os.path.isfile(path):
        raise KbftError(f"{name} must contain {file}. Received: {name}={src_dir!r} "
                        f"with {sorted(os.listdir(src_dir))[:12]}", argument=name)
    return path


def _read_json(src_dir, file, name="src_dir") -> dict:
    path = _require_file(src_dir, file, name)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except ValueError as e:
        raise KbftError(f"{file} must be valid JSON. Received: {path!r} ({e})") from None


def _dims(config, file, src_dir, name, keys) -> Dict[str, int]:
    dims = {}
    for ours, theirs in keys.items():
        value = config.get(theirs)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise KbftError(f"{file} must set {theirs} to a positive int. Received: "
                            f"{theirs}={value!r} in {name}={src_dir!r}", argument=name)
        dims[ours] = value
    if dims["hidden_size"] % dims["num_heads"]:
        raise KbftError(f"{file} hidden_size must be divisible by num_attention_heads. "
                        f"Received: hidden_size={dims['hidden_size']}, "
                        f"num_attention_heads={dims['num_heads']} in {name}={src_dir!r}",
                        argument=name)
    return dims


def _pick_activation(activation, table, file, src_dir, name="src_dir") -> str:
    if activation not in table:
        raise KbftError(f"{file} hidden_act must be one of {sorted(table)}. "
                        f"Received: hidden_act={activation!r} in {name}={src_dir!r}",
                        argument=name)
    return table[activation]


def _check_vocab(vocab_file, vocab_size):
    """The preprocessor emits ids by line number: the embedding table must cover them."""
    with open(vocab_file, encoding="utf-8") as f:
        tokens = [line.rstrip("\n") for line in f]
    while tokens and not tokens[-1]:
        tokens.pop()
    if len(tokens) > vocab_size:
        raise KbftError(f"vocab.txt must have at most vocab_size={vocab_size} lines. "
                        f"Received: {len(tokens)} lines in {vocab_file!r}")
    for special in ("[CLS]", "[SEP]", "[PAD]", "[UNK]"):
        if special not in tokens:
            raise KbftError(f"vocab.txt must contain {special}. Received: {vocab_file!r}")


def _vocab_is_uncased(vocab_file) -> bool:
    """Uncased vocabularies were built from lower-cased text: no A-Z outside [SPECIAL]s."""
    with open(vocab_file, encoding="utf-8") as f:
        for line in f:
            token = line.strip()
            if not (token.startswith("[") and token.endswith("]")) and any(
                    "A" <= c <= "Z" for c in token):
                return False
    return True
