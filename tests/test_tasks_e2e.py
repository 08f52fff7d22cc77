"""Tagging, span QA and summarisation end to end on data the tests build: train, score with
the task metric, export, and reload in a bare process (tensorflow + tensorflow_text only)
that must give identical outputs."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from keras_bert_ft import tasks
from keras_bert_ft import cli
from keras_bert_ft.errors import KbftError
from keras_bert_ft.tasks.qa import QAExample

POSITIVE = ["good", "great", "fun", "love"]
THINGS = ["movie", "film", "plot", "acting"]
FILLER = ["the", "a", "was", "is", "not", "it", "and"]
TINY = dict(epochs=4, batch_size=16, learning_rate=3e-3, seq_length=32, padding="static",
            verbose=0)

# A separate interpreter that imports only tensorflow and tensorflow_text.
BARE_LOADER = r"""
import json, sys
import numpy as np
import tensorflow as tf
import tensorflow_text  # registers the tokenizer ops the exports use
assert "keras_bert_ft" not in sys.modules and "tensorflow_hub" not in sys.modules

def plain(value):
    value = value.numpy()
    if value.dtype == object:
        return np.vectorize(lambda b: b.decode("utf-8"), otypes=[object])(value).tolist()
    return value.tolist()

out = []
for job in json.loads(sys.argv[1]):
    serve = tf.saved_model.load(job["export"]).signatures["serving_default"]
    result = serve(**{k: tf.constant(v) for k, v in job["inputs"].items()})
    out.append({k: plain(v) for k, v in result.items()})
