"""build_classifier and friends: the whole forward path, encoder -> pooling -> head -> outputs."""

import math
from typing import Sequence, Union

import tensorflow as tf

from keras_bert_ft._keras import check_tf_keras, keras
from keras_bert_ft.encoders.hub_encoder import HubEncoder, LayerGroups, format_report
from keras_bert_ft.errors import bad_argument
from keras_bert_ft.tasks import heads


class FineTuneModel(keras.Model):
    """A functional model that notices when its trainable variables change, and that
    can accumulate gradients.

    `HubEncoder.set_trainable_layers` between two `fit` calls changes which variables
    train; Keras would keep the first traced train step. This model re-traces the step
    whenever the set of trainable variables (or `accumulation_steps`) differs from the
    one it was traced with.

    `accumulation_steps` (N, default 1): each batch `fit` feeds is split into N
    micro-batches of ceil(rows / N) rows, run one after the other (only one micro-batch's
    activations are alive at a time); their gradients, each weighted by its share of the
    rows, add up to the gradient of the whole batch's mean loss, and the optimizer
    applies them once. Feed batches N times larger than what fits in memory: the step
    is the same update as one big batch (clipping, weight decay, the learning-rate
    schedule and Adam's step count see one step). Losses that average over something
    other than rows (the masked token losses of tagging and summarisation average over
    labelled positions) are matched approximately: each micro-batch still counts by rows.

    `log_gradient_norms` (default False): the step also logs the L2 norm of the gradient
    it applies per layer group, averaged over the epoch, as `grad_norm_<group>`
    (training/gradient_norms.py). Off, the step is Keras's own (or the accumulating one)
    unchanged.
    """

    accumulation_steps = 1
    log_gradient_norms = False

    def _trackable_children(self, save_type="checkpoint", **kwargs):
        """A SavedModel (the export) leaves the optimizer out: its two Adam moments per
        weight are training state that no signature reads, and would triple the export's
        size. Checkpoints (per-epoch weights, backups to resume from) keep it."""
        children = super()._trackable_children(save_type, **kwargs)
        if save_type == "savedmodel":
            children.pop("optimizer", None)
        return children

    def make_train_function(self, force=False):
        steps = self.accumulation_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise bad_argument("accumulation_steps", steps, "an int >= 1")
        norms = bool(self.log_gradient_norms)
        signature = (tuple(id(v) for v in self.trainable_variables), steps, norms)
        if signature != getattr(self, "_kbft_trainable_signature", None):
            force = True
            self._kbft_trainable_signature = signature
        if norms and getattr(self, "_kbft_norms", None) is None:
            from keras_bert_ft.training.gradient_norms import GradientNorms
            self._kbft_norms = GradientNorms(self)  # fit calls this in the strategy's scope
        self._build_optimizer_slots()
        return super().make_train_function(force=force)

    def _build_optimizer_slots(self) -> None:
        """Creates the toolkit AdamW's slots for the trainable variables before the step
        is traced. A tf.function whose first trace creates variables is traced a second
        time before it runs, so slots made inside the step double its tracing (seconds
        of every run's first step)."""
        from keras_bert_ft.training.optimization import AdamW
        optimizer = getattr(self, "optimizer", None)
        inner = getattr(optimizer, "inner_optimizer", optimizer)  # under loss scaling
        if isinstance(inner, AdamW):
            with self.distribute_strategy.scope():
                inner.build(self.trainable_variables)

    def reset_metrics(self):
        super().reset_metrics()
        if getattr(self, "_kbft_norms", None) is not None:
            self._kbft_norms.reset()

    def train_step(self, data):
        if self.accumulation_steps > 1:
            return self._accumulated_train_step(data, self.accumulation_steps)
        if not self.log_gradient_norms:
            return super().train_step(data)
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(x, y, y_pred, sample_weight)
        self._validate_target_and_loss(y, loss)
        # The optimizer's own: a LossScaleOptimizer scales the loss and unscales here.
        self._apply(self.optimizer.compute_gradients(loss, self.trainable_variables, tape))
        return {**self.compute_metrics(x, y, y_pred, sample_weight),
                **self._kbft_norms.results()}

    def _apply(self, grads_and_vars) -> None:
        """`optimizer.apply_gradients`; with `log_gradient_norms`, the gradients are summed
        over replicas here (as the optimizer would), measured, then applied as they are."""
        if not self.log_gradient_norms:
            self.optimizer.apply_gradients(grads_and_vars)
            return
        pairs = [(g, v) for g, v in grads_and_vars if g is not None]
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            summed = context.all_reduce(tf.distribute.ReduceOp.SUM, [g for g, _ in pairs])
            pairs = list(zip(summed, [v for _, v in pairs]))
        self._kbft_norms.update(self, pairs)
        self.optimizer.apply_gradients(pairs, skip_gradients_aggregation=True)

    def _accumulated_train_step(self, data, steps: int):
        """One optimizer step over `steps` micro-batches of `data` (see the class doc)."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        first = tf.nest.flatten(x)[0]
        rows = tf.shape(first, out_type=tf.int32)[0]
        known = first.shape[0]
        if known:  # static sizes, so static slices (XLA, TPU): full ones, then the rest
            size = math.ceil(known / steps)
            loop_end, rest = divmod(known, size)
        else:  # ceil(rows / size) micro-batches, the last one shorter: none is empty
            size = tf.maximum((rows + steps - 1) // steps, 1)
            loop_end, rest = (rows + size - 1) // size, 0

        def length_of(index):
            return size if known else tf.minimum(size, rows - index * size)

        variables = self.trainable_variables
        optimizer = self.optimizer
        scaled = isinstance(optimizer, keras.mixed_precision.LossScaleOptimizer)
        total = tf.cast(rows, tf.float32)

        def gradients(start, length):
            """The weighted gradients of rows [start, start + length); metrics updated."""
            part = tf.nest.map_structure(lambda t: _rows(t, start, length),
                                         (x, y, sample_weight))
            with tf.GradientTape() as tape:
                y_pred = self(part[0], training=True)
                loss = self.compute_loss(part[0], part[1], y_pred, part[2])
                share = tf.math.divide_no_nan(tf.cast(length, tf.float32), total)
                weighted = loss * tf.cast(share, loss.dtype)
                if scaled:
                    weighted = optimizer.get_scaled_loss(weighted)
            grads = tape.gradient(weighted, variables)
            if scaled:
                grads = optimizer.get_unscaled_gradients(grads)
            # Metric states only: a result here would sync replicas inside the loop.
            self.compiled_metrics.update_state(part[1], y_pred, part[2])
            return loss, part[1], [_dense(g) for g in grads]

        # The first micro-batch outside the loop: Keras builds its loss and metric
        # containers on their first call, and it tells which gradients are None.
        loss, y_first, grads = gradients(0, length_of(0))
        self._validate_target_and_loss(y_first, loss)
        present = [i for i, g in enumerate(grads) if g is not None]

        def body(index, accumulated):
            more = gradients(index * size, length_of(index))[2]
            return index + 1, [a + more[i] for a, i in zip(accumulated, present)]

        # One micro-batch at a time (parallel_iterations=1): only its activations live.
        _, summed = tf.while_loop(lambda index, _: index < loop_end, body,
                                  (tf.constant(1), [grads[i] for i in present]),
                                  parallel_iterations=1)
        if rest:  # the shorter last micro-batch of a static batch
            more = gradients(loop_end * size, rest)[2]
            summed = [a + more[i] for a, i in zip(summed, present)]
        for i, g in zip(present, summed):
            grads[i] = g
        self._apply(list(zip(grads, variables)))
        if self.log_gradient_norms:
            return {**self.get_metrics_result(), **self._kbft_norms.results()}
        return self.get_metrics_result()

    @property
    def encoder(self) -> HubEncoder:
        return self.get_layer("encoder")

    def report_rows(self):
        """Trainable / frozen parameters per encoder group, plus the head."""
        rows = list(self.encoder.report_rows())
        encoder_ids = {id(v) for v in self.encoder.weights}
        head = [v for v in self.weights if id(v) not in encoder_ids]
        head_trainable = {id(v) for v in self.trainable_weights}
        rows.append(("head", sum(int(v.shape.num_elements()) for v in head),
                     bool(head) and all(id(v) in head_trainable for v in head)))
        return rows

    def trainable_report(self) -> str:
        return format_report(self.report_rows())


def encoder_inputs():
    """The int32 input dict every model takes; `None` length allows per-batch padding."""
    return {k: keras.Input(shape=(None,), dtype=tf.int32, name=k)
            for k in ("input_word_ids", "input_mask", "input_type_ids")}


def build_classifier(encoder: Union[HubEncoder, str], num_classes: int, *,
                     head_units: Sequence[int] = (), dropout: float = 0.1,
                     pooling: str = "pooled") -> FineTuneModel:
    """Encoder -> pooling (`pooled`, `cls`, `mean`) -> Dense+Dropout blocks -> logits.

    Args:
        encoder: a `HubEncoder` or a handle to build one (all layers trainable).
        num_classes: number of classes (>= 2); the model outputs unnormalised logits.
        head_units: widths of Dense(ReLU)+Dropout blocks between pooling and logits.
        dropout: dropout rate of the head.
        pooling: `pooled` (BERT's pooler), `cls` (the [CLS] vector) or `mean`.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise bad_argument("num_classes", num_classes, "an int >= 2")
    return _build(encoder, num_classes, "classifier", head_units, dropout, pooling)


def build_multilabel_classifier(encoder: Union[HubEncoder, str], num_labels: int, *,
                                head_units: Sequence[int] = (), dropout: float = 0.1,
                                pooling: str = "pooled") -> FineTuneModel:
    """As `build_classifier`, one independent logit per label (a sigmoid each, trained
    with binary cross-entropy)."""
    if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1:
        raise bad_argument("num_labels", num_labels, "an int >= 1")
    return _build(encoder, num_labels, "multilabel_classifier", head_units, dropout, pooling)


def build_regressor(encoder: Union[HubEncoder, str], *, head_units: Sequence[int] = (),
                    dropout: float = 0.1, pooling: str = "pooled") -> FineTuneModel:
    """As `build_classifier`, with one linear output: the score, `[batch, 1]`."""
    return _build(encoder, 1, "regressor", head_units, dropout, pooling)


def build_task_model(task: str, encoder: Union[HubEncoder, str], num_labels: int,
                     **head) -> FineTuneModel:
    """The model of a sentence-level task: classification, multilabel or regression."""
    if task == "classification":
        return build_classifier(encoder, num_labels, **head)
    if task == "multilabel":
        return build_multilabel_classifier(encoder, num_labels, **head)
    if task == "regression":
        return build_regressor(encoder, **head)
    raise bad_argument("task", task, "one of classification, multilabel, regression")


def _build(encoder, units: int, name: str, head_units, dropout, pooling) -> FineTuneModel:
    if pooling not in heads.POOLINGS:
        raise bad_argument("pooling", pooling, f"one of {', '.join(heads.POOLINGS)}")
    check_encoder(encoder)
    if isinstance(encoder, str):
        encoder = HubEncoder(encoder)
    if pooling != "pooled":
        leave_pooler_untrained(encoder)
    inputs = encoder_inputs()
    if pooling in ("pooled", "cls") and getattr(encoder, "supports_output_range", False):
        outputs = encoder(inputs, output_range=1)  # the head reads [CLS] alone
    else:
        outputs = encoder(inputs)
    x = heads.pool(outputs, inputs["input_mask"], pooling)
    x = heads.dense_blocks(x, tuple(head_units), dropout)
    logits = heads.logits_layer(units)(x)
    return FineTuneModel(inputs=inputs, outputs=logits, name=name)


def leave_pooler_untrained(encoder) -> None:
    """For heads that do not read `pooled_output` (`cls` / `mean` pooling, token, span
    and sentence heads): the pooler leaves training. No gradient reaches it (Keras would
    warn at every step), and weight decay alone would move it."""
    encoder.set_trainable_layers(encoder._trainable_spec,
                                 train_embeddings="embeddings" in encoder._trainable_groups,
                                 train_pooler=False)


ENCODER_EXPECTED = ("a handle (preset name, URL, local folder or gs:// path), a HubEncoder or "
                    "a NativeEncoder (make_encoder)")


def check_encoder(encoder) -> None:
    """Refuses, before anything is built, an `encoder` that is neither a handle nor one of
    the toolkit's tf_keras encoder layers (a Keras 3 layer is named as one)."""
    check_tf_keras(encoder, "encoder", "layer", instead=ENCODER_EXPECTED)
    if isinstance(encoder, str):
        return
    if not (isinstance(encoder, keras.layers.Layer) and isinstance(encoder, LayerGroups)):
        raise bad_argument("encoder", encoder, ENCODER_EXPECTED)


def _rows(tensor, start, length):
    """Rows [start, start + length) of `tensor` (None stays None); a static `length`
    keeps the slice's shape static."""
    if tensor is None:
        return None
    rank = tensor.shape.rank
    if rank is None:
        return tensor[start:start + length]
    return tf.slice(tensor, [start] + [0] * (rank - 1), [length] + [-1] * (rank - 1))


def _dense(gradient):
    """IndexedSlices (embedding lookups) as dense tensors, so they can be summed."""
    if isinstance(gradient, tf.IndexedSlices):
        return tf.convert_to_tensor(gradient)
    return gradient
