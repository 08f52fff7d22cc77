"""Masked-LM pre-training (task `pretrain`, `kbft pretrain`): BERT's masking statistics,
the output projection tied to the word embeddings, the MLM head converted from a Hugging
Face checkpoint against a NumPy reference, a run whose loss falls and whose encoder the
toolkit loads, resume after SIGKILL, and the options refused by name."""

import json
import os
import signal
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from keras_bert_ft import cli
from keras_bert_ft.config import make_config
from keras_bert_ft.errors import KbftError
import keras_bert_ft.tasks.pretrain as mlm
from keras_bert_ft.training import runner

from conftest import NEGATIVE, POSITIVE, VOCAB

IGNORE = -1


# ------------------------------------------------------------------------------ masking


def random_batch(rows=256, length=48, vocab_size=1000, seed=0):
    """Ids of words of 1-3 pieces between [CLS] and [SEP], then padding, and each
    position's word number (-1 at [CLS], [SEP] and padding)."""
    rng = np.random.RandomState(seed)
    ids = np.zeros((rows, length), np.int32)
    words = np.full((rows, length), IGNORE, np.int32)
    for r in range(rows):
        used = rng.randint(length // 2, length - 1)
        ids[r, 0], ids[r, used] = 2, 3
        ids[r, 1:used] = rng.randint(10, vocab_size, used - 1)
        position, word = 1, 0
        while position < used:
            size = min(rng.randint(1, 4), used - position)
            words[r, position:position + size] = word
            position, word = position + size, word + 1
    return ids, words


def draw(ids, words, seed, **kwargs):
    settings = dict(mask_rate=0.15, mask_id=4, vocab_size=1000, max_predictions=ids.shape[1])
    settings.update(kwargs)
    masked, positions, labels = mlm.mask_tokens(ids, words, tf.constant(seed, tf.int64),
                                                **settings)
    return masked.numpy(), positions.numpy(), labels.numpy()


def chosen_of(positions, labels, shape):
    chosen = np.zeros(shape, bool)
    rows, cols = np.nonzero(labels != IGNORE)
    chosen[rows, positions[rows, cols]] = True
    return chosen


def test_masking_statistics_over_many_draws():
    ids, words = random_batch()
    eligible = words >= 0
    counts = {"chosen": 0, "eligible": 0, "mask": 0, "random": 0, "kept": 0}
    for step in range(8):
        masked, positions, labels = draw(ids, words, [7, step])
        chosen = chosen_of(positions, labels, ids.shape)
        assert not (chosen & ~eligible).any()  # never [CLS], [SEP] or padding
        assert (masked[~chosen] == ids[~chosen]).all()  # only chosen pieces change
        rows, cols = np.nonzero(labels != IGNORE)
        assert (labels[rows, cols] == ids[rows, positions[rows, cols]]).all()
        for r in range(len(ids)):  # whole words: a word's pieces all chosen or none
            for w in np.unique(words[r][eligible[r]]):
                assert len(set(chosen[r][words[r] == w])) == 1
        counts["chosen"] += chosen.sum()
        counts["eligible"] += eligible.sum()
        counts["mask"] += (chosen & (masked == 4)).sum()
        counts["kept"] += (chosen & (masked == ids)).sum()
        counts["random"] += (chosen & (masked != 4) & (masked != ids)).sum()
    rate = counts["chosen"] / counts["eligible"]
    assert rate == pytest.approx(0.15, abs=0.01)
    n = counts["chosen"]
    assert counts["mask"] / n == pytest.approx(0.8, abs=0.02)
    assert counts["random"] / n == pytest.approx(0.1, abs=0.015)  # 1/1000 random = same
    assert counts["kept"] / n == pytest.approx(0.1, abs=0.015)


def test_masks_differ_between_draws_and_repeat_for_the_same_seed():
    ids, words = random_batch(rows=32)
    first = draw(ids, words, [0, 1])
    assert not np.array_equal(first[0], draw(ids, words, [0, 2])[0])
    for a, b in zip(first, draw(ids, words, [0, 1])):
        np.testing.assert_array_equal(a, b)


def test_piece_masking_and_the_cap_on_predictions():
    ids, words = random_batch(rows=64)
    piece_words = np.where(words >= 0, np.arange(ids.shape[1])[None, :], IGNORE)
    _, positions, labels = draw(ids, piece_words, [1, 1], mask_rate=0.5)
    chosen = chosen_of(positions, labels, ids.shape)
    assert (chosen.sum(1) > 0).all()
    _, positions, labels = draw(ids, words, [1, 1], mask_rate=0.5, max_predictions=3)
    assert positions.shape == (64, 3) and ((labels != IGNORE).sum(1) <= 3).all()


def test_pack_keeps_words_whole_and_texts_apart():
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "fun", "##ly", "##s", "it"]
    continuation = mlm.continuation_pieces(vocab)
    pieces = [[5, 6, 7, 8], [6, 5], [8] * 9]  # a text may not start a word with ##
    ids, mask, words = mlm.pack(pieces, continuation, 8, cls_id=2, sep_id=3, pad_id=0)
    assert ids.tolist()[0] == [2, 5, 6, 7, 8, 6, 5, 3]
    assert words.tolist()[0] == [-1, 0, 0, 0, 1, 2, 3, -1]
    assert ids.tolist()[1] == [2] + [8] * 6 + [3]  # a long text is split
    assert ids.tolist()[2] == [2, 8, 8, 8, 3, 0, 0, 0] and mask.tolist()[2] == [1] * 5 + [0] * 3
    _, _, piece_words = mlm.pack(pieces, continuation, 8, cls_id=2, sep_id=3, pad_id=0,
                                 whole_words=False)
    assert piece_words.tolist()[0] == [-1, 0, 1, 2, 3, 4, 5, -1]


