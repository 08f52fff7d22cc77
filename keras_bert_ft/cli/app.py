"""kbft: the command line, a thin argparse layer over the functions notebooks call.

`kbft train` takes one flag per `FineTuneConfig` field (config.py), for every task; a
flag given for a task it does not apply to is refused by name. `kbft pretrain` takes the
same flags for the pretrain task. Every subcommand is
`main(argv) -> int`-testable; bad input prints one line (`error: --flag must be ...
Received: ...`) and exits 2, never a TensorFlow traceback.
"""

import argparse
import json
import os
import sys
from typing import List, Optional

from keras_bert_ft.cli import research as research_cli
from keras_bert_ft.config import FIELDS, SENTENCE_TASKS, TASKS, applies
from keras_bert_ft.errors import KbftError, bad_argument

# Flags whose names differ from FineTuneConfig fields.
_RENAMED = {"output_dir": "output"}
_NOT_FLAGS = {"lower_case", "train_embeddings"}  # --cased, --train-embeddings / --freeze-embeddings
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2), like the toolkit's own."""

    def error(self, message):
        self.exit(2, f"error: {message}\n")


def flag_of(name: str) -> str:
    return "--" + _RENAMED.get(name, name).replace("_", "-")


def parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"must be true or false. Received: {value!r}")


def _typed(kind, expected: str):
    def parse(value: str):
        try:
            return kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {expected}. Received: {value!r}") from None
    parse.__name__ = expected
    return parse


def parse_trainable_layers(value: str):
    """`all`, `none`, `2` (top 2) or `0,1,5` (those layers)."""
    value = value.strip()
    if value in ("all", "none"):
        return value
    try:
        if "," in value:
            return [int(v) for v in value.split(",") if v.strip()]
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'must be "all", "none", an int k or a comma-separated list of layer indices. '
            f"Received: {value!r}") from None


def _int_list(value: str):
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be comma-separated ints, e.g. 256,128. Received: {value!r}") from None


def parse_class_weight(value: str):
    """`balanced`, or `name=weight,...` (e.g. `neg=1,pos=5`)."""
    value = value.strip()
    if value == "balanced":
        return value
    weights = {}
    try:
        for part in value.split(","):
            name, _, weight = part.partition("=")
            if not name.strip() or not weight.strip():
                raise ValueError(part)
            weights[name.strip()] = float(weight)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'must be "balanced" or label=weight pairs, e.g. neg=1,pos=5. Received: '
            f"{value!r}") from None
    return weights


_TYPES = {"trainable_layers": parse_trainable_layers, "head_units": _int_list,
          "class_weight": parse_class_weight}
_INTS = {"epochs", "batch_size", "seq_length", "seed", "max_train_examples",
         "max_eval_examples", "verbose", "backup_steps", "steps_per_execution",
         "reinit_layers", "unfreeze_every", "doc_stride", "max_query_length",
         "max_answer_length", "n_best_size", "cloze", "cloze_per_sentence", "top_k",
         "accumulation_steps", "patience", "error_examples"}
_FLOATS = {"learning_rate", "warmup_ratio", "weight_decay", "dropout", "clip_norm",
           "encoder_learning_rate", "layer_decay", "validation_split", "mask_rate"}


def _kind(name: str):
    if name in _TYPES:
        return _TYPES[name]
    if name in _INTS:
        return _typed(int, "an int")
    if name in _FLOATS:
        return _typed(float, "a number")
    if isinstance(FIELDS[name].default, bool):
        return parse_bool
    return str


