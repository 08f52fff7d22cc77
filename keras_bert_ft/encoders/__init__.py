"""Encoders: the per-layer trainable TF-Hub layer, the native rebuild, presets, conversion, re-initialisation."""
