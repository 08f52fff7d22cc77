"""The research subcommands of kbft: `train --seeds`, `sweep-layers`, `diff`, `probe`,
`ablate` and `tune`.

Kept apart from cli.py so the core CLI stays short; cli.py calls `add_train_flags`,
`add_commands` and `cmd_train_seeds`.
"""

import argparse

from keras_bert_ft.errors import KbftError, bad_argument


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
    from keras_bert_ft.research import probe
    run = probe.compare_pretrained if args.compare_pretrained else probe.probe_layers
    figures = run(args.model, args.train, args.validation,
                  representation=args.representation,
                  text_column=args.text_column or "sentence",
                  label_column=args.label_column or "label",
                  text_pair_column=args.text_pair_column,
                  max_train_examples=args.max_train_examples,
                  max_eval_examples=args.max_eval_examples,
                  seq_length=args.seq_length, l2=args.l2,
                  encoding=args.encoding or "utf-8-sig",
                  output=args.json, plot=args.plot)
    print((probe.format_comparison if args.compare_pretrained else probe.format_probe)(figures))
    for name, path in (("json", args.json), ("plot", args.plot)):
        if path:
            print(f"{name}: {path}")
    return 0


def cmd_ablate(args) -> int:
    from keras_bert_ft.research.ablate import ablate_layers, format_ablation
    columns = {k: getattr(args, k) for k in ("text_column", "text_pair_column",
                                             "label_column", "encoding")
               if getattr(args, k) is not None}
    figures = ablate_layers(args.run, args.validation, metric=args.metric,
                            output=args.output, overwrite=args.overwrite, **columns)
    print(format_ablation(figures))
    print("\n".join(f"{name}: {path}" for name, path in figures["files"].items()))
    return 0


def parse_grid(specs):
    """`--grid FIELD=V1,V2,...` (repeatable) -> {field: [values]}, each value parsed as
    the FIELD's own flag parses it; `;` separates the values instead of `,` when a value
    holds commas (e.g. `head_units=256;256,128`); `none` is None for fields whose default
    is None. None when no --grid is given (tune's default grid)."""
    from typing import Optional

    from keras_bert_ft.cli.app import _kind, parse_bool
    from keras_bert_ft.config import FIELDS
    from keras_bert_ft.research.tune import TuneError
    if not specs:
        return None
    grid = {}
    for spec in specs:
        key, sep, text = spec.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key or not text.strip():
            raise TuneError(lambda n, spec=spec: f"{n('grid')} must be FIELD=VALUE,VALUE,... "
                            f"e.g. learning_rate=2e-5,3e-5. Received: {n('grid')} {spec!r}")
        if key in grid:
            raise TuneError(lambda n, key=key: f"{n('grid')} {key} must be given once (its "
                            f"values in one --grid). Received: {n('grid')} {key} twice")
        tokens = [t.strip() for t in text.split(";" if ";" in text else ",")]
        if key not in FIELDS:  # tune refuses it, naming the fields
            grid[key] = tokens
            continue
        field = FIELDS[key]
        kind = parse_bool if field.type == Optional[bool] else _kind(key)
        values = []
        for token in tokens:
            if field.default is None and token.lower() == "none":
                values.append(None)
                continue
            try:
                values.append(kind(token))
            except argparse.ArgumentTypeError as err:  # "must be X. Received: 'v'"
                expected, _, received = str(err).rpartition("Received: ")
                raise TuneError(lambda n, key=key, expected=expected, received=received: (
                    f"{n('grid')} {key} {expected}Received: {n('grid')} {key}={received}"
                )) from None
        grid[key] = values
    return grid


def cmd_tune(args, config_from_args) -> int:
    from keras_bert_ft.cli.app import flag_of, given_config_values
    from keras_bert_ft.research.tune import TuneError, format_table, tune
    try:
        config_from_args(args)  # each fixed flag checked against --task, by its flag name
        settings = given_config_values(args)
        output = settings.pop("output_dir", None)
        if output is None:
            raise bad_argument("output_dir", None, "a folder for the search results and "
                               "the best run")
        result = tune(args.train, args.validation, grid=parse_grid(args.grid),
                      test=args.test, output_dir=output, objective=args.objective,
                      search=args.search, max_trials=args.max_trials, refit=args.refit,
                      **settings)
    except TuneError as err:
        raise KbftError(err.render(flag_of)) from None
    print(format_table(result))
    print("\n".join(f"{name}: {path}" for name, path in result.paths.items()))
    return 0


