"""Data: readers (files, DataFrames, tfds, public formats), preprocessing and the training input pipeline."""
