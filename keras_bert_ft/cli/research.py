"""The research subcommands of kbft: `train --seeds`, `sweep-layers`, `diff` and `probe`.

Kept apart from cli.py so the core CLI stays short; cli.py calls `add_train_flags`,
`add_commands` and `cmd_train_seeds`.
"""

import argparse

from keras_bert_ft.errors import bad_argument


def _ints(name):
    def parse(value: str):
        try:
            return [int(v) for v in value.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be comma-separated ints, e.g. 0,1,2. Received: {value!r}") from None
    parse.__name__ = name
    return parse


def _positive_int(value: str) -> int:
    from keras_bert_ft.cli.app import positive_int  # the CLI's one int >= 1 parser
    return positive_int(value)


def _names(value: str):
    return [v.strip() for v in value.split(",") if v.strip()]


def add_train_flags(train) -> None:
    train.add_argument("--seeds", type=_positive_int, default=None,
                       help="run N seeds (from --seed up): mean ± std of --metric, "
                       "degenerate runs flagged, the best run kept under --output; "
                       "with --task qa: the N runs served as one ensemble")
    train.add_argument("--metric", default=None,
                       help="the metric --seeds summarises and picks the best by "
                       "(accuracy, f1, mcc; default: accuracy)")


def cmd_train_seeds(args, config) -> int:
    from keras_bert_ft.research.seeds import format_summary, run_seeds, save_seeds
    if args.validation is None:
        raise bad_argument("validation", None, "a validation file: --seeds compares on it")
    res = run_seeds(args.train, args.validation, config, seeds=args.seeds,
                    metric=args.metric or "accuracy")
    paths = save_seeds(res, config.output_dir)
    print(format_summary(res))
    print(f"seeds: {paths['seeds']}\nbest run export: {paths['export']}")
    return 0


def cmd_sweep_layers(args, config) -> int:
    from keras_bert_ft.research.sweep import format_table, sweep_layers
    output = config.output_dir or "runs/sweep_layers"
    figures = sweep_layers(args.train, args.validation, config, layers=args.layers,
                           include_full=not args.no_full, head_depths=args.head_depths or (),
                           poolings=args.poolings or (), head_width=args.head_width,
                           head_layers=args.head_layers, metric=args.metric,
                           isolate=not args.in_process, output_dir=output)
    print(format_table(figures))
    print(f"json: {figures['json']}\nplot: {figures['plot']}")
    return 0


def _texts(args):
    from keras_bert_ft.data import examples as data_lib
    examples = data_lib.load_examples(args.data, text_column=args.text_column or "sentence",
                                      text_pair_column=args.text_pair_column,
                                      encoding=args.encoding or "utf-8-sig", where="data")
    n = args.samples
    return examples.texts[:n], None if examples.texts_pair is None else examples.texts_pair[:n]


def cmd_diff(args) -> int:
    from keras_bert_ft.research.diff import diff_models, format_diff
    texts, pairs = _texts(args)
    figures = diff_models(args.model_a, args.model_b, texts, texts_pair=pairs,
                          representation=args.representation, seq_length=args.seq_length,
                          output=args.json)
    print(format_diff(figures))
    if args.json:
        print(f"json: {args.json}")
    return 0


def cmd_probe(args) -> int:
    from keras_bert_ft.research.probe import format_probe, probe_layers
    figures = probe_layers(args.model, args.train, args.validation,
                           representation=args.representation,
                           text_column=args.text_column or "sentence",
                           label_column=args.label_column or "label",
                           text_pair_column=args.text_pair_column,
                           max_train_examples=args.max_train_examples,
                           max_eval_examples=args.max_eval_examples,
                           seq_length=args.seq_length, l2=args.l2,
                           encoding=args.encoding or "utf-8-sig",
                           output=args.json)
    print(format_probe(figures))
    if args.json:
        print(f"json: {args.json}")
    return 0


def add_commands(sub, add_config_flags, add_column_flags, config_from_args) -> None:
    """Registers `sweep-layers`, `diff` and `probe` on the kbft subparsers."""
    sweep = sub.add_parser(
        "sweep-layers", help="fine-tune the top k layers for k = 0..L and the whole model; "
        "JSON + plot + recommendation",
        description="Fine-tunes once per k (top k layers trainable, embeddings frozen) and "
        "once with the whole model; records quality, examples/s and peak memory; writes "
        "OUTPUT/sweep_layers.json and sweep_layers.png and recommends the smallest k within "
        "1 point of full fine-tuning. Optionally compares heads too.")
    sweep.add_argument("--train", required=True, help="training file")
    sweep.add_argument("--validation", required=True, help="validation file")
    sweep.add_argument("--layers", type=_ints("layers"), default=None,
                       help="k values, e.g. 0,1,2 (default: 0..L)")
    sweep.add_argument("--no-full", action="store_true", help="skip the whole-model run")
    sweep.add_argument("--head-depths", type=_ints("head_depths"), default=None,
                       help="also compare heads with these numbers of Dense+ReLU+Dropout "
                       "blocks, e.g. 0,1,2")
    sweep.add_argument("--poolings", type=_names, default=None,
                       help="also compare these poolings, e.g. pooled,cls,mean")
    sweep.add_argument("--head-width", type=_positive_int, default=256,
                       help="units per head block")
    sweep.add_argument("--head-layers", type=int, default=None,
                       help="k for the head runs (default: the recommended k)")
    sweep.add_argument("--metric", default="accuracy", help="quality metric (accuracy, f1, mcc)")
    sweep.add_argument("--in-process", action="store_true",
                       help="run everything in this process (faster start; peak memory "
                       "then covers all runs so far)")
    add_config_flags(sweep)
    sweep.set_defaults(func=lambda args: cmd_sweep_layers(args, config_from_args(args)))

    diff = sub.add_parser(
        "diff", help="relative weight change per layer group and CKA per layer between "
        "two models",
        description="Compares two models of the same encoder: each a preset/encoder folder "
        "(pretrained), a kbft train --output folder, or an export.")
    diff.add_argument("model_a", help="e.g. minilm-l6 (the pretrained encoder)")
    diff.add_argument("model_b", help="e.g. runs/sst2 or runs/sst2/export")
    diff.add_argument("--data", required=True, help="texts for the representations (a file)")
    diff.add_argument("--samples", type=_positive_int, default=512,
                      help="texts to use (default 512)")
    diff.add_argument("--representation", default="tokens", choices=("tokens", "cls", "mean"),
                      help="CKA over every real token (default), [CLS] or mean vectors")
    diff.add_argument("--seq-length", type=_positive_int, default=128,
                      help="maximum tokens per text")
    diff.add_argument("--json", help="also write the figures to this JSON file")
    add_column_flags(diff, labels=False)
    diff.set_defaults(func=cmd_diff)

    probe = sub.add_parser(
        "probe", help="logistic-regression probe per layer (encoder frozen): where the "
        "task's information lives")
    probe.add_argument("--model", required=True,
                       help="preset/encoder folder, kbft train --output folder, or export")
    probe.add_argument("--train", required=True, help="labelled training file")
    probe.add_argument("--validation", required=True, help="labelled validation file")
    probe.add_argument("--representation", default="cls", choices=("cls", "mean"),
                       help="[CLS] vector (default) or mean over real tokens")
    probe.add_argument("--max-train-examples", type=_positive_int, default=None)
    probe.add_argument("--max-eval-examples", type=_positive_int, default=None)
    probe.add_argument("--seq-length", type=_positive_int, default=128,
                       help="maximum tokens per text")
    probe.add_argument("--l2", type=float, default=1e-2, help="probe L2 penalty (default 0.01)")
    probe.add_argument("--json", help="also write the figures to this JSON file")
    add_column_flags(probe, labels=True)
    probe.set_defaults(func=cmd_probe)

