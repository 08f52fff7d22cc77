"""Batch inference: `kbft predict` on SST-2 test.tsv against Hugging Face transformers'
pipeline on PyTorch (same MiniLM weights), in one run.

kbft: `predict_file` (what `kbft predict --input test.tsv --output preds.csv` runs: read,
length-sorted batches of 64, CSV written) on a fine-tuned run (default: the demo's,
`runs/bench_demo_seed0`), and one sentence at a time through `result.predict` (p50
latency). Hugging Face: `pipeline("text-classification")` at batch 64 and batch 1
(benchmarks/anchors/hf_predict.py in .bench-venvs/hf: bash benchmarks/setup_anchors.sh).

    .venv/bin/python benchmarks/bench_predict.py [--run RUN] [--json PATH]
"""

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

from _common import run_hf_anchor, write_figures

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/bench_demo_seed0")
    parser.add_argument("--data", default="../shared/data/sst2")
    parser.add_argument("--single", type=int, default=200, help="sentences timed at batch 1")
    parser.add_argument("--json", default="benchmarks/results/predict.json")
    args = parser.parse_args(argv)
    test = os.path.join(args.data, "test.tsv")

    from keras_bert_ft.encoders import presets
    from keras_bert_ft.export.predictions import predict_file
    from keras_bert_ft.export.restore import restore_run
    import pandas as pd

    texts = list(pd.read_csv(test, sep="\t", quoting=3, keep_default_na=False,
                             dtype=str)["sentence"])
    result = restore_run(args.run)
    with tempfile.TemporaryDirectory() as tmp:
        predict_file(result, test, os.path.join(tmp, "warm.csv"),
                     text_column="sentence")  # traces the serving function once
        start = time.perf_counter()
        predict_file(result, test, os.path.join(tmp, "preds.csv"), text_column="sentence")
        batch64 = len(texts) / (time.perf_counter() - start)
    result.predict([texts[0]])
    times = []
    for text in texts[:args.single]:
        start = time.perf_counter()
        result.predict([text])
        times.append(time.perf_counter() - start)
    kbft = {"batch64_examples_per_second": round(batch64, 1),
            "batch1_examples_per_second": round(len(times) / sum(times), 1),
            "batch1_p50_ms": round(statistics.median(times) * 1000, 2)}

    hf = run_hf_anchor("hf_predict.py", ["--dev", test, "--model-dir",
                                         presets._source_dir("minilm-l6"),
                                         "--single", str(args.single)])
    figures = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.python_version()}",
        "run": args.run, "sentences": len(texts), "kbft_predict": kbft, "hf_pipeline": hf,
    }
    if "batch64_examples_per_second" in hf:
        figures["kbft_vs_hf_batch64"] = round(kbft["batch64_examples_per_second"]
                                              / hf["batch64_examples_per_second"], 2)
        figures["kbft_vs_hf_batch1_p50"] = round(hf["batch1_p50_ms"] / kbft["batch1_p50_ms"], 2)
    write_figures(figures, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
