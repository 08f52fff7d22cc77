"""Crash survival: SIGKILL mid-epoch and the same command resumes (deterministic: the same
metrics as an uninterrupted run); a NaN loss stops with the last good backup kept; a
backup of another run is not resumed."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

import keras_bert_ft as kbft
from keras_bert_ft.export import saved_model as export_lib
from keras_bert_ft.training import fault_tolerance
from keras_bert_ft.errors import KbftError

from conftest import sentiment_rows

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_nan_loss_stops_and_keeps_the_last_good_backup(encoder2, vocab_file, tmp_path):
    out = str(tmp_path / "run")
    with pytest.raises(fault_tolerance.NonFiniteLoss,
                       match=r"loss became (nan|inf) at epoch 1, step \d+\. The last good backup "
                             r"is kept in .*backup\. Lower --learning-rate"):
        kbft.fine_tune(sentiment_rows(32), encoder=encoder2, preprocessor=vocab_file,
                       seq_length=16, batch_size=4, epochs=2, learning_rate=1e30,
                       warmup_ratio=0.0, trainable_layers=1, output_dir=out, backup_steps=1,
                       verbose=0)
    latest = tf.train.latest_checkpoint(os.path.join(out, "backup", "chief"))
    assert latest is not None
    reader = tf.train.load_checkpoint(latest)
    weights = [reader.get_tensor(name) for name, _ in tf.train.list_variables(latest)
               if name.startswith("model/") and "OPTIMIZER_SLOT" not in name]
    weights = [w for w in weights if w.dtype.kind == "f" and w.size > 1]
    assert len(weights) > 10 and all(np.isfinite(w).all() for w in weights)
    assert not os.path.exists(os.path.join(out, "metrics.json"))


def test_nan_guard_message_without_backups():
    guard = fault_tolerance.StopOnNonFiniteLoss()
    guard.on_epoch_begin(2)
    guard.on_train_batch_end(0, {"loss": 0.7})
    with pytest.raises(KbftError, match="loss became inf at epoch 3, step 5. Lower"):
        guard.on_train_batch_end(4, {"loss": float("inf")})


def write_backup(directory, epoch, batch):
    """A backup as Keras' BackupAndRestore writes it, holding `epoch` and `batch`."""
    ckpt = tf.train.Checkpoint(ckpt_saved_epoch=tf.Variable(epoch, dtype=tf.int64),
                               ckpt_saved_batch=tf.Variable(batch, dtype=tf.int64))
    tf.train.CheckpointManager(ckpt, os.path.join(directory, "chief"), 1).save()


def test_resume_point_and_other_runs_backup(tmp_path):
    out = str(tmp_path / "run")
    mine = fault_tolerance.fingerprint(kbft.FineTuneConfig(), "sha-of-the-data", 3)
    strategy = tf.distribute.get_strategy()
    first = fault_tolerance.RunBackup(out, mine, steps_per_epoch=10, backup_steps=5,
                                      strategy=strategy)
    assert first.resume is None and first.start_step == 0  # nothing to resume: run.json written
    write_backup(os.path.join(out, "backup"), epoch=1, batch=4)
    with open(os.path.join(out, "backup", "history.json"), "w") as f:
        json.dump({"loss": [0.9, 0.8], "val_loss": [1.0, 0.95]}, f)
    again = fault_tolerance.RunBackup(out, mine, steps_per_epoch=10, backup_steps=5,
                                      strategy=strategy)
    assert (again.resume.epoch, again.resume.step, again.start_step) == (1, 5, 15)
    assert again.full_history({"loss": [0.7]}) == {"loss": [0.9, 0.7]}  # epoch 2 is redone
    other = fault_tolerance.fingerprint(kbft.FineTuneConfig(learning_rate=1e-4), "sha-of-the-data", 3)
    with pytest.raises(KbftError, match="unfinished run with other settings.*learning_rate"):
        fault_tolerance.RunBackup(out, other, steps_per_epoch=10, backup_steps=5,
                                  strategy=strategy)


