#!/usr/bin/env bash
# Benchmark-only extras (never dependencies of the package): Hugging Face's Rust
# tokenizer, the tokenisation anchor of bench_finetune.py.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/setup.sh
.venv/bin/python -m pip install -q tokenizers
