"""tune: a hyperparameter search whose trials are `fine_tune` runs, chosen on validation only.

Each trial is one `fine_tune(train, validation, make_config(config, **point))` without an
output folder; the trials are compared by one validation metric (the objective), the best
trial's model is kept (in memory and under OUTPUT/best), and test data, if given, is
scored once, on the best trial only, after the search. Every grid point's config is
checked before the first trial trains, so a bad value fails in seconds, not hours in.

The search is a plain loop over the grid (or a seeded sample of it). keras-tuner's
oracles were tried as its driver and left out: its GridSearchOracle does not persist its
state, so a rerun of an interrupted grid search either crashes (KeyError) or stops with
grid points never tried (keras-team/keras-tuner #1055), and resuming is what a search
folder is for; here a rerun with the same settings skips the trials already finished.
"""

import dataclasses
import gc
import itertools
import json
import math
import os
import random
import shutil
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from keras_bert_ft.config import FIELDS, FineTuneConfig, make_config, to_json
from keras_bert_ft.errors import KbftError, bad_argument

# The BERT paper's fine-tuning grid (Devlin et al. 2019, appendix A.3), batch size aside.
DEFAULT_GRID = {"learning_rate": [2e-5, 3e-5, 5e-5], "epochs": [2, 3, 4]}
SEARCHES = ("grid", "random")
BEST = "best"
RESULTS_JSON, RESULTS_TSV, PLOT, SUMMARY = (
    "tune_results.json", "tune_results.tsv", "tune_results.png", "tune_summary.json")
REFIT = "refit"  # OUTPUT/refit: the chosen point trained on training + validation data
TRIAL_FILE = "tune_trial.json"  # in OUTPUT/best: which trial its weights are
CHECKPOINT = os.path.join("checkpoints", "ckpt-best")

# Fields a grid may not vary, and why: trials must read the same data and be compared on
# the same validation set, and tune itself decides where outputs go.
_NOT_TUNABLE = {
    "task": "one task per search",
    "output_dir": "tune writes its outputs under {output_dir}",
    "overwrite": "tune writes its outputs under {output_dir}",
}
_DATA_FIELDS = ("text_column", "text_pair_column", "label_column", "label_separator",
                "encoding", "validation_split", "max_eval_examples")
# With validation_split, these also choose the held-out validation examples.
_SPLIT_FIELDS = ("seed", "max_train_examples")


class TuneError(KbftError):
    """A bad tune input whose message names parameters: `render(name)` spells each
    parameter name `p` as `name(p)` (the CLI passes its flag names), `str()` as is."""

    def __init__(self, template: Callable[[Callable[[str], str]], str], argument=None):
        self.template = template
        super().__init__(template(lambda name: name), argument=argument)

    def render(self, name: Callable[[str], str]) -> str:
        return self.template(name)


@dataclasses.dataclass
class TuneResult:
    """The trials (a row each: `trial`, `point`, `status`, `objective`, `metrics`,
    `train_seconds`, `best`), the best trial's run (a `FineTuneResult`), the refit run
    (with `refit`, else None), and the test metrics of the model test data was scored
    on (the refit's, else the best trial's; None without test data)."""
    objective: str
    direction: str  # "max" or "min"
    grid: Dict[str, list]
    trials: List[dict]
    best_trial: int
    best: object
    test_metrics: Optional[dict]
    output_dir: str
    paths: Dict[str, str]
    refit: object = None

    @property
    def best_point(self) -> dict:
        return self._best_row()["point"]

    @property
    def metrics(self) -> dict:
        """The best trial's validation metrics."""
        return self._best_row()["metrics"]

    def _best_row(self) -> dict:
        return next(r for r in self.trials if r["trial"] == self.best_trial)