print(json.dumps(out))
"""


def plain(batch):
    return {k: (np.vectorize(lambda b: b.decode("utf-8"), otypes=[object])(v).tolist()
                if v.dtype == object else v.tolist()) for k, v in batch.items()}


def tagged_sentence(rng):
    """Tags follow the words: things are B-OBJ, good / great / love B-POS, and "very fun"
    (the only place either word appears) a two-word B-POS I-POS entity."""
    words, tags = [], []
    for _ in range(rng.randint(3, 7)):
        r = rng.rand()
        if r < 0.2:
            words += ["very", "fun"]
            tags += ["B-POS", "I-POS"]
        elif r < 0.4:
            words.append(rng.choice(["good", "great", "love"]))
            tags.append("B-POS")
        elif r < 0.6:
            words.append(rng.choice(THINGS))
            tags.append("B-OBJ")
        else:
            words.append(rng.choice(FILLER))
            tags.append("O")
    return {"tokens": words, "tags": tags}


def qa_example(rng):
    """The answer is the word after the thing the question names; contexts run past
    one 24-token window."""
    words = list(rng.choice(FILLER + ["very"], rng.randint(6, 22)))
    thing, answer = rng.choice(THINGS), rng.choice(POSITIVE)
    at = rng.randint(0, len(words) + 1)
    words[at:at] = [thing, answer]
    start = len(" ".join(words[:at + 1])) + 1
    return QAExample(f"how is the {thing} ?", " ".join(words), [answer], [start])


def document(rng):
    """Three to five short sentences; the oracle summary is the lead (the first two).
    A randomly initialised 2-layer encoder does not learn to pool a sentence's words
    into its [CLS] in a few dozen steps, but [CLS] positions and interval segment ids
    make the lead learnable, which checks that each score comes from its own [CLS]."""
    n = rng.randint(3, 6)
    sentences = [" ".join(rng.choice(FILLER + THINGS + POSITIVE, rng.randint(1, 4))) + " ."
                 for _ in range(n)]
    return {"sentences": sentences, "labels": [1, 1] + [0] * (n - 2)}


@pytest.fixture(scope="module")
def tagging(encoder2):
    rng = np.random.RandomState(0)
    train = [tagged_sentence(rng) for _ in range(160)]
    dev = [tagged_sentence(rng) for _ in range(40)]
    return tasks.fine_tune_task("tagging", train, dev, encoder=encoder2, strategy="mirrored",
                                **dict(TINY, epochs=6))


@pytest.fixture(scope="module")
def qa(encoder2):
    rng = np.random.RandomState(1)
    train = [qa_example(rng) for _ in range(160)]
    dev = [qa_example(rng) for _ in range(40)]
    return tasks.fine_tune_task("qa", train, dev, encoder=encoder2, strategy="cpu",
                                **dict(TINY, epochs=2, seq_length=24, doc_stride=6,
                                       max_query_length=6))


@pytest.fixture(scope="module")
def summarization(encoder2):
    rng = np.random.RandomState(2)
    train = [document(rng) for _ in range(160)]
    dev = [document(rng) for _ in range(30)]
    return tasks.fine_tune_task("summarization", train, dev, encoder=encoder2,
                                strategy="cpu", top_k=2, **TINY)


def test_tagging_learns_entities_under_mirrored_strategy(tagging):
    assert tagging.strategy.num_replicas_in_sync == 2
    assert tagging.metrics["entity_f1"] >= 0.8, tagging.metrics
    assert tagging.metrics["token_accuracy"] >= 0.85
    row = tagging.predict(["the  very fun\tfilm"])[0]
    assert row["words"] == ["the", "very", "fun", "film"]
    assert row["tags"] == ["O", "B-POS", "I-POS", "B-OBJ"]


def test_qa_finds_answers_across_windows(qa):
    assert qa.metrics["train_windows"] > qa.metrics["train_examples"]  # long contexts split
    assert qa.metrics["f1"] >= 0.8 and qa.metrics["exact_match"] >= 0.8, qa.metrics
    context = "it was the a and is not it the movie fun and it was a the not is it"
    row = qa.predict(["how is the movie ?"], [context])[0]
    assert row["answer"] == "fun" and context[row["answer_start"]:].startswith("fun")


def test_summarization_picks_the_oracle_sentences(summarization):
    assert summarization.metrics["sentence_f1"] >= 0.9, summarization.metrics
    assert summarization.metrics["rouge2"] >= 0.9
    row = summarization.predict(["the plot was not . it is fun ! a movie .  the film was great ."])[0]
    assert row["sentence_ids"] == [0, 1]
    assert row["summary"] == "the plot was not . it is fun !"
    assert summarization.predict([["a b", "c"]])[0]["sentences"] == ["a b", "c"]


def test_exports_reload_in_a_bare_process_with_identical_outputs(
        tagging, qa, summarization, tmp_path):
    texts = ["the very good film was fun", "a  plot\tis great", ""]
    questions = ["how is the plot ?", "how is the acting ?"]
    contexts = ["the plot great and the film fun", "it was the acting love " * 4]
    documents = ["the movie . it is good ! a film is great .", "one sentence"]
    jobs, expected = [], []
    for name, result, inputs in (
            ("tagging", tagging, {"text": texts}),
            ("qa", qa, {"question": questions, "context": contexts}),
            ("summarization", summarization, {"document": documents})):
        jobs.append({"export": result.export(str(tmp_path / name)), "inputs": inputs})
        expected.append(plain(result.serving.run(*inputs.values())[0]))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", BARE_LOADER, json.dumps(jobs)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    reloaded = json.loads(proc.stdout.strip().splitlines()[-1])
    for want, got in zip(expected, reloaded):
        assert set(want) == set(got)
        for key in want:
            if np.asarray(want[key]).dtype.kind == "f":
                np.testing.assert_allclose(got[key], want[key], rtol=0, atol=1e-6)
            else:
                assert got[key] == want[key], key


def test_cli_train_task_and_predict(tagging, tmp_path, monkeypatch, capsys):
    """`kbft train --task`: flags reach the config, the run is saved, `kbft predict`
    reads the export (training itself is the fixture's, passed through)."""
    from keras_bert_ft.training import runner
    seen = []

    def fake_fine_tune(train, validation, config, test=None):
        seen.append((config.task, train, validation, config))
        if config.task != "tagging":
            raise KbftError("stop here")
        return tagging

    monkeypatch.setattr(runner, "fine_tune", fake_fine_tune)
    out = str(tmp_path / "run")
    assert cli.main(["train", "--task", "tagging", "--train", "t.conll", "--top-k", "2",
                     "--output", out]) == 2
    assert "--top-k does not apply to --task tagging" in capsys.readouterr().err
    assert cli.main(["train", "--task", "tagging", "--train", "t.conll", "--validation",
                     "d.conll", "--epochs", "2", "--seq-length", "32",
                     "--cased", "--output", out]) == 0
    task, train, validation, config = seen[-1]
    assert (task, train, validation) == ("tagging", "t.conll", "d.conll")
    assert (config.epochs, config.seq_length, config.lower_case) == (2, 32, False)
    assert json.load(open(os.path.join(out, "metrics.json"))) == pytest.approx(tagging.metrics)
    run_config = json.load(open(os.path.join(out, "run_config.json")))
    assert run_config["task"] == "tagging" and run_config["tag_names"] == tagging.tag_names
    capsys.readouterr()
    text = "the very fun film"
    assert cli.main(["predict", "--model", os.path.join(out, "export"), "--text", text]) == 0
    assert json.loads(capsys.readouterr().out) == tagging.predict([text])[0]
    assert cli.main(["predict", "--model", os.path.join(out, "export"), "--text", "a",
                     "--text-pair", "b"]) == 2
    assert "--text-pair must be nothing" in capsys.readouterr().err

    squad = tmp_path / "squad.json"
    squad.write_text(json.dumps({"data": [
        {"title": t, "paragraphs": [{"context": "ab", "qas": [
            {"id": t, "question": "q", "answers": [{"text": "b", "answer_start": 1}]}]}]}
        for t in ("first", "second", "third")]}))
    assert cli.main(["train", "--task", "qa", "--train", str(squad), "--train-articles", "2",
                     "--doc-stride", "64", "--output", out]) == 2
    task, train, validation, config = seen[-1]
    assert [e.qid for e in train] == ["first", "second"] and [e.qid for e in validation] == ["third"]
    assert config.doc_stride == 64
    assert cli.main(["train", "--task", "tagging", "--train", "x", "--train-articles", "3",
                     "--output", out]) == 2
    assert "--train-articles must be used only with --task qa" in capsys.readouterr().err


def test_tasks_build_the_native_encoder_under_mixed_precision_with_layer_decay(encoder2):
    """QA (and every task through the one runner) takes the native encoder, a mixed-precision
    policy that reaches its matmuls (variables and logits stay float32) and layer-wise
    rates; the global policy is restored afterwards."""
    import tensorflow as tf
    from keras_bert_ft._keras import keras
    from keras_bert_ft.encoders.native import NativeEncoder

    rng = np.random.RandomState(3)
    train = [qa_example(rng) for _ in range(32)]
    result = tasks.fine_tune_task(
        "qa", train, None, encoder=encoder2, strategy="cpu",
        **dict(TINY, epochs=1, seq_length=24, doc_stride=6, max_query_length=6,
               mixed_precision="mixed_bfloat16", layer_decay=0.5, encoder_learning_rate=1e-3))
    model = result.model
    assert isinstance(model.encoder, NativeEncoder)
    assert model.encoder.compute_dtype == "bfloat16"
    assert {v.dtype for v in model.weights} == {tf.float32}
    assert model.output.dtype == tf.float32
    assert np.isfinite(result.history["loss"]).all()
    assert keras.mixed_precision.global_policy().name == "float32"
    # head 3e-3; top layer 1e-3 (1/3); layer_0 x0.5; embeddings x0.25.
    factors = sorted(set(round(f, 6) for f in
                         model.optimizer.learning_rate_multipliers.values()))
    assert factors == [round(1 / 12, 6), round(1 / 6, 6), round(1 / 3, 6)]


@pytest.mark.parametrize("field, value", [("encoder_impl", "torch"),
                                          ("mixed_precision", "fp8"),
                                          ("layer_decay", 1.5),
                                          ("encoder_learning_rate", -1.0),
                                          ("cloze", -1),
                                          ("cloze_per_sentence", 0)])
def test_task_config_names_bad_speed_and_rate_settings(field, value):
    with pytest.raises(KbftError, match=f"Received: {field}="):
        tasks.fine_tune_task("qa", [], None, **{field: value})


def test_qa_runs_restore_from_weights_and_ensemble_by_mean_logits(qa, tmp_path):
    """`restore_qa` rebuilds a run from its saved weights (same answers); `ensemble_qa`
    averages the members' start/end logits, scores, and exports like one run."""
    import tensorflow as tf
    from keras_bert_ft.tasks.qa import ensemble_qa, restore_qa

    weights = str(tmp_path / "member.h5")
    qa.model.save_weights(weights)
    restored = restore_qa(weights, qa.config)
    questions = ["how is the plot ?", "how is the acting ?"]
    contexts = ["the plot great and the film fun", "it was the acting love " * 4]
    assert restored.predict(questions, contexts) == qa.predict(questions, contexts)

    rng = np.random.RandomState(1)
    train = [qa_example(rng) for _ in range(160)]
    dev = [qa_example(rng) for _ in range(40)]
    other = tasks.fine_tune_task("qa", train, None, qa.config, strategy="cpu", seed=7)
    both = ensemble_qa([restored, other], dev)
    assert both.metrics["members"] == 2 and both.metrics["f1"] >= 0.8, both.metrics
    features = {k: tf.constant(v) for k, v in qa.preprocessor(
        tf.constant(questions), tf.constant(contexts)).items()}
    mean = (restored.model(features) + other.model(features)) / 2
    np.testing.assert_allclose(both.model(features).numpy(), mean.numpy(), atol=1e-5)
    assert not np.allclose(restored.model(features).numpy(), other.model(features).numpy())

    export = both.export(str(tmp_path / "ensemble"))
    proc = subprocess.run([sys.executable, "-c", BARE_LOADER, json.dumps(
        [{"export": export, "inputs": {"question": questions, "context": contexts}}])],
        capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    reloaded = json.loads(proc.stdout.strip().splitlines()[-1])[0]
    served = both.predict(questions, contexts)
    assert reloaded["answer"] == [row["answer"] for row in served]
    np.testing.assert_allclose(reloaded["score"], [row["score"] for row in served], atol=1e-5)


def test_qa_ensembles_and_restores_name_bad_members(qa, tmp_path):
    from keras_bert_ft.tasks.qa import ensemble_qa, restore_qa

    with pytest.raises(KbftError, match="Received: members=\\[\\]"):
        ensemble_qa([])
    with pytest.raises(KbftError, match="members\\[1\\]"):
        ensemble_qa([qa, "run"])
    import dataclasses
    from keras_bert_ft.tasks.qa import QAServing
    strided = dataclasses.replace(qa, serving=QAServing(
        qa.model, qa.preprocessor, dataclasses.replace(qa.config, doc_stride=3)))
    with pytest.raises(KbftError, match="members\\[1\\] must be the window and decoding"):
        ensemble_qa([qa, strided])
    with pytest.raises(KbftError, match="Received: weights="):
        restore_qa(str(tmp_path / "missing.h5"), qa.config)


def test_cli_qa_seeds_train_an_ensemble(qa, tmp_path, monkeypatch, capsys):
    """`kbft train --task qa --seeds 2`: one run per seed (from --seed up), saved as their
    ensemble with each run's metrics; other sequence tasks refuse --seeds."""
    from keras_bert_ft.training import runner
    seen = []

    def fake_fine_tune(train, validation, config):
        seen.append(config.seed)
        return qa

    monkeypatch.setattr(runner, "fine_tune", fake_fine_tune)
    rng = np.random.RandomState(5)
    articles = [{"title": f"t{i}", "paragraphs": [{"context": ex.context, "qas": [
        {"id": f"q{i}", "question": ex.question,
         "answers": [{"text": ex.answers[0], "answer_start": ex.answer_starts[0]}]}]}]}
        for i, ex in enumerate(qa_example(rng) for _ in range(12))]
    squad = tmp_path / "squad.json"
    squad.write_text(json.dumps({"data": articles}))
    out = str(tmp_path / "ensemble")
    assert cli.main(["train", "--task", "qa", "--train", str(squad), "--train-articles", "8",
                     "--seeds", "2", "--seed", "3", "--seq-length", "24", "--doc-stride", "6",
                     "--max-query-length", "6", "--output", out]) == 0
    assert seen == [3, 4]
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert metrics["members"] == 2 and metrics["seeds"] == [3, 4]
    assert metrics["eval_questions"] == 4 and 0.0 <= metrics["f1"] <= 1.0
    assert len(metrics["member_metrics"]) == 2
    assert os.path.isdir(os.path.join(out, "export"))
    capsys.readouterr()
    assert cli.main(["train", "--task", "tagging", "--train", "t.conll", "--seeds", "2",
                     "--output", out]) == 2
    assert "--seeds must be used with --task classification" in capsys.readouterr().err
