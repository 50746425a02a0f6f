#!/usr/bin/env bash
# GPU check: what the CUDA path does on a real GPU, beside nnU-Net's own trainer in the same minutes.
#
#   bash bench/gpu_check.sh [MINUTES]        (default 5; from the repository root, medseg_auto installed)
#
# 1. a MINUTES-minute hippocampus run, exe_train.py --device cuda -f 0 (160 training cases), then
#    exe_predict.py on 40 held-out cases; plain nnU-Net's nnUNetTrainer trained for as long as our fold, on the
#    same preprocessed data and split, predicts the same cases (bench/dice_at_budget.py --device cuda);
# 2. meanwhile nvidia-smi samples GPU use and memory once a second;
# 3. the summary: the epoch lines, the compile decision and warm-up, the fold's iterations, GPU use (mean of
#    the samples while training) and peak memory, and the table of bench/dice_at_budget.py.
# Everything goes under $OUT (default /tmp/gpu_check): gpu_check.txt is the summary for bench/RESULTS.md.
# Not a test. It needs a CUDA GPU, nvidia-smi, the shared data (../shared/data or $MEDSEG_DATA) and about
# 2 x MINUTES + 3 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-5}
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
WORK="$OUT/work"
rm -rf "$WORK"
export PYTHONUNBUFFERED=1

python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU visible to torch')"
python3 bench/machine.py > "$OUT/machine.txt" 2>&1 || true
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >> "$OUT/machine.txt"

nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader,nounits -l 1 \
    > "$OUT/gpu_samples.csv" &
SAMPLER=$!
trap 'kill $SAMPLER 2>/dev/null || true' EXIT

python3 bench/dice_at_budget.py --minutes "$MINUTES" --device cuda --work "$WORK" --heldout 40 \
    > "$OUT/dice_at_budget.txt" 2> "$OUT/run.log"
kill $SAMPLER 2>/dev/null || true

{
    echo "# GPU check, $(date -u +%Y-%m-%d), -t $MINUTES"
    cat "$OUT/machine.txt"
    echo
    echo "## our run (exe_train.py --device cuda): device, compile decision, epochs"
    grep -E '^\[device\]|compile|^  fold 0 \| epoch|\[train\] fold 0 done|Model exported' "$OUT/run.log" || true
    echo
    echo "## GPU use while both trained (nvidia-smi, 1 s samples)"
    awk -F', ' '{u+=$2; n++; if ($3>m) m=$3} END {if (n) printf "samples %d, mean utilisation %.0f%%, peak memory %d MiB\n", n, u/n, m}' \
        "$OUT/gpu_samples.csv"
    echo
    echo "## held-out Dice at the same minutes (bench/dice_at_budget.py)"
    cat "$OUT/dice_at_budget.txt"
    CARD=$(find "$WORK/output_models" -name model_card.json | head -1)
    if [ -n "$CARD" ]; then
        echo
        echo "## model card: training settings and fold 0"
        python3 -c "import json,sys; c=json.load(open(sys.argv[1])); print(json.dumps({'training_settings': c['training_settings'], 'fold_0': c['folds']['0']}, indent=1))" "$CARD"
    fi
} > "$OUT/gpu_check.txt"
cat "$OUT/gpu_check.txt"
