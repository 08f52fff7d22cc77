"""Write the XQuAD dev-split windows, a reference encoder output and fp16 MiniLM weights
for `replica.py` (a PyTorch copy of bench_qa's recipe, for a recipe search on a GPU).

The split never touches the 10 held-out articles: of the 38 training articles, the first
30 train and the last 8 are the dev split. Windows, labels and cloze questions come from
keras_bert_ft itself (`featurize`, `make_windows`, `cloze_questions`), so the replica
trains on exactly what `fine_tune_qa` would feed the TF model.

    .venv/bin/python benchmarks/qa_recipe_search/export_windows.py [--out .gpu] [--seeds 12]
"""

import argparse
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # benchmarks/, for bench_qa's DATA

SEQ_LENGTH, DOC_STRIDE, MAX_QUERY = 384, 128, 64
CLOZE = {"c8": (8, 1), "c16x2": (16, 2)}  # name: (per context, per sentence)


def arrays(features, **extra):
    out = {"ids": features["input_word_ids"].astype(np.int32),
           "types": features["input_type_ids"].astype(np.int8),
           "mask": features["input_mask"].astype(np.int8)}
    out.update(extra)
    return out


def main(argv=None) -> int:
    from bench_qa import DATA
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DATA)
    parser.add_argument("--out", default=os.path.join(HERE, "..", "..", ".gpu"))
    parser.add_argument("--train-articles", type=int, default=38)
    parser.add_argument("--dev-articles", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=12, help="cloze sets for seeds 0..N-1")
    args = parser.parse_args(argv)

    import tensorflow as tf
    from safetensors.numpy import load_file
    from keras_bert_ft.encoders import presets
    from keras_bert_ft.data.preprocessing import Preprocessor
    from keras_bert_ft.config import FineTuneConfig
    from keras_bert_ft.data.preprocessing import INPUT_KEYS
    from keras_bert_ft.encoders.native import make_encoder
    from keras_bert_ft.tasks.base import pad_features
    from keras_bert_ft.tasks.qa import cloze_questions, featurize, make_windows, split_articles

    os.makedirs(args.out, exist_ok=True)
    save = lambda name, **a: np.savez_compressed(os.path.join(args.out, name), **a)
    from keras_bert_ft.training.build import build_preprocessor
    config = FineTuneConfig(task="qa", seq_length=SEQ_LENGTH, doc_stride=DOC_STRIDE,
                            max_query_length=MAX_QUERY)
    encoder = make_encoder(config.encoder, config.encoder_impl)
    preprocessor = build_preprocessor(encoder, config, needs_vocab=True)

    train, _ = split_articles(args.data, args.train_articles)  # the held-out 10 stay unread
    titles = list(dict.fromkeys(e.title for e in train))
    cut = len(titles) - args.dev_articles
    fit = [e for e in train if e.title in titles[:cut]]
    dev = [e for e in train if e.title in titles[cut:]]
    print(f"{cut} articles ({len(fit)} questions) train, {args.dev_articles} "
          f"({len(dev)}) dev")

    features, labels, _ = featurize(preprocessor, fit, config)
    save("train_real.npz", **arrays(features, labels=labels.astype(np.int16)))
    for seed in range(args.seeds):
        for name, (per_context, per_sentence) in CLOZE.items():
            questions = cloze_questions(fit, per_context, seed=seed, per_sentence=per_sentence)
            features, labels, _ = featurize(preprocessor, questions, config)
            save(f"train_{name}_s{seed}.npz", **arrays(features, labels=labels.astype(np.int16)))

    windows = make_windows(preprocessor, tf.constant([e.question for e in dev]),
                           tf.constant([e.context for e in dev]), seq_length=SEQ_LENGTH,
                           doc_stride=DOC_STRIDE, max_query_length=MAX_QUERY)
    features = pad_features(windows["features"], SEQ_LENGTH)
    save("dev.npz", **arrays(features, example=windows["example"].numpy().astype(np.int32),
                             starts=windows["starts"].numpy().astype(np.int32),
                             ends=windows["ends"].numpy().astype(np.int32),
                             maxctx=windows["max_context"].numpy()))
    with open(os.path.join(args.out, "dev.json"), "w") as f:
        json.dump([{"context": e.context, "answers": e.answers} for e in dev], f)

    # The TF encoder's output on 4 dev windows: replica.py --sanity compares against it.
    first = {k: tf.constant(v[:4].astype(np.int32)) for k, v in features.items()
             if k in INPUT_KEYS}
    save("ref.npz", seq=encoder(first, training=False)["sequence_output"].numpy())
    weights = load_file(os.path.join(presets._source_dir("minilm-l6"), "model.safetensors"))
    np.savez(os.path.join(args.out, "minilm_fp16.npz"),  # fp16: the device carry is 64 MiB
             **{k: v.astype(np.float16) for k, v in weights.items() if k != "embeddings.position_ids"})
    print(f"wrote {args.out}: {len(dev)} dev questions, {len(windows['example'])} dev windows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