def tune(train, validation=None, config: Optional[FineTuneConfig] = None, *,
         grid: Optional[Dict[str, Sequence]] = None, test=None,
         output_dir: Optional[str] = None, objective: Optional[str] = None,
         search: str = "grid", max_trials: Optional[int] = None, refit: bool = False,
         **overrides) -> TuneResult:
    """Fine-tunes once per grid point and keeps the trial with the best validation metric.

    Args:
        train, validation: as for `fine_tune`. Trials are compared on `validation`; without
            it, on the `validation_split` share of `train` held out (seeded by `seed`).
        config: the base `FineTuneConfig`; keyword `overrides` are the fixed settings
            (a field may be fixed or in the grid, not both).
        grid: field name -> the values to try, e.g. `{"learning_rate": [2e-5, 3e-5]}`;
            default: the BERT paper's learning_rate 2e-5, 3e-5, 5e-5 x epochs 2, 3, 4,
            less any field fixed in `overrides`.
        test: labelled data scored once, after the search, with the best trial's model
            (with `refit`: the refit's).
        output_dir: the search folder: tune_results.{tsv,json,png}, tune_summary.json,
            best/ (a run folder with the best trial's export) and with `refit`, refit/.
            Rerun with the same settings, a search resumes: finished trials are not
            trained again.
        objective: the validation metric compared (default: `monitor`, else the task's
            main metric); higher is better except for losses and mse.
        search: "grid" (every point, in order, the first field varying slowest) or
            "random" (`max_trials` points sampled without repetition, seeded by `seed`).
        max_trials: at most this many trials (required with "random").
        refit: after the search, train the best trial's settings once more on the
            training and validation data together (no example held out), for the epochs
            the best trial kept, into OUTPUT/refit (a run folder with its export). Every
            choice is still made on validation; the refit only sees more examples.

    Example:
        >>> res = tune("train.tsv", "dev.tsv", grid={"learning_rate": [2e-5, 5e-5],
        ...            "epochs": [2, 3]}, test="test.tsv", output_dir="runs/tune")
        >>> res.best_point, res.metrics["accuracy"], res.test_metrics["accuracy"]
    """
    from keras_bert_ft.tasks import get_task
    from keras_bert_ft.tasks.base import LOWER_IS_BETTER
    from keras_bert_ft.training import run_folder
    from keras_bert_ft.training.best_epoch import check_validation

    base = make_config(config, **overrides)
    output_dir = output_dir if output_dir is not None else base.output_dir
    if not isinstance(output_dir, str) or not output_dir or "://" in output_dir:
        raise bad_argument("output_dir", output_dir, "a local folder for the search "
                           "results and the best run")
    base = dataclasses.replace(base, output_dir=None)  # trials write no run folder
    if search not in SEARCHES:
        raise bad_argument("search", search, f"one of {', '.join(SEARCHES)}")
    if max_trials is not None and (isinstance(max_trials, bool)
                                   or not isinstance(max_trials, int) or max_trials < 1):
        raise bad_argument("max_trials", max_trials, "an int >= 1, or None")
    if search == "random" and max_trials is None:
        raise bad_argument("max_trials", None, "an int >= 1 with search='random' (how "
                           "many grid points to sample)")
    if validation is None and not base.validation_split:
        raise TuneError(lambda n: f"tune needs {n('validation')} or {n('validation_split')}: "
                        "trials are compared on validation data only (the test data is "
                        "scored once, after the search). Received: "
                        f"{n('validation')}=None, {n('validation_split')}=0",
                        argument="validation")
    check_validation(base, validation)
    grid = check_grid(grid, base, set(overrides), split=validation is None)
    task = get_task(base.task)
    check_refit(refit, base)
    objective, direction = _objective(objective, base, task, LOWER_IS_BETTER)
    points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    configs = [_trial_config(base, point) for point in points]  # every point, before training
    order = list(range(len(points)))
    if search == "random":
        order = random.Random(base.seed).sample(order, min(max_trials, len(order)))
    elif max_trials is not None:
        order = order[:max_trials]
    run_folder.check(output_dir, overwrite=base.overwrite, name="output_dir")
    if test is not None:  # read now, so a bad test file fails before the search
        task.read(test, base, None, where="test")

    settings = {k: v for k, v in to_json(base).items() if k not in ("verbose", "overwrite")}
    search_key = _plain({"grid": grid, "settings": settings, "objective": objective,
                         "search": search, "max_trials": max_trials,
                         "train": _source_key(train), "validation": _source_key(validation)})
    run_folder.prepare(output_dir, overwrite=base.overwrite, name="output_dir")
    best_dir = os.path.join(output_dir, BEST)
    searcher = _Search(objective, direction, output_dir, search_key, base.verbose)
    searcher.resume([_plain(points[i]) for i in order])
    for number, index in enumerate(order, 1):
        if number in searcher.rows:
            continue
        searcher.run(number, len(order), points[index], configs[index], train, validation)
    best_row = searcher.best_row()
    if best_row is None:
        raise TuneError(lambda n: f"Every trial of {output_dir} diverged (a non-finite "
                        f"loss): no trial to keep. Try lower learning rates, or "
                        f"{n('clip_norm')}=1.0. Received: {n('grid')}={_plain(grid)}")
    best = searcher.best
    if best is None:  # the best trial finished in an earlier run of this search
        from keras_bert_ft.export.restore import restore_run
        best = restore_run(best_dir, os.path.join(best_dir, CHECKPOINT), name="output_dir")
    test_metrics = refitted = None
    if refit:
        refitted = refit_run(task, train, validation, best.config, best_row, test,
                             os.path.join(output_dir, REFIT))
        test_metrics = None if test is None else _plain(refitted.metrics["test"])
    elif test is not None:
        data = task.read(test, best.config, best.info, where="test")
        test_metrics, _ = task.evaluate(best.serving, data, best.config, best.info)
        test_metrics = _plain(test_metrics)
        best.metrics = dict(best.metrics, test=test_metrics)
    exported = os.path.join(best_dir, "export")
    if searcher.best is None and os.path.isdir(exported):  # a finished search, rerun
        best.save(best_dir, export=False)  # its metrics (with the test metrics) only
    else:
        exported = best.save(best_dir).get("export")
    result = TuneResult(objective=objective, direction=direction, grid=_plain(grid),
                        trials=searcher.ordered_rows(), best_trial=best_row["trial"],
                        best=best, test_metrics=test_metrics, output_dir=output_dir,
                        paths={}, refit=refitted)
    result.paths = write_results(result, search_key, validation is None and base.validation_split)
    result.paths["best"] = best_dir
    result.paths["export"] = exported
    if refitted is not None:
        result.paths["refit"] = os.path.join(output_dir, REFIT)
        result.paths["refit_export"] = os.path.join(output_dir, REFIT, "export")
    return result


