"""A PyTorch replica of bench_qa's span-QA recipe, for a dev-split recipe search on a GPU.

The device machines lent here have PyTorch but no TensorFlow (and TF's GPU wheel is far
over the 64 MiB a call may carry), so the search runs this copy of the recipe: the same
MiniLM weights, windows, labels and cloze questions (written by export_windows.py from
keras_bert_ft's own featurize / make_windows), the same loss (mean of start and end
cross-entropy), AdamW (eps 1e-6, decay 0.01 off LayerNorm and biases, bias-corrected),
10% linear warmup then linear decay, bf16 autocast, and best_spans' decoding. Train
articles 0-29 train, 30-37 are the dev split: the 10 held-out articles are never read.

    python3 replica.py OUT_JSONL NAME key=value ...   (keys: cloze, epochs, lr, bs, ld,
        reinit, stage, real_x2, head_mult, dropout, warmup, wd, clip, seeds)

Each seed's dev EM/F1 and the EM/F1 of the seeds' mean logits go to OUT_JSONL.
"""
import collections
import json
import math
import os
import re
import string
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

D = os.environ.get("QA_SEARCH_DATA") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", ".gpu")
DEV = "cuda" if torch.cuda.is_available() else "cpu"
H, L, NH, FF = 384, 6, 12, 1536


class Layer(nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(H, H) for _ in range(4))
        self.ln1, self.ln2 = nn.LayerNorm(H, eps=1e-12), nn.LayerNorm(H, eps=1e-12)
        self.fi, self.fo = nn.Linear(H, FF), nn.Linear(FF, H)

    def forward(self, x, bias, p):
        b, t, _ = x.shape
        split = lambda y: y.view(b, t, NH, H // NH).transpose(1, 2)
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        a = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=bias.to(q.dtype),
                                           dropout_p=p if self.training else 0.0)
        a = a.transpose(1, 2).reshape(b, t, H)
        x = self.ln1(x + F.dropout(self.o(a), p, self.training))
        return self.ln2(x + F.dropout(self.fo(F.gelu(self.fi(x))), p, self.training))


class Span(nn.Module):
    def __init__(self):
        super().__init__()
        self.word, self.pos, self.ttype = nn.Embedding(30522, H), nn.Embedding(512, H), nn.Embedding(2, H)
        self.eln = nn.LayerNorm(H, eps=1e-12)
        self.layers = nn.ModuleList(Layer() for _ in range(L))
        self.head = nn.Linear(H, 2)

    def encode(self, ids, types, mask, p=0.1):
        """The encoder's sequence output `[batch, seq, hidden]` (sanity.py checks it)."""
        t = ids.shape[1]
        x = self.word(ids) + self.pos.weight[:t][None] + self.ttype(types)
        x = F.dropout(self.eln(x), p, self.training)
        bias = ((1.0 - mask[:, None, None, :].to(x.dtype)) * -1e4).to(x.dtype)
        for layer in self.layers:
            x = layer(x, bias, p)
        return x

    def forward(self, ids, types, mask, p=0.1):
        x = self.encode(ids, types, mask, p)
        logits = self.head(x).float() + (1.0 - mask.float())[:, :, None] * -1e4
        return logits[..., 0], logits[..., 1]


def load_pretrained(model):
    w = np.load(os.path.join(D, "minilm_fp16.npz"))
    g = lambda k: torch.from_numpy(w[k].astype(np.float32))
    with torch.no_grad():
        model.word.weight.copy_(g("embeddings.word_embeddings.weight"))
        model.pos.weight.copy_(g("embeddings.position_embeddings.weight"))
        model.ttype.weight.copy_(g("embeddings.token_type_embeddings.weight"))
        model.eln.weight.copy_(g("embeddings.LayerNorm.weight"))
        model.eln.bias.copy_(g("embeddings.LayerNorm.bias"))
        for i, layer in enumerate(model.layers):
            pre = f"encoder.layer.{i}."
            names = {"q": "attention.self.query", "k": "attention.self.key",
                     "v": "attention.self.value", "o": "attention.output.dense",
                     "ln1": "attention.output.LayerNorm", "fi": "intermediate.dense",
                     "fo": "output.dense", "ln2": "output.LayerNorm"}
            for attr, name in names.items():
                mod = getattr(layer, attr)
                mod.weight.copy_(g(pre + name + ".weight"))
                mod.bias.copy_(g(pre + name + ".bias"))
        nn.init.trunc_normal_(model.head.weight, std=0.02, a=-0.04, b=0.04)
        nn.init.zeros_(model.head.bias)


