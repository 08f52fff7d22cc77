#!/bin/bash
# Device job: the replica's sanity check, then one grid (GRID=grid1.txt: one config per
# line, "NAME key=value ..."), each config in its own process on the one GPU; results to
# $OUT/results.jsonl (QA_SEARCH_DATA: export_windows.py's folder, default .gpu).
#   device run, carry [".gpu"]:  LIMIT=330 GRID=grid1.txt bash benchmarks/qa_recipe_search/run_grid.sh
cd "$(dirname "$0")"
OUT=${OUT:-/tmp/qa_search}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
nvidia-smi --query-gpu=name,memory.total --format=csv
python3 sanity.py 2>&1 | tail -3
nvidia-cuda-mps-control -d 2>/dev/null && echo "MPS on" || echo "no MPS"
R=$OUT/results.jsonl
LIMIT=${LIMIT:-400}
run() { name=$1; shift; timeout $LIMIT python3 replica.py $R $name "$@" > $OUT/log_$name.txt 2>&1 & }
while read -r line; do
  [ -z "$line" ] && continue
  run $line
done < ${GRID:-grid1.txt}
wait
cat $OUT/log_*.txt | grep -v '^{' | tail -40
rm -f $OUT/log_*.txt
python3 summarize.py $R
