"""GradientNorms: the L2 norm of the applied gradient per layer group, averaged over an epoch.

With `log_gradient_norms`, `FineTuneModel`'s train step measures the gradient it hands
the optimizer (after accumulation, loss-scale unscaling and the sum over replicas; before
the optimizer's own clipping to `clip_norm`), one norm per encoder group (`embeddings`,
`layer_0` ..., `pooler`, from `LayerGroups.layer_groups`) and one for the `head` (every
other trainable variable). Each norm feeds a Keras `Mean`, so the fit logs carry each
group's step-average as `grad_norm_<group>` every epoch: `history.json`, TensorBoard's
`logs/` and `gradient_norms.png` get them from there. A frozen group has no gradient: its
norm is 0. The metrics are kept out of the model's checkpoints (they are not weights).
"""

from typing import Dict, List

import tensorflow as tf

from keras_bert_ft._keras import keras

PREFIX = "grad_norm_"


def squared_norm(gradient) -> tf.Tensor:
    """sum(g^2) in float32. IndexedSlices (embedding lookups) repeat rows, so their values
    are summed per row first, into the variable's full shape: static, so XLA compiles it
    (a vocabulary-sized buffer per step, only while norms are logged)."""
    if isinstance(gradient, tf.IndexedSlices):
        gradient = tf.math.unsorted_segment_sum(gradient.values, gradient.indices,
                                                gradient.dense_shape[0])
    return tf.reduce_sum(tf.square(tf.cast(gradient, tf.float32)))


class GradientNorms:
    """One `Mean` per group of `model` (its encoder's groups, then `head`); created in the
    strategy's scope (fit's), so replicas' updates add up."""

    def __init__(self, model):
        self.groups: List[str] = [*model.encoder.layer_groups(), "head"]
        self.metrics: Dict[str, keras.metrics.Mean] = {
            g: keras.metrics.Mean(name=f"{PREFIX}{g}") for g in self.groups}

    def update(self, model, grads_and_vars) -> None:
        """Adds this step's per-group norms of `grads_and_vars` (None gradients skipped)."""
        owner = {id(v): g for g, vs in model.encoder.layer_groups().items() for v in vs}
        parts = {g: [] for g in self.groups}
        for gradient, variable in grads_and_vars:
            if gradient is not None:
                parts[owner.get(id(variable), "head")].append(squared_norm(gradient))
        for group, squares in parts.items():
            norm = tf.sqrt(tf.add_n(squares)) if squares else tf.constant(0.0)
            self.metrics[group].update_state(norm)

    def results(self) -> Dict[str, tf.Tensor]:
        return {m.name: m.result() for m in self.metrics.values()}

    def reset(self) -> None:
        for metric in self.metrics.values():
            metric.reset_state()


def history_norms(history: dict) -> Dict[str, list]:
    """group -> per-epoch norms, from a fit history (empty when norms were not logged)."""
    return {k[len(PREFIX):]: v for k, v in history.items() if k.startswith(PREFIX)}
