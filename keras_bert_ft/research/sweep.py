"""sweep_layers: fine-tune with the top k layers trainable for k = 0..L and the whole model,
and optionally several heads; record quality, speed and memory; plot and recommend.

Freezing the lower layers barely hurts (Houlsby et al. 2019; Lee et al. 2019 "What would
Elsa do?": the top quarter of layers keeps about 90% of the quality), and it saves the
backward pass through them. This measures the trade-off on the user's own task. Each run
goes to a fresh process by default, so its peak memory is its own.
"""

import dataclasses
import json
import multiprocessing
import os
import resource
import time
from typing import List, Optional, Sequence

import numpy as np

from keras_bert_ft.errors import bad_argument

WITHIN = 0.01  # "within 1 point" of full fine-tuning, for metrics in [0, 1]


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_one(config, train_ex, val_ex, metric: str) -> dict:
    """One fine-tuning run -> its figures (module level, so a spawned process can run it)."""
    from keras_bert_ft.training.runner import ThroughputCallback, fine_tune

    class CpuTime(ThroughputCallback):
        """Process CPU seconds (all threads) inside training steps, each epoch's first
        execution excluded: unlike wall time, it barely grows when other programs share
        the cores. Counts examples as ThroughputCallback does."""

        def on_epoch_begin(self, epoch, logs=None):
            super().on_epoch_begin(epoch, logs)
            self._cpu = 0.0

        def on_train_batch_begin(self, batch, logs=None):
            self._start = time.process_time()

        def on_train_batch_end(self, batch, logs=None):
            if self._first is not None:
                self._cpu += time.process_time() - self._start
            super().on_train_batch_end(batch, logs)

        def on_epoch_end(self, epoch, logs=None):
            wall = self.seconds
            super().on_epoch_end(epoch, logs)
            if self.seconds > wall:  # the epoch was counted: swap its wall time for CPU time
                self.seconds = wall + self._cpu

    cpu = CpuTime(config.batch_size, len(train_ex))
    start = time.perf_counter()
    result = fine_tune(train_ex, val_ex, config, callbacks=[cpu])
    rows = result.model.report_rows()
    eps = result.metrics["train_examples_per_second"]
    return {"quality": float(result.metrics[metric]),
            "metrics": {k: v for k, v in result.metrics.items()},
            "examples_per_second": eps,
            "ms_per_example": round(1000.0 / eps, 3) if eps else None,
            "cpu_ms_per_example": (round(1000.0 * cpu.seconds / cpu.examples, 3)
                                   if cpu.examples else None),
            "trainable_parameters": int(sum(n for _, n, t in rows if t)),
            "trainable_groups": [g for g, _, t in rows if t],
            "peak_memory_mib": round(_peak_mib(), 1),
            "wall_seconds": round(time.perf_counter() - start, 1)}


def _run(config, train_ex, val_ex, metric: str, isolate: bool) -> dict:
    if not isolate:
        return run_one(config, train_ex, val_ex, metric)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(run_one, (config, train_ex, val_ex, metric))


def majority_baseline(train_labels, val_labels) -> float:
    """Validation accuracy of always predicting the most frequent training label."""
    majority = int(np.bincount(np.asarray(train_labels, int)).argmax())
    return float(np.mean(np.asarray(val_labels, int) == majority))


def recommend(layer_runs: List[dict], full: dict, within: float = WITHIN) -> Optional[dict]:
    """The smallest k whose quality is within `within` of full fine-tuning."""
    good = [r for r in layer_runs if r["quality"] >= full["quality"] - within]
    return min(good, key=lambda r: r["k"]) if good else None


