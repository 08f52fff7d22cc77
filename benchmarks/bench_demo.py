"""Fine-tuning throughput and peak memory of the `kbft demo` run (issue 3).

Runs the demo with its default settings (or fewer training sentences with
--train-examples) once per --seeds value and prints, then writes to JSON: SST-2 test
accuracy per seed with their mean and standard deviation, training examples/s (first
step excluded), wall time of each run and peak resident memory of the process.

    .venv/bin/python benchmarks/bench_demo.py [--seeds 0 1 2] [--train-examples N] [--json PATH]
"""

import argparse
import os
import platform
import sys
import time

from _common import peak_mib, write_figures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-examples", type=int, default=None)
    parser.add_argument("--data", default=None, help="SST-2 folder (default: ../shared/data/sst2)")
    parser.add_argument("--output", default="runs/bench_demo")
    parser.add_argument("--json", default="benchmarks/results/demo.json")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)

    import numpy as np
    from keras_bert_ft.demo import DEFAULTS, run_demo

    runs = []
    for seed in args.seeds:
        start = time.time()
        metrics = run_demo(data_dir=args.data, output_dir=f"{args.output}_seed{seed}",
                           train_examples=args.train_examples, seed=seed)
        runs.append({"seed": seed, "wall": time.time() - start, **metrics["test"],
                     "train_examples_per_second": metrics["train_examples_per_second"]})
    accuracy = np.array([run["accuracy"] for run in runs])
    figures = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.python_version()}",
        "settings": {**DEFAULTS, **({"train_examples": args.train_examples}
                                    if args.train_examples else {})},
        "seeds": args.seeds,
        "sst2_test_accuracy_mean": round(float(accuracy.mean()), 4),
        "sst2_test_accuracy_std": round(float(accuracy.std(ddof=1)) if len(runs) > 1 else 0.0, 4),
        "per_seed": [{"seed": run["seed"], "accuracy": round(run["accuracy"], 4),
                      "f1": round(run["f1"], 4), "mcc": round(run["mcc"], 4),
                      "train_examples_per_second": run["train_examples_per_second"],
                      "demo_wall_seconds": round(run["wall"], 1)} for run in runs],
        "peak_memory_mib": round(peak_mib(), 1),
    }
    write_figures(figures, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