def test_cli_flags_for_scale_out_and_resume():
    from keras_bert_ft import cli
    args = cli.build_parser().parse_args(
        ["train", "--train", "t.tsv", "--output", "out", "--deterministic", "--backup-steps", "7",
         "--strategy", "tpu", "--tpu-address", "local", "--mixed-precision", "mixed_bfloat16",
         "--steps-per-execution", "16"])
    config = cli.app.config_from_args(args)
    assert (config.deterministic, config.backup_steps, config.strategy, config.tpu_address,
            config.mixed_precision, config.steps_per_execution) == (
        True, 7, "tpu", "local", "mixed_bfloat16", 16)
    defaults = cli.app.config_from_args(cli.build_parser().parse_args(["train", "--train", "t"]))
    assert (defaults.deterministic, defaults.backup_steps, defaults.steps_per_execution) == (
        False, 500, None)
    with pytest.raises(KbftError, match="Received: backup_steps=-1"):
        kbft.FineTuneConfig(backup_steps=-1).validate()


# ------------------------------------------------------------------ SIGKILL, then resume
def cli_command(encoder, vocab, train, dev, out):
    return [sys.executable, "-m", "keras_bert_ft.cli", "train", "--encoder", encoder,
            "--preprocessor", vocab, "--train", train, "--validation", dev,
            "--epochs", "2", "--batch-size", "4", "--learning-rate", "1e-3",
            "--trainable-layers", "1", "--seq-length", "16", "--backup-steps", "5",
            "--deterministic", "--output", out, "--verbose", "0"]


def start(command, log):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def finish(proc, log_path, timeout=300):
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"kbft train hung; log:\n{open(log_path).read()[-3000:]}")
    assert proc.returncode == 0, open(log_path).read()[-3000:]
    return open(log_path).read()


def assert_clean_run_folder(out):
    assert not os.path.exists(os.path.join(out, "backup"))  # deleted once the run finished
    assert not [p for p in os.listdir(out) if ".tmp" in p]
    for name in os.listdir(os.path.join(out, "checkpoints")):
        if name.endswith(".index"):  # every checkpoint left behind loads
            tf.train.load_checkpoint(os.path.join(out, "checkpoints", name[:-len(".index")]))
    return export_lib.predict_export(export_lib.load_export(os.path.join(out, "export")),
                                     ["the movie was great", "awful and boring"])["probabilities"]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_the_same_command_resumes(tmp_path, encoder2, vocab_file,
                                                         sentiment_files):
    killed, reference = str(tmp_path / "killed"), str(tmp_path / "reference")
    logs = {name: str(tmp_path / f"{name}.log") for name in ("killed", "resumed", "reference")}
    with open(logs["reference"], "w") as ref_log, open(logs["killed"], "w") as kill_log:
        ref = start(cli_command(encoder2, vocab_file, *sentiment_files, reference), ref_log)
        proc = start(cli_command(encoder2, vocab_file, *sentiment_files, killed), kill_log)
        state = os.path.join(killed, "backup", "chief", "checkpoint")
        deadline = time.time() + 300
        while not os.path.exists(state) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert os.path.exists(state), open(logs["killed"]).read()[-3000:]
        os.kill(proc.pid, signal.SIGKILL)  # the first backup (step 5 of 12) was just written
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not os.path.exists(os.path.join(killed, "metrics.json"))
    point = fault_tolerance.resume_point(os.path.join(killed, "backup"), steps_per_epoch=12)
    assert point is not None and point.global_step % 5 == 0 and point.step != 0  # mid-epoch
    with open(logs["resumed"], "w") as log:
        resumed_log = finish(start(cli_command(encoder2, vocab_file, *sentiment_files, killed),
                                   log), logs["resumed"])
    assert (f"resuming from the backup in {killed}/backup: epoch {point.epoch + 1} after step "
            f"{point.step} of 12 ({point.global_step} steps done)") in resumed_log
    finish(ref, logs["reference"])
    metrics = [json.load(open(os.path.join(d, "metrics.json"))) for d in (killed, reference)]
    for key in ("accuracy", "f1", "mcc", "eval_loss"):
        assert metrics[0][key] == pytest.approx(metrics[1][key], abs=1e-6), key
    histories = [json.load(open(os.path.join(d, "history.json"))) for d in (killed, reference)]
    assert len(histories[0]["val_loss"]) == 2
    np.testing.assert_allclose(histories[0]["val_loss"], histories[1]["val_loss"], atol=1e-6)
    probabilities = [assert_clean_run_folder(d) for d in (killed, reference)]
    np.testing.assert_allclose(probabilities[0], probabilities[1], atol=1e-6)
