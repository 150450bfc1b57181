#!/usr/bin/env bash
# Which frozen LLM layer helps? Fine-tunes one ViT-LLaMA per layer choice with the same recipe (GPU nodes, torchrun),
# then tabulates each run's multi-view test (top-1/top-5 from its test_summary.json) into SWEEP_DIR/sweep.csv and
# SWEEP_DIR/sweep.png.
#   LAYERS="0 8 15 24 -1 14,15 12:16" LLAMA_PATH=checkpoints/llama-7b DATA_PATH=data/ssv2 \
#       bash scripts/sweep_llama_layers.sh [extra run_class_finetuning.py flags]
# Environment (defaults in brackets):
#   LAYERS     space-separated choices, each an index, a list or a range (--llama_layer)   [0 8 15 24 31]
#   RECIPE     training script of one run                                                  [scripts/ssv2_vits_llama.sh]
#   SWEEP_DIR  one sub-folder per choice (layer_15, layer_14+15, layer_12to16) + the table [output/sweep_llama_layers]
#   and what RECIPE reads (DATA_PATH, LLAMA_PATH, FINETUNE, NPROC, NNODES, ...). A run whose test_summary.json exists
# is skipped and an unfinished one resumes (the recipe auto-resumes), so re-running continues the sweep.
set -euo pipefail
cd "$(dirname "$0")/.."
LAYERS=${LAYERS:-"0 8 15 24 31"}
RECIPE=${RECIPE:-scripts/ssv2_vits_llama.sh}
SWEEP_DIR=${SWEEP_DIR:-output/sweep_llama_layers}

RUNS=()
NAMES=()
for choice in ${LAYERS}; do
    tag=${choice//,/+}
    tag=layer_${tag//:/to}
    RUNS+=("${SWEEP_DIR}/${tag}")
    NAMES+=("layer ${choice}")
    if [ -f "${SWEEP_DIR}/${tag}/test_summary.json" ]; then
        echo "== --llama_layer ${choice}: finished (${SWEEP_DIR}/${tag}), skipped"
        continue
    fi
    echo "== --llama_layer ${choice} -> ${SWEEP_DIR}/${tag}"
    OUTPUT_DIR="${SWEEP_DIR}/${tag}" bash "${RECIPE}" --llama_layer "${choice}" "$@"
done
python plots.py --sweep "${RUNS[@]}" --labels "${NAMES[@]}" --out "${SWEEP_DIR}/sweep.png"
