"""Anchor for bench_predict.py: Hugging Face transformers' text-classification pipeline on
PyTorch (CPU) over SST-2 test.tsv with the same MiniLM weights: examples/s at batch 64 and
at batch 1 with p50 latency, tokenisation included. Prints one JSON line."""

import argparse
import json
import statistics
import time

from _anchor_common import read_tsv


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dev", required=True)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--single", type=int, default=200)
    args = parser.parse_args()
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline
    texts, _ = read_tsv(args.dev)
    model = AutoModelForSequenceClassification.from_pretrained(args.model_dir, num_labels=2)
    classify = pipeline("text-classification", model=model,
                        tokenizer=AutoTokenizer.from_pretrained(args.model_dir), device=-1,
                        top_k=None)
    with torch.inference_mode():
        classify(texts[:64], batch_size=64)  # warm-up
        start = time.perf_counter()
        classify(texts, batch_size=64, truncation=True, max_length=128)
        batch64 = len(texts) / (time.perf_counter() - start)
        times = []
        for text in texts[:args.single]:
            start = time.perf_counter()
            classify([text], batch_size=1, truncation=True, max_length=128)
            times.append(time.perf_counter() - start)
    print(json.dumps({"anchor": "hf_transformers_pipeline_torch",
                      "torch_threads": torch.get_num_threads(),
                      "batch64_examples_per_second": round(batch64, 1),
                      "batch1_examples_per_second": round(len(times) / sum(times), 1),
                      "batch1_p50_ms": round(statistics.median(times) * 1000, 2)}))


if __name__ == "__main__":
    main()