def check_refit(refit, base: FineTuneConfig) -> None:
    """`refit` is a bool, and the task keeps nothing else tuned on validation."""
    if not isinstance(refit, bool):
        raise bad_argument("refit", refit, "True or False")
    if refit and base.task == "multilabel":
        raise bad_argument("refit", refit, "False for task 'multilabel': its per-label "
                           "thresholds are tuned on the validation data, which a refit "
                           "would train on")


def refit_epochs(row: dict, config: FineTuneConfig) -> int:
    """The epochs a refit trains: those the best trial kept (its best epoch, when an
    epoch was picked on validation), else all of its epochs."""
    best_epoch = row["metrics"].get("best_epoch")
    return int(best_epoch) if isinstance(best_epoch, int) and best_epoch > 0 else config.epochs


def stop_after_epochs(epochs: int):
    """A tf_keras callback that ends training after `epochs` epochs, so a refit follows
    the best trial's learning-rate schedule (planned for all of its epochs) up to the
    epoch it kept."""
    from keras_bert_ft._keras import keras

    class StopAfterEpochs(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 >= epochs:
                self.model.stop_training = True

    return StopAfterEpochs()


def refit_run(task, train, validation, config: FineTuneConfig, row: dict, test,
              output_dir: str):
    """The best trial's settings trained on its training and validation examples
    together (as the trials read them, before any augmentation such as swap_pairs, which
    the run then applies to all), into `output_dir`; `test`, if given, scored there once."""
    from keras_bert_ft.tasks.base import concat, read_data
    from keras_bert_ft.training.runner import fine_tune
    train_data, _, held = read_data(task, train, validation, config, augment=False)
    data = train_data if held is None else concat(train_data, held)
    epochs = refit_epochs(row, config)
    refit_config = dataclasses.replace(
        config, validation_split=0.0, max_train_examples=None, max_eval_examples=None,
        monitor=None, patience=0, output_dir=output_dir)
    if config.verbose:
        print(f"refit: trial {row['trial']}'s settings on {len(data)} training + validation "
              f"examples, {epochs} of {config.epochs} epochs -> {output_dir}", flush=True)
    stop = [stop_after_epochs(epochs)] if epochs < config.epochs else []
    result = fine_tune(data, None, refit_config, test=test, callbacks=stop)
    result.metrics.setdefault("epochs_trained", len(result.history.get("loss", [])))
    result.save(output_dir)
    return result


def check_grid(grid, base: FineTuneConfig, fixed=(), split: bool = False) -> Dict[str, list]:
    """The grid as field -> list of values, every key checked; `fixed`: the fields set as
    fixed settings (a field is one or the other), `split`: validation comes from
    `validation_split` (then the fields that choose it cannot vary)."""
    if grid is None:
        grid = {k: v for k, v in DEFAULT_GRID.items() if k not in fixed}
        if not grid:
            raise TuneError(lambda n: f"{n('grid')} must be given when "
                            f"{n('learning_rate')} and {n('epochs')} are both fixed (the "
                            f"default grid varies them). Received: {n('grid')}=None",
                            argument="grid")
    if not isinstance(grid, dict) or not grid:
        raise TuneError(lambda n: f"{n('grid')} must be a mapping of config fields to lists "
                        f"of values to try, e.g. learning_rate=[2e-5, 3e-5]. Received: "
                        f"{n('grid')}={grid!r}", argument="grid")
    checked = {}
    for key, values in grid.items():
        if key not in FIELDS:
            raise _grid_error(key, values, f"a FineTuneConfig field ({', '.join(FIELDS)})")
        reason = _NOT_TUNABLE.get(key)
        if key in _DATA_FIELDS:
            reason = "the data read: trials are compared on one validation set"
        if split and key in _SPLIT_FIELDS:
            reason = (f"with {{validation_split}}, {key} also picks the validation examples "
                      f"held out (pass {{validation}} to tune {key})")
        if reason:
            raise TuneError(lambda n, key=key, values=values, reason=reason: (
                f"{n('grid')} {key} must be left out: a search cannot vary it ("
                + reason.format(output_dir=n("output_dir"),
                                validation_split=n("validation_split"),
                                validation=n("validation"))
                + f"). Received: {n('grid')} {key}={_shown(values)}"), argument="grid")
        if key in fixed:
            fixed_value = getattr(base, key)
            raise TuneError(lambda n, key=key, values=values: (
                f"{n('grid')} {key} must be left out, or the fixed setting {n(key)}: a "
                f"field is either tuned or fixed. Received: {n('grid')} {key}="
                f"{_shown(values)} and {n(key)}={fixed_value!r}"), argument="grid")
        if isinstance(values, (str, bytes, dict)) or not isinstance(values, Sequence) \
                or not values:
            raise _grid_error(key, values, "a non-empty list of values to try")
        shown = [json.dumps(_plain(v), sort_keys=True) for v in values]
        if len(set(shown)) != len(shown):
            raise _grid_error(key, values, "a list of distinct values")
        for value in values:  # each value alone, so the error names its field
            try:
                make_config(base, **{key: value})
            except KbftError as err:
                raise _value_error(key, value, err) from None
        checked[key] = list(values)
    return checked


def _trial_config(base: FineTuneConfig, point: dict) -> FineTuneConfig:
    """The config of one grid point, or a `TuneError` naming the point (values that are
    fine alone but not together, e.g. seq_length and max_query_length)."""
    try:
        return make_config(base, **point)
    except KbftError as err:
        message = str(err)
        raise TuneError(lambda n: (
            f"{n('grid')} point {_point_text(point)} must give a valid config: "
            + _rename(message, err.argument, n)), argument="grid") from None


def _grid_error(key, values, expected: str) -> TuneError:
    return TuneError(lambda n: f"{n('grid')} {key} must be {expected}. Received: "
                     f"{n('grid')} {key}={_shown(values)}", argument="grid")


def _value_error(key, value, err: KbftError) -> TuneError:
    """make_config's error for one grid value, said of `grid <key>`."""
    message = str(err)
    if err.argument == key and message.startswith(f"{key} "):
        rest = message[len(key):]
        return TuneError(lambda n: f"{n('grid')} {key}" + rest.replace(
            f"Received: {key}=", f"Received: {n('grid')} {key}="), argument="grid")
    return TuneError(lambda n: f"{n('grid')} {key}={value!r} must give a valid config: "
                     + _rename(message, err.argument, n), argument="grid")


def _rename(message: str, name, n) -> str:
    if name and message.startswith(f"{name} "):
        message = n(name) + message[len(name):]
    if name:
        message = message.replace(f"Received: {name}=", f"Received: {n(name)}=")
    return message


def _objective(objective, base, task, lower_is_better):
    """(the objective's name, "max" or "min"): `objective`, else the runner's `monitor`
    (as the runner resolves it), else the task's main metric; a name the task does not
    report is refused."""
    from keras_bert_ft.training.best_epoch import resolve_monitor
    if objective is None:
        name = resolve_monitor(task, base) or task.primary_metric
    else:
        name = objective
        known = tuple(task.metric_names or ())
        if not isinstance(name, str) or not name or (known and name not in known):
            raise bad_argument("objective", name, f"one of {', '.join(known)} (the "
                               f"{base.task} validation metrics the trials are compared "
                               "by)" if known else "a validation metric name")
    return name, "min" if name in lower_is_better else "max"


class _Search:
    """The trials run so far: their rows, the best one (its run kept in memory and saved
    under OUTPUT/best as it is found), and the results file written after each trial."""

    def __init__(self, objective, direction, output_dir, search_key, verbose):
        self.objective, self.direction = objective, direction
        self.output_dir, self.search_key, self.verbose = output_dir, search_key, verbose
        self.best_dir = os.path.join(output_dir, BEST)
        self.rows: Dict[int, dict] = {}
        self.best = None  # the best trial's FineTuneResult, when this run trained it

    def resume(self, points: List[dict]) -> None:
        """Takes the finished trials of an earlier run of the same search (same grid,
        settings, data files): a trial is kept if its point is the same; the best kept
        must be the one whose weights OUTPUT/best holds, else it runs again."""
        previous = _read_json(os.path.join(self.output_dir, RESULTS_JSON))
        if not previous or previous.get("search") != self.search_key:
            return
        for row in previous.get("trials", []):
            number = row.get("trial")
            if (isinstance(number, int) and 1 <= number <= len(points)
                    and row.get("point") == points[number - 1]
                    and row.get("status") in ("ok", "diverged")):
                self.rows[number] = dict(row)
        saved = (_read_json(os.path.join(self.best_dir, TRIAL_FILE)) or {}).get("trial")
        while True:
            best = self.best_row()
            if best is None or best["trial"] == saved:
                break
            del self.rows[best["trial"]]
        if self.rows and self.verbose:
            print(f"resuming {self.output_dir}: {len(self.rows)} of {len(points)} trials "
                  "already finished")

    def run(self, number: int, total: int, point: dict, config, train, validation) -> None:
        from keras_bert_ft.training.fault_tolerance import NonFiniteLoss
        from keras_bert_ft.training.runner import fine_tune
        if self.verbose:
            print(f"trial {number}/{total}: {_point_text(point)}", flush=True)
        start = time.perf_counter()
        try:
            result = fine_tune(train, validation, config)
        except NonFiniteLoss as err:
            result, status, metrics, value = None, "diverged", {"error": str(err)}, None
        else:
            status, metrics = "ok", _plain(result.metrics)
            if self.objective not in metrics:
                numeric = sorted(k for k, v in metrics.items() if _is_number(v))
                raise bad_argument("objective", self.objective,
                                   f"a validation metric of the trials ({', '.join(numeric)})")
            value = float(metrics[self.objective])
        row = {"trial": number, "point": _plain(point), "status": status,
               "objective": value, "metrics": metrics,
               "train_seconds": round(time.perf_counter() - start, 2), "best": False}
        self.rows[number] = row
        released = result
        if self.best_row() is row:  # a new best: the previous one's model is let go
            released, self.best = self.best, result
            self.save_best(result, number)
        del result
        if released is not None:  # its model's memory, before the next trial builds one
            del released
            gc.collect()
        self.write()
        if self.verbose:
            shown = "diverged (non-finite loss)" if value is None else f"{value:.4f}"
            print(f"trial {number}/{total}: {self.objective} {shown} "
                  f"({row['train_seconds']:.1f} s)", flush=True)

    def best_row(self) -> Optional[dict]:
        """The finished trial with the best objective (the earlier one on a tie)."""
        sign = 1 if self.direction == "max" else -1
        ok = [r for r in self.rows.values() if r["status"] == "ok"
              and r["objective"] is not None and not math.isnan(r["objective"])]
        return max(ok, key=lambda r: (sign * r["objective"], -r["trial"]), default=None)

    def ordered_rows(self) -> List[dict]:
        """The rows by trial number, `best` set on the best one only."""
        best = self.best_row()
        rows = [self.rows[k] for k in sorted(self.rows)]
        for row in rows:
            row["best"] = row is best
        return rows

    def save_best(self, result, number: int) -> None:
        """OUTPUT/best as a run folder of trial `number`, its weights under
        checkpoints/ckpt-best. Its export is written at the end, so OUTPUT/best/export,
        when there, is always the export of the best trial so far."""
        from keras_bert_ft.training.run_folder import write_json
        stale = os.path.join(self.best_dir, "export")
        if os.path.isdir(stale):  # an earlier best's export (this search, or one before)
            shutil.rmtree(stale)
        result.save(self.best_dir, export=False)
        result.model.save_weights(os.path.join(self.best_dir, CHECKPOINT))
        write_json(os.path.join(self.best_dir, TRIAL_FILE), {"trial": number})

    def write(self) -> None:
        from keras_bert_ft.training.run_folder import write_json
        write_json(os.path.join(self.output_dir, RESULTS_JSON),
                   {"search": self.search_key, "objective": self.objective,
                    "direction": self.direction, "trials": self.ordered_rows()})


def write_results(result: TuneResult, search_key: dict, split) -> dict:
    """tune_results.json / .tsv / .png and tune_summary.json under the search folder."""
    from keras_bert_ft.training.run_folder import write_json, write_tsv
    out = result.output_dir
    paths = {name: os.path.join(out, file) for name, file in (
        ("json", RESULTS_JSON), ("tsv", RESULTS_TSV), ("plot", PLOT), ("summary", SUMMARY))}
    write_json(paths["json"], {"search": search_key, "objective": result.objective,
                               "direction": result.direction, "trials": result.trials})
    write_tsv(paths["tsv"], tsv_rows(result))
    plot_trials(result, paths["plot"])
    best = result._best_row()
    write_json(paths["summary"], {
        "objective": result.objective, "direction": result.direction,
        "chosen_on": (f"validation_split={split}" if split else "validation"),
        "grid": result.grid, "trials": len(result.trials),
        "diverged": sum(r["status"] == "diverged" for r in result.trials),
        "best_trial": result.best_trial, "best_point": best["point"],
        "best_objective": best["objective"], "validation_metrics": best["metrics"],
        "test_metrics": result.test_metrics,
        "test_scored_on": None if result.test_metrics is None else (
            REFIT if result.refit is not None else "best trial"),
        "refit": None if result.refit is None else {
            "run": os.path.join(out, REFIT),
            "train_examples": result.refit.metrics.get("train_examples"),
            "epochs_trained": result.refit.metrics.get("epochs_trained")},
        "best_run": os.path.join(out, BEST)})
    return paths


def _metric_columns(trials: List[dict], objective: str) -> List[str]:
    columns = []
    for row in trials:
        for key, value in row["metrics"].items():
            if key != objective and _is_number(value) and key not in columns:
                columns.append(key)
    return columns


def tsv_rows(result: TuneResult) -> List[dict]:
    """A row per trial: trial, best (*), status, the grid fields, the objective, train
    seconds, then the other numeric validation metrics."""
    metrics = _metric_columns(result.trials, result.objective)
    rows = []
    for row in result.trials:
        cells = {"trial": str(row["trial"]), "best": "*" if row["best"] else "",
                 "status": row["status"]}
        cells.update((k, _cell(row["point"][k])) for k in result.grid)
        cells[result.objective] = _cell(row["objective"])
        cells["train_seconds"] = str(row["train_seconds"])
        cells.update((k, _cell(row["metrics"].get(k))) for k in metrics)
        rows.append(cells)
    return rows


def format_table(result: TuneResult) -> str:
    """The trials as an aligned table, the best marked `*`, then the best point and the
    test metrics."""
    keys = list(result.grid)
    header = ["trial", *keys, result.objective, "seconds"]
    rows = [[f"{r['trial']}{' *' if r['best'] else ''}",
             *(_cell(r["point"][k]) for k in keys),
             "diverged" if r["objective"] is None else f"{r['objective']:.4f}",
             f"{r['train_seconds']:.1f}"] for r in result.trials]
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    lines = ["  ".join(str(x).rjust(w) for x, w in zip(line, widths))
             for line in [header, *rows]]
    best = result._best_row()
    better = "higher" if result.direction == "max" else "lower"
    lines.append(f"best: trial {result.best_trial} ({_point_text(best['point'])}): "
                 f"validation {result.objective} {best['objective']:.4f} ({better} is better)")
    if result.refit is not None:
        m = result.refit.metrics
        lines.append(f"refit: trial {result.best_trial}'s settings on training + validation "
                     f"data ({m.get('train_examples')} examples, {m.get('epochs_trained')} "
                     "epochs)")
    if result.test_metrics is not None:
        value = result.test_metrics.get(result.objective)
        shown = f"{value:.4f}" if _is_number(value) else "n/a"
        which = "the refit model only" if result.refit is not None else "best trial only"
        lines.append(f"test (scored once, {which}): {result.objective} {shown}")
    return "\n".join(lines)


def plot_trials(result: TuneResult, path: str) -> str:
    """The objective per trial: one line per combination of the other grid fields
    against the first field's values; the best trial starred."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(result.grid)
    first, rest = keys[0], keys[1:]
    xs = [json.dumps(v) for v in result.grid[first]]
    groups: Dict[str, Dict[int, float]] = {}
    for row in result.trials:
        label = ", ".join(f"{k}={_cell(row['point'][k])}" for k in rest) or result.objective
        line = groups.setdefault(label, {})
        if row["objective"] is not None:
            line[xs.index(json.dumps(row["point"][first]))] = row["objective"]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(xs) + 3), 3.8))
    for label, line in groups.items():
        at = sorted(line)
        ax.plot(at, [line[i] for i in at], marker="o", label=label)
    best = result._best_row()
    ax.plot([xs.index(json.dumps(best["point"][first]))], [best["objective"]], marker="*",
            markersize=16, color="gold", markeredgecolor="black", linestyle="none",
            label=f"best (trial {result.best_trial})")
    ax.set_xticks(range(len(xs)))
    ax.set_xticklabels([_cell(v) for v in result.grid[first]])
    better = "higher" if result.direction == "max" else "lower"
    ax.set(xlabel=first, ylabel=f"validation {result.objective}",
           title=f"validation {result.objective} per trial ({better} is better)")
    ax.legend(fontsize=8)
    from keras_bert_ft.training.run_folder import save_figure
    return save_figure(fig, path)


def _read_json(path: str) -> Optional[dict]:
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _source_key(data):
    """What identifies a data source between runs: a file's path, size and time; None
    for in-memory data (a search on it never resumes)."""
    if isinstance(data, (str, os.PathLike)):
        path = os.fspath(data)
        if os.path.isfile(path):
            stat = os.stat(path)
            return [os.path.abspath(path), stat.st_size, stat.st_mtime_ns]
        return path
    return None if data is None else f"in-memory {type(data).__name__} {id(data)}"


def _plain(value):
    """JSON-ready: numpy scalars and arrays as Python values, tuples as lists."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return ",".join(_cell(v) for v in value)
    if isinstance(value, dict):
        return ",".join(f"{k}={_cell(v)}" for k, v in value.items())
    return str(value)


def _shown(values) -> str:
    return repr(_plain(values)) if isinstance(values, (list, tuple)) else repr(values)


def _point_text(point: dict) -> str:
    return " ".join(f"{k}={_cell(v)}" for k, v in point.items())
