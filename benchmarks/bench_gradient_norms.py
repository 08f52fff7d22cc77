"""Per-layer gradient norms of a collapsed CoLA run next to a healthy one (Mosbach et al.
2021: failed fine-tuning runs show vanishing gradients in the lower layers).

The two runs are the CoLA bias-correction ablation's (bench_cola_seeds.py: the first 2,000
in_domain_train sentences, lr 1e-4, batch 16, embeddings frozen, seq 64, seed 0), with
`--log-gradient-norms`: AdamW without bias correction (the original BERTAdam, which
collapses there to one predicted class) and with it. Writes both runs' norms and MCC to
JSON and the two plots side by side to a PNG.

    .venv/bin/python benchmarks/bench_gradient_norms.py [--epochs 3]
"""

import argparse
import os
import platform
import sys
import time

from _common import write_figures

HERE = os.path.dirname(os.path.abspath(__file__))
COLUMNS = ["source", "label", "original_label", "sentence"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/cola")
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=os.path.join(HERE, "results", "gradient_norms.json"))
    parser.add_argument("--plot", default=os.path.join(HERE, "results", "gradient_norms.png"))
    args = parser.parse_args(argv)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from keras_bert_ft import fine_tune
    from keras_bert_ft.data import examples as data_lib
    from keras_bert_ft.training.gradient_norms import history_norms
    from keras_bert_ft.training.run_folder import draw_gradient_norms

    read = lambda name: data_lib.read_table(os.path.join(args.data, name),  # noqa: E731
                                            column_names=COLUMNS)
    train, dev = read("in_domain_train.tsv").head(args.examples), read("in_domain_dev.tsv")
    figures = {"date": time.strftime("%Y-%m-%d"),
               "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
               "data": f"CoLA in_domain_train first {len(train)}, validation in_domain_dev",
               "settings": {"epochs": args.epochs, "batch_size": 16, "learning_rate": 1e-4,
                            "seq_length": 64, "train_embeddings": False, "seed": args.seed},
               "runs": {}}
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), sharey=True)
    for ax, (name, corrected) in zip(axes, (("no_bias_correction", False),
                                            ("bias_corrected", True))):
        result = fine_tune(train, dev, epochs=args.epochs, batch_size=16, learning_rate=1e-4,
                           seq_length=64, train_embeddings=False, seed=args.seed,
                           bias_correction=corrected, log_gradient_norms=True,
                           error_examples=0, verbose=0)
        m = result.metrics
        norms = {group: [round(v, 6) for v in values]
                 for group, values in history_norms(result.history).items()}
        figures["runs"][name] = {"mcc": round(m["mcc"], 4), "accuracy": round(m["accuracy"], 4),
                                 "predicted_classes": m.get("predicted_classes"),
                                 "loss_per_epoch": [round(x, 4) for x in result.history["loss"]],
                                 "gradient_norms": norms}
        state = ("collapsed: one class predicted" if m.get("predicted_classes") == 1
                 else "healthy")
        draw_gradient_norms(ax, result.history,
                            f"bias correction {'on' if corrected else 'off'}: MCC "
                            f"{m['mcc']:.3f} ({state})")
    fig.tight_layout()
    os.makedirs(os.path.dirname(args.plot) or ".", exist_ok=True)
    fig.savefig(args.plot, dpi=100)
    plt.close(fig)
    figures["plot"] = os.path.relpath(args.plot)
    write_figures(figures, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
