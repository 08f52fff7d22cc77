"""get_strategy: one function, a string switch, picks a tf.distribute strategy and logs it."""

import logging

import tensorflow as tf

from keras_bert_ft.errors import bad_argument

logger = logging.getLogger("keras_bert_ft")

KINDS = ("auto", "tpu", "gpu", "mirrored", "cpu")


def get_strategy(kind: str = "auto", *, tpu_address: str = ""):
    """Returns a `tf.distribute.Strategy` for `kind`.

    `auto`: a TPU when a cluster resolver finds one, else all GPUs (MirroredStrategy
    when several, OneDeviceStrategy for one), else the default strategy on CPU.
    `tpu`, `gpu` and `mirrored` ask for that hardware and fail clearly without it;
    `cpu` always works.
    """
    if kind not in KINDS:
        raise bad_argument("kind", kind, f"one of {', '.join(KINDS)}")
    if kind in ("auto", "tpu"):
        resolver = _find_tpu(tpu_address, required=kind == "tpu")
        if resolver is not None:
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
            return _chosen(tf.distribute.TPUStrategy(resolver), "TPU")
    gpus = tf.config.list_logical_devices("GPU")
    if kind == "gpu" and not gpus:
        raise bad_argument("kind", kind, "a strategy for hardware this machine has "
                           "(no GPU found; use 'auto' or 'cpu')")
    if kind == "mirrored" or (kind in ("auto", "gpu") and len(gpus) > 1):
        return _chosen(new_mirrored_strategy(),
                       f"MirroredStrategy over {len(gpus) or 'CPU'} device(s)")
    if gpus and kind in ("auto", "gpu"):
        return _chosen(tf.distribute.OneDeviceStrategy(gpus[0].name), f"one GPU {gpus[0].name}")
    return _chosen(tf.distribute.get_strategy(), "CPU (default strategy)")


def new_mirrored_strategy(devices=None):
    """A MirroredStrategy whose collective keys no earlier one in this process used.

    Every MirroredStrategy starts its collective group and instance keys at the same
    class-level base, so a second one in a process (`run_seeds`, `sweep_layers` in
    process) would reuse the first one's keys and the runtime would mix up their
    all-reduces ("Shape mismatch in the collective instance"). TF's own tests shift the
    base per strategy (distribute/strategy_combinations.py); so does this.
    """
    tf.distribute.MirroredStrategy._collective_key_base += 100000
    return tf.distribute.MirroredStrategy(devices)


def _find_tpu(address: str, required: bool):
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=address)
        resolver.master()  # raises when there is no TPU to talk to
        return resolver
    except (ValueError, RuntimeError, KeyError, tf.errors.OpError) as err:
        if required:
            raise bad_argument("kind", "tpu", f"a strategy for hardware this machine has "
                               f"(no TPU found: {str(err).splitlines()[0][:120]})") from None
        return None


def _chosen(strategy, description: str):
    logger.info("keras_bert_ft strategy: %s, %d replica(s)", description,
                strategy.num_replicas_in_sync)
    return strategy
