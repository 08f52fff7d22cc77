"""ablate_layers: which layer group's fine-tuning a run needs, each group put back to its pretrained weights in turn.

For each encoder group (`embeddings`, `layer_0` ..., and `pooler` when the task's head
reads it) the fine-tuned model's weights of that group are replaced by those of the
encoder the run started from (its config's `encoder`), the validation data is scored by
the task's own evaluation through its serving function (what `kbft evaluate` runs), and
the drop of the task's primary metric against the unablated model is reported. Reverting
every group at once gives the pretrained encoder under the trained head. A large drop:
the task needs what fine-tuning changed in that group; none: that group's change did not
matter on this data (compare `kbft diff` for how far the weights moved).

The model is read back once (export/restore.py) and each group is reverted in place and
restored after scoring, which is the same as scoring a reverted copy, without a copy per
group. Output: `ablate.tsv`, `ablate.json` and `ablate.png` (the drop per group).
"""

import contextlib
import dataclasses
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from keras_bert_ft.errors import KbftError, bad_argument

FILES = ("ablate.tsv", "ablate.json", "ablate.png")
DATA_OPTIONS = ("text_column", "text_pair_column", "label_column", "encoding")


def pretrained_like(encoder, handle: str):
    """The pretrained encoder `handle`, built the way `encoder` was (native or TF-Hub
    graph), so the two match group by group and variable by variable."""
    from keras_bert_ft.encoders.native import NativeEncoder, make_encoder
    return make_encoder(handle, "native" if isinstance(encoder, NativeEncoder) else "hub")


def group_values(encoder) -> Dict[str, List[np.ndarray]]:
    """Group -> the current values of its variables, in order."""
    return {g: [v.numpy() for v in vs] for g, vs in encoder.layer_groups().items()}


def _check_same_structure(encoder, pretrained: Dict[str, List[np.ndarray]]) -> None:
    for group, variables in encoder.layer_groups().items():
        values = pretrained.get(group)
        if values is None or len(values) != len(variables) or any(
                tuple(v.shape) != a.shape for v, a in zip(variables, values)):
            raise KbftError(f"The pretrained encoder's group {group!r} does not match the "
                            "run's (a different encoder than the one it was trained from?).")


@contextlib.contextmanager
def reverted(encoder, pretrained: Dict[str, List[np.ndarray]], groups: Sequence[str]):
    """`encoder` with `groups` set to the `pretrained` values (`group_values` of the
    pretrained encoder), every other weight untouched; the fine-tuned values come back on
    exit."""
    layer_groups = encoder.layer_groups()
    unknown = [g for g in groups if g not in layer_groups]
    if unknown:
        raise bad_argument("groups", list(groups), f"groups of this encoder "
                           f"({', '.join(layer_groups)})")
    _check_same_structure(encoder, pretrained)
    kept = {g: [v.numpy() for v in layer_groups[g]] for g in groups}
    try:
        for group in groups:
            for variable, value in zip(layer_groups[group], pretrained[group]):
                variable.assign(value)
        yield encoder
    finally:
        for group in groups:
            for variable, value in zip(layer_groups[group], kept[group]):
                variable.assign(value)