# ------------------------------------------------------------------------------- model


@pytest.fixture(scope="module")
def native2(encoder2):
    from keras_bert_ft.encoders.native import NativeEncoder
    return NativeEncoder(encoder2)


def tiny_inputs(vocab_size, seed=0):
    rng = np.random.RandomState(seed)
    ids = rng.randint(5, vocab_size, (2, 8)).astype(np.int32)
    ids[:, 0], ids[:, -1] = 2, 3
    return {"input_word_ids": ids, "input_mask": np.ones_like(ids),
            "input_type_ids": np.zeros_like(ids),
            "masked_lm_positions": np.array([[1, 3, 5], [2, 4, 6]], np.int32)}


def test_output_projection_is_the_embedding_variable(native2):
    model = mlm.build_masked_lm(native2, mask_rate=0.15, mask_id=4, seed=0, max_predictions=3)
    head = model.get_layer("mlm")
    table = native2.bert.get_embedding_table()
    assert head.embedding_table is table
    assert all(w is not table for w in head.weights)  # the encoder's, not the head's
    assert sum(w is table for w in model.trainable_weights) == 1
    inputs = tiny_inputs(len(VOCAB))
    unused = sorted(set(range(5, len(VOCAB))) - set(inputs["input_word_ids"].ravel()))[0]
    before = model(inputs).numpy()
    saved = table.numpy()
    try:
        table.assign(tf.tensor_scatter_nd_update(saved, [[unused]], [saved[unused] * 3.0]))
        after = model(inputs).numpy()
    finally:
        table.assign(saved)
    bias = head.output_bias.numpy()[unused]
    np.testing.assert_allclose(after[..., unused] - bias, 3.0 * (before[..., unused] - bias),
                               rtol=1e-4, atol=1e-5)
    others = np.arange(len(VOCAB)) != unused
    np.testing.assert_allclose(after[..., others], before[..., others], atol=1e-6)


def test_validation_mask_is_fixed(native2):
    model = mlm.build_masked_lm(native2, mask_rate=0.3, mask_id=4, seed=0, max_predictions=6)
    task = mlm.TASK
    model.compile(loss=task.loss({}), metrics=task.fit_metrics({}))
    ids, words = random_batch(rows=8, length=16, vocab_size=len(VOCAB))
    x = {"input_word_ids": ids, "input_mask": (ids > 0).astype(np.int32) | (words >= 0),
         "input_type_ids": np.zeros_like(ids)}
    runs = [model.evaluate(x, words, batch_size=4, verbose=0, return_dict=True)
            for _ in range(2)]
    assert runs[0] == runs[1]
    assert runs[0]["perplexity"] == pytest.approx(np.exp(runs[0]["mlm_loss"]), rel=1e-5)


