"""Span QA at sequence length 384: training windows/s of kbft against Hugging Face
transformers on PyTorch (its run_qa.py recipe), same questions, same windows, one run.

Both train one epoch on the questions of the first --articles XQuAD English articles
(windows of 384 tokens, stride 128, batch 16, lr 1e-4, the same MiniLM weights), each
with its defaults otherwise: kbft with `--mixed-precision auto` and length-bucketed
batches, Hugging Face with every window padded to 384 as run_qa.py does. Windows/s
exclude the first step (tracing / warm-up) on both sides.

    bash benchmarks/setup_anchors.sh     # .bench-venvs/hf (once)
    .venv/bin/python benchmarks/bench_qa_speed.py [--articles 8] [--json PATH]
"""

import argparse
import os
import platform
import sys
import time

from _common import run_hf_anchor, write_figures

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DATA = os.path.join(ROOT, "..", "shared", "data", "xquad", "xquad.en.json")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DATA)
    parser.add_argument("--articles", type=int, default=8)
    parser.add_argument("--seq-length", type=int, default=384)
    parser.add_argument("--doc-stride", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--padding", default="auto", help="kbft's --padding")
    parser.add_argument("--json", default=os.path.join(HERE, "results", "qa_speed.json"))
    args = parser.parse_args(argv)
    if not os.path.isfile(args.data):
        print(f"XQuAD not found at {args.data}: pass --data path/to/xquad.en.json")
        return 2

    from keras_bert_ft.encoders import presets
    from keras_bert_ft.tasks.qa import read_squad, squad_examples, fine_tune_qa

    questions = squad_examples(read_squad(args.data, "data")[:args.articles])
    start = time.time()
    result = fine_tune_qa(questions, None, epochs=1, seq_length=args.seq_length,
                          doc_stride=args.doc_stride, batch_size=args.batch_size,
                          learning_rate=args.learning_rate, padding=args.padding,
                          verbose=2)
    m = result.metrics
    kbft = {"questions": m["train_examples"], "windows": m["train_windows"],
            "windows_per_second": m["train_examples_per_second"],
            "final_loss": round(result.history["loss"][-1], 4),
            "mixed_precision": result.config.mixed_precision,
            "padding": args.padding, "wall_seconds": round(time.time() - start, 1)}

    hf = run_hf_anchor(
        "hf_qa.py", ["--data", args.data, "--articles", str(args.articles),
                     "--model-dir", presets._source_dir("minilm-l6"),
                     "--seq-length", str(args.seq_length), "--doc-stride", str(args.doc_stride),
                     "--batch-size", str(args.batch_size),
                     "--learning-rate", str(args.learning_rate)],
        cwd=os.path.join(HERE, "anchors"))
    figures = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.python_version()}",
        "data": f"XQuAD en, questions of the first {args.articles} articles, 1 epoch",
        "settings": {"seq_length": args.seq_length, "doc_stride": args.doc_stride,
                     "batch_size": args.batch_size, "learning_rate": args.learning_rate},
        "kbft": kbft, "hf_torch": hf,
    }
    if "windows_per_second" in hf:
        figures["kbft_vs_hf"] = round(kbft["windows_per_second"] / hf["windows_per_second"], 2)
    write_figures(figures, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
