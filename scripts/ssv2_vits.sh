#!/usr/bin/env bash
# Fine-tune ViT-S on Something-Something-v2 with the published LM4VisualEncoding recipe:
# 40 epochs, lr 1e-3 (per 256 videos, scaled by the real batch), layer decay 0.7, 24 videos per optimizer step
# (x num_sample 2 = 48 clips; published: 6 per GPU on 4 GPUs), 16 frames at 224 px, 2 x 3 test views. Ends with
# the multi-view test. DATA_PATH [data/ssv2], FINETUNE [checkpoints/videomae_ssv2_vits.pth], OUTPUT_DIR
# [output/ssv2_vits] and the GPU settings as in scripts/finetune.sh.
set -euo pipefail
export DATA_SET=${DATA_SET:-SSV2} NB_CLASSES=${NB_CLASSES:-174} TEST_NUM_SEGMENT=${TEST_NUM_SEGMENT:-2}
export MODEL=${MODEL:-vit_small_patch16_224}
export TOTAL_BATCH=${TOTAL_BATCH:-24} LR=${LR:-1e-3} LAYER_DECAY=${LAYER_DECAY:-0.7} EPOCHS=${EPOCHS:-40}
export PUBLISHED_BATCH_PER_GPU=${PUBLISHED_BATCH_PER_GPU:-6}
export DATA_PATH=${DATA_PATH:-data/ssv2}
export FINETUNE=${FINETUNE:-checkpoints/videomae_ssv2_vits.pth}
export OUTPUT_DIR=${OUTPUT_DIR:-output/ssv2_vits}
exec bash "$(dirname "$0")/finetune.sh" "$@"
