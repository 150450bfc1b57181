#!/usr/bin/env bash
# ViT-S + frozen LLaMA-7B block (layer 15) on Kinetics-400, the ViT-S recipe of scripts/k400_vits.sh.
# LLAMA_PATH: LLaMA-1 7B folder with params.json and consolidated.00.pth, or a Hugging Face
# LLaMA folder [checkpoints/llama-7b]; a folder with neither fails at model build with what was looked for.
set -euo pipefail
LLAMA_PATH=${LLAMA_PATH:-checkpoints/llama-7b}
export MODEL=${MODEL:-vit_llama_small_patch16_224}
export OUTPUT_DIR=${OUTPUT_DIR:-output/k400_vits_llama}
exec bash "$(dirname "$0")/k400_vits.sh" --llama_path "${LLAMA_PATH}" "$@"
