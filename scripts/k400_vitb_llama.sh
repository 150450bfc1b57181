#!/usr/bin/env bash
# ViT-B + frozen LLaMA-7B block (layer 15) on Kinetics-400, the ViT-B recipe of scripts/k400_vitb.sh.
# LLAMA_PATH: LLaMA-1 7B folder with params.json and consolidated.00.pth, or a Hugging Face
# LLaMA folder [checkpoints/llama-7b]; a folder with neither fails at model build with what was looked for.
set -euo pipefail
LLAMA_PATH=${LLAMA_PATH:-checkpoints/llama-7b}
export MODEL=${MODEL:-vit_llama_base_patch16_224}
export OUTPUT_DIR=${OUTPUT_DIR:-output/k400_vitb_llama}
exec bash "$(dirname "$0")/k400_vitb.sh" --llama_path "${LLAMA_PATH}" "$@"
