"""Bad input to every kbft subcommand: exit code 2, one `error:` line on stderr that names
the flag as the user typed it and echoes the value received, no traceback, every file of
the user's as it was, and nothing built (each refusal comes before any model or encoder
is made). Beside them, the cases that must work: `--overwrite`, and evaluate / export of
tagging and QA runs."""

import hashlib
import json
import os
import shutil

import pytest

from keras_bert_ft import cli
from keras_bert_ft.training import build

# A tiny run: any refusal of these flags comes before training, so they stay small.
TINY = ["--epochs", "1", "--batch-size", "4", "--seq-length", "16", "--verbose", "0",
        "--backup-steps", "0"]


def run(argv, capsys):
    """(exit code, stdout, stderr) of `kbft ARGV`, in-process (argparse exits by SystemExit)."""
    capsys.readouterr()
    try:
        code = cli.main(argv)
    except SystemExit as exit_info:
        code = exit_info.code
    out = capsys.readouterr()
    return code, out.out, out.err


def snapshot(root):
    """Every file under `root` -> the SHA-1 of its bytes."""
    files = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, root)] = hashlib.sha1(f.read()).hexdigest()
    return files


def write(path, text):
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return str(path)


def sentiment_tsv(path, n):
    words = ["good", "bad", "great", "awful", "fun", "boring", "love", "hate"]
    rows = [f"the movie was {words[i % 8]}\t{'pos' if i % 2 == 0 else 'neg'}" for i in range(n)]
    return write(path, "sentence\tlabel\n" + "\n".join(rows) + "\n")


class World:
    """The user's files: data, folders of their own, runs and exports, under `root`."""

    def __init__(self, root, encoder):
        self.root, self.encoder = str(root), encoder
        p = lambda *parts: os.path.join(self.root, *parts)  # noqa: E731
        self.missing = p("missing.tsv")
        self.train = sentiment_tsv(p("train.tsv"), 12)
        self.dev = sentiment_tsv(p("dev.tsv"), 8)
        self.labels_nan = write(p("labels_nan.tsv"), "sentence\tlabel\ngood\tpos\nbad\tNaN\n"
                                "fun\tpos\nawful\tneg\nhate\tnan\n")
        self.labels_null = write(p("labels_null.csv"), "sentence,label\ngood,pos\nbad,neg\n"
                                 "fun,null\n")
        self.labels_empty = write(p("labels_empty.tsv"), "sentence\tlabel\ngood\tpos\n"
                                  "bad\t\nfun\tpos\nawful\tneg\n")
        self.empty_text = write(p("empty_text.tsv"), "sentence\tlabel\ngood\tpos\n \tneg\n"
                                "fun\tpos\nawful\tneg\n")
        self.somefile = write(p("somefile.txt"), "the user's file\n")
        os.makedirs(p("notes"))
        self.notes = p("notes")
        write(p("notes", "notes.txt"), "the user's notes\n")
        os.makedirs(p("hf_no_config"))
        self.hf_no_config = p("hf_no_config")
        write(p("hf_no_config", "vocab.txt"), "[PAD]\n[UNK]\n[CLS]\n[SEP]\n")
        self.conll = write(p("tags.conll"), "the O\nmovie B-OBJ\nwas O\ngood B-POS\n\n" * 8)
        articles = [{"title": f"t{i}", "paragraphs": [{
            "context": "the movie was good and fun", "qas": [{
                "id": f"q{i}", "question": "how is the movie ?",
                "answers": [{"text": "good", "answer_start": 14}]}]}]} for i in range(8)]
        self.squad = write(p("squad.json"), json.dumps({"data": articles}))
        self.docs = write(p("docs.jsonl"), json.dumps(
            {"sentences": ["the movie .", "it was good .", "a film ."], "labels": [1, 1, 0]})
            + "\n")
        self.run = p("run")
        self.export = p("run", "export")

    def train_run(self, task, data, output, *extra):
        argv = ["train", "--task", task, "--encoder", self.encoder, "--train", data,
                "--output", output, *TINY, *extra]
        assert cli.main(argv) == 0, argv
        return output

    def damage(self):
        """A copy of the export with saved_model.pb overwritten, one whose
        kbft_export.json is not JSON, and a copy of the run without checkpoints."""
        self.corrupt_pb = os.path.join(self.root, "corrupt_pb")
        shutil.copytree(self.export, self.corrupt_pb)
        write(os.path.join(self.corrupt_pb, "saved_model.pb"), "garbage, not a SavedModel")
        self.corrupt_json = os.path.join(self.root, "corrupt_json")
        shutil.copytree(self.export, self.corrupt_json)
        write(os.path.join(self.corrupt_json, "kbft_export.json"), "{not json")
        self.no_checkpoints = os.path.join(self.root, "run_no_checkpoints")
        shutil.copytree(self.run, self.no_checkpoints)
        shutil.rmtree(os.path.join(self.no_checkpoints, "checkpoints"))


