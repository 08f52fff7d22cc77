"""Builds a run's encoder, model and preprocessor from its config: the runner and the reader
of run folders and exports (export/restore.py) build them here, the same way."""

import contextlib
from typing import Optional

from keras_bert_ft._keras import keras
from keras_bert_ft.data.preprocessing import Preprocessor, check_seq_length
from keras_bert_ft.encoders import presets
from keras_bert_ft.encoders.native import NativeEncoder, make_encoder
from keras_bert_ft.errors import bad_argument
from keras_bert_ft.tasks.models import leave_pooler_untrained


def resolve_learning_rate(config) -> float:
    """The configured rate, else the encoder preset's, else BERT's usual 5e-5."""
    if config.learning_rate is not None:
        return float(config.learning_rate)
    preset = presets.get_preset(config.encoder)
    return preset.learning_rate if preset is not None and preset.learning_rate else 5e-5


def resolve_pooling(config) -> str:
    """The configured pooling, else the encoder preset's, else BERT's pooled output."""
    if config.pooling:
        return config.pooling
    preset = presets.get_preset(config.encoder)
    return preset.pooling if preset is not None else "pooled"


@contextlib.contextmanager
def precision_policy(name: Optional[str]):
    """Builds layers under a Keras mixed-precision policy, then restores the previous one.

    Layers keep the policy they were built with; `compile` wraps the optimizer in loss
    scaling under `mixed_float16`. The logits layer always computes in float32.
    """
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name or "float32")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def build_model(task, config, info: dict, strategy, load_kwargs: Optional[dict] = None):
    """The untrained model of `task` on the configured encoder (trainable layers, re-init,
    precision), built under `strategy`'s scope. Returns (model, encoder)."""
    from keras_bert_ft.training.precision import resolve_precision
    with strategy.scope(), precision_policy(resolve_precision(config.mixed_precision,
                                                              strategy)):
        encoder = make_encoder(config.encoder, config.encoder_impl,
                               trainable_layers=config.trainable_layers,
                               train_embeddings=config.train_embeddings,
                               reinit_layers=config.reinit_layers, reinit_seed=config.seed,
                               **(load_kwargs or {}))
        if getattr(config, "add_tokens", None):
            from keras_bert_ft.encoders.added_tokens import add_tokens
            add_tokens(encoder, config)
        check_seq_length(config.seq_length, encoder.max_seq_length)
        if not task.reads_pooler(config):
            leave_pooler_untrained(encoder)
        model = task.build_model(encoder, config, info)
    return model, encoder


def build_preprocessor(encoder, config, needs_vocab: bool = False) -> Preprocessor:
    """The preprocessor the user named, else the encoder's own: its vocab asset (TF-Hub
    BERT encoders carry `vocab_file` and `do_lower_case`), else the preset's.
    `needs_vocab`: the task needs word-piece offsets, so a vocab.txt tokenizer."""
    handle = config.preprocessor
    if getattr(config, "add_tokens", None):  # the grown vocabulary, not the given one
        handle = None
    if handle and needs_vocab and not handle.endswith(".txt"):
        import os
        vocab = os.path.join(presets.resolve_preprocessor(handle), "assets", "vocab.txt")
        if not os.path.isfile(vocab):
            raise bad_argument("preprocessor", handle, "a vocab.txt, or a folder holding "
                               "assets/vocab.txt (tagging, QA and summarisation need offsets)")
        return Preprocessor.from_vocab(vocab, lower_case=config.lower_case,
                                       seq_length=config.seq_length)
    if handle:
        return Preprocessor.from_handle(handle, lower_case=config.lower_case,
                                        seq_length=config.seq_length)
    vocab, lower = encoder_vocab(encoder)
    if vocab is None and presets.get_preset(config.encoder) is not None and not needs_vocab:
        return Preprocessor.from_hub(config.encoder, seq_length=config.seq_length)
    if vocab is None:
        raise bad_argument("preprocessor", None, "a vocab.txt or preprocessor handle (the "
                           f"encoder {config.encoder!r} carries no vocab_file)")
    # The encoder's own do_lower_case, unless the user asked to keep case (--cased).
    lower_case = config.lower_case if lower is None or not config.lower_case else lower
    return Preprocessor.from_vocab(vocab, lower_case=lower_case, seq_length=config.seq_length)


def encoder_vocab(encoder):
    """(vocab.txt path or None, do_lower_case or None) from the encoder's SavedModel assets."""
    if isinstance(encoder, NativeEncoder):
        return encoder.vocab_path, encoder.do_lower_case
    root = encoder.resolved_object
    vocab = getattr(root, "vocab_file", None)
    lower = bool(root.do_lower_case.numpy()) if hasattr(root, "do_lower_case") else None
    return (vocab.asset_path.numpy().decode() if vocab is not None else None), lower
