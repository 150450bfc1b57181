#!/usr/bin/env bash
# Multi-view test (2 clips x 3 crops) of one checkpoint on the SSv2 test list:
#   bash scripts/eval_ssv2.sh MODEL CKPT [extra run_class_finetuning.py flags]
#   e.g. bash scripts/eval_ssv2.sh vit_llama_base_patch16_224 checkpoints/ssv2_vitb_llama.pth
# Env: DATA_PATH [data/ssv2], DATA_ROOT, OUTPUT_DIR [output/eval_<ckpt name>], NPROC [all GPUs, CPU if none],
# LLAMA_PATH (optional: a full checkpoint already holds the LLaMA weights). Writes test_summary.json and friends.
set -euo pipefail
if [ $# -lt 2 ]; then echo "usage: $0 MODEL CKPT [flags]" >&2; exit 2; fi
MODEL=$1; CKPT=$2; shift 2
cd "$(dirname "$0")/.."
[ -f "${CKPT}" ] || { echo "checkpoint not found: ${CKPT}" >&2; exit 1; }
DATA_PATH=${DATA_PATH:-data/ssv2}
NAME=$(basename "${CKPT}"); NAME=${NAME%.pth}
OUTPUT_DIR=${OUTPUT_DIR:-output/eval_${NAME}}
NPROC=${NPROC:-$(nvidia-smi -L 2>/dev/null | wc -l)}
ARGS=(--model "${MODEL}" --eval --resume "${CKPT}" --data_set SSV2 --nb_classes 174 --data_path "${DATA_PATH}"
      --output_dir "${OUTPUT_DIR}" --batch_size "${BATCH:-8}" --num_frames 16 --input_size 224 --short_side_size 224
      --test_num_segment 2 --test_num_crop 3 --dist_eval)
if [ -n "${DATA_ROOT:-}" ]; then ARGS+=(--data_root "${DATA_ROOT}"); fi
if [ -n "${LLAMA_PATH:-}" ]; then ARGS+=(--llama_path "${LLAMA_PATH}"); fi
if [ "${NPROC}" -ge 1 ]; then
    OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} torchrun --nproc_per_node "${NPROC}" --master_port "${MASTER_PORT:-29501}" \
        run_class_finetuning.py "${ARGS[@]}" "$@"
else
    python run_class_finetuning.py "${ARGS[@]}" --device cpu "$@"
fi
echo "results: ${OUTPUT_DIR}/test_summary.json"
