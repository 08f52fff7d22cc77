"""SST-2 at 1:10 imbalance, with and without class_weight="balanced": minority-class F1 over seeds.

The training set keeps SST-2 negatives and subsamples the positives to a tenth of them
(positive, label 1, is the minority class); both arms fine-tune the default encoder
(minilm-l6) with the same seeds, data and settings, and only `class_weight` differs.
Each run is scored on SST-2 `test.tsv` (the official GLUE dev set, balanced): the
minority class's F1 (also its precision and recall, and accuracy) per seed and as mean ±
sample std. Prints a table and writes JSON.

    .venv/bin/python benchmarks/bench_class_weight.py             # ~1,100 examples, 3 seeds
    .venv/bin/python benchmarks/bench_class_weight.py --quick     # a smoke run, seconds
"""

import argparse
import os
import platform
import sys
import tempfile
import time

import numpy as np

from _common import limit_threads, peak_mib, write_figures

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MINORITY = "1"  # SST-2 positive
ARMS = (("unweighted", None), ("balanced", "balanced"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "sst2"))
    parser.add_argument("--train-examples", type=int, default=1100,
                        help="training sentences in all (minority: 1 in ratio + 1)")
    parser.add_argument("--ratio", type=int, default=10, help="negatives per positive")
    parser.add_argument("--test-examples", type=int, default=None,
                        help="first N of test.tsv (default: all 872)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-length", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="default: the encoder preset's")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 44 training examples, 64 test, 1 epoch, 1 seed, "
                             "seq_length 32")
    parser.add_argument("--threads", type=int, default=None,
                        help="TensorFlow op threads (default: all cores)")
    parser.add_argument("--json", default=None,
                        help="default: benchmarks/results/class_weight.json (--quick: "
                             "class_weight_quick.json in the temporary folder)")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_examples, args.test_examples = 44, 64
        args.epochs, args.seeds, args.seq_length = 1, 1, 32
    if not args.json:  # a smoke run's figures are not results
        args.json = (os.path.join(tempfile.gettempdir(), "class_weight_quick.json") if args.quick
                     else os.path.join(ROOT, "benchmarks", "results", "class_weight.json"))
    limit_threads(args.threads)

    from keras_bert_ft.config import FineTuneConfig
    from keras_bert_ft.data import examples as data_lib
    from keras_bert_ft.research.seeds import run_seeds, summarize

    train = sample_train(args.data, args.train_examples, args.ratio)
    test = data_lib.read_table(os.path.join(args.data, "test.tsv"))
    test["label"] = test["label"].astype(int)
    if args.test_examples:
        test = test.head(args.test_examples)
    config = FineTuneConfig(encoder="minilm-l6", epochs=args.epochs,
                            batch_size=args.batch_size, seq_length=args.seq_length,
                            learning_rate=args.learning_rate, text_column="sentence",
                            label_column="label", error_examples=0, verbose=0)
    counts = train["label"].value_counts().to_dict()
    figures = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "data": f"SST-2 train.tsv sample: {counts.get(0, 0)} negative, {counts.get(1, 0)} "
                f"positive (1:{args.ratio}, minority: positive); scored on test.tsv "
                f"({len(test)} sentences, {int(test['label'].sum())} positive)",
        "settings": {"encoder": "minilm-l6", "epochs": args.epochs,
                     "batch_size": args.batch_size, "seq_length": args.seq_length,
                     "learning_rate": args.learning_rate or "preset default",
                     "seeds": args.seeds, "quick": args.quick},
        "metric": "F1 of the minority class (positive) on the test data",
        "std": "sample standard deviation (ddof 1)", "arms": {}}
    for name, class_weight in ARMS:
        start = time.perf_counter()
        res = run_seeds(train, test, config, seeds=args.seeds, metric="accuracy",
                        class_weight=class_weight)
        per_seed = {}
        for run in res.runs:
            minority = run["metrics"]["per_class"][MINORITY]
            per_seed[run["seed"]] = {"f1": minority["f1"], "precision": minority["precision"],
                                     "recall": minority["recall"],
                                     "accuracy": run["metrics"]["accuracy"],
                                     "degenerate": run["flags"]}
        f1 = summarize([r["f1"] for r in per_seed.values()])
        figures["arms"][name] = {
            "class_weight": class_weight,
            "class_weights": res.best.info.get("class_weights"),
            "minority_f1_mean": f1["mean"], "minority_f1_std": f1["std"],
            "minority_recall_mean": float(np.mean([r["recall"] for r in per_seed.values()])),
            "minority_precision_mean": float(np.mean([r["precision"]
                                                      for r in per_seed.values()])),
            "accuracy_mean": res.summary["accuracy"]["mean"],
            "per_seed": per_seed,
            "wall_seconds": round(time.perf_counter() - start, 1)}
        print(f"\n== class_weight={class_weight} ==")
        print(f"{'seed':>6}  {'F1':>6}  {'prec':>6}  {'recall':>6}  {'acc':>6}")
        for seed, r in per_seed.items():
            print(f"{seed:>6}  {r['f1']:>6.4f}  {r['precision']:>6.4f}  {r['recall']:>6.4f}  "
                  f"{r['accuracy']:>6.4f}")
        print(f"minority F1: {f1['mean']:.4f} ± {f1['std']:.4f} (mean ± sample std over "
              f"{f1['runs']} seeds)", flush=True)
        del res
    unweighted, balanced = figures["arms"]["unweighted"], figures["arms"]["balanced"]
    figures["balanced_minus_unweighted_minority_f1"] = (balanced["minority_f1_mean"]
                                                        - unweighted["minority_f1_mean"])
    figures["peak_memory_mib"] = round(peak_mib(), 1)
    print()
    write_figures(figures, args.json)
    return 0


def sample_train(folder: str, examples: int, ratio: int, seed: int = 0):
    """`examples` SST-2 training sentences, negatives : positives = `ratio` : 1, drawn
    with `seed` (the same set for every run and arm)."""
    import pandas as pd
    from keras_bert_ft.data import examples as data_lib
    table = data_lib.read_table(os.path.join(folder, "train.tsv"))
    table["label"] = table["label"].astype(int)
    n_pos = max(1, int(round(examples / (ratio + 1))))
    rng = np.random.RandomState(seed)
    neg = table[table["label"] == 0].sample(n=examples - n_pos, random_state=rng)
    pos = table[table["label"] == 1].sample(n=n_pos, random_state=rng)
    return pd.concat([neg, pos]).sample(frac=1.0, random_state=rng).reset_index(drop=True)


if __name__ == "__main__":
    sys.exit(main())
