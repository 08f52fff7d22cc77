"""Task-adaptive pre-training (Gururangan et al. 2020): masked-LM training on a training
set's own texts, then fine-tuning on 1,000 of its labelled examples, against fine-tuning
alone, over 3 seeds (mean ± std of the test metric). Prints a table and writes JSON.

For each dataset: `kbft pretrain` (the Python `pretrain`) on the unlabelled texts of the
training file (10% held out: the MLM loss per epoch shows whether in-domain loss falls),
then the same fine-tuning recipe (the first 1,000 of a seeded shuffle of the training
rows, 3 epochs, batch 16, lr 1e-4, mean pooling, seq 64; nothing chosen on the test data)
from the pretrained minilm-l6 and from the further pre-trained encoder, seeds 0, 1, 2.

    .venv/bin/python benchmarks/bench_tapt.py [--datasets cola trec sst2] [--pretrain-epochs 5]
"""

import argparse
import json
import os
import platform
import sys
import time

from _common import write_figures

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DATA = os.path.join(ROOT, "..", "shared", "data")
# dataset -> (training file, test file, named reader (None: a TSV with a header), metric,
#             at most this many unlabelled training texts)
DATASETS = {
    "cola": ("cola/in_domain_train.tsv", "cola/in_domain_dev.tsv", "cola", "mcc", None),
    "trec": ("trec/TREC.train", "trec/TREC.test", "trec", "accuracy", None),
    "sst2": ("sst2/train.tsv", "sst2/test.tsv", None, "accuracy", 20000),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["cola", "trec"], choices=DATASETS)
    parser.add_argument("--data", default=DATA)
    parser.add_argument("--labelled", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--pretrain-epochs", type=int, default=5)
    parser.add_argument("--pretrain-learning-rate", type=float, default=1e-4)
    parser.add_argument("--json", default=os.path.join(HERE, "results", "tapt.json"))
    args = parser.parse_args(argv)

    from keras_bert_ft import pretrain
    from keras_bert_ft.config import FineTuneConfig
    from keras_bert_ft.data import examples as data_lib
    from keras_bert_ft.data import readers
    from keras_bert_ft.research.seeds import run_seeds

    figures = {"date": time.strftime("%Y-%m-%d"),
               "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, "
                          f"{platform.python_version()}",
               "std": "sample standard deviation (ddof 1)", "datasets": {}}
    for name in args.datasets:
        train_file, test_file, reader, metric, max_texts = DATASETS[name]
        read = lambda f: (readers.read_named(reader, os.path.join(args.data, f))  # noqa: E731
                          if reader else data_lib.read_table(os.path.join(args.data, f)))
        train, test = read(train_file), read(test_file)
        texts = [str(t) for t in train["sentence"]][:max_texts]
        labelled = train.sample(n=args.labelled, random_state=0)
        out = os.path.join(ROOT, "runs", f"tapt_{name}")
        start = time.perf_counter()
        mlm = pretrain(texts, encoder="minilm-l6", validation_split=0.1, seq_length=64,
                       epochs=args.pretrain_epochs, batch_size=32,
                       learning_rate=args.pretrain_learning_rate, output_dir=out,
                       overwrite=True, verbose=2)
        entry = {
            "unlabelled_texts": len(texts), "labelled": args.labelled, "metric": metric,
            "pretrain": {"epochs": args.pretrain_epochs,
                         "learning_rate": args.pretrain_learning_rate,
                         "held_out_mlm_loss_per_epoch": [round(x, 4) for x in
                                                         mlm.history["val_mlm_loss"]],
                         "held_out_perplexity_last": round(mlm.metrics["perplexity"], 2),
                         "mlm_head": mlm.metrics.get("mlm_head"),
                         "seconds": round(time.perf_counter() - start, 1)},
            "arms": {}}
        config = FineTuneConfig(epochs=3, batch_size=16, learning_rate=1e-4, pooling="mean",
                                seq_length=64, verbose=0, text_column="sentence",
                                label_column="label")
        for arm, encoder in (("fine_tune_only", "minilm-l6"),
                             ("tapt_then_fine_tune", os.path.join(out, "encoder"))):
            started = time.perf_counter()
            res = run_seeds(labelled, test, config, seeds=args.seeds, metric=metric,
                            encoder=encoder)
            entry["arms"][arm] = {
                "mean": round(res.summary[metric]["mean"], 4),
                "std": round(res.summary[metric]["std"], 4),
                "per_seed": {str(r["seed"]): round(r[metric], 4) for r in res.runs},
                "seconds": round(time.perf_counter() - started, 1)}
        arms = entry["arms"]
        entry["gain_points"] = round(100 * (arms["tapt_then_fine_tune"]["mean"]
                                            - arms["fine_tune_only"]["mean"]), 2)
        figures["datasets"][name] = entry
        print(json.dumps({name: entry}, indent=2), flush=True)
    write_figures(figures, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
