"""Survive a crash: periodic backups that a rerun of the same command resumes from, and a
clear stop, keeping the last good backup, when the loss turns NaN or infinite.

A run with an `output_dir` backs up model, optimizer (and so the learning-rate
schedule's position), epoch and step to `OUTPUT/backup` every `backup_steps` steps with
Keras' `BackupAndRestore` (under MultiWorkerMirroredStrategy the chief writes, every
worker restores). Started again with the same settings, the run restores that backup,
its input stream skips the batches already trained on (train_input.py) and training
continues at the next step, with the history of the finished epochs kept. A finished
run deletes its backup. TensorFlow writes each checkpoint under a temporary name and
then points `checkpoint` at it, so a kill mid-save leaves the previous backup usable.

Deterministic runs: dropout inside a TF-Hub encoder draws from random ops whose position
lives in their kernels, not in a variable a checkpoint could hold, and a new process
starts them afresh. So deterministic runs trace the train step again after each backup,
which starts every random stream afresh at the same steps as a resumed run does: a
resumed deterministic run computes exactly what an uninterrupted one does. (The cost: one
retrace per backup, and dropout masks that repeat every `backup_steps` steps.)
"""

import dataclasses
import json
import logging
import os
import shutil
from typing import Optional

import tensorflow as tf

from keras_bert_ft._keras import keras
from keras_bert_ft.errors import KbftError
from keras_bert_ft.training.strategy import is_chief

logger = logging.getLogger("keras_bert_ft")

BACKUP_DIR = "backup"
RUN_FILE = "run.json"
HISTORY_FILE = "history.json"
# Settings that may change between a run and its resumption: they do not change the numbers.
_NOT_IDENTIFYING = ("verbose", "output_dir", "strategy", "tpu_address", "steps_per_execution",
                    "overwrite")


class NonFiniteLoss(KbftError):
    """The training loss (or a weight) became NaN or infinite."""


@dataclasses.dataclass
class Resume:
    """Where a resumed run continues: `epoch` and `step` within it (both from 0),
    `global_step` batches already trained, and the history of the finished epochs."""
    epoch: int
    step: int
    global_step: int
    history: dict


def backup_dir(output_dir: str) -> str:
    return os.path.join(output_dir, BACKUP_DIR)


def fingerprint(config, data_digest: str, examples: int) -> dict:
    """What makes a rerun 'the same run': its settings and its training data (the digest
    of its feature arrays and labels)."""
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in _NOT_IDENTIFYING}
    return json.loads(json.dumps({"settings": settings, "train_examples": examples,
                                  "train_sha256": data_digest}, default=str))


def resume_point(directory: str, steps_per_epoch: int) -> Optional[Resume]:
    """The step after the latest backup in `directory`, or None when there is none."""
    latest = tf.train.latest_checkpoint(os.path.join(directory, "chief"))
    if latest is None:
        return None
    reader = tf.train.load_checkpoint(latest)
    epoch = int(reader.get_tensor("ckpt_saved_epoch/.ATTRIBUTES/VARIABLE_VALUE"))
    batch = int(reader.get_tensor("ckpt_saved_batch/.ATTRIBUTES/VARIABLE_VALUE"))
    if epoch < 0 or batch < 0:
        return None
    global_step = epoch * steps_per_epoch + batch + 1
    history = _read_json(os.path.join(directory, HISTORY_FILE)) or {}
    resume_epoch, step = divmod(global_step, steps_per_epoch)
    history = {k: v[:resume_epoch] for k, v in history.items()}
    return Resume(resume_epoch, step, global_step, history)


