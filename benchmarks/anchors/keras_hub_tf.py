"""Anchor: keras-hub BertTextClassifier (Keras 3, TensorFlow backend) from the same local
Hugging Face checkpoint, its own preprocessor at sequence_length 128 and its default
compile (Adam 5e-5), trained with fit. Runs in .bench-venvs/kerashub."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import time  # noqa: E402

import keras  # noqa: E402
import keras_hub  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from _anchor_common import StepTimer, parse_args, read_tsv, report  # noqa: E402


class Timer(keras.callbacks.Callback):
    def __init__(self, batch_size):
        super().__init__()
        self.batch_size, self.timer = batch_size, StepTimer(time.perf_counter)

    def on_train_batch_end(self, batch, logs=None):
        self.timer.step_done(self.batch_size)


def main():
    args = parse_args(__doc__.splitlines()[0])
    keras.utils.set_random_seed(args.seed)
    texts, labels = read_tsv(args.train, args.examples)
    dev_texts, dev_labels = read_tsv(args.dev)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor.from_preset(
        args.model_dir, sequence_length=128)
    classifier = keras_hub.models.BertTextClassifier.from_preset(
        args.model_dir, num_classes=2, preprocessor=preprocessor)
    train = tf.data.Dataset.from_tensor_slices((texts, labels)).shuffle(
        len(texts), seed=args.seed).batch(args.batch_size)
    timer = Timer(args.batch_size)
    classifier.fit(train, epochs=1, callbacks=[timer], verbose=0)
    predictions = classifier.predict(tf.data.Dataset.from_tensor_slices(dev_texts).batch(64),
                                     verbose=0).argmax(-1)
    report("keras_hub_tf", timer.timer.examples_per_second(),
           float(np.mean(predictions == np.array(dev_labels))), len(train),
           keras=keras.__version__, keras_hub=keras_hub.__version__)


if __name__ == "__main__":
    main()
