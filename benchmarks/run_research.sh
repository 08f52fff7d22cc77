#!/usr/bin/env bash
# The research kit on real data: sweep-layers, diff, probe, layer ablation and the
# forgetting probe on SST-2; the CoLA bias-correction ablation over 5 seeds and the
# gradient norms of a collapsed and a healthy run; task-adaptive pre-training on CoLA and
# SST-2. Sized for a 2-core CPU (training subsets, seq 64, 1-5 epochs); writes everything
# under benchmarks/results/ (ablate and forget read the run the diff step trains).
#   bash benchmarks/run_research.sh [sweep|diff|probe|ablate|forget|cola|gradnorm|tapt ...]
#   (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
KBFT="$PY -m keras_bert_ft.cli"
SST2=${SST2:-../shared/data/sst2}
TREC=${TREC:-../shared/data/trec}
OUT=benchmarks/results
steps=${*:-sweep diff probe ablate forget cola gradnorm tapt}

for step in $steps; do case $step in
sweep)  # top k layers for k = 0..6, the whole model, then 9 heads at k = 2
  $KBFT sweep-layers --train $SST2/train.tsv --validation $SST2/test.tsv \
      --max-train-examples 3000 --epochs 1 --batch-size 32 --seq-length 64 \
      --learning-rate 1e-3 --encoder-learning-rate 2e-4 \
      --head-depths 0,1,2 --poolings pooled,cls,mean --head-layers 2 \
      --verbose 0 --output $OUT/sweep_layers_sst2 ;;
diff)   # fine-tune the whole model, then compare it with the pretrained encoder
  $KBFT train --train $SST2/train.tsv --validation $SST2/test.tsv \
      --max-train-examples 3000 --epochs 1 --batch-size 32 --seq-length 64 \
      --learning-rate 2e-4 --trainable-layers all --verbose 2 --output runs/sst2_research
  $KBFT diff minilm-l6 runs/sst2_research --data $SST2/test.tsv --samples 512 \
      --seq-length 64 --json $OUT/diff_sst2.json ;;
probe)  # where SST-2's information lives, before and after fine-tuning
  for model in minilm-l6 runs/sst2_research; do
    name=$([ "$model" = minilm-l6 ] && echo pretrained || echo finetuned)
    $KBFT probe --model $model --train $SST2/train.tsv --validation $SST2/test.tsv \
        --max-train-examples 2000 --seq-length 64 --json $OUT/probe_sst2_$name.json
    $KBFT probe --model $model --train $SST2/train.tsv --validation $SST2/test.tsv \
        --max-train-examples 2000 --seq-length 64 --representation mean \
        --json $OUT/probe_sst2_${name}_mean.json
  done ;;
ablate) # each layer group of the SST-2 run put back to its pretrained weights in turn
  $KBFT ablate runs/sst2_research --validation $SST2/test.tsv --output $OUT/ablate_sst2 \
      --overwrite ;;
forget) # question type (TREC, 6 classes) probed per layer before and after SST-2 fine-tuning
  $KBFT probe --model runs/sst2_research --compare-pretrained \
      --train trec:$TREC/TREC.train --validation trec:$TREC/TREC.test \
      --max-train-examples 2000 --seq-length 64 --json $OUT/forgetting_trec.json \
      --plot $OUT/forgetting_trec.png ;;
cola)   # AdamW with / without bias correction, 5 seeds each
  $PY benchmarks/bench_cola_seeds.py --examples 2000 --seeds 5 --epochs 2 ;;
gradnorm) # per-layer gradient norms: the collapsed (no bias correction) and a healthy run
  $PY benchmarks/bench_gradient_norms.py ;;
tapt)   # masked-LM on the training texts, then 1,000 labelled examples, vs fine-tuning alone
  $PY benchmarks/bench_tapt.py ;;
*) echo "unknown step: $step (sweep, diff, probe, ablate, forget, cola, gradnorm, tapt)" >&2
   exit 2 ;;
esac; done
