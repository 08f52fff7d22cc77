"""Fine-tuning speed on SST-2 with the embedded MiniLM: keras_bert_ft against the tools users
would pick instead, frozen layers against full training, speed options, MFU, tokeniser and
export speed.

Every run trains all-MiniLM-L6-v2 on the same SST-2 sentences for one epoch at batch 32
and is scored on the 872-sentence GLUE dev set (test.tsv). Each run is a child process
(its own peak memory; nothing leaks between runs); the ratios compare runs of this one
invocation. Anchors 3 and 4 run in their own virtual environments, made by
benchmarks/setup_anchors.sh; a missing one is reported as skipped, with the reason.

    bash benchmarks/setup_anchors.sh
    .venv/bin/python benchmarks/bench_finetune.py [--examples 2000] [--json PATH]
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

from _common import peak_mib, write_figures

import numpy as np

BATCH = 32


_LEGACY_KERAS_BEFORE = os.environ.get("TF_USE_LEGACY_KERAS")  # before keras_bert_ft sets it
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# name -> fine_tune overrides; every run trains one epoch at batch 32.
KBFT_RUNS = {
    "kbft_defaults": {},
    "kbft_top2": {"trainable_layers": 2},
    "kbft_all_layers_frozen_embeddings": {"train_embeddings": False},
    "kbft_dynamic_padding": {"padding": "dynamic"},
    "kbft_restored_savedmodel_graph": {"encoder_impl": "hub"},
    "kbft_top2_restored_savedmodel_graph": {"encoder_impl": "hub", "trainable_layers": 2},
    "kbft_xla": {"jit_compile": True},
    "kbft_steps_per_execution_8": {"steps_per_execution": 8},
    "kbft_mixed_bfloat16": {"mixed_precision": "mixed_bfloat16"},
}
ANCHORS = {  # name -> (virtual environment, script)
    "keras_hub_tf": ("kerashub", "keras_hub_tf.py"),
    "hf_transformers_torch": ("hf", "hf_torch.py"),
}


def matmul_gflops(size: int = 2048, repeats: int = 10, dtype: str = "float32") -> float:
    """The machine's dense matmul rate, the denominator of MFU."""
    import tensorflow as tf
    a = tf.cast(tf.random.normal([size, size]), dtype)
    b = tf.cast(tf.random.normal([size, size]), dtype)
    matmul = tf.function(lambda: tf.matmul(a, b))
    matmul().numpy()
    start = time.perf_counter()
    for _ in range(repeats):
        matmul().numpy()
    return 2 * size ** 3 * repeats / (time.perf_counter() - start) / 1e9


def run_kbft(train, dev, name):
    from keras_bert_ft.training.runner import fine_tune
    result = fine_tune(train, dev, encoder="minilm-l6", epochs=1, batch_size=BATCH,
                       verbose=0, **KBFT_RUNS[name])
    figures = {"examples_per_second": result.metrics["train_examples_per_second"],
               "dev_accuracy": round(result.metrics["accuracy"], 4),
               "options": KBFT_RUNS[name]}
    if name == "kbft_defaults":
        figures["export"] = export_latency(result, os.path.join(ROOT, "runs", "bench_finetune"))
    return figures


def run_tutorial(train, dev, seq_length=128):
    """tensorflow.org's 'Classify text with BERT' recipe: hub.KerasLayer(trainable=True),
    preprocessing inside the model padded to 128, Dropout + Dense, AdamW with warmup."""
    import tensorflow as tf
    import tensorflow_hub as hub
    from official.nlp import optimization
    from keras_bert_ft.encoders import presets
    from keras_bert_ft._keras import keras
    from keras_bert_ft.training.runner import ThroughputCallback

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
            "dev_accuracy": round(accuracy, 4), "options": {"seq_length": seq_length}}


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
    from keras_bert_ft.export.saved_model import load_export
    serve = load_export(result.export(os.path.join(folder, "export"))).signatures[
        "serving_default"]
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


