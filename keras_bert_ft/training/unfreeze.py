"""GradualUnfreezing: a Keras callback that unfreezes one more encoder layer from the top
every N epochs or steps (ULMFiT, Howard & Ruder 2018).

Each stage calls `HubEncoder.set_trainable_layers` and swaps in a freshly traced train
step (`model.make_train_function()`), so the very next step computes gradients for the
new set, under any distribution strategy. The optimizer keeps every slot it already has
(`AdamW` adds slots for variables as they first arrive and never drops any).
"""

from typing import List, Optional

from keras_bert_ft._keras import keras
from keras_bert_ft.errors import bad_argument

UNITS = ("epoch", "step")


class GradualUnfreezing(keras.callbacks.Callback):
    """Starts with the top `start_layers` encoder layers trainable and unfreezes one more
    every `every` epochs or steps, until `max_layers` (default: all) are trainable.

    Args:
        every: epochs or steps between two unfreezings (>= 1).
        unit: `"epoch"` or `"step"` (a step is one call of the train function; with
            `steps_per_execution` > 1 stages fall on its multiples).
        start_layers: layers trainable from the first step (0: head and pooler only).
        max_layers: stop unfreezing at this many layers.
        unfreeze_embeddings: after the last layer, one more stage unfreezes the embeddings.
        encoder: the `HubEncoder`; default: the model's layer named `encoder`.

    `stages` records `(epoch, global step, trainable layers, embeddings trainable)` at
    each change.

    Example:
        >>> model.fit(ds, epochs=4, callbacks=[GradualUnfreezing(every=1)])
    """

    def __init__(self, every: int = 1, unit: str = "epoch", *, start_layers: int = 0,
                 max_layers: Optional[int] = None, unfreeze_embeddings: bool = False,
                 encoder=None, verbose: int = 0):
        super().__init__()
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise bad_argument("unfreeze_every", every, "an int >= 1")
        if unit not in UNITS:
            raise bad_argument("unfreeze_unit", unit, f"one of {', '.join(UNITS)}")
        if isinstance(start_layers, bool) or not isinstance(start_layers, int) or start_layers < 0:
            raise bad_argument("start_layers", start_layers, "an int >= 0")
        self.every, self.unit = every, unit
        self.start_layers, self.max_layers = start_layers, max_layers
        self.unfreeze_embeddings = unfreeze_embeddings
        self.verbose = verbose
        self._encoder = encoder
        self.layers = start_layers
        self.embeddings = False
        self.stages: List[tuple] = []
        self._epoch = 0
        self._step = 0

    @property
    def encoder(self):
        return self._encoder if self._encoder is not None else self.model.get_layer("encoder")

    def _limit(self) -> int:
        total = self.encoder.num_layers
        limit = total if self.max_layers is None else min(self.max_layers, total)
        if not 0 <= self.start_layers <= limit:
            raise bad_argument("start_layers", self.start_layers,
                               f"an int in [0, {limit}] (the layers it may unfreeze)")
        return limit

    def _apply(self) -> None:
        self.encoder.set_trainable_layers(self.layers, train_embeddings=self.embeddings)
        self.model.train_function = self.model.make_train_function(force=True)
        self.stages.append((self._epoch, self._step, self.layers, self.embeddings))
        if self.verbose:
            print(f"\nGradualUnfreezing: top {self.layers} layer(s) trainable"
                  f"{' + embeddings' if self.embeddings else ''} "
                  f"(epoch {self._epoch}, step {self._step})")

    def _advance(self) -> None:
        limit = self._limit()
        if self.layers < limit:
            self.layers += 1
        elif (self.unfreeze_embeddings and not self.embeddings
              and limit == self.encoder.num_layers):
            self.embeddings = True
        else:
            return
        self._apply()

    def on_train_begin(self, logs=None):
        self._limit()
        self._apply()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = self._step

    def on_train_batch_end(self, batch, logs=None):
        # `batch` is the last step of the execution: with steps_per_execution > 1 one call
        # covers several steps, so count steps, not calls.
        step = getattr(self, "_epoch_start", 0) + int(batch) + 1
        crossed = step // self.every - self._step // self.every
        self._step = step
        if self.unit == "step":
            for _ in range(max(crossed, 0)):
                self._advance()

    def on_epoch_end(self, epoch, logs=None):
        self._epoch += 1
        if self.unit == "epoch" and self._epoch % self.every == 0:
            self._advance()