# ---------------------------------------------------- head converted from a checkpoint


@pytest.mark.slow
def test_mlm_head_from_hugging_face_matches_numpy(tmp_path):
    from test_convert import TINY, _tiny_hf_weights, _write_hf, ref
    from keras_bert_ft.encoders import convert
    from keras_bert_ft.encoders.native import NativeEncoder
    h, v = TINY["hidden_size"], TINY["vocab_size"]
    rng = np.random.default_rng(5)
    weights = _tiny_hf_weights(seed=4)
    head = {"cls.predictions.transform.dense.weight": rng.standard_normal((h, h)) * 0.3,
            "cls.predictions.transform.dense.bias": rng.standard_normal(h) * 0.3,
            "cls.predictions.transform.LayerNorm.weight": 1 + rng.standard_normal(h) * 0.3,
            "cls.predictions.transform.LayerNorm.bias": rng.standard_normal(h) * 0.3,
            "cls.predictions.bias": rng.standard_normal(v) * 0.3}
    weights.update({k: np.asarray(x, np.float32) for k, x in head.items()})
    out = convert.convert_hf_bert(_write_hf(tmp_path / "hf", weights), str(tmp_path / "out"),
                                  seq_length=12)
    encoder_dir = os.path.join(out, "encoder")
    assert os.path.isfile(os.path.join(encoder_dir, mlm.HEAD_FILE))
    assert json.load(open(os.path.join(out, convert.INFO_FILE)))["mlm_head"] is True
    encoder = NativeEncoder(encoder_dir)
    model = mlm.build_masked_lm(encoder, mask_rate=0.15, mask_id=4, seed=0, max_predictions=3,
                                head_weights=mlm.read_head(encoder_dir))
    inputs = tiny_inputs(16, seed=2)
    got = model(inputs).numpy()

    sequence, _, _ = ref.bert_forward(
        weights, num_layers=TINY["num_layers"], num_heads=TINY["num_heads"],
        input_ids=inputs["input_word_ids"], attention_mask=inputs["input_mask"],
        token_type_ids=inputs["input_type_ids"])
    x = np.take_along_axis(sequence, inputs["masked_lm_positions"][..., None], axis=1)
    x = ref.gelu_exact(x @ head["cls.predictions.transform.dense.weight"].T
                       + head["cls.predictions.transform.dense.bias"])
    x = ref._layer_norm(x, head["cls.predictions.transform.LayerNorm.weight"],
                        head["cls.predictions.transform.LayerNorm.bias"])
    want = x @ weights["bert.embeddings.word_embeddings.weight"].astype(np.float64).T \
        + head["cls.predictions.bias"]
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_mlm_head_from_tf1_checkpoint(tmp_path):
    from test_convert import TINY, _tiny_hf_weights, _write_tf1
    from keras_bert_ft.encoders import convert
    weights = _tiny_hf_weights(seed=6)
    h, v = TINY["hidden_size"], TINY["vocab_size"]
    rng = np.random.default_rng(1)
    extra = {"cls/predictions/transform/dense/kernel": rng.standard_normal((h, h)),
             "cls/predictions/transform/dense/bias": rng.standard_normal(h),
             "cls/predictions/transform/LayerNorm/gamma": rng.standard_normal(h),
             "cls/predictions/transform/LayerNorm/beta": rng.standard_normal(h),
             "cls/predictions/output_bias": rng.standard_normal(v)}
    extra = {k: np.asarray(x, np.float32) for k, x in extra.items()}
    src = add_tf1_variables(_write_tf1(tmp_path / "uncased_full", weights, extra=False), extra)
    out = convert.convert_tf1_bert(src, str(tmp_path / "full"), seq_length=12)
    got = mlm.read_head(os.path.join(out, "encoder"))
    np.testing.assert_array_equal(got["transform/dense/kernel"],
                                  extra["cls/predictions/transform/dense/kernel"])
    np.testing.assert_array_equal(got["transform/layer_norm/gamma"],
                                  extra["cls/predictions/transform/LayerNorm/gamma"])
    np.testing.assert_array_equal(got["output_bias"], extra["cls/predictions/output_bias"])


