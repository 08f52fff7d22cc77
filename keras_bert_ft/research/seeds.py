"""run_seeds: the same fine-tuning run under several seeds, mean ± std, degenerate runs, the best kept.

Fine-tuning results swing across seeds, and some runs collapse (one predicted class, a
loss that never falls below what the class frequencies alone give: bert #1224, Mosbach
et al. 2021). This runs `fine_tune` once per seed, reports the task metric's mean and
sample standard deviation, flags degenerate runs, and keeps only the best run's model.
"""

import dataclasses
import gc
import json
import math
import os
from typing import List, Optional, Sequence, Union

import numpy as np

from keras_bert_ft._keras import keras
from keras_bert_ft.errors import bad_argument

# The share of training steps at the end whose mean loss judges "the loss fell".
LOSS_WINDOW = 0.1


class BatchLosses(keras.callbacks.Callback):
    """Records the training loss after every step."""

    def __init__(self):
        super().__init__()
        self.losses: List[float] = []

    def on_train_batch_end(self, batch, logs=None):
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))


def prior_loss(labels, num_classes: int) -> float:
    """Cross-entropy of always predicting the training label frequencies."""
    counts = np.bincount(np.asarray(labels, int), minlength=num_classes).astype(float)
    p = counts / counts.sum()
    return float(-(p[p > 0] * np.log(p[p > 0])).sum())


def degenerate_flags(losses: Sequence[float], prior: float,
                     predicted_classes: Optional[int]) -> List[str]:
    """`one_class`: every validation prediction is the same class. `loss_not_falling`:
    the mean loss of the last 10% of steps is not below the prior loss (the loss of a
    model that learned only the label frequencies)."""
    flags = []
    if predicted_classes is not None and predicted_classes <= 1:
        flags.append("one_class")
    if losses:
        tail = losses[-max(1, int(math.ceil(len(losses) * LOSS_WINDOW))):]
        if float(np.mean(tail)) >= prior:
            flags.append("loss_not_falling")
    return flags


def summarize(values: Sequence[float]) -> dict:
    """mean, sample std (ddof 1; 0 for one run), min, max."""
    values = np.asarray(values, float)
    return {"mean": float(values.mean()),
            "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            "min": float(values.min()), "max": float(values.max()), "runs": len(values)}


def resolve_seeds(seeds: Union[int, Sequence[int]], first: int = 0) -> List[int]:
    """`5` -> [first, ..., first + 4]; a list is taken as is."""
    if isinstance(seeds, bool):
        raise bad_argument("seeds", seeds, "an int >= 1 or a list of ints")
    if isinstance(seeds, int):
        if seeds < 1:
            raise bad_argument("seeds", seeds, "an int >= 1 or a list of ints")
        return list(range(first, first + seeds))
    seeds = list(seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds):
        raise bad_argument("seeds", seeds, "an int >= 1 or a non-empty list of ints")
    return seeds


@dataclasses.dataclass
class SeedsResult:
    """Per-seed metrics and flags, the summary, and the best run (a `FineTuneResult`)."""
    metric: str
    runs: List[dict]
    summary: dict
    best_seed: int
    best: object

    def to_json(self) -> dict:
        return {"metric": self.metric, "summary": self.summary, "best_seed": self.best_seed,
                "degenerate_runs": [r["seed"] for r in self.runs if r["degenerate"]],
                "runs": self.runs}


def run_seeds(train, validation, config=None, *, seeds: Union[int, Sequence[int]] = 5,
              metric: str = "accuracy", callbacks=(), **overrides) -> SeedsResult:
    """Fine-tunes once per seed and summarises `metric` on the validation data.

    Args:
        train, validation: as for `fine_tune` (validation is required).
        config: a `FineTuneConfig`; `overrides` replace its fields.
        seeds: how many seeds (from `config.seed` up) or the list of seeds.
        metric: a key of `fine_tune`'s metrics (`accuracy`, `f1`, `mcc`); higher is better.

    Example:
        >>> res = run_seeds("train.tsv", "dev.tsv", seeds=5, metric="mcc", epochs=1)
        >>> res.summary["mcc"]["mean"], res.summary["mcc"]["std"], res.best.export("out")
    """
    from keras_bert_ft.config import make_config
    from keras_bert_ft.tasks import get_task
    from keras_bert_ft.tasks.base import read_data
    from keras_bert_ft.training.runner import fine_tune
    if validation is None:
        raise bad_argument("validation", None, "validation data: seeds are compared on it")
    config = make_config(config, **overrides)
    if config.task != "classification":
        raise bad_argument("task", config.task, "classification for several seeds compared "
                           "on one metric (qa: kbft train --seeds N ensembles the runs)")
    seed_list = resolve_seeds(seeds, config.seed)
    train_ex, _, val_ex = read_data(get_task(config.task), train, validation, config)
    prior = prior_loss(train_ex.labels, len(train_ex.label_names))
    runs, best, best_value = [], None, -math.inf
    for seed in seed_list:
        losses = BatchLosses()
        result = fine_tune(train_ex, val_ex, config, seed=seed, output_dir=None,
                           callbacks=[losses, *callbacks])
        if metric not in result.metrics:
            raise bad_argument("metric", metric, f"one of {', '.join(sorted(result.metrics))}")
        flags = degenerate_flags(losses.losses, prior, result.metrics.get("predicted_classes"))
        value = float(result.metrics[metric])
        runs.append({"seed": seed, metric: value, "metrics": result.metrics,
                     "degenerate": bool(flags), "flags": flags,
                     "final_loss_window": _tail_mean(losses.losses), "prior_loss": prior})
        if config.verbose:
            print(f"seed {seed}: {metric} {value:.4f}" + (f"  DEGENERATE ({', '.join(flags)})"
                                                         if flags else ""))
        if value > best_value:
            best, best_value = result, value
        del result
        gc.collect()
    summary = {metric: summarize([r[metric] for r in runs])}
    for key in ("accuracy", "f1", "mcc"):
        if key != metric and all(key in r["metrics"] for r in runs):
            summary[key] = summarize([r["metrics"][key] for r in runs])
    return SeedsResult(metric=metric, runs=runs, summary=summary,
                       best_seed=best.config.seed, best=best)


def _tail_mean(losses):
    if not losses:
        return None
    return float(np.mean(losses[-max(1, int(math.ceil(len(losses) * LOSS_WINDOW))):]))


def format_summary(res: SeedsResult) -> str:
    """One line per seed, then mean ± std."""
    lines = [f"{'seed':>6}  {res.metric:>9}  flags"]
    for run in res.runs:
        lines.append(f"{run['seed']:>6}  {run[res.metric]:>9.4f}  {', '.join(run['flags']) or '-'}")
    s = res.summary[res.metric]
    lines.append(f"{res.metric}: {s['mean']:.4f} ± {s['std']:.4f} (mean ± sample std over "
                 f"{s['runs']} seeds); best seed {res.best_seed}; degenerate runs: "
                 f"{sum(r['degenerate'] for r in res.runs)}")
    return "\n".join(lines)


def save_seeds(res: SeedsResult, output_dir: str) -> dict:
    """Writes `seeds.json`, and the best run as a normal run folder (export, metrics,
    history, run config, its weights under `checkpoints/ckpt-best`)."""
    from keras_bert_ft.training.run_folder import save_run
    paths = save_run(res.best, output_dir)
    res.best.model.save_weights(os.path.join(output_dir, "checkpoints", "ckpt-best"))
    paths["seeds"] = os.path.join(output_dir, "seeds.json")
    with open(paths["seeds"], "w") as f:
        json.dump(res.to_json(), f, indent=2)
    return paths
