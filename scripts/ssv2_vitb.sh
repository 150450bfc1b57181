#!/usr/bin/env bash
# Fine-tune ViT-B on SSv2 with the published recipe: 30 epochs, lr 5e-4 (per 256 videos), layer decay 0.75,
# 12 videos per optimizer step (published: 3 per GPU on 4 GPUs). Same environment variables as scripts/ssv2_vits.sh.
set -euo pipefail
export MODEL=${MODEL:-vit_base_patch16_224}
export TOTAL_BATCH=${TOTAL_BATCH:-12} LR=${LR:-5e-4} LAYER_DECAY=${LAYER_DECAY:-0.75} EPOCHS=${EPOCHS:-30}
export PUBLISHED_BATCH_PER_GPU=${PUBLISHED_BATCH_PER_GPU:-3}
export FINETUNE=${FINETUNE:-checkpoints/videomae_ssv2_vitb.pth}
export OUTPUT_DIR=${OUTPUT_DIR:-output/ssv2_vitb}
exec bash "$(dirname "$0")/ssv2_vits.sh" "$@"