def test_mlm_sub_object_of_a_tfhub_encoder_is_used(tmp_path, vocab_file):
    """A TF-Hub BERT encoder exported with an `mlm` sub-object (tf-models' exporter,
    with_mlm=True): its head is read, and our model's logits match the sub-object's."""
    import tempfile
    import tensorflow_hub as hub
    from official.nlp.tools import export_tfhub_lib
    from keras_bert_ft.encoders import tfhub_format
    from keras_bert_ft.encoders.native import NativeEncoder
    config = tfhub_format.bert_config(vocab_size=len(VOCAB), hidden_size=32, num_layers=2,
                                      num_heads=2, intermediate_size=64, max_seq_length=32)
    _, pretrainer = export_tfhub_lib._create_model(bert_config=config, encoder_config=None,
                                                   with_mlm=True)
    rng = np.random.default_rng(0)
    for weight in pretrainer.masked_lm.weights:
        if "embeddings" not in weight.name:
            weight.assign(rng.standard_normal(weight.shape).astype(np.float32) * 0.3)
    path = str(tmp_path / "with_mlm")
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = tf.train.Checkpoint(**pretrainer.checkpoint_items).save(os.path.join(tmp, "c"))
        export_tfhub_lib.export_model(path, bert_config=config, model_checkpoint_path=ckpt,
                                      with_mlm=True, vocab_file=vocab_file, do_lower_case=True)
    head = mlm.read_head(path)
    assert head is not None and head["output_bias"].shape == (len(VOCAB),)
    model = mlm.build_masked_lm(NativeEncoder(path), mask_rate=0.15, mask_id=4, seed=0,
                                max_predictions=3, head_weights=head)
    inputs = tiny_inputs(len(VOCAB), seed=3)
    want = hub.load(path).mlm({k: tf.constant(v) for k, v in inputs.items()})["mlm_logits"]
    np.testing.assert_allclose(model(inputs).numpy(), want.numpy(), atol=1e-4, rtol=0)


def add_tf1_variables(folder, extra):
    """Re-saves `folder`'s bert_model.ckpt with the variables `extra` added."""
    prefix = os.path.join(folder, "bert_model.ckpt")
    reader = tf.train.load_checkpoint(prefix)
    values = {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}
    values.update(extra)
    with tf.Graph().as_default():
        for name, value in values.items():
            tf.compat.v1.get_variable(name, initializer=tf.constant(value))
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, prefix, write_meta_graph=False)
    return folder


# ------------------------------------------------------------------------------ a run


def text_lines(n, seed=0):
    rng = np.random.RandomState(seed)
    lines = []
    for i in range(n):
        good = POSITIVE if i % 2 == 0 else NEGATIVE
        lines.append(f"the movie was {rng.choice(good)} and {rng.choice(good)} .")
    return lines


def write_lines(path, lines):
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n\n".join(lines) + "\n")  # blank lines between texts are skipped
    return str(path)


RUN = dict(epochs=6, batch_size=8, seq_length=16, learning_rate=3e-3, warmup_ratio=0.0,
           verbose=0)


