#!/usr/bin/env bash
# Fine-tune a video ViT with a published recipe on any GPU count: the machinery behind scripts/ssv2_*.sh,
# scripts/k400_*.sh and scripts/ucf_hmdb_vitb.sh, which set the recipe and the dataset; run one of those. Keeps the
# published step (TOTAL_BATCH videos per optimizer step), ends with the multi-view test.
#
# Set by the recipe scripts (all required):
#   DATA_SET, NB_CLASSES                       --data_set and --nb_classes
#   MODEL, TOTAL_BATCH, LR, LAYER_DECAY, EPOCHS   the recipe; LR is per 256 videos, scaled by the real batch
#   PUBLISHED_BATCH_PER_GPU                    the published per-GPU batch (used when GPU memory is unknown)
#   TEST_NUM_SEGMENT                           temporal test views (x 3 spatial crops)
#   DATA_PATH, FINETUNE, OUTPUT_DIR            defaults of the recipe script, overridable by the user
# Optional, set by recipe scripts or the user:
#   SAMPLING_RATE  frame stride of a dense clip (--sampling_rate; Kinetics-style datasets)
#   DATA_SPLIT     official split 1-3 (--data_split; UCF101 / HMDB51)
#
# Environment for the user (defaults in brackets):
#   DATA_PATH   folder with the lists (train.csv / val.csv / test.csv, or train_N.csv / val_N.csv)
#   DATA_ROOT   prefix for relative video paths in the lists              [the list folder]
#   FINETUNE    VideoMAE self-supervised checkpoint
#   OUTPUT_DIR  checkpoints, log.txt, TensorBoard, test results
#   NPROC       GPUs per node                                          [all visible GPUs]
#   NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT   multi-node torchrun  [1, 0, 127.0.0.1, 29500]
#   MAX_BATCH_PER_GPU  largest per-GPU batch before accumulating       [from GPU memory, see below]
#   COMPILE     1: torch.compile the model (--compile); COMPILE=0 turns it off                     [1]
#   AUGMENT_ON  device: workers only decode, clips are augmented on the GPU; workers: the published
#               PIL path in the DataLoader workers (README, "What a clip is")                   [device]
# Extra arguments are passed to run_class_finetuning.py (e.g. --eval --resume CKPT, --amp fp16).
#
# The per-GPU batch and --update_freq are chosen so that batch x update_freq x GPUs = TOTAL_BATCH whatever the GPU
# count; the lr scaling then gives the published learning rate. The per-GPU batch is the largest divisor of the
# per-GPU share that fits the smallest visible GPU (memory per video below, 25% kept free); without nvidia-smi the
# published split (PUBLISHED_BATCH_PER_GPU) is used. Accumulating micro-batches gives the same update as one
# big step (README, "Training"), so this changes speed, not the recipe. Re-running resumes from the newest checkpoint.
#
# torch.compile (COMPILE=1) made the ViT-S-LLaMA step 1.36x faster on an H200 (an earlier version of this code); its
# first step compiles for about half a minute, which the log reports as compilation.
set -euo pipefail
cd "$(dirname "$0")/.."

for name in DATA_SET NB_CLASSES MODEL TOTAL_BATCH LR LAYER_DECAY EPOCHS PUBLISHED_BATCH_PER_GPU TEST_NUM_SEGMENT \
        DATA_PATH OUTPUT_DIR; do
    if [ -z "${!name:-}" ]; then
        echo "${name} is not set: run a recipe script (scripts/ssv2_vits.sh, scripts/k400_vits.sh, ...)" >&2; exit 1
    fi
done
COMPILE=${COMPILE:-1}
AUGMENT_ON=${AUGMENT_ON:-device}
FINETUNE=${FINETUNE:-}
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
# GiB per video in a micro-batch (num_sample 2 clips of 16 x 224, bf16 autocast, AdamW), fixed part included.
# Measured: ViT-B-LLaMA, 12 videos (24 clips) in 18.8 GiB on one H200 (torch 2.11, an earlier version of this code): 1.57, rounded up; the
# run did not record eager vs compiled, so the 25% kept free also covers that and the CUDA context. ViT-S(-LLaMA)
# and ViT-B are smaller in every part (narrower, or no LLaMA block; same tokens): the same figure bounds them until
# measured (each log line prints peak_mem). Other models: the published split.
case "${MODEL}" in
    vit_llama_base_patch16_224) GIB_PER_VIDEO=1.6 ;;
    vit_llama_small_patch16_224 | vit_base_patch16_224 | vit_small_patch16_224) GIB_PER_VIDEO=1.6 ;;
    *) GIB_PER_VIDEO="" ;;