def add_config_flags(parser: argparse.ArgumentParser, task: Optional[str] = None) -> None:
    """One flag per config field; defaults stay None so a given flag is known as given.
    With `task` (a command of one task: `kbft pretrain`) there is no --task, and the
    flags of other tasks are left out of the help (given, they are refused by name)."""
    groups = {"all": parser.add_argument_group("every task" if task is None else
                                              f"--task {task} options")}
    for name, field in FIELDS.items():
        if name in _NOT_FLAGS or (task is not None and name == "task"):
            continue
        tasks = field.metadata["tasks"]
        label = ("all" if tasks == TASKS or task is not None
                 else f"--task {' / '.join(tasks)}")
        group = groups.setdefault(label, parser.add_argument_group(label))
        kwargs = {"dest": name, "default": None, "type": _kind(name),
                  "help": (f"{field.metadata['help']} (default: {field.default!r})"
                           .replace("%", "%%"))}  # argparse formats help with %
        if task is not None and task not in tasks:
            kwargs["help"] = argparse.SUPPRESS
        if name == "task":
            kwargs["choices"] = TASKS
            kwargs.pop("type")
        if isinstance(field.default, bool):
            kwargs.update(nargs="?", const=True)  # `--deterministic` alone means true
        group.add_argument(flag_of(name), **kwargs)
    embeddings = groups["all"].add_mutually_exclusive_group()
    embeddings.add_argument("--train-embeddings", dest="train_embeddings", action="store_const",
                            const=True, default=None, help="train the embeddings (default: "
                            "only when all layers train)")
    embeddings.add_argument("--freeze-embeddings", dest="train_embeddings",
                            action="store_const", const=False, help="keep the embeddings frozen")
    groups["all"].add_argument("--cased", action="store_true", default=None,
                               help="keep case (vocab.txt preprocessors; default lower-cases)")


def given_config_values(args) -> dict:
    """The config fields the user gave on the command line."""
    values = {name: getattr(args, name) for name in FIELDS
              if name not in _NOT_FLAGS and getattr(args, name, None) is not None}
    if getattr(args, "train_embeddings", None) is not None:
        values["train_embeddings"] = args.train_embeddings
    if getattr(args, "cased", None):
        values["lower_case"] = False
    return values


def config_from_args(args, task: Optional[str] = None):
    """The run's `FineTuneConfig`: the given flags, each checked against `--task` (or
    the command's own `task`)."""
    from keras_bert_ft.config import make_config
    values = given_config_values(args)
    if task is not None:
        values["task"] = task
    task = values.get("task", FIELDS["task"].default)
    for name, value in values.items():
        if not applies(name, task):
            shown = "--cased" if name == "lower_case" else flag_of(name)
            raise KbftError(f"{shown} does not apply to --task {task} (it applies to "
                            f"{', '.join(FIELDS[name].metadata['tasks'])}). Received: "
                            f"{shown}={value!r}")
    return make_config(**values)


def cmd_pretrain(args) -> int:
    config = config_from_args(args, task="pretrain")
    if not config.output_dir:
        raise bad_argument("output_dir", None, "a folder for the encoder, preprocessor and "
                           "run files")
    from keras_bert_ft.tasks.pretrain import pretrain
    result = pretrain(args.text, args.validation, config)
    from keras_bert_ft.training.strategy import is_chief
    if result.strategy is not None and not is_chief(result.strategy):
        print("worker finished; the chief wrote the run folder")
        return 0
    print(json.dumps(headline_metrics(result.metrics), indent=2))
    out = config.output_dir
    print(f"encoder: {os.path.join(out, 'encoder')}\npreprocessor: "
          f"{os.path.join(out, 'preprocessor')}\nmetrics: {os.path.join(out, 'metrics.json')}")
    return 0