@pytest.fixture(scope="module")
def pretrained(encoder2, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pretrain")
    train = write_lines(folder / "train.txt", text_lines(40, 0))
    dev = write_lines(folder / "dev.txt", text_lines(12, 1))
    out = str(folder / "out")
    result = mlm.pretrain([train], [dev], encoder=encoder2, output_dir=out, **RUN)
    return result, out, train, dev


@pytest.mark.slow
def test_pretrain_run_loss_falls_and_writes_an_encoder(pretrained):
    result, out, _, _ = pretrained
    history = json.load(open(os.path.join(out, "history.json")))
    assert len(history["val_mlm_loss"]) == RUN["epochs"]
    assert history["val_mlm_loss"][-1] < history["val_mlm_loss"][0] - 0.3
    np.testing.assert_allclose(history["val_perplexity"], np.exp(history["val_mlm_loss"]),
                               rtol=1e-4)
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert metrics["mlm_head"] == "initialised"
    assert metrics["eval_loss"] == pytest.approx(history["val_mlm_loss"][-1], abs=1e-5)
    assert metrics["perplexity"] == pytest.approx(np.exp(metrics["eval_loss"]), rel=1e-5)
    assert metrics["train_examples"] == 40
    for name in ("encoder", "preprocessor", "timings.json", "run_config.json"):
        assert os.path.exists(os.path.join(out, name)), name
    assert not [p for p in os.listdir(out) if "partial" in p or ".tmp" in p]
    assert os.path.isfile(os.path.join(out, "encoder", mlm.HEAD_FILE))
    saved = mlm.read_head(os.path.join(out, "encoder"))
    trained = result.model.get_layer("mlm").head_weights()
    for name in mlm.HEAD_WEIGHTS:
        np.testing.assert_array_equal(saved[name], trained[name])
    with pytest.raises(KbftError, match="no raw-string export.*OUTPUT/encoder"):
        result.export(os.path.join(out, "export"))
    assert not os.path.exists(os.path.join(out, "export"))


@pytest.mark.slow
def test_pretrained_encoder_loads_in_hub_encoder_and_fine_tune(pretrained, tmp_path):
    from keras_bert_ft.encoders.hub_encoder import HubEncoder
    from conftest import sentiment_rows
    result, out, _, _ = pretrained
    encoder_dir = os.path.join(out, "encoder")
    hub_encoder = HubEncoder(encoder_dir)
    by_name = {v.name.split(":")[0]: v.numpy() for v in hub_encoder.weights}
    np.testing.assert_allclose(by_name["word_embeddings/embeddings"],
                               result.model.encoder.bert.get_embedding_table().numpy(),
                               atol=1e-6)
    tuned = runner.fine_tune(sentiment_rows(16), sentiment_rows(8, 1), encoder=encoder_dir,
                             epochs=1, batch_size=8, seq_length=16, verbose=0)
    assert "accuracy" in tuned.metrics


@pytest.mark.slow
def test_kbft_pretrain_continues_from_the_saved_head(pretrained, tmp_path, capsys):
    _, out, train, dev = pretrained
    again = str(tmp_path / "again")
    words = tmp_path / "words.txt"
    words.write_text("funly\n")
    code = cli.main(["pretrain", "--text", train, "--validation", dev, "--encoder",
                     os.path.join(out, "encoder"), "--output", again, "--epochs", "1",
                     "--batch-size", "8", "--seq-length", "16", "--verbose", "0",
                     "--add-tokens", str(words)])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert f"encoder: {os.path.join(again, 'encoder')}" in printed
    metrics = json.load(open(os.path.join(again, "metrics.json")))
    assert metrics["mlm_head"] == "checkpoint"
    # The first epoch of the second run starts where the first run's head left off.
    first = json.load(open(os.path.join(out, "history.json")))["val_mlm_loss"][-1]
    assert metrics["eval_loss"] < first + 0.5
    # --add-tokens: the grown vocabulary and table are what the run writes.
    old_head = mlm.read_head(os.path.join(out, "encoder"))
    head = mlm.read_head(os.path.join(again, "encoder"))
    assert head["output_bias"].shape == (len(VOCAB) + 1,)
    with open(os.path.join(again, "encoder", "assets", "vocab.txt")) as f:
        assert f.read().splitlines() == VOCAB + ["funly"]
    from keras_bert_ft.encoders.hub_encoder import HubEncoder
    table = {v.name.split(":")[0]: v for v in HubEncoder(os.path.join(again, "encoder")).weights}
    assert table["word_embeddings/embeddings"].shape[0] == len(VOCAB) + 1
    assert old_head["output_bias"].shape == (len(VOCAB),)


@pytest.mark.slow
def test_a_pretrain_run_folder_is_refused_where_a_model_is_expected(pretrained, capsys):
    from keras_bert_ft.export.restore import restore, saved_config
    _, out, train, _ = pretrained
    encoder = os.path.join(out, "encoder")
    for read in (restore, saved_config):
        with pytest.raises(KbftError, match=f"kbft pretrain run.*--encoder {encoder}"):
            read(out)
    assert cli.main(["predict", "--model", out, "--text", "a good film"]) != 0
    assert f"{out} is a kbft pretrain run" in capsys.readouterr().err


@pytest.mark.slow
def test_sigkill_mid_pretraining_then_the_same_command_resumes(tmp_path, encoder2):
    from test_fault_tolerance import finish, start
    train = write_lines(tmp_path / "train.txt", text_lines(48, 0))
    dev = write_lines(tmp_path / "dev.txt", text_lines(12, 1))

    def command(out):
        return [sys.executable, "-m", "keras_bert_ft.cli", "pretrain", "--text", train,
                "--validation", dev, "--encoder", encoder2, "--output", out, "--epochs", "2",
                "--batch-size", "4", "--seq-length", "16", "--learning-rate", "1e-3",
                "--backup-steps", "2", "--deterministic", "--verbose", "0"]

    killed, reference = str(tmp_path / "killed"), str(tmp_path / "reference")
    logs = {name: str(tmp_path / f"{name}.log") for name in ("killed", "resumed", "reference")}
    with open(logs["reference"], "w") as ref_log, open(logs["killed"], "w") as kill_log:
        ref = start(command(reference), ref_log)
        proc = start(command(killed), kill_log)
        state = os.path.join(killed, "backup", "chief", "checkpoint")
        deadline = time.time() + 900
        while not os.path.exists(state) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert os.path.exists(state), open(logs["killed"]).read()[-3000:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not os.path.exists(os.path.join(killed, "encoder"))
    with open(logs["resumed"], "w") as log:
        # A loaded CI machine (other test workers) can take minutes per process.
        resumed = finish(start(command(killed), log), logs["resumed"], timeout=900)
    assert "resuming from the backup" in resumed
    finish(ref, logs["reference"], timeout=900)
    metrics = [json.load(open(os.path.join(d, "metrics.json"))) for d in (killed, reference)]
    assert metrics[0]["eval_loss"] == pytest.approx(metrics[1]["eval_loss"], abs=1e-5)
    histories = [json.load(open(os.path.join(d, "history.json"))) for d in (killed, reference)]
    np.testing.assert_allclose(histories[0]["val_loss"], histories[1]["val_loss"], atol=1e-5)
    for d in (killed, reference):
        assert not os.path.exists(os.path.join(d, "backup"))
        assert os.path.isdir(os.path.join(d, "encoder"))


# ------------------------------------------------------------------------------ refusals


def refused(call) -> str:
    start = time.perf_counter()
    with pytest.raises(KbftError) as err:
        call()
    assert time.perf_counter() - start < 3.0  # before any model is built
    return str(err.value)


@pytest.mark.parametrize("name, value", [("label_column", "y"), ("class_weight", "balanced"),
                                         ("pooling", "mean"), ("head_units", (8,)),
                                         ("dropout", 0.2), ("embed_pooling", "cls")])
def test_options_of_other_tasks_are_refused_for_pretrain(name, value, tmp_path):
    message = refused(lambda: mlm.pretrain(str(tmp_path / "missing.txt"), **{name: value}))
    assert message.startswith(f"{name} does not apply to task 'pretrain'"), message


@pytest.mark.parametrize("name, value", [("mask_rate", 0.3), ("whole_word_masking", False)])
def test_pretrain_options_are_refused_for_other_tasks(name, value, tmp_path):
    message = refused(lambda: runner.fine_tune(str(tmp_path / "missing.tsv"), **{name: value}))
    assert message.startswith(f"{name} does not apply to task 'classification' (it applies "
                              "to pretrain)"), message


def test_bad_pretrain_values_are_refused(tmp_path):
    message = refused(lambda: mlm.pretrain(str(tmp_path / "x.txt"), mask_rate=2))
    assert message == "mask_rate must be in (0, 1). Received: mask_rate=2"
    message = refused(lambda: mlm.pretrain(str(tmp_path / "x.txt"), encoder_impl="hub"))
    assert message.startswith("encoder_impl must be native or auto for task 'pretrain'")
    with pytest.raises(KbftError, match="whole_word_masking must be True or False"):
        make_config(task="pretrain", whole_word_masking="yes")
    with pytest.raises(KbftError, match="train must be an existing text file"):
        mlm.load_texts(str(tmp_path / "missing.txt"))
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n")
    with pytest.raises(KbftError, match="at least one non-blank line"):
        mlm.load_texts(str(blank))


@pytest.mark.parametrize("argv, expected", [
    (["--mask-rate", "2"], "error: --mask-rate must be in (0, 1). Received: --mask-rate=2.0"),
    (["--label-column", "y"], "error: --label-column does not apply to --task pretrain"),
    (["--encoder-impl", "hub"], "error: --encoder-impl must be native or auto for task "
                                "'pretrain'"),
])
def test_kbft_pretrain_refuses_by_flag(argv, expected, tmp_path, capsys):
    start = time.perf_counter()
    code = cli.main(["pretrain", "--text", str(tmp_path / "t.txt"), "--output",
                     str(tmp_path / "out"), *argv])
    assert time.perf_counter() - start < 3.0
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and err.startswith(expected), err
    assert not os.path.exists(tmp_path / "out")


def test_kbft_train_refuses_pretrain_flags(tmp_path, capsys):
    code = cli.main(["train", "--train", str(tmp_path / "t.tsv"), "--output",
                     str(tmp_path / "out"), "--mask-rate", "0.2"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: --mask-rate does not apply to --task "
                                        "classification"), err


# ---------------------------------------------------------------------------- add_tokens


def test_add_tokens_keeps_old_ids_and_starts_new_rows_at_the_mean_of_pieces(encoder2,
                                                                             tmp_path):
    from keras_bert_ft.encoders.native import NativeEncoder
    from keras_bert_ft.tasks import get_task
    from keras_bert_ft.training import build
    from conftest import sentiment_rows
    words = tmp_path / "words.txt"
    words.write_text("Funly\n\nthe\nplots\n")  # "the" is known; lower-cased like the text
    config = make_config(task="classification", encoder=encoder2, add_tokens=str(words),
                         seq_length=16, verbose=0)
    task = get_task("classification")
    info = task.describe(task.read(sentiment_rows(4), config), config)
    model, encoder = build.build_model(task, config, info, tf.distribute.get_strategy())
    preprocessor = build.build_preprocessor(encoder, config)
    old = NativeEncoder(encoder2).bert.get_embedding_table().numpy()
    new = encoder.bert.get_embedding_table().numpy()
    n = len(VOCAB)
    assert new.shape == (n + 2, old.shape[1])
    np.testing.assert_array_equal(new[:n], old)  # every old id keeps its row
    index = VOCAB.index
    np.testing.assert_allclose(new[n], old[[index("fun"), index("##ly")]].mean(0), rtol=1e-6)
    np.testing.assert_allclose(new[n + 1], old[[index("plot"), index("##s")]].mean(0),
                               rtol=1e-6)
    with open(preprocessor.source, encoding="utf-8") as f:
        assert f.read().splitlines() == VOCAB + ["funly", "plots"]
    pieces = preprocessor.tokenize(tf.constant(["Funly plots the movie"])).to_list()
    assert pieces == [[n, n + 1, index("the"), index("movie")]]
    assert model.encoder is encoder and encoder.trainable_weights[0].shape[0] == n + 2


def test_add_tokens_refusals(tmp_path):
    words = tmp_path / "words.txt"
    words.write_text("fine\n")
    message = refused(lambda: runner.fine_tune(str(tmp_path / "t.tsv"), encoder_impl="hub",
                                               add_tokens=str(words)))
    assert message.startswith("encoder_impl must be native or auto with add_tokens")
    message = refused(lambda: runner.fine_tune(str(tmp_path / "t.tsv"), add_tokens=str(words),
                                               preprocessor=str(tmp_path / "preprocess")))
    assert message.startswith("add_tokens must be used with a vocab.txt preprocessor")
    from keras_bert_ft.encoders.added_tokens import read_added_words
    bad = tmp_path / "bad.txt"
    bad.write_text("e-mail\n")
    with pytest.raises(KbftError, match="add_tokens must hold whole words"):
        read_added_words(str(bad), VOCAB, True)
    with pytest.raises(KbftError, match="add_tokens must be an existing text file"):
        read_added_words(str(tmp_path / "none.txt"), VOCAB, True)
