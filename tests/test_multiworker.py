"""MultiWorkerMirroredStrategy: two worker processes on 127.0.0.1 train exactly what one
machine's MirroredStrategy over two CPUs trains; TF_CONFIG is checked with clear errors."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

import keras_bert_ft as kbft
from keras_bert_ft.export import saved_model as export_lib
from keras_bert_ft.training import strategy as strategy_lib
from keras_bert_ft.encoders import tfhub_format
from keras_bert_ft.errors import KbftError
from keras_bert_ft.encoders.native import make_encoder

from conftest import VOCAB

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

@pytest.fixture(scope="module")
def dropout_free_encoder(tmp_path_factory, vocab_file):
    """Dropout draws differ between a replica thread and a worker process; without dropout
    both setups compute the same numbers. (The runs use encoder_impl="hub": the native
    rebuild always applies dropout 0.1.)"""
    config = tfhub_format.bert_config(vocab_size=len(VOCAB), hidden_size=32, num_layers=2,
                                      num_heads=2, intermediate_size=64, max_seq_length=32,
                                      dropout=0.0)
    path = tmp_path_factory.mktemp("nodrop") / "encoder"
    return tfhub_format.export_encoder(str(path), config, vocab_file=vocab_file,
                                       do_lower_case=True)


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def run_workers(argv, timeout=420):
    """Starts `kbft <argv>` as both workers, waits for both; a hang fails the test instead
    of blocking CI."""
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for index in range(2):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
                   TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
                   PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        procs.append(subprocess.Popen([sys.executable, "-m", "keras_bert_ft.cli", *argv], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=timeout)[0])
    except subprocess.TimeoutExpired:
        pytest.fail("multi-worker training hung")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for proc, out in zip(procs, outputs):
        assert proc.returncode == 0, out[-3000:]
    return outputs


def named_weights(model):
    return {v.name: v.numpy() for v in model.weights}


@pytest.mark.slow
def test_two_workers_train_what_mirrored_trains(tmp_path, dropout_free_encoder, sentiment_files):
    train = sentiment_files[0]  # 48 examples: 6 full global batches of 8 per epoch
    encoder, out = dropout_free_encoder, str(tmp_path / "run")
    argv = ["train", "--strategy", "multiworker", "--train", train, "--encoder", encoder,
            "--epochs", "2", "--batch-size", "8", "--learning-rate", "1e-3", "--seq-length", "16",
            "--trainable-layers", "1", "--dropout", "0", "--padding", "dynamic", "--seed", "7",
            "--backup-steps", "4", "--encoder-impl", "hub", "--verbose", "0", "--output", out]
    chief, worker = run_workers(argv)
    assert "export: " in chief and "worker finished; the chief wrote the run folder" in worker
    # The chief alone wrote the run folder and the export; the backups are gone.
    assert sorted(os.listdir(out)) == [".kbft-run", "checkpoints", "export", "history.json", "history.png",
                                       "logs", "metrics.json", "run_config.json", "timings.json"]
    assert json.load(open(os.path.join(out, "metrics.json")))["train_examples"] == 48
    export_lib.predict_export(export_lib.load_export(os.path.join(out, "export")), ["good fun"])
    trained = kbft.build_classifier(make_encoder(encoder, "hub"), 2, dropout=0.0)
    trained.load_weights(os.path.join(out, "checkpoints", "ckpt-002")).expect_partial()

    result = kbft.fine_tune(train, strategy=kbft.get_strategy("mirrored"), encoder=encoder,
                            epochs=2, batch_size=8, learning_rate=1e-3, seq_length=16,
                            trainable_layers=1, dropout=0.0, padding="dynamic", seed=7,
                            encoder_impl="hub", verbose=0)
    assert result.strategy.num_replicas_in_sync == 2  # conftest's two logical CPUs
    workers, mirrored = named_weights(trained), named_weights(result.model)
    assert sorted(workers) == sorted(mirrored) and len(workers) == len(trained.weights) > 20
    for name, value in mirrored.items():
        np.testing.assert_allclose(workers[name], value, atol=1e-5, err_msg=name)
    untrained = make_encoder(encoder, "hub").layer_groups()["layer_1"]
    trained = result.model.encoder.layer_groups()["layer_1"]
    assert max(float(np.abs(a.numpy() - b.numpy()).max()) for a, b in zip(trained, untrained)) > 1e-4


def test_tf_config_errors(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(KbftError, match="TF_CONFIG must be set for kind='multiworker'"):
        kbft.get_strategy("multiworker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(KbftError, match=r"TF_CONFIG must be JSON like .*Received: TF_CONFIG='\{not json'"):
        strategy_lib.read_tf_config()
    cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 2}}))
    with pytest.raises(KbftError, match="names no task of the cluster"):
        strategy_lib.read_tf_config()
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}}))
    assert strategy_lib.read_tf_config()["task"]["index"] == 1
    assert strategy_lib.describe_auto().startswith("MultiWorkerMirroredStrategy (2 tasks")


def test_native_encoder_builds_under_a_distribution_scope(dropout_free_encoder):
    """The rebuilt encoder loads its SavedModel outside the caller's strategy scope (a
    restored function called in a MirroredStrategy scope fails)."""
    from keras_bert_ft.encoders.native import NativeEncoder
    with kbft.get_strategy("mirrored").scope():
        encoder = make_encoder(dropout_free_encoder, "auto")
    assert isinstance(encoder, NativeEncoder) and encoder.num_layers == 2
