"""GradualUnfreezing: exactly the expected variables change at each stage, by steps and by
epochs, under MirroredStrategy too, and the optimizer keeps the slots it had."""

import numpy as np
import pytest
import tensorflow as tf

from keras_bert_ft._keras import keras
from keras_bert_ft.encoders.hub_encoder import HubEncoder
from keras_bert_ft.errors import KbftError
from keras_bert_ft.tasks.models import build_classifier
from keras_bert_ft.training.optimization import AdamW
from keras_bert_ft.data.preprocessing import Preprocessor
from keras_bert_ft.training.strategy import new_mirrored_strategy
from keras_bert_ft.training.unfreeze import GradualUnfreezing


class Snapshots(keras.callbacks.Callback):
    """Weights after every step (or epoch), plus the head kernel's Adam slot."""

    def __init__(self, per: str):
        super().__init__()
        self.per, self.values, self.slots = per, [], []

    def _take(self):
        self.values.append({v.name: v.numpy().copy() for v in self.model.variables})
        opt, head = self.model.optimizer, self.model.get_layer("logits").kernel
        self.slots.append(opt._momentums[opt._index_dict[opt._var_key(head)]])

    def on_train_begin(self, logs=None):
        self.values.append({v.name: v.numpy().copy() for v in self.model.variables})

    def on_train_batch_end(self, batch, logs=None):
        if self.per == "step":
            self._take()

    def on_epoch_end(self, epoch, logs=None):
        if self.per == "epoch":
            self._take()


def _changed(before, after, model):
    groups = {g: {v.name for v in vs} for g, vs in model.encoder.layer_groups().items()}
    changed = {n for n in before if not np.array_equal(before[n], after[n])}
    result = {g for g, names in groups.items() if names & changed}
    for g in result:
        assert groups[g] <= changed, f"{g} changed only in part"
    return result | ({"head"} if changed - set().union(*groups.values()) else set())


def _fit(encoder, vocab_file, strategy, callback, epochs, per):
    with strategy.scope():
        model = build_classifier(HubEncoder(encoder, trainable_layers="none"), 2)
        model.compile(optimizer=AdamW(1e-2, weight_decay=None),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pre = Preprocessor.from_vocab(vocab_file, seq_length=12)
    features = pre(tf.constant(["the movie was good", "bad plot", "great fun", "awful"] * 4))
    data = tf.data.Dataset.from_tensor_slices((features, tf.constant([1, 0, 1, 0] * 4))).batch(8)
    snapshots = Snapshots(per)
    model.fit(data, epochs=epochs, callbacks=[callback, snapshots], verbose=0)
    stages = [_changed(a, b, model) for a, b in zip(snapshots.values, snapshots.values[1:])]
    return model, stages, snapshots


def test_unfreezes_one_layer_every_two_steps(encoder2, vocab_file):
    callback = GradualUnfreezing(every=2, unit="step", unfreeze_embeddings=True)
    _, stages, snaps = _fit(encoder2, vocab_file, tf.distribute.get_strategy(), callback,
                            epochs=5, per="step")  # 2 steps per epoch
    head = {"pooler", "head"}
    both = head | {"layer_0", "layer_1"}
    everything = both | {"embeddings"}
    assert stages == [head, head, head | {"layer_1"}, head | {"layer_1"}, both, both,
                      everything, everything, everything, everything]
    assert [(s[2], s[3]) for s in callback.stages] == [(0, False), (1, False), (2, False),
                                                       (2, True)]
    assert all(slot is snaps.slots[0] for slot in snaps.slots)  # Adam state kept


def test_unfreezes_by_epoch_under_mirrored_strategy(encoder2, vocab_file):
    strategy = new_mirrored_strategy(["/cpu:0", "/cpu:1"])
    callback = GradualUnfreezing(every=1, unit="epoch", start_layers=1)
    model, stages, snaps = _fit(encoder2, vocab_file, strategy, callback, epochs=2, per="epoch")
    head = {"pooler", "head"}
    assert stages == [head | {"layer_1"}, head | {"layer_0", "layer_1"}]
    assert all(slot is snaps.slots[0] for slot in snaps.slots)
    assert not np.all(snaps.slots[0].numpy() == 0)
    opt = model.optimizer
    trained = {opt._var_key(v) for v in model.trainable_variables}
    assert trained <= set(opt._index_dict)


def test_errors_bad_arguments(encoder2):
    with pytest.raises(KbftError, match="Received: unfreeze_every=0"):
        GradualUnfreezing(every=0)
    with pytest.raises(KbftError, match="Received: unfreeze_unit='batch'"):
        GradualUnfreezing(unit="batch")
    encoder = HubEncoder(encoder2)
    assert GradualUnfreezing(max_layers=1, encoder=encoder)._limit() == 1
    with pytest.raises(KbftError, match="Received: start_layers=9"):
        GradualUnfreezing(start_layers=9, encoder=encoder)._limit()


def test_step_unfreezing_counts_steps_not_calls(encoder2):
    """With steps_per_execution=2 each callback call covers two steps (Keras reports the
    last one's index): stages still fall every `every` steps."""
    model = build_classifier(HubEncoder(encoder2, trainable_layers="none"), 2)
    model.compile(optimizer=AdamW(1e-2, weight_decay=None), steps_per_execution=2,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    callback = GradualUnfreezing(every=2, unit="step")
    callback.set_model(model)
    callback.on_train_begin()
    callback.on_epoch_begin(0)
    callback.on_train_batch_end(1)  # steps 1-2
    assert callback.layers == 1
    callback.on_train_batch_end(3)  # steps 3-4
    assert callback.layers == 2 and [s[1] for s in callback.stages] == [0, 2, 4]
