#!/usr/bin/env bash
# Test every model-zoo checkpoint in checkpoints/ (ssv2_*.pth, k400_*.pth) with its dataset's published protocol and
# write output/zoo/zoo_results.md and .csv: published and measured top-1/top-5, their difference, videos, views, time.
# The model and dataset come from each file (its saved args, else its keys and name), not from the command line.
#   bash scripts/eval_zoo.sh [zoo.py flags] [-- run_class_finetuning.py flags, e.g. --batch_size 4 --data_root DIR]
# Env: DATA_PATH [data/ssv2], K400_DATA_PATH [data/k400], CHECKPOINTS [checkpoints], OUTPUT_DIR [output/zoo],
# NPROC [all GPUs; CPU if none]. LLaMA checkpoints hold their LLM layer: no LLAMA_PATH is needed.
set -euo pipefail
cd "$(dirname "$0")/.."
NPROC=${NPROC:-$(nvidia-smi -L 2>/dev/null | wc -l)}
DEVICE=cuda
if [ "${NPROC}" -lt 1 ]; then DEVICE=cpu; NPROC=1; fi
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} exec python zoo.py --checkpoints "${CHECKPOINTS:-checkpoints}" \
    --output_dir "${OUTPUT_DIR:-output/zoo}" --ssv2_data_path "${DATA_PATH:-data/ssv2}" \
    --k400_data_path "${K400_DATA_PATH:-data/k400}" --device "${DEVICE}" --nproc "${NPROC}" "$@"