esac
if [ -z "${MAX_BATCH_PER_GPU:-}" ]; then
    GPU_MIB=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null | sort -n | head -n 1 || true)
    if [ -n "${GPU_MIB}" ] && [ -n "${GIB_PER_VIDEO}" ]; then
        MAX_BATCH_PER_GPU=$(awk -v mib="${GPU_MIB}" -v per="${GIB_PER_VIDEO}" \
            'BEGIN { b = int(0.75 * mib / (per * 1024)); print (b < 1 ? 1 : b) }')
        echo "GPU memory ${GPU_MIB} MiB: up to ${MAX_BATCH_PER_GPU} videos per GPU (${GIB_PER_VIDEO} GiB each, 25% free)"
    else
        MAX_BATCH_PER_GPU=${PUBLISHED_BATCH_PER_GPU}
        echo "no memory figure (nvidia-smi or model table): the published ${MAX_BATCH_PER_GPU} videos per GPU"
    fi
fi
if ! [ "${MAX_BATCH_PER_GPU}" -ge 1 ] 2>/dev/null; then
    echo "MAX_BATCH_PER_GPU=${MAX_BATCH_PER_GPU}: expected a whole number of videos >= 1" >&2; exit 1
fi
SHARE=$((TOTAL_BATCH / GPUS))
UPDATE_FREQ=1
while [ $((SHARE / UPDATE_FREQ)) -gt "${MAX_BATCH_PER_GPU}" ] || [ $((SHARE % UPDATE_FREQ)) -ne 0 ]; do
    UPDATE_FREQ=$((UPDATE_FREQ + 1))
done
BATCH=$((SHARE / UPDATE_FREQ))
echo "${MODEL}: ${GPUS} GPUs x batch ${BATCH} x update_freq ${UPDATE_FREQ} = ${TOTAL_BATCH} videos per step"

DATA_ARGS=(--data_set "${DATA_SET}" --nb_classes "${NB_CLASSES}" --data_path "${DATA_PATH}")
if [ -n "${DATA_ROOT:-}" ]; then DATA_ARGS+=(--data_root "${DATA_ROOT}"); fi
if [ -n "${DATA_SPLIT:-}" ]; then DATA_ARGS+=(--data_split "${DATA_SPLIT}"); fi
if [ -n "${SAMPLING_RATE:-}" ]; then DATA_ARGS+=(--sampling_rate "${SAMPLING_RATE}"); fi
FINETUNE_ARGS=()
if [ -n "${FINETUNE}" ]; then FINETUNE_ARGS=(--finetune "${FINETUNE}"); fi
COMPILE_ARGS=()
if [ "${COMPILE}" != 0 ]; then COMPILE_ARGS=(--compile); fi
mkdir -p "${OUTPUT_DIR}"
# torchrun passes these signals on to every process, which then finish their step, save checkpoint-last.pth and
# exit (README, "Preemption and reruns"). PET_SIGNALS_TO_HANDLE is torchrun's --signals-to-handle; releases without
# that flag ignore it and pass on SIGTERM, SIGINT, SIGHUP and SIGQUIT only.
export PET_SIGNALS_TO_HANDLE=${PET_SIGNALS_TO_HANDLE:-SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1}

OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} torchrun --nnodes "${NNODES}" --node_rank "${NODE_RANK}" \
    --nproc_per_node "${NPROC}" --master_addr "${MASTER_ADDR}" --master_port "${MASTER_PORT}" \
    run_class_finetuning.py \
    --model "${MODEL}" \
    "${DATA_ARGS[@]}" \
    "${FINETUNE_ARGS[@]}" \
    "${COMPILE_ARGS[@]}" \
    --augment_on "${AUGMENT_ON}" \
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
    --test_num_segment "${TEST_NUM_SEGMENT}" \
    --test_num_crop 3 \
    --dist_eval \
    "$@" 2>&1 | tee -a "${OUTPUT_DIR}/train.log"
