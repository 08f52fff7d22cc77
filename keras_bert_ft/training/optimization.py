"""AdamW for BERT fine-tuning: bias correction, decoupled weight decay, warmup then linear decay.

Adam without bias correction (the original BERTAdam) makes fine-tuning unstable on
small data (Mosbach et al. 2021), so it is on by default and a switch for ablations.
"""

import re
from typing import Mapping, Optional, Sequence

import tensorflow as tf

from keras_bert_ft._keras import keras
from keras_bert_ft.errors import bad_argument

# LayerNorm parameters and biases take no weight decay (BERT, Model Garden, minGPT).
DEFAULT_DECAY_EXCLUDE = ("layer_norm", "LayerNorm", "bias")


class WarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 to `peak` over `warmup_steps`, then linear decay to 0."""

    def __init__(self, peak: float, total_steps: int, warmup_steps: int = 0):
        super().__init__()
        self.peak = float(peak)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = tf.cast(max(self.warmup_steps, 1), tf.float32)
        total = tf.cast(max(self.total_steps, 1), tf.float32)
        warmup = self.peak * step / warm
        decay_span = tf.maximum(total - tf.cast(self.warmup_steps, tf.float32), 1.0)
        decay = self.peak * tf.maximum(0.0, (total - step) / decay_span)
        return tf.where(step < tf.cast(self.warmup_steps, tf.float32), warmup, decay)

    def get_config(self):
        return {"peak": self.peak, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps}


class AdamW(keras.optimizers.Optimizer):
    """Adam with decoupled weight decay and optional bias correction.

    Slots are created per variable as variables first arrive, so the set of trainable
    variables may grow between `fit` calls (gradual unfreezing, `set_trainable_layers`).

    `learning_rate_multipliers` maps variable names (without `:0`) to a factor of the
    learning rate, for layer-wise rates (`layerwise.layer_multipliers`); other variables
    take the rate as is. The factor scales the Adam step and the weight decay alike, and
    is a Python float fixed per variable, so it traces into `model.fit`'s step under any
    strategy and under XLA.
    """

    def __init__(self, learning_rate=2e-5, weight_decay=0.01, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-6, bias_correction=True,
                 exclude_from_weight_decay: Sequence[str] = DEFAULT_DECAY_EXCLUDE,
                 learning_rate_multipliers: Optional[Mapping[str, float]] = None,
                 name="AdamW", **kwargs):
        super().__init__(name=name, weight_decay=weight_decay, **kwargs)
        self._learning_rate = self._build_learning_rate(learning_rate)
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon
        self.bias_correction = bool(bias_correction)
        self.learning_rate_multipliers = {
            str(k): float(v) for k, v in (learning_rate_multipliers or {}).items()}
        self._multipliers = {}  # variable key -> factor, filled as variables arrive
        self.exclude_from_weight_decay(
            var_names=[re.escape(n) for n in exclude_from_weight_decay])

    def build(self, var_list):
        if not getattr(self, "_built", False):
            super().build([])
            self._momentums, self._velocities = [], []
            self._built = True
        for var in var_list:
            key = self._var_key(var)
            if key in self._index_dict:
                continue
            self._index_dict[key] = len(self._momentums)
            self._multipliers[key] = self.multiplier(var)
            self._momentums.append(self.add_variable_from_reference(var, "m"))
            self._velocities.append(self.add_variable_from_reference(var, "v"))

    def multiplier(self, variable) -> float:
        """The factor of the learning rate this variable trains at."""
        return self.learning_rate_multipliers.get(variable.name.split(":")[0], 1.0)

    def _apply_weight_decay(self, variables):
        """Weight decay happens in `update_step`, scaled by each variable's factor."""

    def apply_gradients(self, grads_and_vars, *args, **kwargs):
        self._scalars = {}  # this step's learning rate and Adam powers, made once
        try:
            return super().apply_gradients(grads_and_vars, *args, **kwargs)
        finally:
            self._scalars = {}

    def _step_scalars(self, variable):
        """(learning rate, beta_1^t, beta_2^t, beta_1, beta_2, epsilon, weight decay) of
        this step in `variable`'s dtype, made once per step per graph and device rather
        than once per variable: the schedule, the powers and the constants would otherwise
        be traced ~100 times into every train step."""
        dtype = variable.dtype.base_dtype
        graph = None if tf.executing_eagerly() else tf.compat.v1.get_default_graph()
        key = (id(graph), variable.device, dtype)
        cache = getattr(self, "_scalars", None)
        if cache is None:
            cache = self._scalars = {}
        if key not in cache:
            lr = tf.cast(self.learning_rate, dtype)
            if self.bias_correction:
                step = tf.cast(self.iterations + 1, dtype)
                powers = (tf.pow(tf.cast(self.beta_1, dtype), step),
                          tf.pow(tf.cast(self.beta_2, dtype), step))
            else:  # Adam's step with powers 0 is the uncorrected one
                powers = (tf.zeros([], dtype), tf.zeros([], dtype))
            constants = [tf.constant(value, dtype) for value in
                         (self.beta_1, self.beta_2, self.epsilon)]
            decay = None if self.weight_decay is None else tf.cast(self.weight_decay, dtype)
            # the graph held: its id stays unique
            cache[key] = (graph, (lr, *powers, *constants, decay))
        return cache[key][1]

    def update_step(self, gradient, variable):
        if isinstance(gradient, tf.IndexedSlices):
            gradient = tf.convert_to_tensor(gradient)
        dtype = variable.dtype.base_dtype
        key = self._var_key(variable)
        lr, beta_1_power, beta_2_power, beta_1, beta_2, epsilon, decay = \
            self._step_scalars(variable)
        factor = self._multipliers.get(key, 1.0)
        if factor != 1.0:
            lr = lr * factor
        if decay is not None and self._use_weight_decay(variable):
            # Decoupled: shrink by lr x decay before the Adam step, like Keras does.
            variable.assign_sub(variable * (decay * lr))
        index = self._index_dict[key]
        # TensorFlow's fused Adam kernel, one pass over the variable and its slots:
        # m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;
        # variable <- variable - lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps).
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=self._momentums[index].handle,
            v=self._velocities[index].handle, beta1_power=beta_1_power,
            beta2_power=beta_2_power, lr=lr, beta1=beta_1, beta2=beta_2, epsilon=epsilon,
            grad=tf.cast(gradient, dtype), use_locking=False)

    def get_config(self):
        config = super().get_config()
        config.update(learning_rate=self._serialize_hyperparameter(self._learning_rate),
                      beta_1=self.beta_1, beta_2=self.beta_2, epsilon=self.epsilon,
                      bias_correction=self.bias_correction,
                      learning_rate_multipliers=dict(self.learning_rate_multipliers))
        return config