def cmd_train(args) -> int:
    config = config_from_args(args)
    if not config.output_dir:
        raise bad_argument("output_dir", None, "a folder for checkpoints, logs and the export")
    train, validation = args.train, args.validation
    if args.train_articles is not None:
        if config.task != "qa" or validation:
            raise bad_argument("train_articles", args.train_articles,
                               "used only with --task qa and no --validation")
        from keras_bert_ft.tasks.qa import split_articles
        train, validation = split_articles(args.train, args.train_articles, config.encoding)
    if args.metric is not None and not args.seeds:
        raise bad_argument("metric", args.metric, "used only with --seeds")
    if args.test is not None and args.seeds is not None:
        raise bad_argument("test", args.test, "not given with --seeds (each seed's run is "
                           "compared on validation; score the chosen run with kbft evaluate)")
    if args.seeds is not None:
        if config.task == "qa":
            from keras_bert_ft.config import to_json
            from keras_bert_ft.export.saved_model import refuse_ensemble_embed_options
            refuse_ensemble_embed_options(to_json(config))  # before any run trains
            result = _qa_ensemble_of_seeds(train, validation, config, args.seeds)
        elif config.task == "classification":
            return research_cli.cmd_train_seeds(args, config)
        else:
            raise bad_argument("seeds", args.seeds, "used with --task classification (seeds "
                               "compared) or qa (their ensemble), not --task "
                               f"{config.task}")
    else:
        from keras_bert_ft.training.runner import fine_tune
        result = fine_tune(train, validation, config, test=args.test)
    paths = result.save(config.output_dir)
    if not paths:  # a non-chief worker: the chief writes the run folder
        print("worker finished; the chief wrote the run folder")
        return 0
    print(json.dumps(headline_metrics(result.metrics), indent=2))
    for name in ("export", "encoder", "preprocessor"):
        if name in paths:
            print(f"{name}: {paths[name]}")
    print(f"metrics: {os.path.join(config.output_dir, 'metrics.json')}")
    return 0


_DETAILS = ("per_class", "confusion_matrix", "f1_per_label", "thresholds", "member_metrics")


def headline_metrics(metrics: dict) -> dict:
    """The metrics to print: per-class tables and matrices stay in the run folder's files."""
    shown = {k: v for k, v in metrics.items() if k not in _DETAILS}
    if isinstance(shown.get("test"), dict):
        shown["test"] = headline_metrics(shown["test"])
    return shown


def _qa_ensemble_of_seeds(train, validation, config, seeds):
    """`--task qa --seeds N`: N runs from `--seed` up, served as one ensemble (mean
    start/end logits, `tasks.qa.ensemble_qa`); each run's metrics are kept too."""
    import dataclasses
    from keras_bert_ft.research.seeds import resolve_seeds
    from keras_bert_ft.tasks.qa import ensemble_qa
    from keras_bert_ft.training.runner import fine_tune

    runs, seeds = [], resolve_seeds(seeds, config.seed)
    for seed in seeds:
        print(f"seed {seed}", flush=True)
        runs.append(fine_tune(train, validation, dataclasses.replace(config, seed=seed)))
    result = ensemble_qa(runs, validation)
    result.metrics["seeds"] = seeds
    result.metrics["member_metrics"] = [run.metrics for run in runs]
    return result


def _restore(args, name: str = "model"):
    from keras_bert_ft.export.restore import restore
    return restore(getattr(args, name), name=name)


def _data_config(saved, args):
    """The run's config (`saved`) with the column and encoding flags the user gave."""
    import dataclasses
    changes = {k: getattr(args, k) for k in ("text_column", "text_pair_column",
                                              "label_column", "encoding")
               if getattr(args, k, None) is not None}
    if saved.task not in SENTENCE_TASKS:
        given = [k for k in changes if k != "encoding"]
        if given:
            raise KbftError(f"{flag_of(given[0])} does not apply to a {saved.task} model "
                            f"(its data has no columns). Received: "
                            f"{flag_of(given[0])}={changes[given[0]]!r}")
    config = dataclasses.replace(saved, **changes)
    return config.validate()


def cmd_evaluate(args) -> int:
    from keras_bert_ft.export.predictions import check_output
    from keras_bert_ft.export.restore import saved_config
    from keras_bert_ft.tasks import get_task
    from keras_bert_ft.training.run_folder import write_json
    if args.output:  # a metrics file of ours or a new one; replaced atomically
        check_output(args.output, overwrite=True, inputs=[args.data])
    saved, info = saved_config(args.model, name="model")  # the user's input is checked
    config = _data_config(saved, args)                    # before any model is built
    task = get_task(config.task)
    data = task.read(args.data, config, info, where="data")
    result = _restore(args)
    metrics, _ = task.evaluate(result.serving, data, config, result.info)
    print(json.dumps(headline_metrics(metrics), indent=2))
    if args.output:
        write_json(args.output, metrics)
    return 0


