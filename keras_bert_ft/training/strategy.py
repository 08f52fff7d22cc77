"""get_strategy: one function, a string switch, picks a tf.distribute strategy and logs it."""

import json
import logging
import os

import tensorflow as tf

from keras_bert_ft.errors import KbftError, bad_argument

logger = logging.getLogger("keras_bert_ft")

KINDS = ("auto", "tpu", "gpu", "mirrored", "cpu", "multiworker")


def get_strategy(kind: str = "auto", *, tpu_address: str = ""):
    """Returns a `tf.distribute.Strategy` for `kind`.

    `auto`: a TPU when a cluster resolver finds one, else `MultiWorkerMirroredStrategy`
    when `TF_CONFIG` names several tasks, else all GPUs (MirroredStrategy when several,
    OneDeviceStrategy for one), else the default strategy on CPU.
    `tpu`, `gpu`, `mirrored` and `multiworker` ask for that setup and fail clearly
    without it; `cpu` always works.

    `tpu_address`: `""` finds the TPU of a Colab runtime or of `$TPU_NAME`, then a TPU
    attached to this VM; `"local"` is a Cloud TPU VM's own TPU; anything else is a TPU
    name or a `grpc://host:port` address.
    `multiworker` reads the cluster from `TF_CONFIG`; create the strategy before any
    other TensorFlow work in the process.
    """
    if kind not in KINDS:
        raise bad_argument("strategy", kind, f"one of {', '.join(KINDS)}")
    if kind in ("auto", "tpu"):
        # A TPU the user named is required, under "auto" too: never fall back silently.
        resolver = find_tpu(tpu_address, required=kind == "tpu" or bool(tpu_address))
        if resolver is not None:
            try:
                tf.config.experimental_connect_to_cluster(resolver)
                tf.tpu.experimental.initialize_tpu_system(resolver)
            except (tf.errors.OpError, ValueError, RuntimeError) as err:
                first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
                raise bad_argument("tpu_address", tpu_address, f"the address of a TPU this "
                                   f"machine can reach ({first})") from None
            return _chosen(tf.distribute.TPUStrategy(resolver), f"TPU {_tpu_name(resolver)}")
    if kind == "multiworker" or (kind == "auto" and tf_config_tasks() > 1):
        cluster = read_tf_config()
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        return _chosen(strategy, f"MultiWorkerMirroredStrategy, task {cluster['task']['type']}:"
                                 f"{cluster['task']['index']} of {tf_config_tasks()}")
    gpus = tf.config.list_logical_devices("GPU")
    if kind == "gpu" and not gpus:
        raise bad_argument("strategy", kind, "a strategy for hardware this machine has "
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


def describe_auto(tpu_address: str = "") -> str:
    """What `get_strategy("auto")` would choose here, without connecting to anything."""
    if find_tpu(tpu_address, required=False) is not None:
        return "TPUStrategy"
    if tf_config_tasks() > 1:
        return f"MultiWorkerMirroredStrategy ({tf_config_tasks()} tasks in TF_CONFIG)"
    gpus = tf.config.list_physical_devices("GPU")
    if len(gpus) > 1:
        return f"MirroredStrategy over {len(gpus)} GPUs"
    if gpus:
        return "OneDeviceStrategy on one GPU"
    return "default strategy on CPU"


def find_tpu(address: str, required: bool):
    """A TPU cluster resolver for `address`, or None when there is no TPU (unless required)."""
    candidates = [address]
    if not address and _tpu_attached():
        candidates.append("local")  # a TPU VM whose name is not in the environment
    error = None
    for candidate in candidates:
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=candidate)
            resolver.master()  # raises when there is no TPU to talk to
            return resolver
        except (ValueError, RuntimeError, KeyError, tf.errors.OpError) as err:
            error = err
    if required and address:
        raise bad_argument("tpu_address", address, f"the name or address of a TPU this "
                           f"machine can reach (none found: {str(error).splitlines()[0][:120]})"
                           ) from None
    if required:
        raise bad_argument("strategy", "tpu", f"a strategy for hardware this machine has "
                           f"(no TPU found: {str(error).splitlines()[0][:120]})") from None
    return None


def _tpu_attached() -> bool:
    return os.path.exists("/dev/accel0") or os.path.exists("/dev/vfio/0")


def _tpu_name(resolver) -> str:
    return getattr(resolver, "_tpu", None) or "(found by the cluster resolver)"


def read_tf_config() -> dict:
    """`TF_CONFIG` as a dict, checked: a `cluster` with tasks and this process's `task`."""
    raw = os.environ.get("TF_CONFIG", "")
    example = ('JSON like {"cluster": {"worker": ["host1:port", "host2:port"]}, '
               '"task": {"type": "worker", "index": 0}}')
    if not raw:
        raise bad_argument("TF_CONFIG", raw, f"set for kind='multiworker': {example}")
    try:
        config = json.loads(raw)
    except json.JSONDecodeError:
        raise bad_argument("TF_CONFIG", raw, example) from None
    cluster, task = config.get("cluster") or {}, config.get("task") or {}
    if not isinstance(cluster, dict) or not any(cluster.get(t) for t in ("chief", "worker")):
        raise bad_argument("TF_CONFIG", raw, f"{example} (no chief or worker tasks)")
    tasks = cluster.get(task.get("type"), [])
    if not isinstance(task.get("index"), int) or not 0 <= task["index"] < len(tasks):
        raise bad_argument("TF_CONFIG", raw, f"{example} (its 'task' names no task of "
                           "the cluster)")
    return config


def tf_config_tasks() -> int:
    """Chief + worker tasks in `TF_CONFIG` (0 when unset or unreadable)."""
    try:
        cluster = json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster") or {}
        return sum(len(cluster.get(t) or []) for t in ("chief", "worker"))
    except (json.JSONDecodeError, AttributeError, TypeError):
        return 0


def is_chief(strategy) -> bool:
    """Whether this process writes the run's files (always, except non-chief workers)."""
    return bool(getattr(strategy.extended, "should_checkpoint", True))


def is_tpu(strategy) -> bool:
    return isinstance(strategy, tf.distribute.TPUStrategy)


def is_multiworker(strategy) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def _chosen(strategy, description: str):
    logger.info("keras_bert_ft strategy: %s, %d replica(s)", description,
                strategy.num_replicas_in_sync)
    return strategy


def ensure_strategy(strategy, tpu_address: str = "") -> "tf.distribute.Strategy":
    """A strategy object from a `get_strategy` kind or a strategy."""
    if isinstance(strategy, str):
        return get_strategy(strategy, tpu_address=tpu_address)
    if not isinstance(strategy, tf.distribute.Strategy):
        raise KbftError(f"strategy must be a get_strategy kind ({', '.join(KINDS)}) or a "
                        f"tf.distribute.Strategy. Received: strategy={strategy!r}")
    return strategy