def load_sst2(folder, examples):
    from keras_bert_ft.data import examples as data_lib
    train = data_lib.read_table(os.path.join(folder, "train.tsv")).head(examples)
    dev = data_lib.read_table(os.path.join(folder, "test.tsv"))
    train["label"] = train["label"].astype(int)
    dev["label"] = dev["label"].astype(int)
    return train, dev


def child(args) -> int:
    """One run in this process; prints its figures as the last line."""
    train, dev = load_sst2(args.data, args.examples)
    if args.run == "tf_tutorial_pad128":
        figures = run_tutorial(train, dev)
    else:
        figures = run_kbft(train, dev, args.run)
    figures["peak_memory_mib"] = round(peak_mib(), 1)
    print("FIGURES " + json.dumps(figures))
    return 0


def spawn(command, name, env=None):
    """Runs one child; returns its figures, or why it has none."""
    print(f"--- {name}", flush=True)
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                          env={**(os.environ if env is None else env),
                               "TF_CPP_MIN_LOG_LEVEL": "2"})
    lines = [line for line in proc.stdout.splitlines() if line.startswith(("FIGURES ", "{"))]
    if proc.returncode or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        reason = {"skipped": f"exit {proc.returncode}: {' | '.join(tail)}"}
        print(json.dumps(reason), flush=True)
        return reason
    figures = json.loads(lines[-1].removeprefix("FIGURES "))
    figures["wall_seconds"] = round(time.perf_counter() - start, 1)
    # Other work on the machine slows every run; the 1-minute load average says how much.
    figures["load_average_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(figures), flush=True)
    return figures


def run_anchor(name, args):
    venv, script = ANCHORS[name]
    python = os.path.join(ROOT, ".bench-venvs", venv, "bin", "python")
    if not os.path.exists(python):
        return {"skipped": f"no .bench-venvs/{venv} (run: bash benchmarks/setup_anchors.sh)"}
    from keras_bert_ft.encoders import presets
    model_dir = presets._source_dir("minilm-l6")  # the Hugging Face checkpoint itself
    return spawn([python, os.path.join(HERE, "anchors", script),
                  "--train", os.path.join(args.data, "train.tsv"),
                  "--dev", os.path.join(args.data, "test.tsv"),
                  "--examples", str(args.examples), "--batch-size", str(BATCH),
                  "--model-dir", model_dir], name, env=anchor_env())


def anchor_env():
    """The environment without what importing keras_bert_ft set: TF_USE_LEGACY_KERAS=1
    would send the keras-hub venv's `tf.keras` to a tf_keras it does not have (a
    RecursionError in TensorFlow's lazy loader)."""
    env = dict(os.environ)
    if _LEGACY_KERAS_BEFORE is None:
        env.pop("TF_USE_LEGACY_KERAS", None)
    else:
        env["TF_USE_LEGACY_KERAS"] = _LEGACY_KERAS_BEFORE
    env.pop("PYTHONPATH", None)
    return env


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000, help="training sentences")
    parser.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "sst2"))
    parser.add_argument("--json", default=os.path.join(HERE, "results", "finetune.json"))
    parser.add_argument("--only", nargs="*", help="run only these runs / anchors")
    parser.add_argument("--skip", nargs="*", default=["kbft_xla"],
                        help="runs to leave out (default: kbft_xla, which recompiles for "
                             "every bucket length; run it with --only kbft_xla)")
    parser.add_argument("--run", help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args(argv)
    args.data = os.path.abspath(args.data)
    if args.run:
        return child(args)

    from keras_bert_ft.data import examples as data_lib
    from keras_bert_ft.encoders import presets
    from keras_bert_ft.data.preprocessing import Preprocessor

    figures = {"date": time.strftime("%Y-%m-%d"),
               "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, no GPU",
               "data": f"SST-2 train.tsv first {args.examples}, dev = test.tsv (872)",
               "batch_size": BATCH, "epochs": 1, "encoder": "all-MiniLM-L6-v2 (minilm-l6)",
               "matmul_fp32_gflops": round(matmul_gflops(), 1),
               "matmul_bf16_gflops": round(matmul_gflops(dtype="bfloat16"), 1)}
    names = list(KBFT_RUNS) + ["tf_tutorial_pad128"] + list(ANCHORS)
    runs = {}
    for name in names:
        if (args.only and name not in args.only) or (not args.only and name in args.skip):
            continue
        if name in ANCHORS:
            runs[name] = run_anchor(name, args)
        else:
            runs[name] = spawn([sys.executable, os.path.abspath(__file__), "--run", name,
                                "--examples", str(args.examples), "--data", args.data], name)
        figures["runs"] = runs
        write_figures(figures, args.json, quiet=True)  # a late crash keeps the runs so far
    figures["runs"] = runs
    figures.update(summarise(runs, figures))
    vocab = os.path.join(presets.resolve_preprocessor("minilm-l6"), "assets")
    vocab = next((os.path.join(vocab, f) for f in os.listdir(vocab) if f.endswith(".txt")), None)
    pre = Preprocessor.from_vocab(vocab, seq_length=128)  # what fine_tune uses for minilm-l6
    train_texts = data_lib.read_table(os.path.join(args.data, "train.tsv"))["sentence"].tolist()
    flops, tokens = useful_flops_per_example(pre, train_texts[:args.examples])
    figures["mean_real_tokens_per_example"] = round(tokens, 1)
    figures["training_gflop_per_example"] = round(flops / 1e9, 3)
    # A run training the top k of L layers does the forward pass of all L and the backward
    # pass (2x the forward) of k: (L + 2k) / 3L of full training's FLOPs.
    share = lambda run: (6 + 2 * run.get("options", {}).get("trainable_layers", 6)) / 18  # noqa: E731
    figures["mfu"] = {
        name: round(run["examples_per_second"] * flops * share(run) / (1e9 * figures[
            "matmul_bf16_gflops" if "bfloat16" in name else "matmul_fp32_gflops"]), 4)
        for name, run in runs.items() if "examples_per_second" in run}
    figures["tokenize_pack_128"] = tokenizer_throughput(pre, train_texts, vocab)
    write_figures(figures, args.json)
    return 0


def summarise(runs, figures):
    """Ratios between runs of this invocation, and the issue's pass/fail checks."""
    speed = {k: v["examples_per_second"] for k, v in runs.items() if "examples_per_second" in v}
    accuracy = {k: v["dev_accuracy"] for k, v in runs.items() if "dev_accuracy" in v}
    out = {"ratios": {}}
    base = speed.get("kbft_defaults")
    if not base:
        return out
    for name in speed:
        if name != "kbft_defaults":
            out["ratios"][f"kbft_defaults_over_{name}"] = round(base / speed[name], 2)
    if "kbft_top2" in speed:
        out["ratios"]["top2_over_all_layers"] = round(speed["kbft_top2"] / base, 2)
    anchors = [k for k in ("tf_tutorial_pad128", *ANCHORS) if k in speed]
    if anchors:
        best = max(anchors, key=speed.get)
        out["best_anchor"] = best
        out["checks"] = {
            "speed_over_best_anchor": round(base / speed[best], 2),
            "speed_at_least_1_3x": base >= 1.3 * speed[best],
            "dev_accuracy_kbft": accuracy["kbft_defaults"],
            "dev_accuracy_best_of_anchors": max(accuracy[k] for k in anchors),
            "accuracy_no_lower_than_every_anchor":
                all(accuracy["kbft_defaults"] >= accuracy[k] for k in anchors)}
        if "kbft_top2" in speed:
            out["checks"]["top2_at_least_1_7x"] = speed["kbft_top2"] >= 1.7 * base
    return out


if __name__ == "__main__":
    sys.exit(main())