@pytest.fixture(scope="module")
def world(tmp_path_factory, encoder2):
    """The user's files and one tiny classification run (1 epoch) with its export."""
    w = World(tmp_path_factory.mktemp("user"), encoder2)
    w.train_run("classification", w.train, w.run)
    w.damage()
    w.tagging = w.train_run("tagging", w.conll, os.path.join(w.root, "tagging_run"))
    w.qa = w.train_run("qa", w.squad, os.path.join(w.root, "qa_run"),
                       "--seq-length", "24", "--doc-stride", "6", "--max-query-length", "6")
    return w


def train(w, out, *extra, data=None):
    return ["train", "--encoder", w.encoder, "--train", data or w.train, "--output", out,
            *TINY, *extra]


# name -> (world, a fresh path the case may use) -> (argv, flag, value, other words the
# message must hold). The flag is as the user typed it; the value as they gave it.
CASES = {
    # -- train: a flag of another task, named with the task
    "train-qa-pooling": lambda w, o: (
        train(w, o, "--task", "qa", "--pooling", "cls", data=w.squad),
        "--pooling", "'cls'", ["--task qa"]),
    "train-qa-text-column": lambda w, o: (
        train(w, o, "--task", "qa", "--text-column", "x", data=w.squad),
        "--text-column", "'x'", ["--task qa"]),
    "train-tagging-text-column": lambda w, o: (
        train(w, o, "--task", "tagging", "--text-column", "x", data=w.conll),
        "--text-column", "'x'", ["--task tagging"]),
    "train-summarization-pooling": lambda w, o: (
        train(w, o, "--task", "summarization", "--pooling", "cls", data=w.docs),
        "--pooling", "'cls'", ["--task summarization"]),
    "train-classification-doc-stride": lambda w, o: (
        train(w, o, "--doc-stride", "8"), "--doc-stride", "8", ["--task classification"]),
    "train-classification-cloze": lambda w, o: (
        train(w, o, "--cloze", "2"), "--cloze", "2", ["--task classification"]),
    "train-classification-top-k": lambda w, o: (
        train(w, o, "--top-k", "2"), "--top-k", "2", ["--task classification"]),
    # -- train: the output folder
    "train-output-user-folder": lambda w, o: (
        train(w, w.notes), "--output", w.notes, ["--overwrite"]),
    "train-output-is-a-file": lambda w, o: (
        train(w, w.somefile), "--output", w.somefile, ["file"]),
    "train-output-under-a-file": lambda w, o: (
        train(w, os.path.join(w.somefile, "out")), "--output",
        os.path.join(w.somefile, "out"), []),
    # -- train: the data
    "train-labels-nan": lambda w, o: (
        train(w, o, data=w.labels_nan), "--train", w.labels_nan,
        ["label column 'label'", "rows 2, 5"]),
    "train-labels-null-csv": lambda w, o: (
        train(w, o, data=w.labels_null), "--train", w.labels_null,
        ["label column 'label'", "row 3"]),
    "train-labels-empty": lambda w, o: (
        train(w, o, data=w.labels_empty), "--train", w.labels_empty,
        ["label column 'label'", "row 2"]),
    "validation-labels-nan": lambda w, o: (
        train(w, o, "--validation", w.labels_nan), "--validation", w.labels_nan,
        ["rows 2, 5"]),
    "train-empty-text": lambda w, o: (
        train(w, o, data=w.empty_text), "--train", w.empty_text,
        ["text column 'sentence'", "row 2"]),
    "train-missing-file": lambda w, o: (train(w, o, data=w.missing), "--train", w.missing, []),
    "validation-missing-file": lambda w, o: (
        train(w, o, "--validation", w.missing), "--validation", w.missing, []),
    "train-label-column-missing": lambda w, o: (
        train(w, o, "--label-column", "stars"), "--label-column", "'stars'", []),
    "train-text-pair-column-missing": lambda w, o: (
        train(w, o, "--text-pair-column", "b"), "--text-pair-column", "'b'", []),
    "train-encoding-bogus": lambda w, o: (
        train(w, o, "--encoding", "bogus"), "--encoding", "'bogus'", []),
    # -- train: values
    "train-deterministic-maybe": lambda w, o: (
        train(w, o, "--deterministic", "maybe"), "--deterministic", "'maybe'", []),
    "train-max-train-examples-negative": lambda w, o: (
        train(w, o, "--max-train-examples", "-5"), "--max-train-examples", "-5", []),
    "train-max-train-examples-zero": lambda w, o: (
        train(w, o, "--max-train-examples", "0"), "--max-train-examples", "0", []),
    "train-epochs-zero": lambda w, o: (train(w, o, "--epochs", "0"), "--epochs", "0", []),
    "train-batch-size-negative": lambda w, o: (
        train(w, o, "--batch-size", "-1"), "--batch-size", "-1", []),
    "train-learning-rate-negative": lambda w, o: (
        train(w, o, "--learning-rate", "-1"), "--learning-rate", "-1", []),
    "train-dropout-above-one": lambda w, o: (
        train(w, o, "--dropout", "1.5"), "--dropout", "1.5", []),
    "train-warmup-ratio-two": lambda w, o: (
        train(w, o, "--warmup-ratio", "2"), "--warmup-ratio", "2", []),
    "train-seq-length-two": lambda w, o: (
        train(w, o, "--seq-length", "2"), "--seq-length", "2", []),
    "train-trainable-layers-word": lambda w, o: (
        train(w, o, "--trainable-layers", "x"), "--trainable-layers", "'x'", []),
    "train-head-units-letters": lambda w, o: (
        train(w, o, "--head-units", "a,b"), "--head-units", "'a,b'", []),
    "train-padding-weird": lambda w, o: (
        train(w, o, "--padding", "weird"), "--padding", "'weird'", []),
    "train-strategy-warp": lambda w, o: (
        train(w, o, "--strategy", "warp"), "--strategy", "'warp'", []),
    "train-mixed-precision-fp8": lambda w, o: (
        train(w, o, "--mixed-precision", "fp8"), "--mixed-precision", "'fp8'", []),
    "train-encoder-impl-torch": lambda w, o: (
        train(w, o, "--encoder-impl", "torch"), "--encoder-impl", "'torch'", []),
    "train-layer-decay-zero": lambda w, o: (
        train(w, o, "--layer-decay", "0"), "--layer-decay", "0", []),
    "train-unfreeze-every-with-all-layers": lambda w, o: (
        train(w, o, "--unfreeze-every", "1", "--trainable-layers", "all"),
        "--trainable-layers", "'all'", ["unfreezing"]),
    "train-task-nope": lambda w, o: (train(w, o, "--task", "nope"), "--task", "'nope'", []),
    # -- train: flags of runs and splits
    "train-articles-without-qa": lambda w, o: (
        train(w, o, "--train-articles", "2"), "--train-articles", "2", ["--task qa"]),
    "train-articles-missing-squad": lambda w, o: (
        train(w, o, "--task", "qa", "--max-query-length", "6", "--train-articles", "2",
              data=w.missing),
        "--train", w.missing, []),
    "train-seeds-with-tagging": lambda w, o: (
        train(w, o, "--task", "tagging", "--seeds", "2", data=w.conll), "--seeds", "2",
        ["--task tagging"]),
    "train-qa-seeds-embed-pooling": lambda w, o: (
        train(w, o, "--task", "qa", "--max-query-length", "6", "--seeds", "2",
              "--embed-pooling", "cls", data=w.squad),
        "--embed-pooling", "'cls'", ["--seeds", "ensemble"]),
    "train-seeds-zero": lambda w, o: (train(w, o, "--seeds", "0"), "--seeds", "'0'", []),
    "train-metric-without-seeds": lambda w, o: (
        train(w, o, "--metric", "f1"), "--metric", "'f1'", ["--seeds"]),
    # -- evaluate
    "evaluate-model-user-folder": lambda w, o: (
        ["evaluate", "--model", w.notes, "--data", w.dev], "--model", w.notes, []),
    "evaluate-model-missing": lambda w, o: (
        ["evaluate", "--model", o, "--data", w.dev], "--model", o, []),
    "evaluate-data-missing": lambda w, o: (
        ["evaluate", "--model", w.export, "--data", w.missing], "--data", w.missing, []),
    "evaluate-data-labels-nan": lambda w, o: (
        ["evaluate", "--model", w.run, "--data", w.labels_nan], "--data", w.labels_nan,
        ["rows 2, 5"]),
    "evaluate-output-is-a-folder": lambda w, o: (
        ["evaluate", "--model", w.export, "--data", w.dev, "--output", w.notes],
        "--output", w.notes, ["folder"]),
    "evaluate-export-saved-model-garbage": lambda w, o: (
        ["evaluate", "--model", w.corrupt_pb, "--data", w.dev], "--model", w.corrupt_pb,
        ["saved_model.pb"]),
    "evaluate-export-metadata-not-json": lambda w, o: (
        ["evaluate", "--model", w.corrupt_json, "--data", w.dev], "--model",
        w.corrupt_json, ["not valid JSON"]),
    "evaluate-encoding-bogus": lambda w, o: (
        ["evaluate", "--model", w.export, "--data", w.dev, "--encoding", "bogus"],
        "--encoding", "'bogus'", []),
    "evaluate-label-column-missing": lambda w, o: (
        ["evaluate", "--model", w.export, "--data", w.dev, "--label-column", "stars"],
        "--label-column", "'stars'", []),
    "evaluate-tagging-text-column": lambda w, o: (
        ["evaluate", "--model", w.tagging, "--data", w.conll, "--text-column", "x"],
        "--text-column", "'x'", ["tagging"]),
    # -- predict
    "predict-no-text": lambda w, o: (
        ["predict", "--model", w.export], "--text", "None", ["--input"]),
    "predict-text-pair-single-text-model": lambda w, o: (
        ["predict", "--model", w.export, "--text", "a", "--text-pair", "b"], "--text-pair",
        "['b']", ["single texts"]),
    "predict-qa-without-context": lambda w, o: (
        ["predict", "--model", w.qa, "--text", "how is the movie ?"], "--text-pair", "None",
        ["context"]),
    "predict-input-missing": lambda w, o: (
        ["predict", "--model", w.export, "--input", w.missing], "--input", w.missing, []),
    "predict-input-and-text": lambda w, o: (
        ["predict", "--model", w.export, "--input", w.dev, "--text", "a"], "--input", w.dev,
        ["--text"]),
    "predict-output-under-a-file": lambda w, o: (
        ["predict", "--model", w.export, "--text", "a", "--output",
         os.path.join(w.somefile, "out.jsonl")], "--output",
        os.path.join(w.somefile, "out.jsonl"), []),
    "predict-model-user-folder": lambda w, o: (
        ["predict", "--model", w.notes, "--text", "a"], "--model", w.notes, []),
    # -- export
    "export-run-user-folder": lambda w, o: (
        ["export", "--run", w.notes, "--output", o], "--run", w.notes, []),
    "export-run-is-an-export": lambda w, o: (
        ["export", "--run", w.export, "--output", o], "--run", w.export, []),
    "export-checkpoint-nope": lambda w, o: (
        ["export", "--run", w.run, "--checkpoint", "nope", "--output", o], "--checkpoint",
        "'nope'", []),
    "export-run-without-checkpoints": lambda w, o: (
        ["export", "--run", w.no_checkpoints, "--output", o], "--run", w.no_checkpoints,
        ["checkpoints"]),
    "export-output-is-a-file": lambda w, o: (
        ["export", "--run", w.run, "--output", w.somefile], "--output", w.somefile, []),
    "export-output-user-folder": lambda w, o: (
        ["export", "--run", w.run, "--output", w.notes], "--output", w.notes, []),
    "export-output-under-a-file": lambda w, o: (
        ["export", "--run", w.run, "--output", os.path.join(w.somefile, "export")],
        "--output", os.path.join(w.somefile, "export"), []),
    # -- diff (its two models are positional: named model_a / model_b)
    "diff-model-b-missing": lambda w, o: (
        ["diff", w.export, o, "--data", w.dev], "model_b", o, []),
    "diff-model-a-missing": lambda w, o: (
        ["diff", o, w.run, "--data", w.dev], "model_a", o, []),
    "diff-model-b-damaged": lambda w, o: (
        ["diff", w.run, w.corrupt_pb, "--data", w.dev], "model_b", w.corrupt_pb, []),
    "diff-data-missing": lambda w, o: (
        ["diff", w.run, w.export, "--data", w.missing], "--data", w.missing, []),
    "diff-samples-zero": lambda w, o: (
        ["diff", w.run, w.export, "--data", w.dev, "--samples", "0"], "--samples", "'0'", []),
    "diff-text-column-missing": lambda w, o: (
        ["diff", w.run, w.export, "--data", w.dev, "--text-column", "x"], "--text-column",
        "'x'", []),
    # -- convert
    "convert-neither-source": lambda w, o: (
        ["convert", "--output", o], "--from-hf", "None", ["--from-tf1", "neither"]),
    "convert-both-sources": lambda w, o: (
        ["convert", "--from-hf", w.hf_no_config, "--from-tf1", w.hf_no_config, "--output", o],
        "--from-hf", w.hf_no_config, ["both"]),
    "convert-from-hf-missing": lambda w, o: (
        ["convert", "--from-hf", w.missing, "--output", o], "--from-hf", w.missing, []),
    "convert-from-hf-without-config": lambda w, o: (
        ["convert", "--from-hf", w.hf_no_config, "--output", o], "--from-hf",
        w.hf_no_config, ["config.json"]),
    "convert-from-tf1-missing": lambda w, o: (
        ["convert", "--from-tf1", w.missing, "--output", o], "--from-tf1", w.missing, []),
    "convert-output-user-folder": lambda w, o: (
        ["convert", "--from-hf", w.hf_no_config, "--output", w.notes], "--output", w.notes,
        ["--overwrite"]),
    "convert-output-under-a-file": lambda w, o: (
        ["convert", "--from-hf", w.hf_no_config, "--output", os.path.join(w.somefile, "x")],
        "--output", os.path.join(w.somefile, "x"), []),
    "convert-seq-length-zero": lambda w, o: (
        ["convert", "--from-hf", w.hf_no_config, "--output", o, "--seq-length", "0"],
        "--seq-length", "'0'", []),
    # -- probe and sweep-layers
    "probe-train-missing": lambda w, o: (
        ["probe", "--model", w.export, "--train", w.missing, "--validation", w.dev],
        "--train", w.missing, []),
    "probe-model-missing": lambda w, o: (
        ["probe", "--model", o, "--train", w.train, "--validation", w.dev], "--model", o, []),
    "probe-max-train-examples-zero": lambda w, o: (
        ["probe", "--model", w.export, "--train", w.train, "--validation", w.dev,
         "--max-train-examples", "0"], "--max-train-examples", "'0'", []),
    "sweep-layers-letters": lambda w, o: (
        ["sweep-layers", "--train", w.train, "--validation", w.dev, "--layers", "a,b"],
        "--layers", "'a,b'", []),
}


