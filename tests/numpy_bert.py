"""Independent reference BERT for the converter tests: WordPiece tokenizer and NumPy forward pass.

Written from the BERT paper / Hugging Face `BertModel` maths, sharing no code with
TensorFlow or tf-models, so that agreement with the converted TF-Hub SavedModels is
evidence both are right. Weights are taken in Hugging Face layout and names
(`encoder.layer.0.attention.self.query.weight`, PyTorch Linear = (out, in)).
"""

import json
import math
import unicodedata

import numpy as np

# --------------------------------------------------------------------------- forward pass

_erf = np.frompyfunc(math.erf, 1, 1)


def gelu_exact(x):
    """GELU as Hugging Face "gelu": x * Phi(x), with the error function."""
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)).astype(np.float64))


def gelu_tanh(x):
    """The tanh approximation (original Google BERT, HF "gelu_new")."""
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def _layer_norm(x, gamma, beta, eps=1e-12):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def _strip_prefix(weights):
    anchor = "embeddings.word_embeddings.weight"
    prefix = min((k[:-len(anchor)] for k in weights if k.endswith(anchor)), key=len)
    out = {}
    for key, value in weights.items():
        if key.startswith(prefix):
            key = key[len(prefix):].replace("LayerNorm.gamma", "LayerNorm.weight")
            out[key.replace("LayerNorm.beta", "LayerNorm.bias")] = np.asarray(value, np.float64)
    return out


def bert_forward(weights, *, num_layers, num_heads, input_ids, attention_mask,
                 token_type_ids, gelu=gelu_exact):
    """Returns (sequence_output [B,T,H], pooled_output [B,H], per-layer outputs), float64."""
    w = _strip_prefix(weights)
    ids = np.asarray(input_ids)
    mask = np.asarray(attention_mask, np.float64)
    batch, length = ids.shape

    x = (w["embeddings.word_embeddings.weight"][ids]
         + w["embeddings.position_embeddings.weight"][np.arange(length)][None]
         + w["embeddings.token_type_embeddings.weight"][np.asarray(token_type_ids)])
    x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
    hidden = x.shape[-1]
    head = hidden // num_heads

    def dense(v, name):
        return v @ w[name + ".weight"].T + w[name + ".bias"]

    def split_heads(v):  # [B,T,H] -> [B,heads,T,head]
        return v.reshape(batch, length, num_heads, head).transpose(0, 2, 1, 3)

    # Padding keys get -inf before the softmax, i.e. exactly zero attention weight.
    key_bias = np.where(mask[:, None, None, :] > 0, 0.0, -np.inf)
    layers = []
    for i in range(num_layers):
        p = f"encoder.layer.{i}."
        q = split_heads(dense(x, p + "attention.self.query"))
        k = split_heads(dense(x, p + "attention.self.key"))
        v = split_heads(dense(x, p + "attention.self.value"))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(head) + key_bias
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        probs = scores / scores.sum(-1, keepdims=True)
        context = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, length, hidden)
        x = _layer_norm(x + dense(context, p + "attention.output.dense"),
                        w[p + "attention.output.LayerNorm.weight"],
                        w[p + "attention.output.LayerNorm.bias"])
        inner = gelu(dense(x, p + "intermediate.dense"))
        x = _layer_norm(x + dense(inner, p + "output.dense"),
                        w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"])
        layers.append(x)
    pooled = np.tanh(dense(x[:, 0], "pooler.dense"))
    return x, pooled, layers


# --------------------------------------------------------------------------- tokenizer


def _is_punctuation(ch):
    cp = ord(ch)
    # BERT treats all non-letter/number ASCII as punctuation ("$", "^", "`" included).
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_whitespace(ch):
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _is_control(ch):
    return ch not in "\t\n\r" and unicodedata.category(ch) in ("Cc", "Cf")


def _is_cjk(cp):
    """The CJK Unified Ideographs blocks, as in BERT's tokenization.py."""
    return any(lo <= cp <= hi for lo, hi in (
        (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
        (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F)))


class WordPieceTokenizer:
    """BERT's BasicTokenizer + greedy longest-match-first WordPiece, returning ids."""

    def __init__(self, vocab, *, lower_case=True, strip_accents=None, split_cjk=True,
                 clean_text=True, unk_token="[UNK]", prefix="##", max_chars=100):
        self.vocab = vocab
        self.lower_case = lower_case
        self.strip_accents = lower_case if strip_accents is None else strip_accents
        self.split_cjk, self.clean_text = split_cjk, clean_text
        self.unk_token, self.prefix, self.max_chars = unk_token, prefix, max_chars

    @classmethod
    def from_tokenizer_json(cls, path):
        """Settings and vocabulary of a Hugging Face `tokenizer.json` (BertNormalizer + WordPiece)."""
        with open(path, encoding="utf-8") as f:
            spec = json.load(f)
        norm, model = spec["normalizer"], spec["model"]
        assert norm["type"] == "BertNormalizer" and model["type"] == "WordPiece", spec.keys()
        return cls(model["vocab"], lower_case=norm["lowercase"],
                   strip_accents=norm["strip_accents"], split_cjk=norm["handle_chinese_chars"],
                   clean_text=norm["clean_text"], unk_token=model["unk_token"],
                   prefix=model["continuing_subword_prefix"],
                   max_chars=model["max_input_chars_per_word"])

    def _normalize(self, text):
        if self.clean_text:
            text = "".join(" " if _is_whitespace(c) else c for c in text
                           if ord(c) not in (0, 0xFFFD) and not _is_control(c))
        if self.split_cjk:
            text = "".join(f" {c} " if _is_cjk(ord(c)) else c for c in text)
        if self.strip_accents:
            text = "".join(c for c in unicodedata.normalize("NFD", text)
                           if unicodedata.category(c) != "Mn")
        return text.lower() if self.lower_case else text

    def words(self, text):
        """Whitespace split, then every punctuation character as its own word."""
        out = []
        for chunk in self._normalize(text).split():
            word = ""
            for c in chunk:
                if _is_punctuation(c):
                    out += [word] if word else []
                    out.append(c)
                    word = ""
                else:
                    word += c
            out += [word] if word else []
        return out

    def _wordpiece(self, word):
        if len(word) > self.max_chars:
            return [self.vocab[self.unk_token]]
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = (self.prefix if start else "") + word[start:end]
                if piece in self.vocab:
                    break
                end -= 1
            if end == start:  # no prefix of the rest is in the vocabulary
                return [self.vocab[self.unk_token]]
            pieces.append(self.vocab[piece])
            start = end
        return pieces

    def encode(self, text):
        """Token ids of `text`, without [CLS]/[SEP]."""
        return [i for word in self.words(text) for i in self._wordpiece(word)]
