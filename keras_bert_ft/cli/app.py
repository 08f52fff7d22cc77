"""kbft: the command line, a thin argparse layer over the functions notebooks call.

Every subcommand is `main(argv) -> int`-testable; bad input prints one line
(`error: ... Received: ...`) and exits 2, never a TensorFlow traceback.
"""

import argparse
import dataclasses
import json
import os
import sys
from typing import List, Optional

from keras_bert_ft.cli import research as research_cli
from keras_bert_ft.errors import KbftError, bad_argument

# Flags whose names differ from FineTuneConfig fields.
_RENAMED = {"output_dir": "output"}
_NOT_FLAGS = {"train_embeddings", "lower_case"}


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
        raise bad_argument("trainable_layers", value, '"all", "none", an int k or a '
                           "comma-separated list of layer indices") from None


def _int_list(value: str):
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise bad_argument("head_units", value, "comma-separated ints, e.g. 256,128") from None


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    from keras_bert_ft.training.runner import FineTuneConfig
    for field in dataclasses.fields(FineTuneConfig):
        if field.name in _NOT_FLAGS:
            continue
        flag = "--" + _RENAMED.get(field.name, field.name).replace("_", "-")
        kwargs = {"dest": field.name, "default": field.default,
                  "help": f"{field.metadata['help']} (default: {field.default!r})"}
        if field.name == "trainable_layers":
            kwargs["type"] = parse_trainable_layers
        elif field.name == "head_units":
            kwargs["type"] = _int_list
        elif isinstance(field.default, bool):
            kwargs["type"] = lambda v: v.lower() in ("1", "true", "yes")
            kwargs.update(nargs="?", const=True)  # `--deterministic` alone means true
        elif isinstance(field.default, (int, float)) and field.default is not None:
            kwargs["type"] = type(field.default)
        elif field.name in ("max_train_examples", "max_eval_examples", "steps_per_execution"):
            kwargs["type"] = int
        elif field.name in ("learning_rate", "encoder_learning_rate", "clip_norm"):
            kwargs["type"] = float
        parser.add_argument(flag, **kwargs)
    parser.add_argument("--cased", action="store_true",
                        help="keep case (vocab.txt preprocessors; default lower-cases)")


def _config_from_args(args):
    from keras_bert_ft.training.runner import FineTuneConfig
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(FineTuneConfig)
              if f.name not in _NOT_FLAGS}
    return FineTuneConfig(lower_case=not args.cased, **values)


def cmd_train(args) -> int:
    from keras_bert_ft.tasks import TASKS
    if getattr(args, "task", None) in TASKS:  # tagging, qa, summarization
        from keras_bert_ft.cli.tasks import run_task_training
        return run_task_training(args)
    from keras_bert_ft.training.runner import fine_tune, save_run
    config = _config_from_args(args)
    if not config.output_dir:
        raise bad_argument("output", None, "a folder for checkpoints, logs and the export")
    if args.seeds:
        from keras_bert_ft.cli.research import cmd_train_seeds
        return cmd_train_seeds(args, config)
    result = fine_tune(args.train, args.validation, config)
    paths = save_run(result, config.output_dir)
    if not paths:  # a non-chief worker: the chief writes the run folder
        print("worker finished; the chief wrote the run folder")
        return 0
    print(json.dumps(result.metrics, indent=2))
    print(f"export: {paths['export']}\nmetrics: {os.path.join(config.output_dir, 'metrics.json')}")
    return 0


