"""Shared fixtures: tiny TF-Hub-format encoders and data the tests export themselves."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# before TensorFlow, as in a user's process: keras_bert_ft sets TF_ENABLE_ONEDNN_OPTS
import keras_bert_ft  # noqa: E402,F401
# The toolkit's reusable results (native-encoder checks) go to a folder of this process,
# never the user's ~/.cache; tests that need it empty set their own.
import tempfile  # noqa: E402
os.environ["KBFT_CACHE_DIR"] = tempfile.mkdtemp(prefix="kbft-test-cache-")
# `mixed_precision="auto"` picks bfloat16 on CPUs with bfloat16 units and float32 on the
# others: the suite's numeric checks (parity to 1e-5 and the like) are float32's, so auto
# stays float32 here on every CPU (subprocesses inherit it). bfloat16 runs are tested by
# asking for mixed_bfloat16; what auto picks per machine, in test_precision.py.
os.environ["KBFT_CPU_BFLOAT16"] = "0"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_bert_ft._keras import keras  # noqa: E402

# Two logical CPUs, so MirroredStrategy is tested for real on a CPU-only machine.
# This must run before TensorFlow initialises its devices.
_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)

from keras_bert_ft.encoders import tfhub_format  # noqa: E402

VOCAB = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
         + "the a movie film plot acting was is not very it and good great fun love "
           "bad awful boring hate what who where when why how question answer".split()
         + ["##s", "##ing", "##ly", ".", ",", "!", "?"])

POSITIVE = ["good", "great", "fun", "love"]
NEGATIVE = ["bad", "awful", "boring", "hate"]

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1234)
    yield


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="session")
def vocab_file(tiny_dir):
    path = tiny_dir / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n")
    return str(path)


def export_tiny_encoder(path, vocab_file, num_layers, max_seq_length=32):
    config = tfhub_format.bert_config(
        vocab_size=len(VOCAB), hidden_size=32, num_layers=num_layers, num_heads=2,
        intermediate_size=64, max_seq_length=max_seq_length)
    return tfhub_format.export_encoder(str(path), config, vocab_file=vocab_file,
                                       do_lower_case=True)


@pytest.fixture(scope="session")
def encoder4(tiny_dir, vocab_file):
    """A 4-layer, hidden-32 BERT encoder in TF-Hub format (max 32 tokens)."""
    return export_tiny_encoder(tiny_dir / "encoder4", vocab_file, num_layers=4)


@pytest.fixture(scope="session")
def encoder2(tiny_dir, vocab_file):
    """A 2-layer, hidden-32 BERT encoder in TF-Hub format (max 32 tokens)."""
    return export_tiny_encoder(tiny_dir / "encoder2", vocab_file, num_layers=2)


@pytest.fixture(scope="session")
def hub_preprocessor(tiny_dir, vocab_file):
    return tfhub_format.export_preprocessor(str(tiny_dir / "preprocessor"),
                                            vocab_file=vocab_file, do_lower_case=True,
                                            seq_length=16)


def sentiment_rows(n, seed=0):
    """Separable toy sentiment: the label is whether positive words appear."""
    rng = np.random.RandomState(seed)
    rows = []
    for i in range(n):
        positive = i % 2 == 0
        words = rng.choice(POSITIVE if positive else NEGATIVE, 2)
        rows.append({"sentence": f"the movie was {words[0]} and {words[1]}",
                     "label": "pos" if positive else "neg"})
    return rows


def pair_rows(n, seed=0):
    """Toy pairs: label 1 when both texts share sentiment."""
    rng = np.random.RandomState(seed)
    rows = []
    for i in range(n):
        a_pos, same = rng.rand() < 0.5, i % 2 == 0
        b_pos = a_pos if same else not a_pos
        rows.append({"a": f"the film was {rng.choice(POSITIVE if a_pos else NEGATIVE)}",
                     "b": f"it is {rng.choice(POSITIVE if b_pos else NEGATIVE)}",
                     "label": int(same)})
    return rows


def write_tsv(path, rows, columns):
    with open(path, "w", encoding="utf-8") as f:
        f.write("\t".join(columns) + "\n")
        for row in rows:
            f.write("\t".join(str(row[c]) for c in columns) + "\n")
    return str(path)


@pytest.fixture(scope="session")
def sentiment_files(tiny_dir):
    train = write_tsv(tiny_dir / "train.tsv", sentiment_rows(48, 0), ["sentence", "label"])
    dev = write_tsv(tiny_dir / "dev.tsv", sentiment_rows(16, 1), ["sentence", "label"])
    return train, dev


@pytest.fixture(scope="session")
def pair_files(tiny_dir):
    train = write_tsv(tiny_dir / "pair_train.tsv", pair_rows(48, 0), ["a", "b", "label"])
    dev = write_tsv(tiny_dir / "pair_dev.tsv", pair_rows(16, 1), ["a", "b", "label"])
    return train, dev


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, encoder2, sentiment_files):
    """A fine-tuned run folder of the 2-layer encoder (classification, pooled head, every
    group trained): what the analyses of fine-tuning (ablate, probe before/after) read."""
    from keras_bert_ft.training.runner import fine_tune
    train, dev = sentiment_files
    out = str(tmp_path_factory.mktemp("tiny_run") / "run")
    result = fine_tune(train, dev, encoder=encoder2, epochs=2, batch_size=8, seq_length=16,
                       learning_rate=1e-3, output_dir=out, backup_steps=0, verbose=0)
    result.save(out, export=False)
    return out
