"""Run folders and exports read back with the fine-tuned weights, never the pretrained ones:
`export.restore`, and `kbft diff` / `kbft probe` on top of it, for default runs (native
encoder) and `--encoder-impl hub` runs; weights of another architecture fail loudly."""

import json
import os
import re
import shutil

import numpy as np
import pytest

import keras_bert_ft as kbft
from keras_bert_ft import cli
from keras_bert_ft.encoders.native import make_encoder
from keras_bert_ft.errors import KbftError
from keras_bert_ft.export.restore import restore

IMPLS = ("auto", "hub")
FROZEN = ("embeddings", "layer_0", "layer_1", "layer_2")  # trainable_layers=1 of 4
TRAINED = ("layer_3", "pooler")
TEXTS = ["the movie was great and fun", "awful and boring", "the plot is not good"]


@pytest.fixture(scope="module")
def runs(encoder4, sentiment_files, tmp_path_factory):
    """impl -> (result, run folder): one epoch, top layer and pooler trained, saved as
    `kbft train` saves a run (checkpoints, run_config.json, export/)."""
    made = {}
    for impl in IMPLS:
        out = str(tmp_path_factory.mktemp("runs") / impl)
        result = kbft.fine_tune(*sentiment_files, encoder=encoder4, encoder_impl=impl,
                                epochs=1, batch_size=8, learning_rate=1e-2, seq_length=16,
                                trainable_layers=1, output_dir=out, verbose=0)
        result.save(out)
        made[impl] = result, out
    return made


def source(runs, impl, where):
    result, out = runs[impl]
    return result, out if where == "run" else os.path.join(out, "export")


def pretrained_like(encoder4, encoder):
    return make_encoder(encoder4, "hub" if type(encoder).__name__ == "HubEncoder" else "native")


def assert_same_variables(got, want):
    assert [v.name for v in got] == [v.name for v in want]
    for a, b in zip(got, want):
        assert a.shape == b.shape and np.array_equal(a.numpy(), b.numpy()), a.name


@pytest.mark.parametrize("where", ["run", "export"])
@pytest.mark.parametrize("impl", IMPLS)
def test_restore_gives_the_fine_tuned_weights(runs, impl, where, encoder4):
    result, path = source(runs, impl, where)
    back = restore(path)
    expected = "HubEncoder" if impl == "hub" else "NativeEncoder"
    assert type(result.model.encoder).__name__ == type(back.model.encoder).__name__ == expected
    assert_same_variables(back.model.encoder.variables, result.model.encoder.variables)
    assert_same_variables(back.model.variables, result.model.variables)  # the head too
    np.testing.assert_allclose(back.predict(TEXTS), result.predict(TEXTS), rtol=0, atol=1e-6)

    pretrained = pretrained_like(encoder4, back.model.encoder).layer_groups()
    restored = back.model.encoder.layer_groups()
    assert set(restored) == set(FROZEN + TRAINED)
    for group in FROZEN:
        assert_same_variables(restored[group], pretrained[group])
    for group in TRAINED:  # every variable of the trained groups moved, the group clearly
        for a, b in zip(restored[group], pretrained[group]):
            assert not np.array_equal(a.numpy(), b.numpy()), (group, a.name)
        delta = sum(np.sum((a.numpy() - b.numpy()) ** 2)
                    for a, b in zip(restored[group], pretrained[group]))
        assert delta > 1e-6, group



