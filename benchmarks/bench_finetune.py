"""Fine-tuning speed on SST-2 with the embedded MiniLM: keras_bert_ft against the TF
tutorial recipe, frozen layers against full training, MFU, tokeniser and export speed.

Everything runs in this one process on the same sentences, model shape and batch, and
the ratios compare figures measured in the same run. Prints a table and writes JSON.

    .venv/bin/python benchmarks/bench_finetune.py [--examples 1600] [--json PATH]

Optional: `pip install tokenizers` (benchmarks/setup_bench.sh) adds Hugging Face's
batched tokeniser as the tokenisation anchor.
"""

import argparse
import os
import platform
import sys
import time

from _common import peak_mib, write_figures

import numpy as np

BATCH = 32


def matmul_gflops(size: int = 2048, repeats: int = 10) -> float:
    """The machine's dense fp32 matmul rate, the denominator of MFU."""
    import tensorflow as tf
    a = tf.random.normal([size, size])
    b = tf.random.normal([size, size])
    matmul = tf.function(lambda: tf.matmul(a, b))
    matmul().numpy()
    start = time.perf_counter()
    for _ in range(repeats):
        matmul().numpy()
    return 2 * size ** 3 * repeats / (time.perf_counter() - start) / 1e9


def run_kbft(train, dev, **overrides):
    from keras_bert_ft.training import fine_tune
    result = fine_tune(train, dev, encoder="minilm-l6", epochs=1, batch_size=BATCH,
                       verbose=0, **overrides)
    return result, {"examples_per_second": result.metrics["train_examples_per_second"],
                    "dev_accuracy": round(result.metrics["accuracy"], 4)}