def cmd_predict(args) -> int:
    from keras_bert_ft.export import predictions
    from keras_bert_ft.export.restore import saved_config
    if args.input and args.text:
        raise bad_argument("input", args.input, "not given together with --text")
    if not (args.input or args.text):
        raise bad_argument("text", None, "--text TEXT (repeatable) or --input FILE")
    fmt = predictions.output_format(args.output, args.format)
    if args.output:
        predictions.check_output(args.output, overwrite=args.overwrite, inputs=[args.input])
    saved, info = saved_config(args.model, name="model")  # checks before building
    sentence = saved.task in SENTENCE_TASKS
    if not sentence and fmt != "jsonl":
        raise bad_argument("format" if args.format else "output", args.format or args.output,
                           f"JSON lines (jsonl) for a {saved.task} model: its predictions "
                           "are nested")
    wants_pair = bool(info.get("pair")) or saved.task == "qa"
    if args.input:
        if not sentence:
            raise bad_argument("input", args.input, f"not used by a {saved.task} model: "
                               "pass --text (and --text-pair for qa contexts)")
        config = _data_config(saved, args)
        job = predictions.plan_file(
            args.input, args.output, format=args.format, overwrite=args.overwrite,
            text_column=config.text_column, text_pair_column=config.text_pair_column,
            pair=wants_pair, encoding=config.encoding, chunk_size=args.chunk_size)
    else:
        texts, pairs = args.text, args.text_pair
        if wants_pair and (pairs is None or len(pairs) != len(texts)):
            what = "context" if saved.task == "qa" else "second text"
            raise bad_argument("text_pair", pairs, f"one {what} (--text-pair) per --text "
                               f"({len(texts)}): this model takes pairs")
        if pairs is not None and not wants_pair:
            raise bad_argument("text_pair", pairs, "nothing: this model takes single texts")
        job = predictions.PredictionJob(
            predictions.InputFile.from_texts(texts, pairs, chunk_size=args.chunk_size),
            args.output, fmt, args.overwrite, "format" if args.format else "output")
    result = _restore(args)
    if sentence:
        job.run(result)
    else:
        with predictions.PredictionWriter(args.output, fmt, overwrite=args.overwrite) as out:
            out.write(result.predict(*[c for c in (args.text, args.text_pair) if c]))
    return 0


def cmd_export(args) -> int:
    if args.check_serving is not None:
        given = [flag for flag, value in (("--run", args.run), ("--checkpoint", args.checkpoint),
                                          ("--output", args.output)) if value is not None]
        given += ["--format"] if args.format != "savedmodel" else []
        if given:
            raise KbftError(f"{', '.join(given)} does not apply with --check-serving (it only "
                            f"audits an existing export). Received: --check-serving "
                            f"{args.check_serving}")
        from keras_bert_ft.export.audit import audit_export
        report = audit_export(args.check_serving, name="check_serving")
        print(report.summary())
        return 0 if report.ok else 1
    missing = [flag for flag, value in (("--run", args.run), ("--output", args.output))
               if value is None]
    if missing:
        raise KbftError(f"kbft export needs {' and '.join(missing)} (or --check-serving EXPORT "
                        "to audit an export).")
    from keras_bert_ft.export.restore import restore_run
    from keras_bert_ft.export.saved_model import check_export_dir, write_export
    if args.format == "onnx":
        from keras_bert_ft.export import onnx as onnx_export
        from keras_bert_ft.export.restore import saved_config
        onnx_export.check_onnx_task(saved_config(args.run, name="run")[0].task)  # before
        onnx_export.check_onnx_dir(args.output, name="output")  # building the model
        result = restore_run(args.run, checkpoint=args.checkpoint, name="run")
        print(f"onnx export: {onnx_export.export_onnx(result, args.output)}")
        return 0
    check_export_dir(args.output, name="output")  # before the model is built
    result = restore_run(args.run, checkpoint=args.checkpoint, name="run")
    from keras_bert_ft.training.runner import export_metadata
    path = write_export(result.serving, args.output,
                        export_metadata(result.config, result.info), name="output")
    print(f"export: {path}")
    return 0


