#!/usr/bin/env bash
# kbft tune on real data, every choice made on validation data carved from training and
# the test file scored once with the chosen run. Sized for a 2-core CPU. Writes the
# searches under runs/tune_* and copies their tables and summaries to benchmarks/results/.
#   bash benchmarks/run_tune.sh [sst2|mrpc|mrpc-seeds|mrpc-refit|cola ...]   (default: sst2 mrpc cola)
set -euo pipefail
cd "$(dirname "$0")/.."
KBFT=${KBFT:-.venv/bin/kbft}
DATA=${DATA:-../shared/data}
OUT=benchmarks/results
steps=${*:-sst2 mrpc cola}

for step in $steps; do case $step in
sst2)  # the 9-point grid on 4,000 training sentences (10% held out), test.tsv once
  $KBFT tune --train $DATA/sst2/train.tsv --max-train-examples 4000 --validation-split 0.1 \
      --test $DATA/sst2/test.tsv --seq-length 64 --freeze-embeddings --verbose 0 \
      --grid learning_rate=5e-5,1e-4,2e-4 --grid epochs=1,2,3 --output runs/tune_sst2 ;;
mrpc)  # the official train/val split picks the rate and the epoch; test pairs once
  $KBFT tune --train mrpc:$DATA/mrpc/msr-para-train.tsv \
      --validation mrpc:$DATA/mrpc/msr-para-val.tsv --test mrpc:$DATA/mrpc/msr-para-test.tsv \
      --swap-pairs --epochs 3 --monitor f1 --freeze-embeddings --verbose 0 \
      --grid learning_rate=5e-5,1e-4,2e-4 --output runs/tune_mrpc ;;
mrpc-seeds)  # the rate mrpc chose on validation, three more seeds (BERT's restarts);
  # validation F1 picks the seed and the epoch, test pairs once
  $KBFT tune --train mrpc:$DATA/mrpc/msr-para-train.tsv \
      --validation mrpc:$DATA/mrpc/msr-para-val.tsv --test mrpc:$DATA/mrpc/msr-para-test.tsv \
      --swap-pairs --epochs 3 --monitor f1 --freeze-embeddings --verbose 0 \
      --learning-rate 5e-5 --grid seed=1,2,3 --output runs/tune_mrpc-seeds ;;
mrpc-refit)  # the point mrpc-seeds chose on validation (lr 5e-5, seed 1), trained again on
  # train + val (--refit) for the epochs that trial kept; test pairs once, with the refit
  $KBFT tune --train mrpc:$DATA/mrpc/msr-para-train.tsv \
      --validation mrpc:$DATA/mrpc/msr-para-val.tsv --test mrpc:$DATA/mrpc/msr-para-test.tsv \
      --swap-pairs --epochs 3 --monitor f1 --freeze-embeddings --verbose 0 \
      --learning-rate 5e-5 --grid seed=1 --refit --output runs/tune_mrpc-refit ;;
cola)  # 10% of in_domain_train held out picks the rate and the epoch; in-domain dev once
  $KBFT tune --train cola:$DATA/cola/in_domain_train.tsv --validation-split 0.1 \
      --test cola:$DATA/cola/in_domain_dev.tsv --seq-length 64 --epochs 6 --batch-size 16 \
      --monitor mcc --verbose 0 --grid learning_rate=3e-5,5e-5 --output runs/tune_cola ;;
*) echo "unknown step: $step (sst2, mrpc, mrpc-seeds, mrpc-refit, cola)" >&2; exit 2 ;;
esac
mkdir -p $OUT
cp runs/tune_$step/tune_results.tsv $OUT/tune_${step}_results.tsv
cp runs/tune_$step/tune_summary.json $OUT/tune_${step}_summary.json
cp runs/tune_$step/tune_results.png $OUT/tune_${step}_results.png
done