def run_tutorial(train, dev, seq_length=128):
    """tensorflow.org's 'Classify text with BERT' recipe: hub.KerasLayer(trainable=True),
    preprocessing inside the model padded to 128, Dropout + Dense, AdamW with warmup."""
    import tensorflow as tf
    import tensorflow_hub as hub
    from official.nlp import optimization
    from keras_bert_ft import presets
    from keras_bert_ft._keras import keras
    from keras_bert_ft.training import ThroughputCallback

    text = keras.layers.Input(shape=(), dtype=tf.string, name="text")
    pre = hub.load(presets.resolve_preprocessor("minilm-l6"))
    tokens = hub.KerasLayer(pre.tokenize)(text)
    packed = hub.KerasLayer(pre.bert_pack_inputs,
                            arguments=dict(seq_length=seq_length))([tokens])
    outputs = hub.KerasLayer(presets.resolve_encoder("minilm-l6"), trainable=True)(packed)
    x = keras.layers.Dropout(0.1)(outputs["pooled_output"])
    model = keras.Model(text, keras.layers.Dense(2)(x))
    steps = int(np.ceil(len(train) / BATCH))
    model.compile(optimizer=optimization.create_optimizer(5e-5, steps, steps // 10),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    ds = tf.data.Dataset.from_tensor_slices(
        (train["sentence"].tolist(), train["label"].astype(int).tolist())).shuffle(
            len(train), seed=0).batch(BATCH)
    timer = ThroughputCallback(BATCH)
    model.fit(ds, epochs=1, callbacks=[timer], verbose=0)
    dev_ds = tf.data.Dataset.from_tensor_slices(dev["sentence"].tolist()).batch(64)
    predictions = model.predict(dev_ds, verbose=0).argmax(-1)
    accuracy = float(np.mean(predictions == dev["label"].astype(int).to_numpy()))
    return {"examples_per_second": round(timer.examples_per_second, 2),
            "dev_accuracy": round(accuracy, 4)}


def useful_flops_per_example(preprocessor, texts, num_layers=6, hidden=384, inner=1536):
    """Training FLOPs of the transformer layers per example: 6 x matmul parameters x real
    tokens (forward 2, backward 4), plus attention scores (4 x tokens^2 x hidden per layer,
    times 3 for training). Padding is not useful work and is not counted."""
    import tensorflow as tf
    lengths = []
    for start in range(0, len(texts), 1024):
        mask = preprocessor(tf.constant(texts[start:start + 1024]))["input_mask"]
        lengths.extend(mask.numpy().sum(1).tolist())
    lengths = np.array(lengths, dtype=float)
    params = num_layers * (4 * hidden * hidden + 2 * hidden * inner)
    flops = 6 * params * lengths + 3 * num_layers * 4 * lengths ** 2 * hidden
    return float(flops.mean()), float(lengths.mean())


def tokenizer_throughput(preprocessor, texts, vocab_file):
    """Sentences/s to tokenise + pack to 128: tensorflow-text vs Hugging Face tokenizers."""
    import tensorflow as tf
    pack = tf.function(lambda t: preprocessor(t, seq_length=128))
    batches = [tf.constant(texts[i:i + 1024]) for i in range(0, len(texts), 1024)]
    pack(batches[0])
    start = time.perf_counter()
    for batch in batches:
        pack(batch)["input_word_ids"].numpy()
    figures = {"tf_text_sentences_per_second": round(len(texts) / (time.perf_counter() - start))}
    try:
        from tokenizers import BertWordPieceTokenizer
    except ImportError:
        figures["hf_tokenizers"] = "not installed (pip install tokenizers)"
        return figures
    hf = BertWordPieceTokenizer(vocab_file, lowercase=True)
    hf.enable_truncation(128)
    hf.enable_padding(length=128)
    hf.encode_batch(texts[:1024])
    start = time.perf_counter()
    for i in range(0, len(texts), 1024):
        np.array([e.ids for e in hf.encode_batch(texts[i:i + 1024])])
    figures["hf_tokenizers_sentences_per_second"] = round(len(texts) / (time.perf_counter() - start))
    figures["ratio_tf_text_over_hf"] = round(
        figures["tf_text_sentences_per_second"] / figures["hf_tokenizers_sentences_per_second"], 3)
    return figures


def export_latency(result, folder):
    import tensorflow as tf
    from keras_bert_ft.export import load_export
    serve = load_export(result.export(folder)).signatures["serving_default"]
    one = tf.constant(["a gorgeous, witty and deeply moving film ."])
    for _ in range(5):
        serve(text=one)
    times = []
    for _ in range(50):
        start = time.perf_counter()
        serve(text=one)["probabilities"].numpy()
        times.append(time.perf_counter() - start)
    batch = tf.constant(["the plot is a mess and the jokes fall flat ."] * 64)
    serve(text=batch)
    start = time.perf_counter()
    for _ in range(5):
        serve(text=batch)["probabilities"].numpy()
    return {"batch1_p50_ms": round(1000 * float(np.percentile(times, 50)), 2),
            "batch1_p95_ms": round(1000 * float(np.percentile(times, 95)), 2),
            "batch64_sentences_per_second": round(64 * 5 / (time.perf_counter() - start), 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=1600, help="training sentences")
    parser.add_argument("--data", default="../shared/data/sst2")
    parser.add_argument("--json", default="benchmarks/results/finetune.json")
    parser.add_argument("--skip-tutorial", action="store_true")
    args = parser.parse_args(argv)

    from keras_bert_ft import data as data_lib, presets
    from keras_bert_ft.preprocessing import Preprocessor

    train = data_lib.read_table(os.path.join(args.data, "train.tsv")).head(args.examples)
    dev = data_lib.read_table(os.path.join(args.data, "test.tsv"))
    train["label"] = train["label"].astype(int)
    dev["label"] = dev["label"].astype(int)
    figures = {"date": time.strftime("%Y-%m-%d"),
               "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
               "data": f"SST-2 train.tsv first {len(train)}, dev = test.tsv ({len(dev)})",
               "batch_size": BATCH, "epochs": 1,
               "matmul_fp32_gflops": round(matmul_gflops(), 1)}
    runs = {}
    result, runs["kbft_defaults"] = run_kbft(train, dev)
    _, runs["kbft_top2"] = run_kbft(train, dev, trainable_layers=2)
    _, runs["kbft_all_layers_frozen_embeddings"] = run_kbft(train, dev, train_embeddings=False)
    _, runs["kbft_all_dynamic_padding"] = run_kbft(train, dev, padding="dynamic")
    if not args.skip_tutorial:
        runs["tf_tutorial_pad128"] = run_tutorial(train, dev)
    figures["runs"] = runs
    base = runs["kbft_defaults"]["examples_per_second"]
    figures["ratios"] = {
        "top2_over_all": round(runs["kbft_top2"]["examples_per_second"] / base, 2),
        "bucketed_over_dynamic": round(base / runs["kbft_all_dynamic_padding"]["examples_per_second"], 2)}
    if "tf_tutorial_pad128" in runs:
        figures["ratios"]["kbft_over_tf_tutorial"] = round(
            base / runs["tf_tutorial_pad128"]["examples_per_second"], 2)
    vocab = os.path.join(presets.resolve_preprocessor("minilm-l6"), "assets")
    vocab = next((os.path.join(vocab, f) for f in os.listdir(vocab) if f.endswith(".txt")), None)
    pre = Preprocessor.from_vocab(vocab, seq_length=128)  # what fine_tune uses for minilm-l6
    flops, tokens = useful_flops_per_example(pre, train["sentence"].tolist())
    figures["mean_real_tokens_per_example"] = round(tokens, 1)
    figures["mfu_kbft_defaults"] = round(base * flops / (figures["matmul_fp32_gflops"] * 1e9), 4)
    all_texts = data_lib.read_table(os.path.join(args.data, "train.tsv"))["sentence"].tolist()
    figures["tokenize_pack_128"] = tokenizer_throughput(pre, all_texts, vocab)
    figures["export"] = export_latency(result, "runs/bench_finetune/export")
    figures["peak_memory_mib"] = round(peak_mib(), 1)
    write_figures(figures, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
