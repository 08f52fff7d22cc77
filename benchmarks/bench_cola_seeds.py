"""CoLA, 5 seeds, AdamW with and without bias correction (the BERTAdam ablation): MCC mean ± std.

Both arms use the same seeds, data, schedule and model; only Adam's bias correction
differs. Degenerate runs (one predicted class, or a loss that never gets below the
label-frequency loss) are counted. Prints a table and writes JSON.

    .venv/bin/python benchmarks/bench_cola_seeds.py [--examples 2000] [--seeds 5]
"""

import argparse
import os
import platform
import sys
import time

from _common import limit_threads, peak_mib, write_figures

COLUMNS = ["source", "label", "original_label", "sentence"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/cola")
    parser.add_argument("--examples", type=int, default=2000, help="first N training sentences")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None,
                        help="TensorFlow op threads (default: all cores)")
    parser.add_argument("--json", default="benchmarks/results/cola_seeds.json")
    args = parser.parse_args(argv)
    limit_threads(args.threads)

    from keras_bert_ft.data import examples as data_lib
    from keras_bert_ft.research.seeds import format_summary, run_seeds
    from keras_bert_ft.config import FineTuneConfig

    read = lambda name: data_lib.read_table(os.path.join(args.data, name),  # noqa: E731
                                            column_names=COLUMNS)
    train = read("in_domain_train.tsv").head(args.examples)
    dev = read("in_domain_dev.tsv")
    config = FineTuneConfig(encoder="minilm-l6", epochs=args.epochs, batch_size=args.batch_size,
                            learning_rate=args.learning_rate, seq_length=64,
                            trainable_layers="all", train_embeddings=False, verbose=0)
    figures = {"date": time.strftime("%Y-%m-%d"),
               "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
               "data": f"CoLA in_domain_train first {len(train)}, validation in_domain_dev "
                       f"({len(dev)})",
               "settings": {"encoder": "minilm-l6", "epochs": args.epochs,
                            "batch_size": args.batch_size, "learning_rate": args.learning_rate,
                            "warmup_ratio": config.warmup_ratio, "weight_decay": config.weight_decay,
                            "seq_length": 64, "layers": "all 6, embeddings frozen",
                            "pooling": "mean (preset default)", "seeds": args.seeds},
               "std": "sample standard deviation (ddof 1)", "arms": {}}
    for name, corrected in (("bias_corrected", True), ("no_bias_correction", False)):
        start = time.perf_counter()
        res = run_seeds(train, dev, config, seeds=args.seeds, metric="mcc",
                        bias_correction=corrected, text_column="sentence", label_column="label")
        print(f"\n== AdamW, bias correction {'on' if corrected else 'off'} ==")
        print(format_summary(res))
        figures["arms"][name] = {
            "mcc_mean": res.summary["mcc"]["mean"], "mcc_std": res.summary["mcc"]["std"],
            "accuracy_mean": res.summary["accuracy"]["mean"],
            "mcc_per_seed": {r["seed"]: r["mcc"] for r in res.runs},
            "degenerate_runs": [r["seed"] for r in res.runs if r["degenerate"]],
            "flags": {r["seed"]: r["flags"] for r in res.runs if r["flags"]},
            "wall_seconds": round(time.perf_counter() - start, 1)}
    on, off = figures["arms"]["bias_corrected"], figures["arms"]["no_bias_correction"]
    figures["bias_corrected_mean_at_least_as_high"] = on["mcc_mean"] >= off["mcc_mean"]
    figures["bias_corrected_std_at_most"] = on["mcc_std"] <= off["mcc_std"]
    figures["peak_memory_mib"] = round(peak_mib(), 1)
    write_figures(figures, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
