"""The TPU-mode train step of every task compiles under XLA on CPU: static padding,
mixed_bfloat16, jit_compile and the native encoder, fed static-shaped int32 batches
`[batch, seq_length]` (what `tpu.static_int32_batch` demands of a TPU pipeline)."""

import numpy as np
import pytest
import tensorflow as tf

from keras_bert_ft import tasks
from keras_bert_ft.data import pipeline
from keras_bert_ft.data.preprocessing import INPUT_KEYS
from keras_bert_ft.encoders.native import NativeEncoder
from keras_bert_ft.tasks.base import read_data
from keras_bert_ft.training import build, runner, tpu

from conftest import pair_rows, sentiment_rows
from test_tasks_e2e import document, qa_example, tagged_sentence

BATCH, SEQ = 4, 24
TPU_MODE = dict(padding="static", mixed_precision="mixed_bfloat16", jit_compile=True,
                encoder_impl="native", epochs=1, batch_size=BATCH, seq_length=SEQ,
                learning_rate=1e-3, strategy="cpu", verbose=0)


def multilabel_rows(n):
    rows = sentiment_rows(n)
    return [dict(r, label="pos,fun" if r["label"] == "pos" else "neg") for r in rows]


def regression_rows(n):
    return [dict(r, label=1.0 if r["label"] == "pos" else 0.0) for r in sentiment_rows(n)]


def task_data(name):
    """(task, train, validation, extra config) with a few steps of tiny data."""
    rng = np.random.RandomState(0)
    if name == "classification":
        return "classification", sentiment_rows(12), sentiment_rows(4, 1), {}
    if name == "pairs":
        return ("classification", pair_rows(12), pair_rows(4, 1),
                {"text_column": "a", "text_pair_column": "b"})
    if name == "multilabel":
        return "multilabel", multilabel_rows(12), multilabel_rows(4), {}
    if name == "regression":
        return "regression", regression_rows(12), regression_rows(4), {}
    if name == "tagging":
        return ("tagging", [tagged_sentence(rng) for _ in range(12)],
                [tagged_sentence(rng) for _ in range(4)], {})
    if name == "qa":
        return ("qa", [qa_example(rng) for _ in range(8)], [qa_example(rng) for _ in range(4)],
                {"doc_stride": 6, "max_query_length": 6})
    if name == "pretrain":
        texts = [f"the movie was {r['sentence'].split()[-1]} and the plot was not bad ."
                 for r in sentiment_rows(32)]
        return "pretrain", texts, texts[:8], {}
    return ("summarization", [document(rng) for _ in range(12)],
            [document(rng) for _ in range(4)], {"top_k": 2})


NAMES = ("classification", "pairs", "multilabel", "regression", "tagging", "qa",
         "summarization", "pretrain")


def check_static_int32(element_spec, seq_length=SEQ):
    features, labels = element_spec
    for key in INPUT_KEYS:
        assert features[key].dtype == tf.int32, key
        assert features[key].shape.as_list() == [BATCH, seq_length], (key, features[key].shape)
    for key, spec in features.items():  # extra inputs (cls_positions): fixed shapes too
        assert spec.dtype == tf.int32 and spec.shape.is_fully_defined(), (key, spec)
    assert labels.shape.is_fully_defined() and labels.shape[0] == BATCH, labels


@pytest.mark.parametrize("name", NAMES)
def test_tpu_mode_train_step_compiles_under_xla(name, encoder2, monkeypatch):
    task, train, validation, extra = task_data(name)
    fed, raw = [], []
    original = runner.training_input

    def static_input(features, labels, strategy, **kwargs):
        # What a TPU worker's pipeline does: every batch through static_int32_batch,
        # which refuses (while tracing) any input that is not int32 [batch, seq_length].
        made = original(features, labels, strategy, **kwargs)
        seq_length = int(features["input_mask"].shape[1])
        raw.append(made.data.element_spec)
        made.data = made.data.map(tpu.static_int32_batch(BATCH, seq_length))
        fed.append(made.data.element_spec)
        return made

    monkeypatch.setattr(runner, "training_input", static_input)
    result = tasks.fine_tune_task(task, train, validation, encoder=encoder2,
                                  **dict(TPU_MODE, **extra))
    assert result.pair == (name == "pairs")
    assert fed, "the runner did not build its training input through training_input"
    check_static_int32(fed[0])
    for key, spec in raw[0][0].items():  # already static and integer before the TPU map
        assert spec.dtype.is_integer and spec.shape == fed[0][0][key].shape, (key, spec)
    assert np.isfinite(result.history["loss"]).all() and len(result.history["loss"]) == 1
    model = result.model
    assert isinstance(model.encoder, NativeEncoder)
    assert model.encoder.dtype_policy.name == "mixed_bfloat16"
    assert model.encoder.compute_dtype == "bfloat16"
    assert model.dtype_policy.name == "mixed_bfloat16"
    assert {v.dtype for v in model.weights} == {tf.float32}
    assert result.config.jit_compile and result.config.padding == "static"
    assert model._jit_compile  # the train step was compiled with XLA

    # The pipeline itself, from the task's own featurize output, as a TPU run builds it.
    plugin = tasks.get_task(task)
    config = result.config
    train_data, info, _ = read_data(plugin, train, None, config)
    preprocessor = build.build_preprocessor(model.encoder, config, needs_vocab=plugin.needs_vocab)
    features = plugin.featurize(train_data, preprocessor, config, info)
    dataset = pipeline.batches(features.features, features.labels, batch_size=BATCH,
                               padding="static", drop_remainder=True,
                               token_labels=plugin.token_labels)
    dataset = dataset.map(tpu.static_int32_batch(BATCH, config.seq_length))
    check_static_int32(dataset.element_spec, config.seq_length)
    batches = list(dataset)
    assert len(batches) == len(features) // BATCH
    for x, _ in batches:
        assert all(x[k].dtype == tf.int32 and x[k].shape == (BATCH, SEQ) for k in INPUT_KEYS)
