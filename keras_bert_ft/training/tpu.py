"""TPU rules: fixed shapes, int32 ids, tokenisation on the host, TPU-readable model files,
and the bfloat16 / steps_per_execution defaults; a clear error where a TPU run would fail.

What trips users (DESIGN.md): XLA compiles one program per input shape, so every batch
must be `[batch_size / replicas, seq_length]`; tensorflow-text ops have no TPU kernels
(tensorflow #47683), so tokenisation stays in `tf.data` on the host; a TPU worker that is
not this VM cannot read this VM's disk ("File system scheme '[local]' not implemented",
bert #709), so models are read on this host (`experimental_io_device="/job:localhost"`,
tfhub.dev handles straight from Cloud Storage with `TFHUB_MODEL_LOAD_FORMAT=UNCOMPRESSED`)
and a remote TPU writes its checkpoints to `gs://`.
"""

import dataclasses
import logging
import os

import tensorflow as tf

from keras_bert_ft.encoders import presets
from keras_bert_ft.errors import KbftError, bad_argument
from keras_bert_ft.training.strategy import is_tpu

logger = logging.getLogger("keras_bert_ft")

# One host round trip per 32 TPU steps instead of per step; Keras' TPU guides use 32-100.
TPU_STEPS_PER_EXECUTION = 32
LOCAL_IO_DEVICE = "/job:localhost"
_HUB_HOSTS = ("https://tfhub.dev/", "https://www.kaggle.com/models/", "https://kaggle.com/models/")


def resolve_hardware_settings(config, strategy):
    """`config` with its hardware-dependent settings resolved for `strategy`.

    Everywhere: `mixed_precision="auto"` becomes the hardware's choice (precision.py:
    mixed_bfloat16 on a TPU, float32 on this kind of CPU, ...), unset
    `steps_per_execution` is 1.
    On a TPU: `padding` must be `auto` or `static` (and becomes `static`), the batch must
    split evenly across the cores,
    `mixed_float16` is refused, unset `steps_per_execution` is 32, and a TPU reached over
    the network needs a `gs://` `output_dir`.
    """
    from keras_bert_ft.training.precision import resolve_precision
    on_tpu = is_tpu(strategy)
    precision = resolve_precision(config.mixed_precision, strategy)
    steps = config.steps_per_execution or (TPU_STEPS_PER_EXECUTION if on_tpu else 1)
    if not on_tpu:
        return dataclasses.replace(config, mixed_precision=precision, steps_per_execution=steps)
    if precision == "mixed_float16":
        raise bad_argument("mixed_precision", precision, "float32 or mixed_bfloat16 on a TPU "
                           "(TPUs compute in bfloat16; float16 is for GPUs)")
    if config.padding not in ("auto", "static"):
        raise bad_argument("padding", config.padding, "'static' or 'auto' on a TPU (XLA "
                           "compiles one program per input shape, so every batch is padded "
                           "to seq_length and the last partial batch is dropped)")
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise bad_argument("batch_size", config.batch_size, f"a multiple of the {replicas} "
                           "TPU cores (each core takes an equal, fixed-size share)")
    output = config.output_dir
    if output and is_remote_tpu(strategy) and not output.startswith("gs://"):
        raise bad_argument("output_dir", output, "a gs:// path on a TPU reached over the "
                           "network: its workers write the checkpoints and cannot reach "
                           "this VM's disk (\"File system scheme '[local]' not implemented\")")
    return dataclasses.replace(config, padding="static", mixed_precision=precision,
                               steps_per_execution=steps)


def is_remote_tpu(strategy) -> bool:
    """A TPU reached over gRPC (a TPU node), not one attached to this VM."""
    resolver = getattr(strategy, "cluster_resolver", None)
    try:
        return str(resolver.master()).startswith("grpc://")
    except Exception:  # no resolver, or one that cannot answer: assume attached
        return False