def sweep_layers(train, validation, config=None, *, layers: Optional[Sequence[int]] = None,
                 include_full: bool = True, head_depths: Sequence[int] = (),
                 poolings: Sequence[str] = (), head_width: int = 256,
                 head_layers: Optional[int] = None, metric: str = "accuracy",
                 isolate: bool = True, output_dir: Optional[str] = None,
                 **overrides) -> dict:
    """Fine-tunes once per k (top k layers trainable, embeddings frozen), once with the
    whole model (embeddings too), then once per head (depth x pooling).

    Args:
        train, validation: as for `fine_tune` (validation is required).
        config: a `FineTuneConfig`; `overrides` replace its fields.
        layers: the k values (default 0..L).
        head_depths: Dense+ReLU+Dropout blocks of `head_width` units to compare (0, 1, 2).
        poolings: poolings to compare (`pooled`, `cls`, `mean`).
        head_layers: k for the head runs (default: the recommended k).
        metric: the quality metric (a key of `fine_tune`'s metrics).
        isolate: one fresh process per run (its own peak memory; slower start).
        output_dir: writes `sweep_layers.json` and `sweep_layers.png` there.

    Returns the figures (also written as JSON).
    """
    from keras_bert_ft.config import make_config
    from keras_bert_ft.tasks import get_task
    from keras_bert_ft.tasks.base import read_data
    from keras_bert_ft.tasks.heads import POOLINGS
    from keras_bert_ft.training.build import resolve_pooling
    if validation is None:
        raise bad_argument("validation", None, "validation data: runs are compared on it")
    config = make_config(config, **dict(overrides, output_dir=None))
    num_layers = _num_layers(config.encoder)
    layers = list(range(num_layers + 1)) if layers is None else list(layers)
    bad = [k for k in layers if isinstance(k, bool) or not isinstance(k, int)
           or not 0 <= k <= num_layers]
    if bad:
        raise bad_argument("layers", layers, f"ints in [0, {num_layers}]")
    bad = [p for p in poolings if p not in POOLINGS]
    if bad:
        raise bad_argument("poolings", list(poolings), f"names from {', '.join(POOLINGS)}")
    train_ex, _, val_ex = read_data(get_task(config.task), train, validation, config)
    figures = {"encoder": config.encoder, "num_layers": num_layers, "metric": metric,
               "train_examples": len(train_ex), "eval_examples": len(val_ex),
               "majority_baseline": majority_baseline(train_ex.labels, val_ex.labels),
               "settings": _settings(config), "isolated_processes": isolate,
               "peak_memory_scope": "each run's own process" if isolate
               else "this process so far (monotonic)", "runs": []}

    def run(name, **changes):
        cfg = dataclasses.replace(config, **changes)
        print(f"== sweep-layers: {name} ==", flush=True)
        figures_ = _run(cfg, train_ex, val_ex, metric, isolate)
        entry = {"name": name, "k": changes.get("trainable_layers"),
                 "train_embeddings": cfg.train_embeddings, "head_units": list(cfg.head_units),
                 "pooling": resolve_pooling(cfg), **figures_}
        print(f"{name}: {metric} {entry['quality']:.4f}, {entry['examples_per_second']} "
              f"examples/s, {entry['cpu_ms_per_example']} CPU ms/example", flush=True)
        return entry

    layer_runs = [run(f"top{k}", trainable_layers=k, train_embeddings=False) for k in layers]
    full = run("full", trainable_layers="all", train_embeddings=True) if include_full else None
    if full is not None:
        full["k"] = "full"
    figures["runs"] = layer_runs + ([full] if full else [])
    _summarize(figures, layer_runs, full or max(layer_runs, key=lambda r: r["k"]))
    if head_depths or poolings:
        k = head_layers if head_layers is not None else (
            figures["recommendation"]["k"] if figures.get("recommendation") else num_layers)
        figures["head_comparison"] = {"trainable_layers": k, "head_width": head_width, "runs": [
            run(f"top{k}-head{d}x{head_width}-{p}", trainable_layers=k, train_embeddings=False,
                head_units=(head_width,) * d, pooling=p)
            for d in (head_depths or [len(config.head_units)])
            for p in (poolings or [resolve_pooling(config)])]}
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        figures["json"] = os.path.join(output_dir, "sweep_layers.json")
        figures["plot"] = plot_sweep(figures, os.path.join(output_dir, "sweep_layers.png"))
        with open(figures["json"], "w") as f:
            json.dump(figures, f, indent=2, default=str)
    return figures


def _num_layers(handle: str) -> int:
    from keras_bert_ft.encoders import presets
    preset = presets.get_preset(handle)
    if preset is not None:
        return preset.num_layers
    from keras_bert_ft.encoders.hub_encoder import HubEncoder
    encoder = HubEncoder(handle)
    encoder._require_layers("sweep-layers")
    return encoder.num_layers


def _settings(config) -> dict:
    keep = ("epochs", "batch_size", "learning_rate", "encoder_learning_rate", "layer_decay",
            "warmup_ratio", "weight_decay", "seq_length", "padding", "pooling", "head_units",
            "seed", "bias_correction", "reinit_layers")
    return {k: getattr(config, k) for k in keep}


