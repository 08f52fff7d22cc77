"""The run folder: the one writer of `kbft train --output DIR`, and the rule that protects
what is already there.

A run folder holds `.kbft-run` (written first, so a killed run's folder is still known as
ours), `checkpoints/`, `logs/`, `backup/` while a run is unfinished, and at the end
`metrics.json`, `history.json`, `history.png`, `run_config.json` and `export/`. An existing
non-empty folder that is not a run folder is refused unless the user asks to `overwrite`.
"""

import json
import os
import shutil
import tempfile
from typing import Optional

import numpy as np

from keras_bert_ft._keras import keras
from keras_bert_ft.config import to_json
from keras_bert_ft.errors import KbftError, bad_argument
from keras_bert_ft.paths import check_output_folder
from keras_bert_ft.training.strategy import is_chief

MARKER = ".kbft-run"
RUN_CONFIG = "run_config.json"


def is_run_folder(path: str) -> bool:
    return any(os.path.exists(os.path.join(path, name)) for name in (MARKER, RUN_CONFIG))


def check(output_dir: str, overwrite: bool = False, name: str = "output_dir") -> bool:
    """Whether `output_dir` may become a run folder (True: it holds someone else's files
    that `overwrite` replaces). Writes nothing."""
    return check_output_folder(output_dir, name, ours=is_run_folder, overwrite=overwrite,
                               what="a kbft run folder")


def prepare(output_dir: str, overwrite: bool = False, name: str = "output_dir") -> None:
    """Makes `output_dir` a run folder: creates it, or accepts an empty folder or one of
    ours; a file, an unwritable place or someone else's non-empty folder is refused
    (`overwrite` replaces the latter)."""
    if "://" in output_dir:
        return
    if check(output_dir, overwrite, name):
        shutil.rmtree(output_dir)
    try:
        os.makedirs(output_dir, exist_ok=True)
        with open(os.path.join(output_dir, MARKER), "w") as f:
            f.write("keras_bert_ft run folder\n")
    except OSError as err:
        raise bad_argument(name, output_dir, f"a folder this user can write "
                           f"({err.strerror})") from None


def checkpoint_callbacks(output_dir: Optional[str]):
    """Per-epoch weights under `checkpoints/` and TensorBoard logs under `logs/`."""
    if not output_dir:
        return []
    return [keras.callbacks.ModelCheckpoint(
                os.path.join(output_dir, "checkpoints", "ckpt-{epoch:03d}"),
                save_weights_only=True),
            keras.callbacks.TensorBoard(os.path.join(output_dir, "logs"), profile_batch=0)]


def save_run(result, output_dir: str, export: bool = True) -> dict:
    """Writes `metrics.json`, `history.json`, `history.png`, `run_config.json` and the export.

    Under MultiWorkerMirroredStrategy only the chief writes them; the other workers
    export into a temporary folder they delete (saving reads variables that every
    worker must take part in), and return `{}`.
    """
    if result.strategy is not None and not is_chief(result.strategy):
        scratch = tempfile.mkdtemp(prefix="kbft-worker-export-")
        try:
            result.export(os.path.join(scratch, "export"))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return {}
    if os.path.abspath(output_dir) != os.path.abspath(result.config.output_dir or ""):
        prepare(output_dir, overwrite=result.config.overwrite)
    paths = {}
    if export:
        paths["export"] = result.export(os.path.join(output_dir, "export"))
    write_json(os.path.join(output_dir, "metrics.json"), result.metrics)
    write_json(os.path.join(output_dir, "history.json"), result.history)
    write_json(os.path.join(output_dir, RUN_CONFIG), {**to_json(result.config), **result.info})
    paths["plot"] = plot_history(result.history, os.path.join(output_dir, "history.png"))
    return paths


def read_run_config(run_dir: str, name: str = "run") -> dict:
    path = os.path.join(run_dir, RUN_CONFIG)
    if not os.path.isfile(path):
        raise bad_argument(name, run_dir, f"a kbft train --output folder (no {RUN_CONFIG})")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as err:  # unreadable, not text, not JSON
        raise KbftError(f"{path} is not readable JSON ({err}). Received: {name}={run_dir!r}",
                        argument=name) from None


def write_json(path: str, payload) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, default=str)
    os.replace(tmp, path)


def plot_history(history: dict, path: str) -> str:
    """Loss and accuracy per epoch, training and validation, as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in ("loss", "accuracy") if k in history]
    fig, axes = plt.subplots(1, max(len(keys), 1), figsize=(5 * max(len(keys), 1), 3.5))
    axes = np.atleast_1d(axes)
    for ax, key in zip(axes, keys):
        epochs = np.arange(1, len(history[key]) + 1)
        ax.plot(epochs, history[key], marker="o", label=f"train {key}")
        if f"val_{key}" in history:
            ax.plot(epochs, history[f"val_{key}"], marker="o", label=f"validation {key}")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