def encoder_load_kwargs(handle: str, strategy) -> dict:
    """Keyword arguments for `HubEncoder(handle, ...)` that let a TPU run read the encoder.

    On a TPU, any handle but `gs://` is read on this host (`experimental_io_device=
    "/job:localhost"`) and its variables sent to the TPU; tfhub.dev handles are then read
    uncompressed straight from Cloud Storage (`TFHUB_MODEL_LOAD_FORMAT=UNCOMPRESSED`)
    instead of a local cache. Elsewhere: nothing.
    """
    if not is_tpu(strategy):
        return {}
    preset = presets.get_preset(handle)
    target = preset.encoder if preset is not None else handle
    if target.startswith("gs://"):
        return {}
    if target.startswith(_HUB_HOSTS):
        current = os.environ.setdefault("TFHUB_MODEL_LOAD_FORMAT", "UNCOMPRESSED")
        if current != "UNCOMPRESSED":
            logger.warning("TFHUB_MODEL_LOAD_FORMAT=%s: a TPU may fail to read %s from the "
                           "local TF-Hub cache; unset it or set it to UNCOMPRESSED", current,
                           target)
    logger.info("keras_bert_ft: reading encoder %s on this host (experimental_io_device=%s); "
                "a gs:// copy is read by the TPU workers directly", target, LOCAL_IO_DEVICE)
    return {"load_options": tf.saved_model.LoadOptions(experimental_io_device=LOCAL_IO_DEVICE)}


def static_int32_batch(batch_size: int, seq_length: int):
    """A `tf.data` map function for TPU batches: int32 inputs of fixed shape
    `[batch_size, seq_length]` (other inputs and the labels: `[batch_size, ...]` with their
    own fixed sizes), or a clear error while tracing.

    Tokenisers lose the static batch size, so an unknown batch dimension is pinned
    (the pipeline must drop partial batches); an unknown or different sequence length
    is an error.
    """
    from keras_bert_ft.data.preprocessing import INPUT_KEYS

    @tf.autograph.experimental.do_not_convert
    def fix(features, labels=None):
        out = {}
        for name, value in features.items():
            if not value.dtype.is_integer:
                raise KbftError(
                    f"TPU input {name!r} must hold integer token ids, not {value.dtype.name}: "
                    "tokenise in tf.data on the host (tensorflow-text ops have no TPU "
                    "kernels), e.g. with kbft.make_dataset or kbft.Preprocessor.")
            expected = ([batch_size, seq_length] if name in INPUT_KEYS
                        else [batch_size, *value.shape[1:]])
            _check_static(name, value.shape, expected)
            out[name] = tf.ensure_shape(tf.cast(value, tf.int32), expected)
        if labels is None:
            return out
        expected = [batch_size, *labels.shape[1:]]
        _check_static("labels", labels.shape, expected)
        dtype = tf.int32 if labels.dtype.is_integer else tf.float32
        return out, tf.ensure_shape(tf.cast(labels, dtype), expected)
    return fix


def _check_static(name, shape, expected):
    if shape.rank != len(expected) or any(d is None for d in shape[1:]):
        raise KbftError(
            f"TPU input {name!r} has shape {shape}, but a TPU needs fixed shapes "
            f"{expected}: use padding='static'. Received: {name}.shape={shape}")
    if not shape.is_compatible_with(expected):
        raise KbftError(f"TPU input {name!r} has shape {shape}, expected {expected}.")


def check_host_tokenisation(model) -> None:
    """Refuses a model that takes raw strings: its tokeniser would have to run on the TPU."""
    strings = [t.name for t in model.inputs if t.dtype == tf.string]
    if strings:
        raise KbftError(
            f"On a TPU the model must take int32 token ids, but it takes strings "
            f"({', '.join(strings)}): tensorflow-text ops have no TPU kernels "
            "(tensorflow #47683). Tokenise in tf.data on the host (kbft.make_dataset / "
            "kbft.Preprocessor) and export with the preprocessor afterwards.")