def cmd_report(args) -> int:
    from keras_bert_ft.encoders.hub_encoder import HubEncoder
    encoder = HubEncoder(args.encoder, trainable_layers=args.trainable_layers)
    print(f"encoder: {args.encoder}  layers: {encoder.num_layers}  "
          f"hidden: {encoder.hidden_size}  max seq_length: {encoder.max_seq_length}")
    print(encoder.trainable_report())
    return 0


def cmd_convert(args) -> int:
    from keras_bert_ft.encoders import convert
    if bool(args.from_hf) == bool(args.from_tf1):
        raise bad_argument("from_hf", args.from_hf, "exactly one of --from-hf or --from-tf1 "
                           f"({'both' if args.from_hf else 'neither'} given)")
    names = dict(src_name="from_hf" if args.from_hf else "from_tf1", out_name="output")
    if args.from_hf:
        out = convert.convert_hf_bert(args.from_hf, args.output, seq_length=args.seq_length,
                                      overwrite=args.overwrite, **names)
    else:
        out = convert.convert_tf1_bert(args.from_tf1, args.output, seq_length=args.seq_length,
                                       overwrite=args.overwrite, **names)
    print(f"encoder: {os.path.join(out, 'encoder')}\npreprocessor: {os.path.join(out, 'preprocessor')}")
    return 0


def cmd_demo(args) -> int:
    from keras_bert_ft.demo import run_demo
    run_demo(data_dir=args.data, output_dir=args.output,
             train_examples=args.train_examples, epochs=args.epochs, seed=args.seed)
    return 0


def cmd_doctor(args) -> int:
    from keras_bert_ft.doctor import doctor
    return doctor(as_json=args.json)


