"""Training input for `fit`: a seeded stream of global batches that can start at any step,
built per worker where several workers or a TPU feed the replicas.

Each epoch yields the same number of batches, so the batches of all epochs form one
repeated stream and `fit` runs `steps_per_epoch` steps per epoch. The stream is exactly
the sequence of batches `fit` trains on when given `make_dataset(shuffle=True)` itself;
a resumed run skips the batches it already trained on and continues in the same order.

Under `MultiWorkerMirroredStrategy` and `TPUStrategy` each worker builds its own
pipeline (`distribute_datasets_from_function`): it shuffles and batches like every other
worker (same seed) and keeps only its replicas' rows of each global batch. Replica `r`
thus trains on rows `[r*b, (r+1)*b)` of global batch, `b = batch_size / replicas`, the
rows one machine's `MirroredStrategy` gives it, and every worker runs the same number of
steps (uneven shards would leave a collective waiting). Without length buckets the rows
are cut before tokenisation, so each worker tokenises only its share; length buckets
need every example's length, so there each worker tokenises the global batch.
"""

import dataclasses
from typing import Optional

import numpy as np
import tensorflow as tf

from keras_bert_ft.data import examples as data_lib
from keras_bert_ft.training import strategy as strategy_lib
from keras_bert_ft.training import tpu
from keras_bert_ft.errors import bad_argument

_CHUNK = 1024  # examples tokenised at a time when counting length buckets


@dataclasses.dataclass
class TrainInput:
    """What `fit` takes: the batches (a dataset, or a distributed dataset built per
    worker) and the number of steps in one epoch."""
    data: object
    steps_per_epoch: int
    per_worker: bool


def epoch_batches(examples, preprocessor, *, batch_size: int, padding: str,
                    drop_remainder: bool) -> int:
    """Batches in one epoch. With length buckets each bucket ends the epoch with its own
    partial batch; their number does not depend on the order, so the examples' token
    counts give it (tokenised eagerly, in chunks)."""
    if padding != "bucketed":
        return _batches(len(examples), batch_size, drop_remainder)
    lengths = []
    for start in range(0, len(examples), _CHUNK):
        pair = examples.texts_pair[start:start + _CHUNK] if examples.is_pair else None
        features = preprocessor(tf.constant(examples.texts[start:start + _CHUNK]),
                                None if pair is None else tf.constant(pair))
        lengths.append(tf.reduce_sum(features["input_mask"], axis=1).numpy())
    # bucket_by_sequence_length puts length L in bucket i when edges[i-1] <= L < edges[i].
    buckets = np.searchsorted(data_lib._bucket_boundaries(preprocessor.seq_length),
                              np.concatenate(lengths), side="right")
    return sum(_batches(int(n), batch_size, drop_remainder) for n in np.bincount(buckets))


def _batches(examples: int, batch_size: int, drop_remainder: bool) -> int:
    full, rest = divmod(examples, batch_size)
    return full if drop_remainder else full + (rest > 0)


def training_input(examples, preprocessor, strategy, *, batch_size: int, seed: int,
                   padding: str, drop_remainder: bool, start_step: int = 0,
                   steps_per_epoch: Optional[int] = None) -> TrainInput:
    """The training batches for `fit(..., steps_per_epoch=result.steps_per_epoch)`,
    starting at global step `start_step` (0 for a fresh run). `steps_per_epoch`:
    `epoch_batches(...)` when already computed."""
    steps = steps_per_epoch or epoch_batches(examples, preprocessor, batch_size=batch_size,
                                             padding=padding, drop_remainder=drop_remainder)
    if steps < 1:
        raise bad_argument("batch_size", batch_size, f"at most the {len(examples)} training "
                           "examples when the last partial batch is dropped (static padding)")

    def stream(batch_rows=None):
        dataset = data_lib.make_dataset(
            examples, preprocessor, batch_size=batch_size, shuffle=True, seed=seed,
            padding=padding, drop_remainder=drop_remainder, batch_rows=batch_rows)
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

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        per_replica = context.get_per_replica_batch_size(batch_size)
        local = replicas // context.num_input_pipelines
        first = context.input_pipeline_id * local * per_replica
        dataset = stream(slice(first, first + local * per_replica))
        if local > 1:  # consecutive elements go to this worker's replicas in turn
            dataset = dataset.flat_map(_split_rows(local, per_replica))
        if on_tpu:
            dataset = dataset.map(tpu.static_int32_batch(per_replica, preprocessor.seq_length))
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
