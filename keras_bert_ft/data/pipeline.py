"""The one input pipeline of every task: feature arrays -> shuffled, length-bucketed or static
batches, a stream that can start at any step, built per worker where several workers or a
TPU feed the replicas.

Every task turns its examples into arrays padded to `seq_length` (tasks/*.py, `featurize`);
from there batching is the same for all. `padding`: `bucketed` groups inputs of similar
length (batches shuffled) and cuts each batch to its longest input (rounded up to 8), so
short inputs stop paying for long ones; `dynamic` only cuts; `static` keeps `seq_length`
(TPUs need fixed shapes). Per-token labels (`token_labels`) are cut with their inputs.

Each epoch yields the same number of batches, so the batches of all epochs form one
repeated stream and `fit` runs `steps_per_epoch` steps per epoch. A resumed run skips the
batches it already trained on and continues in the same order.

Under `MultiWorkerMirroredStrategy` and `TPUStrategy` each worker builds its own pipeline
(`distribute_datasets_from_function`): it shuffles and batches like every other worker
(same seed) and keeps only its replicas' rows of each global batch. Replica `r` thus
trains on rows `[r*b, (r+1)*b)` of each global batch, `b = batch_size / replicas`, the rows
one machine's `MirroredStrategy` gives it, and every worker runs the same number of steps.
"""

import dataclasses
from typing import Dict, List, Optional

import numpy as np
import tensorflow as tf

from keras_bert_ft.config import PADDINGS
from keras_bert_ft.data.preprocessing import trim_to_longest
from keras_bert_ft.errors import bad_argument
from keras_bert_ft.training import strategy as strategy_lib


@dataclasses.dataclass
class TrainInput:
    """What `fit` takes: the batches (a dataset, or a distributed dataset built per
    worker) and the number of steps in one epoch."""
    data: object
    steps_per_epoch: int
    per_worker: bool


def bucket_boundaries(seq_length: int) -> List[int]:
    """Bucket edges: every 8 tokens up to 64, then every 32 (lengths are long-tailed)."""
    edges = list(range(16, min(seq_length, 64) + 1, 8))
    edges += list(range(96, seq_length + 1, 32))
    return [e for e in edges if e < seq_length] or [seq_length]


def epoch_batches(features: Dict[str, np.ndarray], *, batch_size: int, padding: str,
                  drop_remainder: bool) -> int:
    """Batches in one epoch. With length buckets each bucket ends the epoch with its own
    partial batch; their number does not depend on the order, only on the lengths."""
    count = len(features["input_mask"])
    if padding != "bucketed":
        return _batches(count, batch_size, drop_remainder)
    lengths = features["input_mask"].sum(axis=1)
    # bucket_by_sequence_length puts length L in bucket i when edges[i-1] <= L < edges[i].
    seq_length = features["input_mask"].shape[1]
    buckets = np.searchsorted(bucket_boundaries(seq_length), lengths, side="right")
    return sum(_batches(int(n), batch_size, drop_remainder) for n in np.bincount(buckets))


def _batches(examples: int, batch_size: int, drop_remainder: bool) -> int:
    full, rest = divmod(examples, batch_size)
    return full if drop_remainder else full + (rest > 0)


