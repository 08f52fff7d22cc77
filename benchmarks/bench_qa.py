"""Span QA on XQuAD English split by article: exact match and F1 on the held-out articles.

Fine-tunes the embedded minilm-l6 (all layers) on the questions of the first 38 articles
of `xquad.en.json` (file order) and scores the served answers to the questions of the
last 10 with the official SQuAD v1.1 exact match and F1. Prints and writes JSON.

    .venv/bin/python benchmarks/bench_qa.py [--seq-length 384] [--doc-stride 128]
        [--epochs 8] [--learning-rate 1e-4] [--batch-size 16] [--freeze-embeddings]
        [--json PATH]
"""

import argparse
import os
import platform
import sys
import time

from _common import limit_threads, peak_mib, write_figures

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "..", "shared", "data", "xquad", "xquad.en.json")


def HeldOutScores(config, examples):
    """A callback scoring the held-out questions after each epoch (exact match, F1)."""
    from keras_bert_ft._keras import keras
    from keras_bert_ft.tasks.qa import QAServing, evaluate
    from keras_bert_ft.training.build import build_preprocessor

    class _Scores(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.scores = []

        def on_epoch_end(self, epoch, logs=None):
            preprocessor = build_preprocessor(self.model.encoder, config, needs_vocab=True)
            m = evaluate(QAServing(self.model, preprocessor, config), examples)
            self.scores.append({"epoch": epoch + 1, "exact_match": round(m["exact_match"], 4),
                                "f1": round(m["f1"], 4)})
            print(f"held-out after epoch {epoch + 1}: EM {m['exact_match']:.4f} "
                  f"F1 {m['f1']:.4f}", flush=True)

    return _Scores()


def xquad_split(args):
    """(train, held-out) questions of `args.data` split at `args.train_articles`, or None
    (with the reason printed) when the file is missing."""
    if not os.path.isfile(args.data):
        print(f"XQuAD not found at {args.data}: pass --data path/to/xquad.en.json")
        return None
    from keras_bert_ft.tasks.qa import split_articles
    return split_articles(args.data, args.train_articles)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DATA, help="SQuAD v1.1 JSON (default: XQuAD English)")
    parser.add_argument("--train-articles", type=int, default=38)
    parser.add_argument("--encoder", default="minilm-l6")
    parser.add_argument("--seq-length", type=int, default=384)
    parser.add_argument("--doc-stride", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--dropout", type=float, default=0.0,
                        help="dropout before the span logits (the recorded runs had none)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--warmup-ratio", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cloze", type=int, default=0, metavar="N",
                        help="add up to N cloze questions per training context "
                             "(tasks.qa.cloze_questions; 0: none)")
    parser.add_argument("--cloze-per-sentence", type=int, default=1, metavar="K",
                        help="cloze questions per sentence, each blanking another span")
    parser.add_argument("--trainable-layers", default="all",
                        help='"all" or the number of top layers to train')
    parser.add_argument("--freeze-embeddings", action="store_true",
                        help="train the transformer layers but not the embeddings")
    parser.add_argument("--encoder-impl", default="auto", choices=["auto", "native", "hub"])
    parser.add_argument("--mixed-precision", default=None,
                        choices=["mixed_bfloat16", "mixed_float16"])
    parser.add_argument("--encoder-learning-rate", type=float, default=None)
    parser.add_argument("--layer-decay", type=float, default=1.0)
    parser.add_argument("--eval-every-epoch", action="store_true",
                        help="also score the held-out questions after every epoch (the "
                             "final figures stay those of the last epoch)")
    parser.add_argument("--threads", type=int, default=None,
                        help="TensorFlow op threads (default: all cores)")
    parser.add_argument("--output", default=None, help="also save the run (metrics, export) here")
    parser.add_argument("--save-weights", default=None, metavar="PATH",
                        help="also save the span model's weights here (an .h5 file), as "
                             "bench_qa_ensemble.py reads them")
    parser.add_argument("--json", default=os.path.join(HERE, "results", "qa.json"))
    args = parser.parse_args(argv)
    limit_threads(args.threads)
    split = xquad_split(args)
    if split is None:
        return 2
    train, held_out = split

    from keras_bert_ft.config import FineTuneConfig
    from keras_bert_ft.tasks.qa import fine_tune_qa

    settings = dict(encoder=args.encoder, seq_length=args.seq_length,
                    doc_stride=args.doc_stride, epochs=args.epochs,
                    learning_rate=args.learning_rate, batch_size=args.batch_size,
                    warmup_ratio=args.warmup_ratio, seed=args.seed,
                    trainable_layers=(args.trainable_layers if args.trainable_layers == "all"
                                      else int(args.trainable_layers)),
                    train_embeddings=False if args.freeze_embeddings else None,
                    encoder_impl=args.encoder_impl, mixed_precision=args.mixed_precision,
                    encoder_learning_rate=args.encoder_learning_rate,
                    layer_decay=args.layer_decay, cloze=args.cloze,
                    cloze_per_sentence=args.cloze_per_sentence, dropout=args.dropout)
    callbacks = []
    if args.eval_every_epoch:
        callbacks.append(HeldOutScores(FineTuneConfig(task="qa", **settings), held_out))
    start = time.time()
    result = fine_tune_qa(train, held_out, verbose=2, callbacks=callbacks, **settings)
    wall = time.time() - start
    if args.output:
        result.save(args.output)
    if args.save_weights:
        result.model.save_weights(args.save_weights)
    m = result.metrics
    figures = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.python_version()}",
        "data": f"XQuAD en, first {args.train_articles} articles train, the rest held out",
        "settings": settings,
        "train_questions": m["train_examples"],
        "cloze_questions": m["cloze_questions"],
        "train_windows": m["train_windows"],
        "train_skipped": m["train_skipped"],
        "held_out_questions": m["eval_questions"],
        "exact_match": round(m["exact_match"], 4),
        "f1": round(m["f1"], 4),
        "train_loss_per_epoch": [round(x, 4) for x in result.history["loss"]],
        **({"held_out_per_epoch": callbacks[0].scores} if callbacks else {}),
        "train_windows_per_second": m["train_examples_per_second"],
        "peak_memory_mib": round(peak_mib(), 1),
        "wall_seconds": round(wall, 1),
    }
    write_figures(figures, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