def positive_int(value: str) -> int:
    number = _typed(int, "an int >= 1")(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be an int >= 1. Received: {value!r}")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="kbft", description="Fine-tune BERT-family TF-Hub encoders "
                    "(keras_bert_ft).")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    train = sub.add_parser(
        "train", help="fine-tune an encoder for any task (--task) and export it",
        description="Fine-tune an encoder + head on labelled data; writes checkpoints, "
        "logs/, history.json, history.png, metrics.json, run_config.json and export/ under "
        "--output. Each flag says the tasks it applies to; others are refused.")
    train.add_argument("--train", required=True, help="training data: a CSV/TSV/JSON-lines "
                       "file, tfds:<name> or mrpc:/trec:/trec-fine:/cola:<path> (sentence "
                       "tasks), a CoNLL file (tagging), SQuAD JSON (qa), JSON lines "
                       "(summarization)")
    train.add_argument("--validation", help="validation data: it picks the epoch kept "
                       "(--monitor, --patience) and its metrics go to metrics.json "
                       "(without it: --validation-split)")
    train.add_argument("--test", help="test data, scored once at the end with the model "
                       "kept; reported apart (metrics.json \"test\")")
    add_config_flags(train)
    extra = train.add_argument_group("runs and data splits")
    extra.add_argument("--train-articles", type=positive_int, default=None,
                       help="qa without --validation: split the --train SQuAD file by "
                            "article, the first N train and the rest are held out")
    research_cli.add_train_flags(extra)
    train.set_defaults(func=cmd_train)

    pretrain = sub.add_parser(
        "pretrain", help="further pre-train an encoder (masked LM) on your own text",
        description="Masked-LM training of a BERT encoder on plain text (one text per "
        "line); writes OUTPUT/encoder (with its MLM head) and OUTPUT/preprocessor in TF-Hub "
        "format, for kbft train --encoder OUTPUT/encoder, plus metrics.json and "
        "history.json (held-out MLM loss and perplexity).")
    pretrain.add_argument("--text", required=True, nargs="+", metavar="FILE",
                          help="plain-text files, one text (sentence or paragraph) per line; "
                               "blank lines are skipped")
    pretrain.add_argument("--validation", nargs="+", metavar="FILE",
                          help="held-out text files (without them: --validation-split)")
    add_config_flags(pretrain, task="pretrain")
    pretrain.set_defaults(func=cmd_pretrain)

    evaluate = sub.add_parser("evaluate", help="metrics of a run folder or an export on "
                              "labelled data (any task)")
    evaluate.add_argument("--model", required=True, help="an export (DIR/export) or a run folder")
    evaluate.add_argument("--data", required=True, help="labelled data in the model's task format")
    evaluate.add_argument("--output", help="also write the metrics to this JSON file")
    add_column_flags(evaluate, labels=True)
    evaluate.set_defaults(func=cmd_evaluate)

    predict = sub.add_parser("predict", help="run a model on raw texts (any task)")
    predict.add_argument("--model", required=True, help="an export (DIR/export) or a run folder")
    predict.add_argument("--text", action="append", help="a text (qa: a question; "
                         "summarization: a document) (repeatable)")
    predict.add_argument("--text-pair", action="append", help="its second text, for pair "
                         "models (qa: its context)")
    predict.add_argument("--input", help="a CSV/TSV/JSON-lines file of texts (any size: "
                         "read in chunks) instead of --text (sentence tasks); each output "
                         "row keeps its columns")
    predict.add_argument("--output", help="write here instead of stdout (JSON lines); the "
                         "format follows its name (.csv, .tsv, .jsonl/.json) or --format; "
                         "written whole or not at all")
    predict.add_argument("--format", default=None, help="csv, tsv or jsonl (default: from "
                         "--output's name; stdout: jsonl)")
    predict.add_argument("--overwrite", action="store_true", help="replace an existing "
                         "--output file")
    predict.add_argument("--chunk-size", type=positive_int, default=4096, help="rows read "
                         "and predicted at a time (default: 4096)")
    add_column_flags(predict, labels=False)
    predict.set_defaults(func=cmd_predict)

    export = sub.add_parser("export", help="export a training run's checkpoint as a raw-string SavedModel")
    export.add_argument("--run", help="the --output folder of kbft train")
    export.add_argument("--checkpoint", help="checkpoint prefix (default: the latest)")
    export.add_argument("--output", help="export folder to write: new, empty, "
                        "or an earlier export (replaced atomically)")
    export.add_argument("--format", choices=("savedmodel", "onnx"), default="savedmodel",
                        help="savedmodel (raw strings in, TF Serving) or onnx (the model core "
                             "on token ids, with vocab.txt, tokenizer.json and a NumPy + "
                             "onnxruntime runner; sentence tasks; needs keras_bert_ft[onnx])")
    export.add_argument("--check-serving", metavar="EXPORT",
                        help="only audit the SavedModel EXPORT: list each op that TF Serving's "
                             "model server cannot run (exit 1 if any), write nothing")
    export.set_defaults(func=cmd_export)

    report = sub.add_parser("report", help="trainable / frozen parameters per layer group")
    report.add_argument("--encoder", required=True, help="preset, URL, folder or gs:// path")
    report.add_argument("--trainable-layers", type=parse_trainable_layers, default="all",
                        help='"all", "none", top k, or a comma list of layer indices')
    report.set_defaults(func=cmd_report)

    convert = sub.add_parser("convert", help="convert a Hugging Face or TF1 BERT checkpoint to TF-Hub format")
    convert.add_argument("--from-hf", help="Hugging Face folder (config.json, vocab.txt, model.safetensors)")
    convert.add_argument("--from-tf1", help="Google BERT folder (bert_model.ckpt.*, bert_config.json, vocab.txt)")
    convert.add_argument("--output", required=True, help="writes OUTPUT/encoder and OUTPUT/preprocessor")
    convert.add_argument("--seq-length", type=positive_int, default=128, help="preprocessor's default length")
    convert.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    convert.set_defaults(func=cmd_convert)

    demo = sub.add_parser("demo", help="fine-tune the embedded MiniLM on SST-2, evaluate, export, predict")
    demo.add_argument("--data", help="folder with SST-2 train.tsv/test.tsv (default: ../shared/data/sst2, else tfds glue/sst2)")
    demo.add_argument("--output", default="runs/demo", help="run folder (default: runs/demo)")
    demo.add_argument("--train-examples", type=positive_int, default=None, help="training examples to use")
    demo.add_argument("--epochs", type=positive_int, default=None, help="epochs")
    demo.add_argument("--seed", type=_typed(int, "an int"), default=0,
                      help="random seed for initialisation, dropout and shuffling (default: 0)")
    demo.set_defaults(func=cmd_demo)

    doctor = sub.add_parser("doctor", help="check versions, Keras, tensorflow-text, devices, TPU/Colab; one fix per finding",
                            description="Checks this environment; exits 1 when a finding is an error.")
    doctor.add_argument("--json", action="store_true", help="print the findings as JSON")
    doctor.set_defaults(func=cmd_doctor)
    research_cli.add_commands(sub, add_config_flags, add_column_flags, config_from_args)
    return parser


