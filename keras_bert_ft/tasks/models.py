"""build_classifier and friends: the whole forward path, encoder -> pooling -> head -> outputs."""

from typing import Sequence, Union

import tensorflow as tf

from keras_bert_ft._keras import keras
from keras_bert_ft.encoders.hub_encoder import HubEncoder, format_report
from keras_bert_ft.errors import bad_argument
from keras_bert_ft.tasks import heads


class FineTuneModel(keras.Model):
    """A functional model that notices when its trainable variables change.

    `HubEncoder.set_trainable_layers` between two `fit` calls changes which variables
    train; Keras would keep the first traced train step. This model re-traces the step
    whenever the set of trainable variables differs from the one it was traced with.
    """

    def make_train_function(self, force=False):
        signature = tuple(id(v) for v in self.trainable_variables)
        if signature != getattr(self, "_kbft_trainable_signature", None):
            force = True
            self._kbft_trainable_signature = signature
        return super().make_train_function(force=force)

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
    if isinstance(encoder, str):
        encoder = HubEncoder(encoder)
    if pooling != "pooled":
        leave_pooler_untrained(encoder)
    inputs = encoder_inputs()
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
