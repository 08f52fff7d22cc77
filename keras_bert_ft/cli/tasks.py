"""The sequence tasks on the command line: `kbft train --task tagging|qa|summarization`
and `kbft predict` on their exports. `kbft`'s own parser calls in here."""

import dataclasses
import json
import os
import sys

from keras_bert_ft.errors import bad_argument
from keras_bert_ft.tasks import TASKS

# TaskConfig fields that `kbft train` has no flag for otherwise.
_TASK_FLAGS = ("doc_stride", "max_query_length", "max_answer_length", "n_best_size", "top_k",
               "cloze", "cloze_per_sentence")


def add_task_arguments(parser) -> None:
    """Adds the sequence tasks' flags to `kbft train` (and `--task`, unless the parser
    has one already, whose choices then grow by the sequence tasks)."""
    from keras_bert_ft.tasks.common import TaskConfig

    task = parser._option_string_actions.get("--task")
    if task is None:
        parser.add_argument("--task", default=None, choices=["classification", *TASKS],
                            help="tagging (CoNLL files), qa (SQuAD JSON) or summarization "
                                 "(JSON lines); default: classification")
    elif task.choices is not None:
        task.choices = list(task.choices) + [t for t in TASKS if t not in task.choices]
    group = parser.add_argument_group("sequence tasks (--task tagging, qa, summarization)")
    fields = {f.name: f for f in dataclasses.fields(TaskConfig)}
    for name in _TASK_FLAGS:
        field = fields[name]
        group.add_argument("--" + name.replace("_", "-"), dest=name, type=int, default=None,
                           help=f"{field.metadata['help']} (default: {field.default})")
    group.add_argument("--train-articles", type=int, default=None,
                       help="qa without --validation: split the --train SQuAD file by "
                            "article, the first N train and the rest are held out")


def run_task_training(args) -> int:
    """`kbft train --task T`: trains, saves metrics, history and export under --output."""
    from keras_bert_ft.tasks import common, fine_tune_task

    if not getattr(args, "output_dir", None):
        raise bad_argument("output", None, "a folder for checkpoints, logs and the export")
    values = {}
    for field in dataclasses.fields(common.TaskConfig):
        value = getattr(args, field.name, None)
        if value is not None and field.name != "lower_case":
            values[field.name] = value
    if hasattr(args, "cased"):
        values["lower_case"] = not args.cased
    config = common.TaskConfig(**values)
    train, validation = args.train, args.validation
    if getattr(args, "train_articles", None):
        if args.task != "qa" or validation:
            raise bad_argument("train_articles", args.train_articles,
                               "used only with --task qa and no --validation")
        from keras_bert_ft.tasks.qa import split_articles
        train, validation = split_articles(args.train, args.train_articles)
    seeds = getattr(args, "seeds", None)
    if seeds:
        result = _qa_ensemble_of_seeds(args.task, train, validation, config, seeds)
    else:
        result = fine_tune_task(args.task, train, validation, config)
    paths = result.save(config.output_dir)
    print(json.dumps(result.metrics, indent=2))
    print(f"export: {paths['export']}\nmetrics: {os.path.join(config.output_dir, 'metrics.json')}")
    return 0


def _qa_ensemble_of_seeds(task, train, validation, config, seeds):
    """`--task qa --seeds N`: N runs from `--seed` up, served as one ensemble (mean
    start/end logits, `tasks.qa.ensemble_qa`); each run's metrics are kept too."""
    from keras_bert_ft.research.seeds import resolve_seeds
    from keras_bert_ft.tasks import fine_tune_task
    from keras_bert_ft.tasks.qa import ensemble_qa

    if task != "qa":
        raise bad_argument("seeds", seeds, f"used with --task qa (an ensemble of the seeds' "
                                           f"runs) or a sentence task, not --task {task}")
    runs, seeds = [], resolve_seeds(seeds, config.seed)
    for seed in seeds:
        print(f"seed {seed}", flush=True)
        runs.append(fine_tune_task("qa", train, validation,
                                   dataclasses.replace(config, seed=seed)))
    result = ensemble_qa(runs, validation)
    result.metrics["seeds"] = seeds
    result.metrics["member_metrics"] = [run.metrics for run in runs]
    return result


def run_task_prediction(args, meta: dict) -> int:
    """`kbft predict` on a task export: `--text` texts / questions / documents, and for
    qa one `--text-pair` context per question. Writes JSON lines."""
    from keras_bert_ft.tasks import predict_export

    texts = args.text or []
    if not texts:
        raise bad_argument("text", None, "--text TEXT (repeatable) for a task export")
    columns = [texts]
    if meta["task"] == "qa":
        if not args.text_pair or len(args.text_pair) != len(texts):
            raise bad_argument("text_pair", args.text_pair,
                               f"one context (--text-pair) per question ({len(texts)})")
        columns.append(args.text_pair)
    elif args.text_pair:
        raise bad_argument("text_pair", args.text_pair, f"nothing: a {meta['task']} export "
                           "takes one text per example")
    rows = predict_export(args.model, *columns)
    out = open(args.output, "w") if args.output else sys.stdout
    try:
        for row in rows:
            out.write(json.dumps(row) + "\n")
    finally:
        if args.output:
            out.close()
    return 0
