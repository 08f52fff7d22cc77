"""Writes BERT encoders and preprocessors in the TF-Hub SavedModel format.

Thin wrappers over tf-models-official's `export_tfhub_lib`, which writes exactly the
formats of tensorflow.org/hub/common_saved_model_apis/text. Used by the checkpoint
converters and by the tests, which export tiny encoders of their own.
"""

import os
import tempfile
from typing import Callable, Optional

import tensorflow as tf

from keras_bert_ft._keras import keras  # noqa: F401  (selects tf_keras first)


def bert_config(*, vocab_size, hidden_size, num_layers, num_heads, intermediate_size,
                max_seq_length=512, type_vocab_size=2, hidden_act="gelu",
                dropout=0.1):
    """A legacy `BertConfig` for tf-models-official's exporter."""
    from official.legacy.bert import configs

    return configs.BertConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=num_heads, intermediate_size=intermediate_size,
        hidden_act=hidden_act, hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        max_position_embeddings=max_seq_length, type_vocab_size=type_vocab_size)


def export_encoder(export_dir: str, config, *, vocab_file: str, do_lower_case: bool,
                   set_weights: Optional[Callable] = None, seed: Optional[int] = 0) -> str:
    """Exports a BERT encoder SavedModel (TF-Hub encoder API) to `export_dir`.

    `set_weights(encoder)` may fill the freshly built `BertEncoder` with real weights;
    without it the encoder keeps its random (seeded) initialisation. `seed=None` leaves
    the global random state alone (converters overwrite every weight anyway, and must
    not reseed a user's run that happens to convert a preset on first use).
    """
    from official.nlp.tools import export_tfhub_lib

    if seed is not None:
        tf.keras.utils.set_random_seed(seed)
    encoder = export_tfhub_lib.get_bert_encoder(config)
    if set_weights is not None:
        set_weights(encoder)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = tf.train.Checkpoint(encoder=encoder).save(os.path.join(tmp, "ckpt"))
        export_tfhub_lib.export_model(
            export_dir, bert_config=config, model_checkpoint_path=ckpt,
            with_mlm=False, vocab_file=vocab_file, do_lower_case=do_lower_case)
    return export_dir


def export_preprocessor(export_dir: str, *, vocab_file: str, do_lower_case: bool,
                        seq_length: int = 128) -> str:
    """Exports a BERT preprocessor SavedModel (`tokenize`, `bert_pack_inputs`)."""
    from official.nlp.tools import export_tfhub_lib

    export_tfhub_lib.export_preprocessing(
        export_dir, vocab_file=vocab_file, do_lower_case=do_lower_case,
        tokenize_with_offsets=True, default_seq_length=seq_length)
    return export_dir