class RunBackup:
    """Backups of one run under `OUTPUT/backup`: checks that a backup found there belongs
    to the same run, finds where to resume, and gives the callbacks that write them."""

    def __init__(self, output_dir: str, run_fingerprint: dict, *, steps_per_epoch: int,
                 backup_steps: int, strategy, deterministic: bool = False):
        self.directory = backup_dir(output_dir)
        self.steps_per_epoch = steps_per_epoch
        self.backup_steps = backup_steps
        self.deterministic = deterministic
        self.chief = is_chief(strategy)
        self.resume = None
        run_file = os.path.join(self.directory, RUN_FILE)
        saved = _read_json(run_file)
        if saved is not None and saved != run_fingerprint:
            if tf.train.latest_checkpoint(os.path.join(self.directory, "chief")):
                changed = sorted(k for k in set(saved["settings"]) | set(run_fingerprint["settings"])
                                 if saved["settings"].get(k) != run_fingerprint["settings"].get(k))
                if saved.get("train_sha256") != run_fingerprint["train_sha256"]:
                    changed.append("training data")
                raise KbftError(
                    f"{output_dir} holds the backup of an unfinished run with other "
                    f"settings (differing: {', '.join(changed) or 'steps'}). Rerun that run's "
                    f"command to resume it, or use another output folder, or delete "
                    f"{self.directory} to start afresh.")
            saved = None
        if self.chief and saved is None:
            stale = os.path.join(self.directory, "chief")  # a backup without its run.json
            if tf.io.gfile.exists(stale):
                tf.io.gfile.rmtree(stale)
            _write_json(run_file, run_fingerprint)
        elif saved is not None or not self.chief:  # other workers follow the chief's backup
            self.resume = resume_point(self.directory, steps_per_epoch)
        if self.resume is not None:
            logger.warning("keras_bert_ft: resuming from the backup in %s: epoch %d after "
                           "step %d of %d (%d steps done)", self.directory, self.resume.epoch + 1,
                           self.resume.step, steps_per_epoch, self.resume.global_step)

    @property
    def start_step(self) -> int:
        return self.resume.global_step if self.resume else 0

    def callbacks(self):
        """NaN/inf guard first (it must act before a backup is written), then the backup
        and the history keeper."""
        return [StopOnNonFiniteLoss(self.directory),
                StepBackup(self.directory, save_steps=self.backup_steps,
                           steps_per_epoch=self.steps_per_epoch,
                           restart_random_streams=self.deterministic, chief=self.chief),
                EpochHistory(os.path.join(self.directory, HISTORY_FILE),
                             self.resume.history if self.resume else {}, chief=self.chief)]

    def full_history(self, history: dict) -> dict:
        """This process's history after the finished epochs of the runs before it."""
        earlier = self.resume.history if self.resume else {}
        return {k: list(earlier.get(k, [])) + list(v) for k, v in history.items()}


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops training with `NonFiniteLoss` at the first NaN/inf loss, before any backup of
    that step is written, so the last backup is the last good state."""

    def __init__(self, backup_directory: Optional[str] = None):
        super().__init__()
        self.backup_directory = backup_directory
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not _finite(float(loss)):
            kept = (f" The last good backup is kept in {self.backup_directory}."
                    if self.backup_directory else "")
            raise NonFiniteLoss(
                f"Training stopped: the loss became {float(loss)} at epoch {self._epoch + 1}, "
                f"step {batch + 1}.{kept} Lower --learning-rate (or raise --warmup-ratio) "
                f"and start a new run.")


class StepBackup(keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` every `save_steps` training steps.

    Unlike Keras' own step mode it counts steps, not callback calls (with
    `steps_per_execution > 1` a call covers several steps), records the last step a
    backup holds, refuses to back up non-finite weights, and can start the random
    streams afresh after each backup (deterministic runs, see the module docstring).
    """

    def __init__(self, directory: str, *, save_steps: int, steps_per_epoch: int,
                 restart_random_streams: bool = False, chief: bool = True):
        super().__init__(directory, save_freq=save_steps, delete_checkpoint=True)
        self.directory = directory
        self.save_steps = save_steps
        self.steps_per_epoch = steps_per_epoch
        self.restart_random_streams = restart_random_streams
        self.chief = chief
        self._saved_step = 0

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        state = self._training_state
        epoch, batch = int(state._ckpt_saved_epoch.numpy()), int(state._ckpt_saved_batch.numpy())
        self._saved_step = epoch * self.steps_per_epoch + batch + 1 if batch >= 0 else 0

    def on_train_batch_begin(self, batch, logs=None):
        pass  # the step a backup holds is recorded when it is written

    def on_train_batch_end(self, batch, logs=None):
        step = self._current_epoch * self.steps_per_epoch + batch + 1
        if step // self.save_steps <= self._saved_step // self.save_steps:
            return
        bad = [v.name for v in self.model.trainable_weights
               if not bool(tf.reduce_all(tf.math.is_finite(v)))]
        if bad:
            raise NonFiniteLoss(
                f"Training stopped: weights became NaN/inf by step {step} ({bad[0]} and "
                f"{len(bad) - 1} more). The last good backup is kept in {self.directory}. "
                "Lower --learning-rate and start a new run.")
        self._training_state._ckpt_saved_batch.assign(batch)
        self._backup(epoch=self._current_epoch, batch=batch)
        self._saved_step = step
        if self.restart_random_streams:
            self.model.train_function = self.model.make_train_function(force=True)

    def on_train_end(self, logs=None):
        super().on_train_end(logs)  # deletes the checkpoints
        if self.chief:
            shutil.rmtree(self.directory, ignore_errors=True)


class EpochHistory(keras.callbacks.Callback):
    """Keeps the per-epoch history of a run in `path` (chief only), so a resumed run
    reports every epoch, not only those after the crash."""

    def __init__(self, path: str, earlier: dict, chief: bool = True):
        super().__init__()
        self.path = path
        self.history = {k: list(v) for k, v in earlier.items()}
        self.chief = chief

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))
        if self.chief:
            _write_json(self.path, self.history)


def _finite(value: float) -> bool:
    return value == value and value not in (float("inf"), float("-inf"))


def _read_json(path: str):
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def _write_json(path: str, payload) -> None:
    tf.io.gfile.makedirs(os.path.dirname(path))
    tmp = f"{path}.tmp"
    with tf.io.gfile.GFile(tmp, "w") as f:
        json.dump(payload, f, indent=2)
    tf.io.gfile.rename(tmp, path, overwrite=True)
