#!/usr/bin/env bash
# ViT-S + frozen LLaMA-7B block (layer 15) on SSv2, the ViT-S recipe of scripts/ssv2_vits.sh.
# LLAMA_PATH: LLaMA-1 7B folder with params.json and consolidated.00.pth [checkpoints/llama-7b].
set -euo pipefail
LLAMA_PATH=${LLAMA_PATH:-checkpoints/llama-7b}
if [ ! -f "${LLAMA_PATH}/params.json" ] && [ ! -f "${LLAMA_PATH}/config.json" ]; then
    echo "LLAMA_PATH=${LLAMA_PATH} has no params.json (see checkpoints/instructions.md)" >&2; exit 1
fi
export MODEL=${MODEL:-vit_llama_small_patch16_224}
export OUTPUT_DIR=${OUTPUT_DIR:-output/ssv2_vits_llama}
exec bash "$(dirname "$0")/ssv2_vits.sh" --llama_path "${LLAMA_PATH}" "$@"