def ablate_layers(run: str, validation, *, metric: Optional[str] = None,
                  output: Optional[str] = None, overwrite: bool = False,
                  verbose: int = 1, **data_options) -> dict:
    """Scores `validation` with each encoder group of `run` reverted to pretrained.

    Args:
        run: a `kbft train --output` folder or an export (one model, not an ensemble).
        validation: labelled data in the run's task format.
        metric: the validation metric compared (default: the task's primary one:
            accuracy, f1_micro, pearson, entity_f1, f1 (qa), rouge2).
        output: the folder for ablate.tsv / .json / .png (default: RUN/ablate for a run
            folder; required for an export). A folder holding other files is refused
            unless `overwrite`.
        data_options: text_column, text_pair_column, label_column, encoding of the
            validation file (default: the run's).

    Example:
        >>> figures = ablate_layers("runs/sst2", "dev.tsv")
        >>> print(format_ablation(figures))
    """
    from keras_bert_ft.export.restore import is_restorable, restore, saved_config
    from keras_bert_ft.paths import check_output_folder
    from keras_bert_ft.tasks import get_task
    from keras_bert_ft.tasks.base import LOWER_IS_BETTER
    from keras_bert_ft.training import run_folder

    if not is_restorable(run):
        raise bad_argument("run", run, "a kbft train --output folder or an export" + (
            " (this path does not exist)" if not (isinstance(run, str) and os.path.exists(run))
            else ""))
    config, info = saved_config(run, name="run")
    if info.get("members"):
        raise bad_argument("run", run, "one model (this export is an ensemble of "
                           f"{info['members']}; ablate one of its runs)")
    unknown = sorted(set(data_options) - set(DATA_OPTIONS))
    if unknown:
        raise bad_argument(unknown[0], data_options[unknown[0]],
                           f"one of the data options {', '.join(DATA_OPTIONS)}")
    config = dataclasses.replace(
        config, **{k: v for k, v in data_options.items() if v is not None}).validate()
    task = get_task(config.task)
    metric = metric or task.primary_metric
    if task.metric_names and metric not in task.metric_names:
        raise bad_argument("metric", metric, f"a validation metric of task {task.name!r}: "
                           f"one of {', '.join(task.metric_names)}")
    if output is None:
        if not os.path.isfile(os.path.join(run, run_folder.RUN_CONFIG)):
            raise bad_argument("output", None, "a folder for ablate.tsv, ablate.json and "
                               "ablate.png (an export's folder is not written into)")
        output = os.path.join(run, "ablate")
    check_output_folder(output, "output", overwrite=overwrite,
                        ours=lambda p: os.path.isfile(os.path.join(p, "ablate.json")),
                        what="an earlier kbft ablate output")
    data = task.read(validation, config, info, where="validation")

    result = restore(run, name="run")
    encoder = result.model.encoder
    if verbose:
        print(f"pretrained encoder: {config.encoder}", flush=True)
    pretrained = group_values(pretrained_like(encoder, config.encoder))
    _check_same_structure(encoder, pretrained)
    groups = [g for g in encoder.layer_groups()
              if g != "pooler" or task.reads_pooler(config)]
    lower = metric in LOWER_IS_BETTER

    def score(reverting: Sequence[str]) -> dict:
        with reverted(encoder, pretrained, reverting):
            metrics = task.evaluate(result.serving, data, config, result.info)[0]
        if metric not in metrics:
            raise KbftError(f"metric {metric!r} is not among the validation metrics "
                            f"({', '.join(sorted(metrics))}). Received: metric={metric!r}",
                            argument="metric")
        return metrics

    def row(group: str, metrics: dict) -> dict:
        value = float(metrics[metric])
        drop = value - baseline if lower else baseline - value
        return {"group": group, metric: value, "drop": drop}

    baseline = float(score([])[metric])
    rows = []
    for group in groups:
        rows.append(row(group, score([group])))
        if verbose:
            print(f"{group}: {metric} {rows[-1][metric]:.4f}", flush=True)
    everything = row("all", score(list(encoder.layer_groups())))
    figures = {"run": run, "encoder": config.encoder, "task": config.task, "metric": metric,
               "higher_is_better": not lower, "validation": _name(validation),
               "eval_examples": len(data), "unablated": baseline, "groups": rows,
               "all_groups": everything, "output": output}
    return write_ablation(figures, output)


def _name(source) -> str:
    return source if isinstance(source, str) else type(source).__name__


def write_ablation(figures: dict, output: str) -> dict:
    """ablate.tsv (one row per group), ablate.json and ablate.png in `output`; returns
    `figures` with their paths."""
    from keras_bert_ft.training.run_folder import write_json, write_tsv
    os.makedirs(output, exist_ok=True)
    paths = {"tsv": os.path.join(output, FILES[0]), "json": os.path.join(output, FILES[1]),
             "plot": os.path.join(output, FILES[2])}
    write_tsv(paths["tsv"], figures["groups"])
    figures = {**figures, "files": paths}
    write_json(paths["json"], figures)
    plot_ablation(figures, paths["plot"])
    return figures


def plot_ablation(figures: dict, path: str) -> str:
    """The drop of the metric per reverted group as bars (the last, grey: every group at
    once), as a PNG written atomically."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [*figures["groups"], figures["all_groups"]]
    names = [r["group"] if r["group"] != "all" else "all groups" for r in rows]
    drops = [r["drop"] for r in rows]
    colors = ["C0"] * len(figures["groups"]) + ["grey"]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.7 * len(rows) + 2.0), 3.8))
    ax.bar(np.arange(len(rows)), drops, color=colors)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(np.arange(len(rows)))
    ax.set_xticklabels(names, rotation=45 if len(rows) > 8 else 0,
                       ha="right" if len(rows) > 8 else "center")
    ax.set_ylabel(f"drop of {figures['metric']}")
    ax.set_title(f"each group reverted to pretrained\n({figures['metric']} unablated: "
                 f"{figures['unablated']:.4f})", fontsize=10)
    from keras_bert_ft.training.run_folder import save_figure
    return save_figure(fig, path)


def format_ablation(figures: dict) -> str:
    """The per-group table: the metric with that group reverted, and its drop."""
    metric = figures["metric"]
    lines = [f"ablate: {figures['run']} (pretrained: {figures['encoder']}), "
             f"{figures['eval_examples']} validation examples",
             f"{'reverted':<14}{metric:>12}{'drop':>10}", "-" * 36,
             f"{'(none)':<14}{figures['unablated']:>12.4f}{0.0:>10.4f}"]
    for r in figures["groups"]:
        lines.append(f"{r['group']:<14}{r[metric]:>12.4f}{r['drop']:>10.4f}")
    lines.append("-" * 36)
    everything = figures["all_groups"]
    lines.append(f"{'all groups':<14}{everything[metric]:>12.4f}{everything['drop']:>10.4f}"
                 "  (the pretrained encoder under the trained head)")
    return "\n".join(lines)