def cmd_evaluate(args) -> int:
    from keras_bert_ft.data import examples as data_lib
    from keras_bert_ft.tasks import sentence as sentence_tasks
    from keras_bert_ft.export.saved_model import load_export, predict_export, read_metadata
    meta = read_metadata(args.model)
    task = meta.get("task", "classification")
    examples = data_lib.load_examples(
        args.data, text_column=args.text_column, label_column=args.label_column,
        text_pair_column=args.text_pair_column, label_names=meta["label_names"],
        encoding=args.encoding, task=task, label_separator=meta.get("label_separator", ","))
    _check_pair(meta, examples.texts_pair is not None)
    outputs = predict_export(load_export(args.model), examples.texts, examples.texts_pair)
    metrics = sentence_tasks.evaluate(task, examples.labels,
                                      outputs[sentence_tasks.output_key(task)],
                                      meta["label_names"], meta.get("thresholds"))
    metrics["eval_examples"] = len(examples)
    print(json.dumps(metrics, indent=2))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(metrics, f, indent=2)
    return 0


def cmd_predict(args) -> int:
    from keras_bert_ft.data import examples as data_lib
    from keras_bert_ft.export.saved_model import load_export, predict_export, read_metadata
    meta = read_metadata(args.model)
    from keras_bert_ft.tasks import TASKS
    if meta.get("task") in TASKS:  # a tagging, qa or summarization export
        from keras_bert_ft.cli.tasks import run_task_prediction
        return run_task_prediction(args, meta)
    if args.input:
        examples = data_lib.load_examples(args.input, text_column=args.text_column,
                                          text_pair_column=args.text_pair_column,
                                          encoding=args.encoding)
        texts, pairs = examples.texts, examples.texts_pair
    elif args.text:
        texts, pairs = args.text, args.text_pair
        if pairs is not None and len(pairs) != len(texts):
            raise bad_argument("text_pair", pairs, f"one --text-pair per --text ({len(texts)})")
    else:
        raise bad_argument("text", None, "--text TEXT (repeatable) or --input FILE")
    _check_pair(meta, pairs is not None)
    outputs = predict_export(load_export(args.model), texts, pairs)
    out = open(args.output, "w") if args.output else sys.stdout
    try:
        for i, text in enumerate(texts):
            row = {"text": text, **_prediction_row(meta, outputs, i)}
            if pairs is not None:
                row["text_pair"] = pairs[i]
            out.write(json.dumps(row) + "\n")
    finally:
        if args.output:
            out.close()
    return 0


def _prediction_row(meta: dict, outputs: dict, i: int) -> dict:
    """One example's prediction as JSON-ready values, by the export's task."""
    task = meta.get("task", "classification")
    if task == "regression":
        return {"score": float(outputs["score"][i])}
    row = {"probabilities": dict(zip(meta["label_names"],
                                     map(float, outputs["probabilities"][i])))}
    if task == "multilabel":
        chosen = outputs["labels"][i].decode()
        return {"labels": chosen.split(meta.get("label_separator", ",")) if chosen else [],
                **row}
    return {"label": outputs["label"][i].decode(), **row}


def _check_pair(meta: dict, has_pair: bool) -> None:
    if meta.get("pair") and not has_pair:
        raise bad_argument("text_pair", None, "second texts: this model classifies pairs "
                           "(--text-pair / --text-pair-column)")
    if has_pair and not meta.get("pair"):
        raise bad_argument("text_pair", "<given>", "nothing: this model takes single texts")


def cmd_export(args) -> int:
    from keras_bert_ft.training.runner import export_from_run
    path = export_from_run(args.run, args.output, checkpoint=args.checkpoint)
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
        raise bad_argument("from_hf", args.from_hf, "exactly one of --from-hf or --from-tf1")
    if args.from_hf:
        out = convert.convert_hf_bert(args.from_hf, args.output, seq_length=args.seq_length,
                                      overwrite=args.overwrite)
    else:
        out = convert.convert_tf1_bert(args.from_tf1, args.output, seq_length=args.seq_length,
                                       overwrite=args.overwrite)
    print(f"encoder: {os.path.join(out, 'encoder')}\npreprocessor: {os.path.join(out, 'preprocessor')}")
    return 0


def cmd_demo(args) -> int:
    from keras_bert_ft.demo import run_demo
    run_demo(data_dir=args.data, output_dir=args.output,
             train_examples=args.train_examples, epochs=args.epochs)
    return 0


