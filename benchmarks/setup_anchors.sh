#!/usr/bin/env bash
# Virtual environments for the fine-tuning benchmark's anchors, apart from the package's own:
#   .bench-venvs/hf        Hugging Face transformers on PyTorch (torch==2.13.0, CPU)
#   .bench-venvs/kerashub  keras-hub on Keras 3 with the TensorFlow backend
# plus Hugging Face `tokenizers` in .venv (the tokenisation anchor). None of these is a
# dependency of keras_bert_ft. Idempotent: a finished environment is left as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/setup.sh
.venv/bin/python -m pip install -q tokenizers
PY=${PYTHON:-python3}
make_venv() {  # name, packages...
  local dir=".bench-venvs/$1"; shift
  [ -f "$dir/.done" ] && return 0
  rm -rf "$dir" && "$PY" -m venv "$dir"
  "$dir/bin/python" -m pip install -q --upgrade pip
  "$dir/bin/python" -m pip install -q "$@"
  touch "$dir/.done"
}
make_venv hf "torch==2.13.0" "transformers>=4.44,<5" safetensors numpy pandas
make_venv kerashub "tensorflow==2.20.0" "tensorflow-text==2.20.*" keras-hub safetensors numpy pandas
echo "anchor environments ready in .bench-venvs/"
