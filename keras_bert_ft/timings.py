"""Where a run's wall-clock time goes, phase by phase: the run folder's `timings.json`.

A user times the whole command, not the training loop. `PhaseTimer` adds up the seconds
of each phase of `fine_tune` and `FineTuneResult.save` (reading, building the encoder
and model, tokenising, compiling, the first training step with its tracing, training,
validation, test, export, writing) and marks when the first training step ended,
counted from the start of the process (`kbft` starts the clock with Python itself).
No TensorFlow here: the CLI imports this before anything heavy.
"""

import contextlib
import os
import time
from typing import Dict, Optional

TIMINGS_FILE = "timings.json"

# The phases in the order a run goes through them (what timings.json lists).
PHASES = ("startup", "read", "build", "tokenise", "compile", "first_step", "training",
          "validation", "test", "export", "write")


def process_start() -> float:
    """Unix time at which this process started: from /proc on Linux (10 ms ticks),
    else the moment this module was first imported."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        started_ticks = float(fields[19])  # field 22 of the whole line: starttime
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return time.time() - (uptime - started_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return _IMPORTED


_IMPORTED = time.time()
_STARTED = False  # whether a run of this process has counted the start-up


class PhaseTimer:
    """Seconds per phase, plus marks in seconds since the process started.

    >>> timer = PhaseTimer()
    >>> with timer.phase("read"):
    ...     rows = read(path)
    >>> timer.to_json()["phases"]["read"]
    """

    def __init__(self, start: Optional[float] = None):
        self.start = process_start() if start is None else start
        self.phases: Dict[str, float] = {}
        self.marks: Dict[str, float] = {}

    def add(self, name: str, seconds: float) -> None:
        self.phases[name] = self.phases.get(name, 0.0) + max(float(seconds), 0.0)

    @contextlib.contextmanager
    def phase(self, name: str):
        began = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - began)

    def startup(self) -> None:
        """Marks the call and, the first time in a process, adds `startup`: from the
        process start to now (Python, imports, argument parsing; in a notebook, all
        that ran before). Later calls in the same process (kbft tune's trials) have none."""
        global _STARTED
        self.mark("fine_tune_called")
        if not _STARTED:
            _STARTED = True
            self.add("startup", time.time() - self.start)

    def mark(self, name: str) -> None:
        """Seconds from the process start to now, under `name`."""
        self.marks[name] = time.time() - self.start

    def to_json(self) -> dict:
        order = {name: i for i, name in enumerate(PHASES)}
        phases = sorted(self.phases.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0]))
        return {"phases": {k: round(v, 3) for k, v in phases},
                "phases_total": round(sum(self.phases.values()), 3),
                "since_process_start": {k: round(v, 3) for k, v in self.marks.items()}}


def callback(timer: PhaseTimer):
    """A tf_keras callback that times `fit`: `first_step` (from `fit`'s start to the end of
    the first training step: tracing, input warm-up), `training` (the rest of `fit` less
    validation passes) and `validation` (Keras's per-epoch evaluation; a monitor's own
    evaluation adds itself to `validation` through `timer.phase`)."""
    from keras_bert_ft._keras import keras

    class FitPhases(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self._began = time.perf_counter()
            self._first = None
            self._validation = timer.phases.get("validation", 0.0)

        def on_train_batch_end(self, batch, logs=None):
            if self._first is None:
                self._first = time.perf_counter()
                timer.add("first_step", self._first - self._began)
                timer.mark("first_step_done")

        def on_test_begin(self, logs=None):
            self._test_began = time.perf_counter()

        def on_test_end(self, logs=None):
            timer.add("validation", time.perf_counter() - self._test_began)

        def on_train_end(self, logs=None):  # validation inside fit is its own phase
            validation = timer.phases.get("validation", 0.0) - self._validation
            timer.add("training", time.perf_counter() - (self._first or self._began) - validation)
            timer.mark("training_done")

    return FitPhases()
