"""The whole command, shell to shell: `kbft train` against the Hugging Face PyTorch script
doing the same job, with where kbft's seconds go (the run folder's timings.json).

The job: the first 4,000 SST-2 training sentences, 1 epoch, batch 32, the embedded
MiniLM (all-MiniLM-L6-v2), the same learning rate, accuracy on test.tsv (872), and the
model written out (kbft: its SavedModel export; Hugging Face: `save_pretrained`). Each
command runs twice in a row; the second run (warm page cache) is the one compared, the
first is reported beside it. Hugging Face runs in .bench-venvs/hf
(bash benchmarks/setup_anchors.sh); without it the anchor is reported as skipped.

Then the precision check: the same kbft job with seeds 0..N-1 (`--seeds`, default 3) at
the default precision (`--mixed-precision auto`: bfloat16 on CPUs with bfloat16 units)
and at float32; the mean test.tsv accuracy of each and their difference. Where `auto`
is float32 the second set is the first again and is not run.

    .venv/bin/python benchmarks/bench_command.py [--examples 4000] [--seeds 3] [--json PATH]
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

from _common import write_figures

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def timed(argv, env=None):
    """(seconds from start to exit, completed process) of one command."""
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{' '.join(argv[:3])} ... failed:\n{proc.stderr[-3000:]}")
    return seconds, proc


def kbft_run(args, rate, out, seed=0, precision=None):
    argv = [os.path.join(ROOT, ".venv", "bin", "kbft"), "train",
            "--train", os.path.join(args.data, "train.tsv"),
            "--max-train-examples", str(args.examples),
            "--validation", os.path.join(args.data, "test.tsv"),
            "--epochs", "1", "--batch-size", "32", "--learning-rate", str(rate),
            "--seed", str(seed), "--output", out, "--verbose", "0"]
    if precision:
        argv += ["--mixed-precision", precision]
    seconds, _ = timed(argv)
    with open(os.path.join(out, "metrics.json")) as f:
        metrics = json.load(f)
    with open(os.path.join(out, "timings.json")) as f:
        timings = json.load(f)
    with open(os.path.join(out, "run_config.json")) as f:
        resolved = json.load(f).get("mixed_precision")
    return {"seconds": round(seconds, 1), "accuracy": round(metrics["accuracy"], 4),
            "precision": resolved,
            "train_examples_per_second": metrics["train_examples_per_second"],
            "first_step_after_s": timings["since_process_start"]["first_step_done"],
            "phases": timings["phases"]}


def hf_run(args, rate, model_dir, out):
    python = os.path.join(ROOT, ".bench-venvs", "hf", "bin", "python")
    argv = [python, os.path.join(HERE, "anchors", "hf_torch.py"),
            "--train", os.path.join(args.data, "train.tsv"),
            "--dev", os.path.join(args.data, "test.tsv"), "--examples", str(args.examples),
            "--batch-size", "32", "--learning-rate", str(rate), "--model-dir", model_dir,
            "--save", out]
    seconds, proc = timed(argv)
    line = [l for l in proc.stdout.splitlines() if l.startswith("{")][-1]
    found = json.loads(line)
    return {"seconds": round(seconds, 1), "accuracy": found["dev_accuracy"],
            "train_examples_per_second": found["examples_per_second"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "sst2"))
    parser.add_argument("--examples", type=int, default=4000)
    parser.add_argument("--seeds", type=int, default=3,
                        help="seeds of the precision check (0: no check)")
    parser.add_argument("--json", default=os.path.join(ROOT, "benchmarks", "results",
                                                       "command.json"))
    args = parser.parse_args(argv)
    from keras_bert_ft.config import FineTuneConfig
    from keras_bert_ft.encoders import presets
    from keras_bert_ft.training.build import resolve_learning_rate
    rate = resolve_learning_rate(FineTuneConfig())  # kbft's default for the preset
    scratch = tempfile.mkdtemp(prefix="kbft-bench-command-")
    try:
        kbft = [kbft_run(args, rate, os.path.join(scratch, f"kbft{i}")) for i in range(2)]
        if os.path.exists(os.path.join(ROOT, ".bench-venvs", "hf", "bin", "python")):
            model_dir = presets._source_dir("minilm-l6")
            hf = [hf_run(args, rate, model_dir, os.path.join(scratch, f"hf{i}"))
                  for i in range(2)]
        else:
            hf = None
        from keras_bert_ft.training.precision import auto_precision
        policy, reason = auto_precision()
        check = None
        if args.seeds:
            default = [kbft[1]] + [kbft_run(args, rate, os.path.join(scratch, f"d{s}"), s)
                                   for s in range(1, args.seeds)]
            fp32 = default if policy == "float32" else [
                kbft_run(args, rate, os.path.join(scratch, f"f{s}"), s, "float32")
                for s in range(args.seeds)]
            mean = lambda runs: round(sum(r["accuracy"] for r in runs) / len(runs), 4)
            check = {"default_precision": policy, "why": reason,
                     "seeds": list(range(args.seeds)),
                     "default_accuracy": [r["accuracy"] for r in default],
                     "default_examples_per_second": [r["train_examples_per_second"]
                                                     for r in default],
                     "float32_accuracy": [r["accuracy"] for r in fp32],
                     "float32_examples_per_second": [r["train_examples_per_second"]
                                                     for r in fp32],
                     "default_mean_accuracy": mean(default),
                     "float32_mean_accuracy": mean(fp32),
                     "difference_points": round(100 * (mean(default) - mean(fp32)), 2)}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    figures = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.python_version()}",
        "job": f"SST-2 first {args.examples} sentences, 1 epoch, batch 32, lr {rate}, "
               "test.tsv accuracy, model written",
        "kbft": {"warm": kbft[1], "cold": kbft[0]},
    }
    if hf:
        figures["hf_transformers_torch"] = {"warm": hf[1], "cold": hf[0]}
        figures["kbft_vs_hf_whole_command"] = round(hf[1]["seconds"] / kbft[1]["seconds"], 2)
        figures["kbft_vs_hf_training_examples_per_second"] = round(
            kbft[1]["train_examples_per_second"] / hf[1]["train_examples_per_second"], 2)
    else:
        figures["hf_transformers_torch"] = {
            "skipped": "no .bench-venvs/hf (run: bash benchmarks/setup_anchors.sh)"}
    if check:
        figures["precision_check"] = check
    write_figures(figures, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
