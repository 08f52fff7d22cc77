"""The run folder: the one writer of `kbft train --output DIR`, and the rule that protects
what is already there.

A run folder holds `.kbft-run` (written first, so a killed run's folder is still known as
ours), `checkpoints/`, `logs/`, `backup/` while a run is unfinished, and at the end
`metrics.json`, `history.json`, `history.png`, `run_config.json` and `export/` (a
pretrain run: `encoder/` and `preprocessor/` instead, the task's `save_model`); for
classification also `confusion_matrix.json` and `confusion_matrix.png` (and
`test_confusion_matrix.png` with test data), and for sentence tasks `errors.tsv`, the
validation examples with the highest loss, `timings.json`, the seconds each phase of
the run took (keras_bert_ft.timings), and with `log_gradient_norms` `gradient_norms.png`,
the gradient norm per layer group and epoch. An existing non-empty folder that is not a run
folder is refused unless the user asks to `overwrite`.
"""

import json
import os
import shutil
import tempfile
import time
from typing import List, Optional

import numpy as np

from keras_bert_ft._keras import keras
from keras_bert_ft.config import to_json
from keras_bert_ft.errors import KbftError, bad_argument
from keras_bert_ft.paths import check_output_folder
from keras_bert_ft.timings import TIMINGS_FILE, PhaseTimer
from keras_bert_ft.training.gradient_norms import history_norms
from keras_bert_ft.training.strategy import is_chief

