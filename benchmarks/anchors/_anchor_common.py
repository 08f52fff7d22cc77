"""Shared by the anchor scripts (run in their own virtual environments): data, timing, output.

Each anchor script reads the same SST-2 rows as bench_finetune.py, trains one epoch at the
same batch size, and prints one JSON line: examples/s (first step excluded, as in
keras_bert_ft's ThroughputCallback), dev accuracy, peak resident memory.
"""

import argparse
import csv
import json
import resource
import sys


def parse_args(description):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--train", required=True, help="SST-2 train.tsv")
    parser.add_argument("--dev", required=True, help="SST-2 dev file (test.tsv, 872)")
    parser.add_argument("--examples", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--model-dir", required=True, help="Hugging Face checkpoint folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", default=None, help="folder to save the fine-tuned model in")
    return parser.parse_args()


def read_tsv(path, limit=None):
    with open(path, encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    rows = rows[:limit] if limit else rows
    return [r["sentence"] for r in rows], [int(r["label"]) for r in rows]


class StepTimer:
    """Examples/s over every step but the first (tracing / warm-up)."""

    def __init__(self, clock):
        self.clock, self.start, self.examples = clock, None, 0

    def step_done(self, batch_examples):
        if self.start is None:
            self.start = self.clock()
        else:
            self.examples += batch_examples

    def examples_per_second(self):
        return self.examples / max(self.clock() - self.start, 1e-9)


def report(name, examples_per_second, dev_accuracy, steps, **extra):
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"anchor": name, "examples_per_second": round(examples_per_second, 2),
                      "dev_accuracy": round(dev_accuracy, 4), "steps": steps,
                      "peak_memory_mib": round(peak, 1), **extra}))
    sys.stdout.flush()


def adamw_groups(model, weight_decay=0.01):
    """Hugging Face's usual AdamW parameter groups: decay on every weight but biases and
    LayerNorm weights (a PyTorch model's named_parameters)."""
    no_decay = ("bias", "LayerNorm.weight")
    named = list(model.named_parameters())
    return [{"params": [p for n, p in named if not any(k in n for k in no_decay)],
             "weight_decay": weight_decay},
            {"params": [p for n, p in named if any(k in n for k in no_decay)],
             "weight_decay": 0.0}]