@pytest.fixture
def nothing_built(monkeypatch):
    """Building a model, loading an encoder or writing a conversion fails the test: every
    refusal must come first."""
    from keras_bert_ft.encoders import convert, native

    def built(*args, **kwargs):
        raise AssertionError("a model was built before the bad input was refused")

    monkeypatch.setattr(build, "build_model", built)
    monkeypatch.setattr(native, "make_encoder", built)
    monkeypatch.setattr(convert, "_write", built)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_refused_in_one_line(case, world, tmp_path, capsys, nothing_built):
    argv, flag, value, words = CASES[case](world, str(tmp_path / "fresh"))
    before = snapshot(world.root)
    code, _, err = run(argv, capsys)
    assert code == 2, (code, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert flag in lines[0] and value in lines[0], lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    after = snapshot(world.root)
    assert {k: after.get(k) for k in before} == before, "a file of the user's changed"


def test_there_are_at_least_45_cases():
    assert len(CASES) >= 45


def test_overwrite_replaces_a_user_folder(world, tmp_path, capsys):
    """`--overwrite` is the one way to train into someone else's non-empty folder; it
    replaces it (the refusal without it is `train-output-user-folder`)."""
    folder = tmp_path / "mine"
    folder.mkdir()
    write(folder / "notes.txt", "old notes\n")
    code, out, err = run(train(world, str(folder), "--overwrite"), capsys)
    assert code == 0, err
    assert not (folder / "notes.txt").exists()
    assert (folder / "export" / "saved_model.pb").is_file()
    assert json.loads((folder / "run_config.json").read_text())["label_names"] == ["neg", "pos"]


@pytest.mark.parametrize("task, metric", [("tagging", "entity_f1"), ("qa", "f1")])
def test_evaluate_and_export_sequence_task_runs(task, metric, world, tmp_path, capsys):
    """`kbft evaluate` on a tagging / QA run folder prints the task's metrics; `kbft
    export` writes an export of the run, and evaluating that export gives the same."""
    run_dir, data = (world.tagging, world.conll) if task == "tagging" else (world.qa, world.squad)
    code, out, err = run(["evaluate", "--model", run_dir, "--data", data], capsys)
    assert code == 0, err
    metrics = json.loads(out)
    assert 0.0 <= metrics[metric] <= 1.0
    export = str(tmp_path / "export")
    code, out, err = run(["export", "--run", run_dir, "--output", export], capsys)
    assert code == 0, err
    with open(os.path.join(export, "kbft_export.json")) as f:
        assert json.load(f)["task"] == task
    assert os.path.isfile(os.path.join(export, "saved_model.pb"))
    code, out, err = run(["evaluate", "--model", export, "--data", data], capsys)
    assert code == 0, err
    assert json.loads(out) == metrics


@pytest.mark.parametrize("kind", ["user-folder-with-overwrite", "new-folder"])
def test_refused_training_leaves_the_output_as_it_was(kind, world, tmp_path, capsys):
    """Bad data is refused before the output folder is created or, with --overwrite,
    emptied: the run folder is prepared only once everything was read and checked."""
    folder = tmp_path / "out"
    if kind == "user-folder-with-overwrite":
        folder.mkdir()
        write(folder / "notes.txt", "the user's notes\n")
    code, _, err = run(train(world, str(folder), "--overwrite", data=world.missing), capsys)
    assert code == 2 and "--train" in err
    if kind == "user-folder-with-overwrite":
        assert os.listdir(folder) == ["notes.txt"]
    else:
        assert not folder.exists()
