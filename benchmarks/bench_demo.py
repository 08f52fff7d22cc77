"""Fine-tuning throughput and peak memory of the `kbft demo` run (issue 3).

Runs the demo with its default settings (or fewer training sentences with
--train-examples) and prints, then writes to JSON: SST-2 test accuracy, training
examples/s (first step excluded), wall time and peak resident memory of the process.

    .venv/bin/python benchmarks/bench_demo.py [--train-examples N] [--json PATH]
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
    args = parser.parse_args(argv)

    from keras_bert_ft.demo import DEFAULTS, run_demo

    start = time.time()
    metrics = run_demo(data_dir=args.data, output_dir=args.output,
                       train_examples=args.train_examples)
    wall = time.time() - start
    figures = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.python_version()}",
        "settings": {**DEFAULTS, **({"train_examples": args.train_examples}
                                    if args.train_examples else {})},
        "sst2_test_accuracy": round(metrics["test"]["accuracy"], 4),
        "sst2_test_f1": round(metrics["test"]["f1"], 4),
        "sst2_test_mcc": round(metrics["test"]["mcc"], 4),
        "train_examples_per_second": metrics["train_examples_per_second"],
        "peak_memory_mib": round(peak_mib(), 1),
        "demo_wall_seconds": round(wall, 1),
    }
    write_figures(figures, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
