"""The epoch kept: validation metrics every epoch, early stopping, the best weights restored.

With `monitor` (or `patience`), the runner scores the validation data after every epoch
with the task's own metrics (the ones `metrics.json` reports: accuracy, F1, exact match,
ROUGE ...), puts them in the history as `val_<name>`, stops after `patience` epochs
without improvement and, when training ends, puts back the weights of the best epoch, so
evaluation and the export see that epoch and not the last.

A resumed run (fault_tolerance.py) knows the epochs before the interruption from its
history; when the best of them beats every later epoch its weights come back from the run
folder's per-epoch checkpoint.
"""

import math
import os
from typing import Callable, Optional

from keras_bert_ft._keras import keras
from keras_bert_ft.errors import KbftError, bad_argument
from keras_bert_ft.tasks.base import LOWER_IS_BETTER


def resolve_monitor(task, config) -> Optional[str]:
    """The metric that picks the epoch kept (None: the last epoch is kept)."""
    if config.monitor is None and not config.patience:
        return None
    name = config.monitor or task.primary_metric
    name = name[4:] if name.startswith("val_") else name
    name = "eval_loss" if name == "loss" else name
    if task.metric_names and name not in task.metric_names:
        raise bad_argument("monitor", config.monitor, f"a validation metric of task "
                           f"{task.name!r}: one of {', '.join(task.metric_names)}")
    return name


def check_validation(config, validation) -> None:
    """`monitor` / `patience` need validation data; refused before anything is read."""
    if validation is not None and config.validation_split:
        raise bad_argument("validation_split", config.validation_split,
                           "0 when validation data is given (it holds out part of the "
                           "training data only when there is none)")
    if validation is None and not config.validation_split:
        for name in ("monitor", "patience"):
            value = getattr(config, name)
            if value:
                raise bad_argument(name, value, "given with validation data (--validation "
                                   "or --validation-split) to score each epoch on")


class KeepBestEpoch(keras.callbacks.Callback):
    """Scores validation after each epoch (`evaluate() -> metrics`), logs `val_<name>`,
    stops after `patience` epochs without improvement of `monitor`, and `restore()`s the
    best epoch's weights at the end. With `monitor=None` it only scores and logs (the
    last epoch is kept)."""

    def __init__(self, evaluate: Callable[[], dict], monitor: Optional[str], patience: int = 0,
                 earlier: Optional[dict] = None, checkpoints: Optional[str] = None,
                 verbose: int = 0):
        super().__init__()
        self.evaluate = evaluate
        self.monitor = monitor
        self.patience = patience
        self.lower = monitor in LOWER_IS_BETTER
        self.checkpoints = checkpoints
        self.verbose = verbose
        self.best_value = None
        self.best_epoch = 0      # 1-based; 0: none yet
        self.best_weights = None  # in memory when the best epoch ran in this process
        self.wait = 0
        self.epochs = 0
        self.stopped_early = False
        for value in (earlier or {}).get(f"val_{monitor}", []):  # a resumed run's epochs
            self.epochs += 1
            self._consider(value)

    def _better(self, value: float) -> bool:
        if self.best_value is None:
            return True
        return value < self.best_value if self.lower else value > self.best_value

    def _consider(self, value: float) -> bool:
        if not math.isnan(value) and self._better(value):
            self.best_value, self.best_epoch, self.wait = value, self.epochs, 0
            return True
        self.wait += 1
        return False

    def on_epoch_end(self, epoch, logs=None):
        metrics = self.evaluate()
        if self.monitor is not None and self.monitor not in metrics:
            raise KbftError(f"monitor {self.monitor!r} is not among this run's validation "
                            f"metrics ({', '.join(sorted(metrics))}). Received: "
                            f"monitor={self.monitor!r}", argument="monitor")
        if logs is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    logs[f"val_{key}"] = float(value)
            if "eval_loss" in metrics:
                logs["val_loss"] = float(metrics["eval_loss"])
        self.epochs = epoch + 1
        if self.monitor is None:
            return
        if self._consider(float(metrics[self.monitor])):
            self.best_weights = self.model.get_weights()
        if self.verbose:
            print(f"epoch {epoch + 1}: validation {self.monitor} {metrics[self.monitor]:.4f} "
                  f"(best {self.best_value:.4f} at epoch {self.best_epoch})", flush=True)
        last = epoch + 1 >= self.params.get("epochs", math.inf)
        if self.patience and self.wait >= self.patience and not last:
            self.stopped_early = True
            self.model.stop_training = True

    def restore(self, model) -> None:
        """Puts back the best epoch's weights (from memory, or from its checkpoint when
        it ran before a resume)."""
        if self.best_weights is not None:
            model.set_weights(self.best_weights)
        elif self.best_epoch and self.best_epoch != self.epochs:
            path = os.path.join(self.checkpoints or "", f"ckpt-{self.best_epoch:03d}")
            if not self.checkpoints or not os.path.exists(path + ".index"):
                raise KbftError(f"The best epoch ({self.best_epoch}) ran before this run "
                                f"resumed and its checkpoint {path} is gone; the last "
                                "epoch's weights would be exported instead.",
                                argument="monitor")
            model.load_weights(path).expect_partial()

    def report(self) -> dict:
        return {"monitor": self.monitor, "best_epoch": self.best_epoch,
                "best_value": self.best_value, "epochs_trained": self.epochs,
                "stopped_early": self.stopped_early}
