"""diff_models: which weights moved in fine-tuning, and how much each layer's representations changed.

Per layer group: the relative change of the weights, ||W_b - W_a|| / ||W_a|| over the
group's variables together. Per layer: the linear CKA between the two models' outputs on
the same inputs (every real token, by default). Merchant et al. (2020) found fine-tuning
changes the top layers most and leaves the lower ones nearly as they were.
"""

import json
import os
from typing import List, Optional

import numpy as np

from keras_bert_ft.errors import KbftError, bad_argument
from keras_bert_ft.research.representations import (LinearCKA, encode_texts, layer_features,
                                                    load_pair)


def relative_changes(groups_a, groups_b) -> dict:
    """Group -> ||b - a||_F / ||a||_F over the group's variables (matched by name)."""
    changes = {}
    for group, variables in groups_a.items():
        others = {v.name: v for v in groups_b.get(group, [])}
        missing = [v.name for v in variables if v.name not in others]
        if missing:
            raise KbftError(f"The second model lacks variable {missing[0]!r} of group "
                            f"{group!r}; diff compares models of the same encoder.")
        delta = base = 0.0
        for v in variables:
            a = v.numpy().astype(np.float64)
            b = others[v.name].numpy().astype(np.float64)
            if a.shape != b.shape:
                raise KbftError(f"Variable {v.name!r} has shape {a.shape} in one model "
                                f"and {b.shape} in the other.")
            delta += float(np.sum((b - a) ** 2))
            base += float(np.sum(a ** 2))
        changes[group] = float(np.sqrt(delta) / np.sqrt(base)) if base > 0 else 0.0
    return changes


def layer_cka(encoder_a, encoder_b, features, *, representation: str = "tokens",
              batch_size: int = 64) -> List[float]:
    """Linear CKA per layer between the two encoders' outputs on the same features."""
    ckas: Optional[List[LinearCKA]] = None
    for out_a, out_b in zip(layer_features(encoder_a, features, representation=representation,
                                           batch_size=batch_size),
                            layer_features(encoder_b, features, representation=representation,
                                           batch_size=batch_size)):
        if len(out_a) != len(out_b):
            raise KbftError(f"The models have {len(out_a)} and {len(out_b)} layers.")
        ckas = ckas or [LinearCKA() for _ in out_a]
        for cka, a, b in zip(ckas, out_a, out_b):
            cka.update(a, b)
    return [c.value() for c in ckas or []]


def diff_models(model_a: str, model_b: str, texts: List[str], *, texts_pair=None,
                representation: str = "tokens", seq_length: int = 128,
                batch_size: int = 64, output: Optional[str] = None) -> dict:
    """Compares two models of the same encoder (pretrained handle, run folder or export).

    Args:
        model_a, model_b: the sources, e.g. the pretrained preset and a fine-tuned run.
        texts: the sample of inputs the representations are computed on.
        representation: `tokens` (every real token), `cls` or `mean` (one vector per text).
        output: also write the figures to this JSON file.

    Example:
        >>> figures = diff_models("minilm-l6", "runs/sst2", sentences[:500])
        >>> print(format_diff(figures))
    """
    check_source(model_a, "model_a")
    check_source(model_b, "model_b")
    if not len(texts):
        raise bad_argument("texts", list(texts), "at least one text to compare the "
                           "representations on")
    a, b = load_pair(model_a, model_b, seq_length=seq_length)
    features = encode_texts(a.preprocessor, texts, texts_pair)
    changes = relative_changes(a.encoder.layer_groups(), b.encoder.layer_groups())
    ckas = layer_cka(a.encoder, b.encoder, features, representation=representation,
                     batch_size=batch_size)
    rows = []
    for group, change in changes.items():
        row = {"group": group, "relative_change": change, "cka": None}
        if group.startswith("layer_"):
            row["cka"] = ckas[int(group.split("_")[1])]
        rows.append(row)
    figures = {"model_a": model_a, "model_b": model_b, "kind_a": a.kind, "kind_b": b.kind,
               "encoder": a.handle, "texts": len(texts), "representation": representation,
               "tokens": int(features["input_mask"].numpy().sum()), "groups": rows}
    figures["summary"] = _summary(rows)
    if output:
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        with open(output, "w") as f:
            json.dump(figures, f, indent=2)
    return figures


def check_source(source, name: str = "model") -> None:
    """Refuses, before anything is loaded, a source that is none of: a preset name, a URL
    or gs:// path, an encoder folder (saved_model.pb), a run folder or an export (whose
    saved config must read back)."""
    from keras_bert_ft.encoders.hub_encoder import is_remote
    from keras_bert_ft.encoders.presets import get_preset
    from keras_bert_ft.export.restore import is_restorable, saved_config
    expected = ("a preset name, a URL, an encoder folder (with saved_model.pb), a kbft "
                "train --output folder or an export")
    if not isinstance(source, str) or not source:
        raise bad_argument(name, source, expected)
    if is_restorable(source):
        saved_config(source, name)
    elif get_preset(source) is None and not is_remote(source) and not any(
            os.path.isfile(os.path.join(source, f)) for f in ("saved_model.pb",
                                                              "saved_model.pbtxt")):
        raise bad_argument(name, source, expected + (" (this path does not exist)"
                                                     if not os.path.exists(source) else ""))


def _summary(rows) -> dict:
    layers = [r for r in rows if r["group"].startswith("layer_")]
    if len(layers) < 2:
        return {}
    half = len(layers) // 2
    bottom, top = layers[:half], layers[len(layers) - half:]
    mean = lambda rs, key: float(np.mean([r[key] for r in rs]))  # noqa: E731
    summary = {"bottom_half_relative_change": mean(bottom, "relative_change"),
               "top_half_relative_change": mean(top, "relative_change"),
               "bottom_half_cka": mean(bottom, "cka"), "top_half_cka": mean(top, "cka")}
    summary["top_changes_more"] = (summary["top_half_relative_change"]
                                   > summary["bottom_half_relative_change"])
    summary["top_has_lower_cka"] = summary["top_half_cka"] < summary["bottom_half_cka"]
    return summary


def format_diff(figures: dict) -> str:
    """The per-group table: relative weight change, and CKA per layer."""
    lines = [f"{figures['model_a']}  ->  {figures['model_b']}",
             f"{'group':<14}{'rel. change':>13}{'CKA (' + figures['representation'] + ')':>16}",
             "-" * 43]
    for row in figures["groups"]:
        cka = "-" if row["cka"] is None else f"{row['cka']:.4f}"
        lines.append(f"{row['group']:<14}{row['relative_change']:>13.5f}{cka:>16}")
    lines.append("-" * 43)
    s = figures["summary"]
    if s:
        lines.append(f"bottom half: change {s['bottom_half_relative_change']:.5f}, CKA "
                     f"{s['bottom_half_cka']:.4f};  top half: change "
                     f"{s['top_half_relative_change']:.5f}, CKA {s['top_half_cka']:.4f}")
    lines.append(f"CKA on {figures['tokens'] if figures['representation'] == 'tokens' else figures['texts']} "
                 f"{'tokens' if figures['representation'] == 'tokens' else 'texts'} "
                 f"from {figures['texts']} texts")
    return "\n".join(lines)
