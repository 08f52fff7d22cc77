"""Per config: each seed's dev F1, their mean, and the F1/EM of the seeds' mean logits."""
import json, sys, collections
rows = [json.loads(l) for l in open(sys.argv[1])]
by = collections.defaultdict(list)
for r in rows:
    by[r["name"]].append(r)
print(f"{'name':16s} {'seeds f1':28s} mean   ens_f1 ens_em  sec")
for name, rs in sorted(by.items(), key=lambda kv: -max([r["f1"] for r in kv[1] if r["seed"] == "ensemble"] or [0])):
    seeds = [r for r in rs if r["seed"] != "ensemble"]
    ens = [r for r in rs if r["seed"] == "ensemble"]
    f = [r["f1"] for r in seeds]
    print(f"{name:16s} {str(f):28s} {sum(f)/max(len(f),1):.4f} "
          f"{ens[0]['f1'] if ens else '-':>6} {ens[0]['em'] if ens else '-':>6} "
          f"{sum(r['sec'] for r in seeds):.0f}")