def _summarize(figures: dict, layer_runs: List[dict], full: dict) -> None:
    base = figures["majority_baseline"]
    full_gain = full["quality"] - base
    for r in layer_runs + ([full] if full not in layer_runs else []):
        r["gain_over_majority"] = r["quality"] - base
        r["fraction_of_full_gain"] = (r["gain_over_majority"] / full_gain
                                      if full_gain > 0 else None)
        r["speedup_vs_full"] = (r["examples_per_second"] / full["examples_per_second"]
                                if full["examples_per_second"] else None)
        r["cpu_time_ratio_vs_full"] = (r["cpu_ms_per_example"] / full["cpu_ms_per_example"]
                                       if r.get("cpu_ms_per_example")
                                       and full.get("cpu_ms_per_example") else None)
    best = recommend(layer_runs, full)
    figures["full"] = {"name": full["name"], "quality": full["quality"]}
    figures["recommendation"] = None if best is None else {
        "k": best["k"], "quality": best["quality"], "within": WITHIN,
        "fraction_of_full_gain": best["fraction_of_full_gain"],
        "speedup_vs_full": best["speedup_vs_full"],
        "cpu_time_ratio_vs_full": best["cpu_time_ratio_vs_full"],
        "text": (f"train the top {best['k']} of {figures['num_layers']} layers: "
                 f"{figures['metric']} {best['quality']:.4f} vs {full['quality']:.4f} for "
                 f"full fine-tuning, {best['speedup_vs_full']:.2f}x its examples/s")}


def format_table(figures: dict) -> str:
    """One line per run: quality, share of the full gain, speed, memory."""
    lines = [f"{'run':<26}{figures['metric']:>9}{'gain':>7}{'ex/s':>9}{'ms/ex':>8}"
             f"{'speedup':>8}{'cpu ms/ex':>10}{'trainable':>12}{'peak MiB':>10}"]
    runs = figures["runs"] + figures.get("head_comparison", {}).get("runs", [])
    for r in runs:
        frac = r.get("fraction_of_full_gain")
        speed = r.get("speedup_vs_full")
        lines.append(f"{r['name']:<26}{r['quality']:>9.4f}"
                     f"{(f'{100 * frac:.0f}%' if frac is not None else '-'):>7}"
                     f"{r['examples_per_second']:>9.1f}{r['ms_per_example'] or 0:>8.2f}"
                     f"{(f'{speed:.2f}x' if speed else '-'):>8}"
                     f"{r.get('cpu_ms_per_example') or 0:>10.2f}"
                     f"{r['trainable_parameters']:>12,}{r['peak_memory_mib']:>10.0f}")
    lines.append(f"majority baseline: {figures['majority_baseline']:.4f}")
    rec = figures.get("recommendation")
    lines.append("recommendation: " + (rec["text"] if rec else
                                       "no k within 1 point of full fine-tuning"))
    return "\n".join(lines)


def plot_sweep(figures: dict, path: str) -> str:
    """Quality and milliseconds per training example against k, as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in figures["runs"] if isinstance(r["k"], int)]
    full = next((r for r in figures["runs"] if r["k"] == "full"), None)
    ks = [r["k"] for r in runs]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.plot(ks, [r["quality"] for r in runs], marker="o", label="top k layers trained")
    right.plot(ks, [r["ms_per_example"] for r in runs], marker="o", label="wall, top k")
    cpu = [r.get("cpu_ms_per_example") for r in runs]
    if all(cpu):
        right.plot(ks, cpu, marker="s", color="C2", label="CPU (all threads), top k")
    if full is not None:
        left.axhline(full["quality"], color="C1", linestyle="--", label="whole model")
        right.axhline(full["ms_per_example"], color="C1", linestyle="--", label="wall, whole model")
        if full.get("cpu_ms_per_example"):
            right.axhline(full["cpu_ms_per_example"], color="C2", linestyle="--",
                          label="CPU, whole model")
    left.axhline(figures["majority_baseline"], color="grey", linestyle=":", label="majority class")
    left.set(xlabel="k (trainable layers from the top)", ylabel=figures["metric"],
             title=f"{figures['metric']} on validation")
    right.set(xlabel="k (trainable layers from the top)", ylabel="ms per training example",
              title="training time")
    for ax in (left, right):
        ax.set_xticks(ks)
        ax.legend(fontsize=8)
    fig.suptitle(f"{figures['encoder']}: {figures['train_examples']} training examples")
    from keras_bert_ft.training.run_folder import save_figure
    return save_figure(fig, path)