def batches(features: Dict[str, np.ndarray], labels: Optional[np.ndarray], *,
            batch_size: int, shuffle: bool = False, seed: int = 0, padding: str = "dynamic",
            drop_remainder: bool = False, token_labels: bool = False,
            batch_rows: Optional[slice] = None) -> tf.data.Dataset:
    """Batches of `(features, labels)` (or features alone) from padded arrays.

    `bucketed` changes the order, so use it for training only. `batch_rows` keeps only
    those rows of each batch (one worker's share of a global batch).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise bad_argument("batch_size", batch_size, "an int >= 1")
    if padding not in PADDINGS:
        raise bad_argument("padding", padding, f"one of {', '.join(PADDINGS)}")
    elements = features if labels is None else (features, labels)
    dataset = tf.data.Dataset.from_tensor_slices(elements)
    count = len(features["input_mask"])
    if shuffle:
        dataset = dataset.shuffle(max(count, 1), seed=seed, reshuffle_each_iteration=True)

    def trim(x, y=None):
        x = trim_to_longest(x)
        if y is None:
            return x
        if token_labels:
            y = y[:, :tf.shape(x["input_mask"])[1]]
        return x, y

    def length(x, y=None):
        return tf.reduce_sum(x["input_mask"])

    if padding == "bucketed":
        edges = bucket_boundaries(int(features["input_mask"].shape[1]))
        dataset = dataset.bucket_by_sequence_length(
            length, edges, [batch_size] * (len(edges) + 1), drop_remainder=drop_remainder)
        if shuffle:  # buckets fill at different rates; mix the batches they emit
            dataset = dataset.shuffle(64, seed=seed)
        dataset = dataset.map(trim, num_parallel_calls=tf.data.AUTOTUNE)
        if batch_rows is not None:
            dataset = dataset.map(_take_rows(batch_rows))
    else:
        dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
        if batch_rows is not None:
            dataset = dataset.map(_take_rows(batch_rows))
        if padding == "dynamic":
            dataset = dataset.map(trim, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def _take_rows(rows: slice):
    def take(*batch):
        taken = tf.nest.map_structure(lambda t: t[rows], batch)
        return taken if len(taken) > 1 else taken[0]
    return take


def training_input(features: Dict[str, np.ndarray], labels: np.ndarray, strategy, *,
                   batch_size: int, seed: int, padding: str, drop_remainder: bool,
                   token_labels: bool = False, start_step: int = 0,
                   steps_per_epoch: Optional[int] = None) -> TrainInput:
    """The training batches for `fit(..., steps_per_epoch=result.steps_per_epoch)`,
    starting at global step `start_step` (0 for a fresh run)."""
    from keras_bert_ft.training import tpu
    steps = steps_per_epoch or epoch_batches(features, batch_size=batch_size, padding=padding,
                                             drop_remainder=drop_remainder)
    if steps < 1:
        raise bad_argument("batch_size", batch_size, f"at most the {len(labels)} training "
                           "examples when the last partial batch is dropped (static padding)")

    def stream(batch_rows=None):
        dataset = batches(features, labels, batch_size=batch_size, shuffle=True, seed=seed,
                          padding=padding, drop_remainder=drop_remainder,
                          token_labels=token_labels, batch_rows=batch_rows)
        # `fit` on a finite dataset opens one iterator it never reads before the first
        # epoch (tf_keras DataHandler.enumerate_epochs), so epoch e trains on the shuffle's
        # (e+1)-th order. Opening that unread iterator here keeps exactly those batches.
        iter(dataset)
        return dataset.repeat().skip(start_step)

    if not (strategy_lib.is_multiworker(strategy) or strategy_lib.is_tpu(strategy)):
        return TrainInput(stream(), steps, per_worker=False)  # fit splits each global batch
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise bad_argument("batch_size", batch_size, f"a multiple of the {replicas} replicas "
                           "(the global batch is split evenly across them)")
    on_tpu = strategy_lib.is_tpu(strategy)
    if on_tpu and not drop_remainder:
        raise bad_argument("drop_remainder", drop_remainder, "True on a TPU (every batch "
                           "must have the same, fixed size)")
    seq_length = int(features["input_mask"].shape[1])

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        per_replica = context.get_per_replica_batch_size(batch_size)
        local = replicas // context.num_input_pipelines
        first = context.input_pipeline_id * local * per_replica
        dataset = stream(slice(first, first + local * per_replica))
        if local > 1:  # consecutive elements go to this worker's replicas in turn
            dataset = dataset.flat_map(_split_rows(local, per_replica))
        if on_tpu:
            dataset = dataset.map(tpu.static_int32_batch(per_replica, seq_length))
        return dataset.prefetch(tf.data.AUTOTUNE)

    data = strategy.distribute_datasets_from_function(dataset_fn)
    return TrainInput(data, steps, per_worker=True)


def _split_rows(parts: int, rows: int):
    def split(*batch):
        pieces = [tf.nest.map_structure(lambda t, i=i: t[i * rows:(i + 1) * rows], batch)
                  for i in range(parts)]
        pieces = [p if len(p) > 1 else p[0] for p in pieces]
        dataset = tf.data.Dataset.from_tensors(pieces[0])
        for piece in pieces[1:]:
            dataset = dataset.concatenate(tf.data.Dataset.from_tensors(piece))
        return dataset
    return split
