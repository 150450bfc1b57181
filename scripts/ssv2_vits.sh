#!/usr/bin/env bash
# Fine-tune ViT-S on Something-Something-v2 with the published LM4VisualEncoding recipe:
# 40 epochs, lr 1e-3 (per 256 videos, scaled by the real batch), layer decay 0.7, 24 videos per optimizer step
# (x num_sample 2 = 48 clips), 16 frames at 224 px, 2 x 3 test views. Ends with the multi-view test.
#
# Environment (defaults in brackets):
#   DATA_PATH   folder with train.csv / val.csv / test.csv            [data/ssv2]
#   DATA_ROOT   prefix for relative video paths in the CSVs            [the CSV folder]
#   FINETUNE    VideoMAE self-supervised checkpoint                    [checkpoints/videomae_ssv2_vits.pth]
#   OUTPUT_DIR  checkpoints, log.txt, TensorBoard, test results        [output/ssv2_vits]
#   NPROC       GPUs per node                                          [all visible GPUs]
#   NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT   multi-node torchrun  [1, 0, 127.0.0.1, 29500]
#   MAX_BATCH_PER_GPU  largest per-GPU batch before accumulating       [6]
#   MODEL, TOTAL_BATCH, LR, LAYER_DECAY, EPOCHS   recipe overrides     (set by the *_llama / vitb scripts)
# Extra arguments are passed to run_class_finetuning.py (e.g. --eval --resume CKPT, --amp fp16).
# The per-GPU batch and --update_freq are chosen so that batch x update_freq x GPUs = TOTAL_BATCH whatever the GPU
# count; the lr scaling then gives the published learning rate. Re-running resumes from the newest checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=${MODEL:-vit_small_patch16_224}
TOTAL_BATCH=${TOTAL_BATCH:-24}
LR=${LR:-1e-3}
LAYER_DECAY=${LAYER_DECAY:-0.7}
EPOCHS=${EPOCHS:-40}
MAX_BATCH_PER_GPU=${MAX_BATCH_PER_GPU:-6}
DATA_PATH=${DATA_PATH:-data/ssv2}
FINETUNE=${FINETUNE:-checkpoints/videomae_ssv2_vits.pth}
OUTPUT_DIR=${OUTPUT_DIR:-output/ssv2_vits}
NPROC=${NPROC:-$(nvidia-smi -L 2>/dev/null | wc -l)}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}

if [ "${NPROC}" -lt 1 ]; then
    echo "no GPU found (nvidia-smi); set NPROC, or run scripts/demo.sh for a CPU run" >&2; exit 1
fi
GPUS=$((NPROC * NNODES))
if [ $((TOTAL_BATCH % GPUS)) -ne 0 ]; then
    echo "TOTAL_BATCH=${TOTAL_BATCH} videos per step cannot be split over ${GPUS} GPUs; use a divisor" >&2; exit 1
fi
BATCH=$((TOTAL_BATCH / GPUS))
UPDATE_FREQ=1
while [ "${BATCH}" -gt "${MAX_BATCH_PER_GPU}" ] && [ $((BATCH % 2)) -eq 0 ]; do
    BATCH=$((BATCH / 2)); UPDATE_FREQ=$((UPDATE_FREQ * 2))
done
echo "${MODEL}: ${GPUS} GPUs x batch ${BATCH} x update_freq ${UPDATE_FREQ} = ${TOTAL_BATCH} videos per step"

DATA_ARGS=(--data_path "${DATA_PATH}")
if [ -n "${DATA_ROOT:-}" ]; then DATA_ARGS+=(--data_root "${DATA_ROOT}"); fi
FINETUNE_ARGS=()
if [ -n "${FINETUNE}" ]; then FINETUNE_ARGS=(--finetune "${FINETUNE}"); fi
mkdir -p "${OUTPUT_DIR}"

OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} torchrun --nnodes "${NNODES}" --node_rank "${NODE_RANK}" \
    --nproc_per_node "${NPROC}" --master_addr "${MASTER_ADDR}" --master_port "${MASTER_PORT}" \
    run_class_finetuning.py \
    --model "${MODEL}" \
    --data_set SSV2 \
    --nb_classes 174 \
    "${DATA_ARGS[@]}" \
    "${FINETUNE_ARGS[@]}" \
    --log_dir "${OUTPUT_DIR}" \
    --output_dir "${OUTPUT_DIR}" \
    --batch_size "${BATCH}" \
    --update_freq "${UPDATE_FREQ}" \
    --num_sample 2 \
    --input_size 224 \
    --short_side_size 224 \
    --save_ckpt_freq 10 \
    --num_frames 16 \
    --opt adamw \
    --lr "${LR}" \
    --layer_decay "${LAYER_DECAY}" \
    --opt_betas 0.9 0.999 \
    --weight_decay 0.05 \
    --epochs "${EPOCHS}" \
    --test_num_segment 2 \
    --test_num_crop 3 \
    --dist_eval \
    "$@" 2>&1 | tee -a "${OUTPUT_DIR}/train.log"
