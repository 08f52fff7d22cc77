"""Anchor: Hugging Face transformers on PyTorch, BertForSequenceClassification, per-batch
padding, AdamW + linear warmup/decay, as its users would run it. Runs in .bench-venvs/hf."""

import math
import random
import time

import numpy as np
import torch
from transformers import (AutoTokenizer, BertForSequenceClassification,
                          get_linear_schedule_with_warmup)

from _anchor_common import StepTimer, adamw_groups, parse_args, read_tsv, report


def main():
    args = parse_args(__doc__.splitlines()[0])
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    texts, labels = read_tsv(args.train, args.examples)
    dev_texts, dev_labels = read_tsv(args.dev)
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    model = BertForSequenceClassification.from_pretrained(args.model_dir, num_labels=2)
    steps = math.ceil(len(texts) / args.batch_size)
    groups = adamw_groups(model)
    optimizer = torch.optim.AdamW(groups, lr=args.learning_rate)
    schedule = get_linear_schedule_with_warmup(optimizer, steps // 10, steps)
    order = np.random.RandomState(args.seed).permutation(len(texts))
    timer = StepTimer(time.perf_counter)
    model.train()
    for step in range(steps):
        idx = order[step * args.batch_size:(step + 1) * args.batch_size]
        batch = tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                          max_length=128, return_tensors="pt")
        out = model(**batch, labels=torch.tensor([labels[i] for i in idx]))
        out.loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        timer.step_done(len(idx))
    examples_per_second = timer.examples_per_second()
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(dev_texts), 64):
            batch = tokenizer(dev_texts[i:i + 64], padding=True, truncation=True,
                              max_length=128, return_tensors="pt")
            predictions = model(**batch).logits.argmax(-1).numpy()
            correct += int((predictions == np.array(dev_labels[i:i + 64])).sum())
    if args.save:  # the fine-tuned model written out, as a user's script ends
        model.save_pretrained(args.save)
        tokenizer.save_pretrained(args.save)
    report("hf_transformers_torch", examples_per_second, correct / len(dev_texts), steps,
           torch=torch.__version__, threads=torch.get_num_threads())


if __name__ == "__main__":
    main()
