"""ONNX export against the SavedModel on SST-2 test.tsv: parity and speed, in one run.

Exports a fine-tuned run (default: the demo's, `runs/bench_demo_seed0` from
bench_demo.py) with `kbft export --format onnx`'s code, then on the 872 test sentences:
the largest absolute difference of probabilities between ONNX Runtime (through the
shipped NumPy runner) and the SavedModel's `serving_default`, and examples/s of both at
batch 64 and at batch 1 (with p50 latency), tokenisation included on both sides.

    .venv/bin/python benchmarks/bench_onnx.py [--run RUN] [--json PATH]
"""

import argparse
import os
import platform
import sys
import time

from _common import write_figures


def timed(fn, batches):
    """(examples/s, p50 seconds per call) of fn over the batches, after one warm-up call."""
    import numpy as np
    fn(batches[0])
    times, count = [], 0
    for batch in batches:
        start = time.perf_counter()
        fn(batch)
        times.append(time.perf_counter() - start)
        count += len(batch)
    return count / sum(times), float(np.median(times))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/bench_demo_seed0")
    parser.add_argument("--data", default="../shared/data/sst2")
    parser.add_argument("--output", default="runs/bench_onnx")
    parser.add_argument("--single", type=int, default=200, help="sentences timed at batch 1")
    parser.add_argument("--json", default="benchmarks/results/onnx.json")
    args = parser.parse_args(argv)

    import numpy as np
    import pandas as pd
    import tensorflow as tf
    from keras_bert_ft.export import onnx as onnx_export
    from keras_bert_ft.export.onnx_runner import OnnxModel
    from keras_bert_ft.export.restore import restore_run
    from keras_bert_ft.export.saved_model import load_export

    texts = list(pd.read_csv(os.path.join(args.data, "test.tsv"), sep="\t", quoting=3,
                             keep_default_na=False, dtype=str)["sentence"])
    result = restore_run(args.run)
    start = time.time()
    folder = onnx_export.export_onnx(result, args.output)
    export_seconds = time.time() - start
    onnx_model = OnnxModel(folder)
    serve = load_export(os.path.join(args.run, "export")).signatures["serving_default"]

    def tf_run(batch):
        return serve(text=tf.constant(batch))["probabilities"].numpy()

    def ort_run(batch):
        return onnx_model.predict(batch, batch_size=len(batch))["probabilities"]

    big = [texts[i:i + 64] for i in range(0, len(texts), 64)]
    want = np.concatenate([tf_run(b) for b in big])
    got = np.concatenate([ort_run(b) for b in big])
    # what the ONNX model was converted from and checked against: the same graph, in
    # float32 for a run trained under mixed precision (the export computes in bfloat16)
    float32 = onnx_export.float32_result(result).serving.serve_fn
    want32 = np.concatenate([float32(tf.constant(b))["probabilities"].numpy() for b in big])
    single = [[t] for t in texts[:args.single]]
    speed = {}
    for name, fn in (("savedmodel", tf_run), ("onnxruntime", ort_run)):
        per_s64, _ = timed(fn, big)
        per_s1, p50 = timed(fn, single)
        speed[name] = {"batch64_examples_per_second": round(per_s64, 1),
                       "batch1_examples_per_second": round(per_s1, 1),
                       "batch1_p50_ms": round(p50 * 1000, 2)}
    figures = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.python_version()}",
        "run": args.run, "sentences": len(texts),
        "max_abs_probability_difference": float(np.max(np.abs(got - want))),
        "same_labels": int((got.argmax(1) == want.argmax(1)).sum()),
        "precision": max((layer.dtype_policy.name for layer in result.model.layers),
                         key=lambda name: "mixed" in name),
        "max_abs_probability_difference_float32_graph": float(np.max(np.abs(got - want32))),
        "onnx_export_seconds": round(export_seconds, 1),
        "speed": speed,
        "onnx_vs_savedmodel_batch64": round(speed["onnxruntime"]["batch64_examples_per_second"]
                                            / speed["savedmodel"]["batch64_examples_per_second"], 2),
        "onnx_vs_savedmodel_batch1": round(speed["onnxruntime"]["batch1_examples_per_second"]
                                           / speed["savedmodel"]["batch1_examples_per_second"], 2),
    }
    write_figures(figures, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