def reinit(layer):
    for m in layer.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02, a=-0.04, b=0.04)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def load(name):
    z = np.load(os.path.join(D, name))
    return {k: z[k] for k in z.files}


def concat(*parts):
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# ------------------------------------------------------------------ SQuAD v1.1 metric
# Restated from keras_bert_ft.tasks.metrics / qa.best_spans: the device has no TensorFlow.
def normalize(s):
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def f1(pred, gold):
    p, g = normalize(pred).split(), normalize(gold).split()
    common = collections.Counter(p) & collections.Counter(g)
    same = sum(common.values())
    if same == 0:
        return 0.0
    pr, rc = same / len(p), same / len(g)
    return 2 * pr * rc / (pr + rc)


def score(start, end, dev, meta, n_best=20, max_len=30):
    """EM, F1 of best spans decoded as keras_bert_ft's best_spans does."""
    can_s = (dev["starts"] >= 0) & dev["maxctx"]
    can_e = dev["starts"] >= 0
    s = np.where(can_s, start, -1e9)
    e = np.where(can_e, end, -1e9)
    best = {}
    for w in range(len(s)):
        si = np.argsort(-s[w])[:n_best]
        ei = np.argsort(-e[w])[:n_best]
        for a in si:
            for b in ei:
                if s[w, a] < -1e8 or e[w, b] < -1e8 or b < a or b - a >= max_len:
                    continue
                sc = s[w, a] + e[w, b]
                ex = dev["example"][w]
                if ex not in best or sc > best[ex][0]:
                    best[ex] = (sc, w, a, b)
    em = f = 0.0
    for i, item in enumerate(meta):
        pred = ""
        if i in best:
            _, w, a, b = best[i]
            pred = item["context"].encode()[dev["starts"][w, a]:dev["ends"][w, b]].decode(
                "utf-8", "ignore")
        em += max(float(normalize(pred) == normalize(g)) for g in item["answers"])
        f += max(f1(pred, g) for g in item["answers"])
    return em / len(meta), f / len(meta)


# ---------------------------------------------------------------------------- train
def batches(data, bs, rng):
    order = rng.permutation(len(data["labels"]))
    for i in range(0, len(order), bs):
        idx = order[i:i + bs]
        t = int(data["mask"][idx].sum(1).max())
        t = min(384, -(-t // 8) * 8)
        yield (torch.from_numpy(data["ids"][idx, :t].astype(np.int64)).to(DEV),
               torch.from_numpy(data["types"][idx, :t].astype(np.int64)).to(DEV),
               torch.from_numpy(data["mask"][idx, :t].astype(np.int64)).to(DEV),
               torch.from_numpy(data["labels"][idx].astype(np.int64)).to(DEV))


def make_opt(model, lr, steps, warmup, wd, layer_decay, head_lr_mult=1.0):
    groups = []
    def depth(n):  # layers below the top
        if n.startswith("head"):
            return None
        if n.startswith("layers."):
            return L - 1 - int(n.split(".")[1])
        return L  # embeddings
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        d = depth(n)
        mult = head_lr_mult if d is None else layer_decay ** d
        decay = 0.0 if (n.endswith("bias") or "ln" in n.split(".")[-2]) else wd
        groups.append({"params": [p], "lr": lr * mult, "base": lr * mult, "weight_decay": decay})
    opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-6)
    w = max(1, int(warmup * steps))
    def sched(step):
        return step / w if step < w else max(0.0, (steps - step) / max(1, steps - w))
    return opt, sched


def run_phase(model, data, epochs, lr, bs, seed, cfg, log):
    steps = math.ceil(len(data["labels"]) / bs) * epochs
    opt, sched = make_opt(model, lr, steps, cfg.get("warmup", 0.1), cfg.get("wd", 0.01),
                          cfg.get("ld", 1.0), cfg.get("head_mult", 1.0))
    rng = np.random.RandomState(seed)
    step = 0
    model.train()
    for ep in range(epochs):
        tot = n = 0
        for ids, types, mask, y in batches(data, bs, rng):
            for g in opt.param_groups:
                g["lr"] = g["base"] * sched(step)
            with torch.autocast(DEV, dtype=torch.bfloat16, enabled=DEV == "cuda"):
                s, e = model(ids, types, mask, cfg.get("dropout", 0.1))
            loss = (F.cross_entropy(s, y[:, 0]) + F.cross_entropy(e, y[:, 1])) / 2
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.get("clip"):
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["clip"])
            opt.step()
            step += 1
            tot += loss.item()
            n += 1
        log.append(round(tot / n, 4))


