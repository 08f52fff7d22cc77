"""Crash survival beyond classification: SIGKILL a `kbft train --task qa` / `--task tagging`
run after its first backup, run the same command again: it resumes from OUTPUT/backup and
ends with the metrics of an uninterrupted run (`--deterministic`)."""

import json
import os
import re
import signal
import sys
import time

import numpy as np
import pytest


from test_fault_tolerance import finish, start
from test_tasks_e2e import qa_example, tagged_sentence

METRIC_SKIP = {"train_examples_per_second"}  # wall clock


def write_conll(path, sentences):
    with open(path, "w") as f:
        for s in sentences:
            f.write("".join(f"{w} {t}\n" for w, t in zip(s["tokens"], s["tags"])) + "\n")
    return str(path)


def write_squad(path, examples, prefix):
    articles = [{"title": f"{prefix}{i}", "paragraphs": [{"context": ex.context, "qas": [
        {"id": f"{prefix}{i}", "question": ex.question,
         "answers": [{"text": ex.answers[0], "answer_start": ex.answer_starts[0]}]}]}]}
        for i, ex in enumerate(examples)]
    with open(path, "w") as f:
        json.dump({"data": articles}, f)
    return str(path)


def tagging_files(tmp_path):
    rng = np.random.RandomState(0)
    return (write_conll(tmp_path / "train.conll", [tagged_sentence(rng) for _ in range(48)]),
            write_conll(tmp_path / "dev.conll", [tagged_sentence(rng) for _ in range(12)]))


def qa_files(tmp_path):
    rng = np.random.RandomState(1)
    return (write_squad(tmp_path / "train.json", [qa_example(rng) for _ in range(24)], "t"),
            write_squad(tmp_path / "dev.json", [qa_example(rng) for _ in range(8)], "d"))


TASKS = {
    "tagging": (tagging_files, ["--seq-length", "32"]),
    "qa": (qa_files, ["--seq-length", "24", "--doc-stride", "6", "--max-query-length", "6"]),
}


def command(task, encoder, train, dev, out, extra):
    return [sys.executable, "-m", "keras_bert_ft.cli", "train", "--task", task,
            "--encoder", encoder, "--train", train, "--validation", dev,
            "--epochs", "2", "--batch-size", "8", "--learning-rate", "3e-3",
            "--backup-steps", "2", "--deterministic", "--output", out, "--verbose", "0",
            *extra]


@pytest.mark.slow
@pytest.mark.parametrize("task", sorted(TASKS))
def test_sigkill_then_the_same_command_resumes_with_the_same_metrics(task, tmp_path, encoder2):
    make_files, extra = TASKS[task]
    train, dev = make_files(tmp_path)
    killed, reference = str(tmp_path / "killed"), str(tmp_path / "reference")
    logs = {name: str(tmp_path / f"{name}.log") for name in ("killed", "resumed", "reference")}
    with open(logs["reference"], "w") as ref_log, open(logs["killed"], "w") as kill_log:
        ref = start(command(task, encoder2, train, dev, reference, extra), ref_log)
        proc = start(command(task, encoder2, train, dev, killed, extra), kill_log)
        state = os.path.join(killed, "backup", "chief", "checkpoint")
        deadline = time.time() + 300
        while not os.path.exists(state) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert os.path.exists(state), open(logs["killed"]).read()[-3000:]
        os.kill(proc.pid, signal.SIGKILL)  # the first backup (after step 2) was just written
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not os.path.exists(os.path.join(killed, "metrics.json"))
    with open(logs["resumed"], "w") as log:
        resumed_log = finish(start(command(task, encoder2, train, dev, killed, extra), log),
                             logs["resumed"])
    found = re.search(rf"resuming from the backup in {re.escape(killed)}/backup: epoch (\d+) "
                      r"after step (\d+) of (\d+) \((\d+) steps done\)", resumed_log)
    assert found, resumed_log[-3000:]
    epoch, step, steps_per_epoch, done = map(int, found.groups())
    assert steps_per_epoch >= 3  # several steps per epoch, so the kill came before the end
    assert done >= 2 and done % 2 == 0 and done < 2 * steps_per_epoch
    assert (epoch - 1) * steps_per_epoch + step == done
    finish(ref, logs["reference"])
    assert "resuming" not in open(logs["reference"]).read()

    metrics = [json.load(open(os.path.join(d, "metrics.json"))) for d in (killed, reference)]
    assert set(metrics[0]) == set(metrics[1])
    primary = {"tagging": "entity_f1", "qa": "f1"}[task]
    assert primary in metrics[0]
    for key in sorted(set(metrics[0]) - METRIC_SKIP):
        if isinstance(metrics[1][key], float):
            assert metrics[0][key] == pytest.approx(metrics[1][key], abs=1e-6), key
        else:
            assert metrics[0][key] == metrics[1][key], key
    histories = [json.load(open(os.path.join(d, "history.json"))) for d in (killed, reference)]
    assert len(histories[0]["loss"]) == len(histories[0]["val_loss"]) == 2
    np.testing.assert_allclose(histories[0]["val_loss"], histories[1]["val_loss"], rtol=0,
                               atol=1e-6)
    # The training loss of the epoch the kill cut is the mean over the steps the resumed
    # process ran (Keras' running mean is not in the backup); later epochs match.
    for i in range(epoch, 2):
        assert histories[0]["loss"][i] == pytest.approx(histories[1]["loss"][i], abs=1e-6)
    for d in (killed, reference):  # a finished run deletes its backup
        assert not os.path.exists(os.path.join(d, "backup"))
        assert os.path.isdir(os.path.join(d, "export"))
