"""XQuAD held-out exact match and F1 of an ensemble of span QA runs (mean start/end logits).

Each member is one `bench_qa.py` run saved with `--save-weights`, typically the same
settings under different seeds, trained one after another or side by side:

    for s in 0 1 2; do
      .venv/bin/python benchmarks/bench_qa.py --epochs 8 --learning-rate 1e-4 --cloze 8 \
          --mixed-precision mixed_bfloat16 --seed $s --save-weights runs/qa_seed$s.h5 \
          --json runs/qa_seed$s.json
    done
    .venv/bin/python benchmarks/bench_qa_ensemble.py --mixed-precision mixed_bfloat16 \
        --members runs/qa_seed0.h5 runs/qa_seed1.h5 runs/qa_seed2.h5

The members are rebuilt with `tasks.qa.restore_qa` and combined with
`tasks.qa.ensemble_qa`; the held-out questions are those of `bench_qa.py` (the last 10
articles). Prints each member's and the ensemble's figures and writes JSON.
"""

import argparse
import os
import platform
import sys
import time

from _common import limit_threads, peak_mib, write_figures
from bench_qa import DATA, xquad_split

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", nargs="+", required=True, metavar="WEIGHTS",
                        help="span model weights saved by bench_qa.py --save-weights")
    parser.add_argument("--data", default=DATA, help="SQuAD v1.1 JSON (default: XQuAD English)")
    parser.add_argument("--train-articles", type=int, default=38)
    parser.add_argument("--encoder", default="minilm-l6")
    parser.add_argument("--seq-length", type=int, default=384)
    parser.add_argument("--doc-stride", type=int, default=128)
    parser.add_argument("--encoder-impl", default="auto", choices=["auto", "native", "hub"])
    parser.add_argument("--mixed-precision", default=None,
                        choices=["mixed_bfloat16", "mixed_float16"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--export", default=None, help="also export the ensemble here")
    parser.add_argument("--json", default=os.path.join(HERE, "results", "qa_ensemble.json"))
    args = parser.parse_args(argv)
    limit_threads(args.threads)
    missing = [m for m in args.members if not os.path.isfile(m)]
    if missing:
        print(f"members not found: {missing} (bench_qa.py --save-weights writes them)")
        return 2
    split = xquad_split(args)
    if split is None:
        return 2
    held_out = split[1]

    from keras_bert_ft.tasks.qa import ensemble_qa, evaluate, restore_qa

    settings = dict(encoder=args.encoder, seq_length=args.seq_length,
                    doc_stride=args.doc_stride, encoder_impl=args.encoder_impl,
                    mixed_precision=args.mixed_precision)
    start = time.time()
    members, member_figures = [], []
    for path in args.members:
        member = restore_qa(path, **settings)
        m = evaluate(member.serving, held_out)
        print(f"{os.path.basename(path)}: EM {m['exact_match']:.4f} F1 {m['f1']:.4f}", flush=True)
        member_figures.append({"weights": os.path.basename(path),
                               "exact_match": round(m["exact_match"], 4),
                               "f1": round(m["f1"], 4)})
        members.append(member)
    result = ensemble_qa(members, held_out)
    m = result.metrics
    print(f"ensemble of {len(members)}: EM {m['exact_match']:.4f} F1 {m['f1']:.4f}")
    if args.export:
        result.export(args.export)
    f1s = [f["f1"] for f in member_figures]
    figures = {
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join(["benchmarks/bench_qa_ensemble.py", *(argv or sys.argv[1:])]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.python_version()}",
        "data": f"XQuAD en, first {args.train_articles} articles train, the rest held out",
        "settings": settings,
        "held_out_questions": m["eval_questions"],
        "members": member_figures,
        "member_f1_mean": round(sum(f1s) / len(f1s), 4),
        "exact_match": round(m["exact_match"], 4),
        "f1": round(m["f1"], 4),
        "peak_memory_mib": round(peak_mib(), 1),
        "wall_seconds": round(time.time() - start, 1),
    }
    write_figures(figures, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