def create_optimizer(learning_rate: float = 2e-5, *, total_steps: int,
                     warmup_ratio: float = 0.1, weight_decay: float = 0.01,
                     bias_correction: bool = True, clipnorm=None,
                     epsilon: float = 1e-6, global_clipnorm: Optional[float] = None,
                     learning_rate_multipliers: Optional[Mapping[str, float]] = None) -> AdamW:
    """AdamW with linear warmup over `warmup_ratio` of `total_steps`, then linear decay.

    Weight decay skips LayerNorm parameters and biases. `global_clipnorm` clips the
    gradients of all variables together to that norm (BERT: 1.0); `clipnorm` clips each
    variable's gradient alone. `learning_rate_multipliers`: see `AdamW`.
    """
    if not learning_rate > 0:
        raise bad_argument("learning_rate", learning_rate, "a float > 0")
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise bad_argument("total_steps", total_steps, "an int >= 1")
    if not 0.0 <= warmup_ratio < 1.0:
        raise bad_argument("warmup_ratio", warmup_ratio, "a float in [0, 1)")
    if weight_decay < 0:
        raise bad_argument("weight_decay", weight_decay, "a float >= 0")
    if global_clipnorm is not None and not global_clipnorm > 0:
        raise bad_argument("clip_norm", global_clipnorm, "a float > 0, or None for no clipping")
    schedule = WarmupLinearDecay(learning_rate, total_steps,
                                 int(round(total_steps * warmup_ratio)))
    return AdamW(schedule, weight_decay=weight_decay or None,
                 bias_correction=bias_correction, clipnorm=clipnorm, epsilon=epsilon,
                 global_clipnorm=global_clipnorm,
                 learning_rate_multipliers=learning_rate_multipliers)
