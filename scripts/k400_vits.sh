#!/usr/bin/env bash
# Fine-tune ViT-S on Kinetics-400 with VideoMAE's published recipe (its
# scripts/kinetics/videomae_vit_small_patch16_224_tubemasking_ratio_0.9_epoch_1600/finetune.sh): 150 epochs,
# lr 5e-4 (per 256 videos, scaled by the real batch), layer decay 0.75, drop path 0.1, 5 warmup epochs (its defaults,
# which are ours), 384 videos per optimizer step (published: 12 per GPU on 32 GPUs) x num_sample 2, 16 frames at
# stride 4, 224 px, 5 x 3 test views. Expect about 79.0% top-1 from the 1600-epoch self-supervised checkpoint
# (VideoMAE MODEL_ZOO.md, Kinetics-400, ViT-S / 1600). DATA_PATH [data/k400, from datasets/prepare_kinetics.py],
# FINETUNE [checkpoints/videomae_k400_vits.pth], OUTPUT_DIR [output/k400_vits] and the GPU settings as in
# scripts/finetune.sh.
set -euo pipefail
export DATA_SET=${DATA_SET:-Kinetics-400} NB_CLASSES=${NB_CLASSES:-400} SAMPLING_RATE=${SAMPLING_RATE:-4}
export TEST_NUM_SEGMENT=${TEST_NUM_SEGMENT:-5}
export MODEL=${MODEL:-vit_small_patch16_224}
export TOTAL_BATCH=${TOTAL_BATCH:-384} LR=${LR:-5e-4} LAYER_DECAY=${LAYER_DECAY:-0.75} EPOCHS=${EPOCHS:-150}
export PUBLISHED_BATCH_PER_GPU=${PUBLISHED_BATCH_PER_GPU:-12}
export DATA_PATH=${DATA_PATH:-data/k400}
export FINETUNE=${FINETUNE:-checkpoints/videomae_k400_vits.pth}
export OUTPUT_DIR=${OUTPUT_DIR:-output/k400_vits}
exec bash "$(dirname "$0")/finetune.sh" "$@"