def add_column_flags(parser, labels: bool) -> None:
    """Column and encoding flags of evaluate / predict / probe; default: the run's own."""
    parser.add_argument("--text-column", default=None, help="column of the (first) text "
                        "(default: the run's, else sentence)")
    parser.add_argument("--text-pair-column", default=None, help="column of the second text, for pairs")
    if labels:
        parser.add_argument("--label-column", default=None, help="column of the label "
                            "(default: the run's, else label)")
    parser.add_argument("--encoding", default=None, help="file encoding (default: the run's, "
                        "else utf-8-sig)")


def _flags(parser: argparse.ArgumentParser, argv) -> dict:
    """dest -> the option string the user typed (or the first one) of the chosen subcommand."""
    flags = {}
    command = next((a for a in argv if not a.startswith("-")), None)
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    chosen = subparsers[0].choices.get(command) if subparsers and command else None
    for action in (chosen or parser)._actions:
        typed = [o for o in action.option_strings if o in argv]
        if action.option_strings:
            flags.setdefault(action.dest, (typed or action.option_strings)[-1])
    return flags


def user_message(err: KbftError, flags: dict) -> str:
    """The error's message with the field it names shown as the user's flag."""
    message = str(err)
    name = getattr(err, "argument", None)
    flag = flags.get(name)
    if name and flag:
        if message.startswith(f"{name} "):
            message = flag + message[len(name):]
        message = message.replace(f"Received: {name}=", f"Received: {flag}=")
    return " ".join(message.split())


def main(argv: Optional[List[str]] = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    # _keras.py's choice (tf_keras), made before anything in this process imports
    # TensorFlow: `import tensorflow` then loads tf_keras instead of Keras 3 and the
    # scikit-learn it pulls in (about 2 s of every command's start-up).
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KbftError as err:
        print(f"error: {user_message(err, _flags(parser, argv))}", file=sys.stderr)
        return 2


def console() -> None:
    """The `kbft` command: `main`, then the process ends without Python tearing down
    TensorFlow's objects one by one (about a second at the end of every command). All
    that `main` writes is closed and renamed into place before it returns, and the output
    streams are flushed here. Processes of a multi-worker cluster (`TF_CONFIG`) or with a
    TPU exit the ordinary way, so that their runtimes shut down in step."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    if _may_exit_at_once():
        os._exit(code)
    sys.exit(code)


def _may_exit_at_once() -> bool:
    if os.environ.get("TF_CONFIG"):
        return False
    tf = sys.modules.get("tensorflow")
    if tf is None:  # nothing to tear down
        return False
    try:
        return not tf.config.list_logical_devices("TPU")
    except Exception:  # a context in a state we do not know: the ordinary way
        return False


if __name__ == "__main__":
    console()