def add_commands(sub, add_config_flags, add_column_flags, config_from_args) -> None:
    """Registers `sweep-layers`, `diff`, `probe`, `ablate` and `tune` on the kbft
    subparsers."""
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
    probe.add_argument("--plot", help="also draw the accuracy per layer to this PNG")
    probe.add_argument("--compare-pretrained", action="store_true",
                       help="--model is a run folder or export: the same probe on the "
                       "pretrained encoder it started from too, per-layer accuracy before "
                       "and after fine-tuning and the difference")
    add_column_flags(probe, labels=True)
    probe.set_defaults(func=cmd_probe)

    ablate = sub.add_parser(
        "ablate", help="revert each layer group to its pretrained weights in turn: the "
        "drop of the task's metric per group",
        description="For each encoder group (embeddings, layer_0 ..., the pooler when the "
        "head reads it) of a fine-tuned run, puts that group's weights back to the "
        "pretrained encoder's (the run's --encoder), scores --validation with the task's "
        "own evaluation and reports the drop of its primary metric against the unablated "
        "model; also every group at once (the pretrained encoder under the trained head). "
        "Writes OUTPUT/ablate.tsv, ablate.json and ablate.png.")
    ablate.add_argument("run", help="a kbft train --output folder or an export")
    ablate.add_argument("--validation", required=True,
                        help="labelled validation data in the run's task format")
    ablate.add_argument("--output", default=None, help="folder for ablate.tsv, ablate.json "
                        "and ablate.png (default: RUN/ablate; required for an export)")
    ablate.add_argument("--overwrite", action="store_true", help="write into an --output "
                        "folder that holds other files")
    ablate.add_argument("--metric", default=None, help="validation metric compared "
                        "(default: the task's primary one, e.g. accuracy, f1_micro, "
                        "pearson, entity_f1, f1 (qa), rouge2)")
    add_column_flags(ablate, labels=True)
    ablate.set_defaults(func=cmd_ablate)

    tune = sub.add_parser(
        "tune", help="hyperparameter search: a fine-tuning run per grid point, the best "
        "kept by its validation metric, test data scored once on it",
        description="Fine-tunes once per grid point (every other flag is a fixed setting, "
        "as for kbft train) and keeps the trial with the best validation --objective. "
        "Default grid (no --grid): the BERT paper's --grid learning_rate=2e-5,3e-5,5e-5 "
        "--grid epochs=2,3,4 (9 trials), less a field fixed by its own flag. Choices use "
        "validation data only (--validation, else --validation-split); --test is scored "
        "once, with the best trial. Writes OUTPUT/tune_results.tsv, tune_results.json, "
        "tune_results.png, tune_summary.json and best/ (a run folder with the export); "
        "with --refit also refit/. Rerun with the same flags, a search resumes where it stopped.")
    tune.add_argument("--train", required=True, help="training data (as for kbft train)")
    tune.add_argument("--validation", help="validation data the trials are compared on")
    tune.add_argument("--test", help="labelled test data, scored once with the best trial")
    tune.add_argument("--grid", action="append", metavar="FIELD=V1,V2,...",
                      help="a config field and its values to try (repeatable; values "
                      "parsed as the field's flag; ';' separates values that hold commas, "
                      "e.g. head_units=256;256,128). Default: learning_rate=2e-5,3e-5,5e-5 "
                      "and epochs=2,3,4")
    tune.add_argument("--search", choices=("grid", "random"), default="grid",
                      help="grid: every point (the first --grid varies slowest); random: "
                      "--max-trials points sampled, seeded by --seed")
    tune.add_argument("--max-trials", type=_positive_int, default=None,
                      help="at most N trials (required with --search random)")
    tune.add_argument("--refit", action="store_true",
                      help="after the search, train the best trial's settings once more on "
                      "the training and validation data together, for the epochs it kept, "
                      "into OUTPUT/refit (with its export); --test is then scored once, "
                      "with the refit model")
    tune.add_argument("--objective", default=None,
                      help="validation metric the trials are compared by (default: "
                      "--monitor, else the task's main one: accuracy, f1_micro, pearson, "
                      "entity_f1, f1 (qa), rouge2); higher is better except eval_loss and mse")
    add_config_flags(tune)
    tune.set_defaults(func=lambda args: cmd_tune(args, config_from_args))