@pytest.mark.parametrize("where", ["run", "export"])
@pytest.mark.parametrize("impl", IMPLS)
def test_kbft_diff_shows_what_fine_tuning_moved(runs, impl, where, encoder4, sentiment_files,
                                                tmp_path, capsys):
    _, path = source(runs, impl, where)
    figures_path = str(tmp_path / "diff.json")
    assert cli.main(["diff", encoder4, path, "--data", sentiment_files[1], "--seq-length", "16",
                     "--json", figures_path]) == 0
    assert "layer_3" in capsys.readouterr().out
    figures = json.load(open(figures_path))
    assert (figures["kind_a"], figures["kind_b"]) == ("pretrained", where)
    rows = {row["group"]: row for row in figures["groups"]}
    assert set(rows) == set(FROZEN + TRAINED)
    for group in FROZEN:
        assert rows[group]["relative_change"] < 1e-7, rows[group]
    for group in TRAINED:
        assert rows[group]["relative_change"] > 1e-3, rows[group]
    assert [rows[f"layer_{i}"]["cka"] for i in range(3)] == pytest.approx([1.0] * 3, abs=1e-5)
    assert rows["layer_3"]["cka"] < 1.0 - 1e-6
    assert figures["summary"]["top_changes_more"]


@pytest.mark.parametrize("impl", IMPLS)
def test_kbft_probe_reads_runs_and_exports_alike(runs, impl, sentiment_files, tmp_path, capsys):
    _, out = runs[impl]
    figures = {}
    for where in ("run", "export"):
        _, path = source(runs, impl, where)
        json_path = str(tmp_path / f"{where}.json")
        assert cli.main(["probe", "--model", path, "--train", sentiment_files[0],
                         "--validation", sentiment_files[1], "--seq-length", "16",
                         "--json", json_path]) == 0
        assert f"({where})" in capsys.readouterr().out
        figures[where] = json.load(open(json_path))
        assert figures[where]["kind"] == where
        assert [r["layer"] for r in figures[where]["layers"]] == [f"layer_{i}" for i in range(4)]
    for a, b in zip(figures["run"]["layers"], figures["export"]["layers"]):
        assert a == pytest.approx(b, abs=1e-6)  # the same weights give the same probes


def edited_copy(out, tmp_path, where, changes):
    """A copy of the run whose saved config (run_config.json, or the export's
    kbft_export.json) describes another architecture than its weights."""
    copy = str(tmp_path / "edited")
    shutil.copytree(out, copy)
    if where == "run":
        path = os.path.join(copy, "run_config.json")
        saved = json.load(open(path))
        saved.update(changes)
    else:
        path = os.path.join(copy, "export", "kbft_export.json")
        saved = json.load(open(path))
        saved["config"].update(changes)
    with open(path, "w") as f:
        json.dump(saved, f)
    return copy if where == "run" else os.path.join(copy, "export")


@pytest.mark.parametrize("change", ["head_units", "shallower_encoder"])
@pytest.mark.parametrize("where", ["run", "export"])
@pytest.mark.parametrize("impl", IMPLS)
def test_weights_of_another_architecture_fail_loudly(runs, impl, where, change, encoder2,
                                                     encoder4, sentiment_files, tmp_path,
                                                     capsys):
    _, out = runs[impl]
    # head_units: a Dense(8) block the weights lack; encoder2: 2 layers where the weights
    # hold 4 (every variable of the smaller model is found: it would half-restore).
    changes = {"head_units": [8]} if change == "head_units" else {"encoder": encoder2}
    path = edited_copy(out, tmp_path, where, changes)
    message = ("head_dense_0" if change == "head_units"
               else r"they hold \d+ model variables, the model \d+")
    if where == "export":  # the library: a KbftError naming what does not fit
        with pytest.raises(KbftError, match=r"do not fit the model rebuilt from its "
                                             r"config: .*" + message):
            restore(path)
    # the CLI: exit 2 and one line (only a KbftError gives 2). diff reads a run or an
    # export before the pretrained encoder, so it fails first thing.
    argv = (["diff", encoder4, path, "--data", sentiment_files[1], "--seq-length", "16"]
            if where == "run" else
            ["probe", "--model", path, "--train", sentiment_files[0], "--validation",
             sentiment_files[1], "--seq-length", "16"])
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and re.search(message, errors[0]), captured.err
    assert "do not fit the model rebuilt" in errors[0]
    assert "Traceback" not in captured.err and not captured.out.strip()