MARKER = ".kbft-run"
RUN_CONFIG = "run_config.json"
# Written only by some runs: a previous run's copies are removed so none is left stale.
OPTIONAL_OUTPUTS = ("confusion_matrix.json", "confusion_matrix.png",
                    "test_confusion_matrix.png", "errors.tsv", TIMINGS_FILE,
                    "gradient_norms.png")


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
    """Writes `metrics.json`, `history.json`, `history.png`, `run_config.json` and the export;
    with gradient norms in the history `gradient_norms.png`; with a confusion matrix in the metrics `confusion_matrix.json` / `.png` (a test one:
    `test_confusion_matrix.png`), with `result.errors` the table `errors.tsv`.

    Under MultiWorkerMirroredStrategy only the chief writes them; the other workers
    export into a temporary folder they delete (saving reads variables that every
    worker must take part in), and return `{}`.
    """
    if result.strategy is not None and not is_chief(result.strategy):
        from keras_bert_ft.tasks import get_task
        scratch = tempfile.mkdtemp(prefix="kbft-worker-export-")
        try:
            get_task(result.task).save_model(result, scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return {}
    if os.path.abspath(output_dir) != os.path.abspath(result.config.output_dir or ""):
        prepare(output_dir, overwrite=result.config.overwrite)
    paths = {}
    timer = getattr(result, "timings", None) or PhaseTimer()
    if export:
        from keras_bert_ft.tasks import get_task
        with timer.phase("export"):
            paths.update(get_task(result.task).save_model(result, output_dir))
    writing = time.perf_counter()
    write_json(os.path.join(output_dir, "metrics.json"), result.metrics)
    write_json(os.path.join(output_dir, "history.json"), result.history)
    write_json(os.path.join(output_dir, RUN_CONFIG), {**to_json(result.config), **result.info})
    paths["plot"] = plot_history(result.history, os.path.join(output_dir, "history.png"))
    if history_norms(result.history):
        paths["gradient_norms"] = plot_gradient_norms(
            result.history, os.path.join(output_dir, "gradient_norms.png"))
    matrix = result.metrics.get("confusion_matrix")
    if matrix:
        write_json(os.path.join(output_dir, "confusion_matrix.json"), matrix)
        paths["confusion_matrix"] = plot_confusion_matrix(
            matrix, os.path.join(output_dir, "confusion_matrix.png"), "validation")
    test = result.metrics.get("test")
    if isinstance(test, dict) and test.get("confusion_matrix"):
        paths["test_confusion_matrix"] = plot_confusion_matrix(
            test["confusion_matrix"], os.path.join(output_dir, "test_confusion_matrix.png"),
            "test")
    errors = getattr(result, "errors", None)
    if errors:
        paths["errors"] = write_tsv(os.path.join(output_dir, "errors.tsv"), errors)
    if getattr(result, "timings", None) is not None:  # a run trained here, not a restored one
        timer.add("write", time.perf_counter() - writing)
        timer.mark("saved")
        paths["timings"] = os.path.join(output_dir, TIMINGS_FILE)
        write_json(paths["timings"], timer.to_json())
    written = {os.path.basename(p) for p in paths.values()}
    if matrix:
        written.add("confusion_matrix.json")
    for name in set(OPTIONAL_OUTPUTS) - written:  # a previous run's, in this folder of ours
        if os.path.isfile(os.path.join(output_dir, name)):
            os.remove(os.path.join(output_dir, name))
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


def write_tsv(path: str, rows: List[dict]) -> str:
    """`rows` (dicts with the same keys) as a tab-separated table with a header row,
    written atomically. Tabs and line breaks inside a value become spaces (the file is
    read with quoting off); dicts and lists are written as JSON."""
    columns = list(rows[0])

    def cell(value) -> str:
        if isinstance(value, float):
            text = f"{value:.6g}"
        elif isinstance(value, (dict, list)):
            text = json.dumps(value)
        else:
            text = str(value)
        return " ".join(text.replace("\t", " ").splitlines())

    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\t".join(columns) + "\n")
        for row in rows:
            f.write("\t".join(cell(row.get(c, "")) for c in columns) + "\n")
    os.replace(tmp, path)
    return path


def plot_confusion_matrix(confusion: dict, path: str, title: str = "validation") -> str:
    """A confusion matrix (`{"labels": [...], "matrix": rows = true label}`) as a PNG:
    counts in the cells, label names on the axes. Written atomically."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [str(n) for n in confusion["labels"]]
    matrix = np.asarray(confusion["matrix"], dtype=np.int64).reshape(len(labels), len(labels))
    side = min(max(3.0, 0.45 * len(labels) + 2.0), 30.0)
    fig, ax = plt.subplots(figsize=(side + 1.0, side))
    image = ax.imshow(matrix, cmap="Blues", vmin=0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ticks = np.arange(len(labels))
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_xticklabels(labels, rotation=45 if max(map(len, labels), default=0) > 3 else 0,
                       ha="right" if max(map(len, labels), default=0) > 3 else "center")
    ax.set_yticklabels(labels)
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label")
    ax.set_title(f"{title}: {int(matrix.sum())} examples")
    threshold = matrix.max() / 2.0 if matrix.size else 0
    fontsize = 10 if len(labels) <= 10 else max(4, 10 - len(labels) // 8)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=fontsize,
                    color="white" if matrix[i, j] > threshold else "black")
    return save_figure(fig, path)


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
    return save_figure(fig, path)


def plot_gradient_norms(history: dict, path: str) -> str:
    """The logged gradient norm of each layer group per epoch (`grad_norm_<group>`), one
    line per group on a log scale (a frozen group's zeros are left out), as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    draw_gradient_norms(ax, history)
    return save_figure(fig, path)


def draw_gradient_norms(ax, history: dict, title: str = "gradient norm per layer group"):
    """Draws `plot_gradient_norms`'s lines on a matplotlib axis (also for side-by-side
    figures of several runs)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    norms = history_norms(history)
    colors = plt.cm.viridis(np.linspace(0.0, 0.9, max(len(norms), 1)))
    for (group, values), color in zip(norms.items(), colors):
        values = np.asarray(values, dtype=np.float64)
        if not np.any(values > 0):
            continue
        epochs = np.arange(1, len(values) + 1)
        ax.plot(epochs, np.where(values > 0, values, np.nan), marker="o", color=color,
                linestyle="--" if group in ("embeddings", "pooler", "head") else "-",
                label=group)
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("L2 norm of the gradient (mean over the epoch's steps)")
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, ncol=2)


def save_figure(fig, path: str) -> str:
    """Writes a matplotlib figure as a PNG at `path` (laid out, written to a temporary
    file and renamed, so a killed run never leaves half a picture) and closes it."""
    import matplotlib.pyplot as plt
    fig.tight_layout()
    tmp = f"{path}.tmp.png"
    try:
        fig.savefig(tmp, dpi=100, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
