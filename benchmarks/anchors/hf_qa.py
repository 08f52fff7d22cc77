"""Anchor for bench_qa_speed.py: Hugging Face transformers on PyTorch, span QA as its
`run_qa.py` example trains it: windows of --seq-length tokens with a --doc-stride overlap,
every window padded to --seq-length (run_qa's default), start/end labels from the offset
mapping (windows without the answer point at [CLS]), AdamW + linear warmup/decay, one
epoch. Prints one JSON line: windows/s (first step excluded), windows, steps, final loss.
Runs in .bench-venvs/hf."""

import argparse
import json
import math
import random
import time

import numpy as np
import torch
from transformers import (AutoModelForQuestionAnswering, AutoTokenizer,
                          get_linear_schedule_with_warmup)

from _anchor_common import StepTimer, adamw_groups


def read_questions(path, articles):
    with open(path, encoding="utf-8") as f:
        data = json.load(f)["data"][:articles]
    rows = []
    for article in data:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                answer = qa["answers"][0]
                rows.append((qa["question"].lstrip(), paragraph["context"], answer["text"],
                             int(answer["answer_start"])))
    return rows


def windows(tokenizer, rows, seq_length, doc_stride):
    """run_qa.py's prepare_train_features: input tensors and start/end positions."""
    enc = tokenizer([r[0] for r in rows], [r[1] for r in rows], truncation="only_second",
                    max_length=seq_length, stride=doc_stride, return_overflowing_tokens=True,
                    return_offsets_mapping=True, padding="max_length")
    starts, ends = [], []
    for i, offsets in enumerate(enc["offset_mapping"]):
        row = rows[enc["overflow_to_sample_mapping"][i]]
        first_char, last_char = row[3], row[3] + len(row[2])
        sequence_ids = enc.sequence_ids(i)
        context = [j for j, s in enumerate(sequence_ids) if s == 1]
        lo, hi = context[0], context[-1]
        if not (offsets[lo][0] <= first_char and offsets[hi][1] >= last_char):
            starts.append(0)
            ends.append(0)
            continue
        while lo <= hi and offsets[lo][0] <= first_char:
            lo += 1
        while hi >= context[0] and offsets[hi][1] >= last_char:
            hi -= 1
        starts.append(lo - 1)
        ends.append(hi + 1)
    return enc, np.array(starts), np.array(ends)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="SQuAD v1.1 JSON (XQuAD English)")
    parser.add_argument("--articles", type=int, default=8, help="the first N articles")
    parser.add_argument("--model-dir", required=True, help="Hugging Face checkpoint folder")
    parser.add_argument("--seq-length", type=int, default=384)
    parser.add_argument("--doc-stride", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    rows = read_questions(args.data, args.articles)
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    enc, starts, ends = windows(tokenizer, rows, args.seq_length, args.doc_stride)
    model = AutoModelForQuestionAnswering.from_pretrained(args.model_dir)
    n = len(starts)
    steps = math.ceil(n / args.batch_size)
    if args.max_steps:
        steps = min(steps, args.max_steps)
    groups = adamw_groups(model)
    optimizer = torch.optim.AdamW(groups, lr=args.learning_rate)
    schedule = get_linear_schedule_with_warmup(optimizer, max(steps // 10, 1), steps)
    order = np.random.RandomState(args.seed).permutation(n)
    columns = {k: torch.tensor(enc[k]) for k in ("input_ids", "attention_mask",
                                                  "token_type_ids")}
    timer = StepTimer(time.perf_counter)
    model.train()
    loss = None
    for step in range(steps):
        idx = torch.tensor(order[step * args.batch_size:(step + 1) * args.batch_size])
        out = model(**{k: v[idx] for k, v in columns.items()},
                    start_positions=torch.tensor(starts[idx.numpy()]),
                    end_positions=torch.tensor(ends[idx.numpy()]))
        out.loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        loss = float(out.loss)
        timer.step_done(len(idx))
    print(json.dumps({"anchor": "hf_transformers_torch_qa", "questions": len(rows),
                      "windows": n, "steps": steps,
                      "windows_per_second": round(timer.examples_per_second(), 2),
                      "final_loss": round(loss, 4), "torch": torch.__version__,
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