def cmd_doctor(args) -> int:
    from keras_bert_ft.doctor import doctor
    return doctor(as_json=args.json)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kbft", description="Fine-tune BERT-family TF-Hub encoders (keras_bert_ft).")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="fine-tune a classifier (or multilabel / regression "
                           "model: --task) and export it",
                           description="Fine-tune an encoder + head on a labelled file; "
                           "writes checkpoints, logs/, history.json, history.png, "
                           "metrics.json and export/ under --output.")
    train.add_argument("--train", required=True, help="training file (CSV, TSV, JSON lines), "
                       "tfds:<name>, or a dataset in its own format: mrpc:<path>, "
                       "trec:<path>, trec-fine:<path>, cola:<path>")
    train.add_argument("--validation", help="validation file; its metrics go to metrics.json")
    _add_config_flags(train)
    from keras_bert_ft.cli.tasks import add_task_arguments
    add_task_arguments(train)
    research_cli.add_train_flags(train)
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser("evaluate", help="metrics of an export on a labelled file")
    evaluate.add_argument("--model", required=True, help="an export folder (DIR/export)")
    evaluate.add_argument("--data", required=True, help="labelled file")
    evaluate.add_argument("--output", help="also write the metrics to this JSON file")
    _add_column_flags(evaluate, labels=True)
    evaluate.set_defaults(func=cmd_evaluate)

    predict = sub.add_parser("predict", help="classify raw texts with an export")
    predict.add_argument("--model", required=True, help="an export folder (DIR/export)")
    predict.add_argument("--text", action="append", help="a text to classify (repeatable)")
    predict.add_argument("--text-pair", action="append", help="its second text, for pair models")
    predict.add_argument("--input", help="a file of texts instead of --text")
    predict.add_argument("--output", help="write JSON lines here instead of stdout")
    _add_column_flags(predict, labels=False)
    predict.set_defaults(func=cmd_predict)

    export = sub.add_parser("export", help="export a training run's checkpoint as a raw-string SavedModel")
    export.add_argument("--run", required=True, help="the --output folder of kbft train")
    export.add_argument("--checkpoint", help="checkpoint prefix (default: the latest)")
    export.add_argument("--output", required=True, help="export folder to write")
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
    convert.add_argument("--seq-length", type=int, default=128, help="preprocessor's default length")
    convert.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    convert.set_defaults(func=cmd_convert)

    demo = sub.add_parser("demo", help="fine-tune the embedded MiniLM on SST-2, evaluate, export, predict")
    demo.add_argument("--data", help="folder with SST-2 train.tsv/test.tsv (default: ../shared/data/sst2, else tfds glue/sst2)")
    demo.add_argument("--output", default="runs/demo", help="run folder (default: runs/demo)")
    demo.add_argument("--train-examples", type=int, default=None, help="training examples to use")
    demo.add_argument("--epochs", type=int, default=None, help="epochs")
    demo.set_defaults(func=cmd_demo)

    doctor = sub.add_parser("doctor", help="check versions, Keras, tensorflow-text, devices, TPU/Colab; one fix per finding",
                            description="Checks this environment; exits 1 when a finding is an error.")
    doctor.add_argument("--json", action="store_true", help="print the findings as JSON")
    doctor.set_defaults(func=cmd_doctor)
    research_cli.add_commands(sub, _add_config_flags, _add_column_flags, _config_from_args)
    return parser


def _add_column_flags(parser, labels: bool) -> None:
    parser.add_argument("--text-column", default="sentence", help="column of the (first) text")
    parser.add_argument("--text-pair-column", help="column of the second text, for pairs")
    if labels:
        parser.add_argument("--label-column", default="label", help="column of the label")
    parser.add_argument("--encoding", default="utf-8-sig", help="file encoding")


def main(argv: Optional[List[str]] = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KbftError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