@torch.no_grad()
def dev_logits(model, dev):
    model.eval()
    out_s, out_e = [], []
    for i in range(0, len(dev["ids"]), 64):
        sl = slice(i, i + 64)
        with torch.autocast(DEV, dtype=torch.bfloat16, enabled=DEV == "cuda"):
            s, e = model(torch.from_numpy(dev["ids"][sl].astype(np.int64)).to(DEV),
                         torch.from_numpy(dev["types"][sl].astype(np.int64)).to(DEV),
                         torch.from_numpy(dev["mask"][sl].astype(np.int64)).to(DEV))
        out_s.append(s.float().cpu().numpy())
        out_e.append(e.float().cpu().numpy())
    return np.concatenate(out_s), np.concatenate(out_e)


def one_run(cfg, seed, dev, meta):
    torch.manual_seed(seed)
    np.random.seed(seed)
    model = Span()
    load_pretrained(model)
    for layer in list(model.layers)[L - cfg.get("reinit", 0):]:
        reinit(layer)
    model.to(DEV)
    real = load("train_real.npz")
    cloze = cfg.get("cloze", "c8")
    cz = load(f"train_{cloze}_s{seed}.npz") if cloze != "c0" else None
    lr, bs, ep = cfg.get("lr", 1e-4), cfg.get("bs", 16), cfg.get("epochs", 8)
    log = []
    if cfg.get("stage"):  # cloze first, then real only
        run_phase(model, cz, cfg["stage"], lr, bs, seed, cfg, log)
        run_phase(model, real, ep, cfg.get("lr2", lr), bs, seed + 100, cfg, log)
    else:
        data = real if cz is None else concat(real, cz)
        if cfg.get("real_x2"):
            data = concat(real, data)
        run_phase(model, data, ep, lr, bs, seed, cfg, log)
    s, e = dev_logits(model, dev)
    em, f = score(s, e, dev, meta)
    return em, f, s, e, log


def main():
    out, name = sys.argv[1], sys.argv[2]
    cfg = {}
    for kv in sys.argv[3:]:
        k, v = kv.split("=")
        try:
            cfg[k] = json.loads(v)
        except ValueError:
            cfg[k] = v
    seeds = cfg.pop("seeds", [0, 1, 2])
    dev, meta = load("dev.npz"), json.load(open(os.path.join(D, "dev.json")))
    S = E = 0
    for seed in seeds:
        t = time.time()
        em, f, s, e, log = one_run(cfg, seed, dev, meta)
        S, E = S + s, E + e
        rec = {"name": name, "cfg": cfg, "seed": seed, "em": round(em, 4), "f1": round(f, 4),
               "loss": log, "sec": round(time.time() - t, 1)}
        print(json.dumps(rec), flush=True)
        with open(out, "a") as fh:
            fh.write(json.dumps(rec) + "\n")
    em, f = score(S / len(seeds), E / len(seeds), dev, meta)
    rec = {"name": name, "cfg": cfg, "seed": "ensemble", "em": round(em, 4), "f1": round(f, 4)}
    print(json.dumps(rec), flush=True)
    with open(out, "a") as fh:
        fh.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
