#!/usr/bin/env bash
# Fine-tune ViT-B on UCF101 or HMDB51, one official split, with VideoMAE's published UCF101 recipe (its
# scripts/ucf101/videomae_vit_base_patch16_224_tubemasking_ratio_0.75_epoch_3200/finetune.sh; it publishes none for
# HMDB51, which takes the same here): 100 epochs, lr 5e-4, warmup lr 1e-8, min lr 1e-5, layer decay 0.7, drop path
# 0.2, head dropout 0.5, 128 videos per optimizer step (published: 16 per GPU on 8 GPUs) x num_sample 2, 16 frames
# at stride 4, 5 x 3 test views.
#   DATA_SET    UCF101 or HMDB51                                        [UCF101]
#   DATA_SPLIT  official split 1, 2 or 3 (train_N.csv / val_N.csv)      [1]
#   DATA_PATH   output of datasets/prepare_ucf_hmdb.py                  [data/ucf101 or data/hmdb51]
#   FINETUNE    VideoMAE self-supervised ViT-B                          [checkpoints/videomae_<dataset>_vitb.pth]
#   OUTPUT_DIR                                                          [output/<dataset>_vitb_split<N>]
# and the GPU settings as in scripts/finetune.sh.
set -euo pipefail
export DATA_SET=${DATA_SET:-UCF101} DATA_SPLIT=${DATA_SPLIT:-1}
case "${DATA_SET}" in
    UCF101) CLASSES=101 ;;
    HMDB51) CLASSES=51 ;;
    *) echo "DATA_SET=${DATA_SET}: expected UCF101 or HMDB51" >&2; exit 1 ;;
esac
NAME=$(echo "${DATA_SET}" | tr '[:upper:]' '[:lower:]')
export NB_CLASSES=${NB_CLASSES:-${CLASSES}} SAMPLING_RATE=${SAMPLING_RATE:-4} TEST_NUM_SEGMENT=${TEST_NUM_SEGMENT:-5}
export MODEL=${MODEL:-vit_base_patch16_224}
export TOTAL_BATCH=${TOTAL_BATCH:-128} LR=${LR:-5e-4} LAYER_DECAY=${LAYER_DECAY:-0.7} EPOCHS=${EPOCHS:-100}
export PUBLISHED_BATCH_PER_GPU=${PUBLISHED_BATCH_PER_GPU:-16}
export DATA_PATH=${DATA_PATH:-data/${NAME}}
export FINETUNE=${FINETUNE:-checkpoints/videomae_${NAME}_vitb.pth}
export OUTPUT_DIR=${OUTPUT_DIR:-output/${NAME}_vitb_split${DATA_SPLIT}}
exec bash "$(dirname "$0")/finetune.sh" --warmup_lr 1e-8 --min_lr 1e-5 --drop_path 0.2 --fc_drop_rate 0.5 "$@"
