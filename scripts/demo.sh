#!/usr/bin/env bash
# Demo on a fresh machine: installs the requirements, writes a synthetic SSv2-format dataset once (8 motion classes,
# 2,400 train / 400 val videos of 64 px), fine-tunes the tiny ViT-LLaMA (4 ViT blocks + a frozen 256-d LLaMA block)
# on all GPUs (torchrun) or on the CPU, runs the multi-view test, draws the token maps of one validation video
# (analyze_tokens.py) and says where everything is.
# 8 epochs: 6-8.5 min on a 2-core CPU shared with other jobs (README, "Quick start"). Multi-view top-1 on the
# synthetic validation videos: 86.50-88.50% measured in six runs (chance 12.5%; >= 80% expected).
#   bash scripts/demo.sh                      (env: DEMO_DIR [demo_output], LLAMA_PATH, EPOCHS, SKIP_INSTALL=1)
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO_DIR=${DEMO_DIR:-demo_output}
DATA=${DEMO_DIR}/synthetic_ssv2
OUT=${DEMO_DIR}/vit_llama_tiny
EPOCHS=${EPOCHS:-8}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}  # idle OpenMP threads must not spin against the data workers

if [ -z "${SKIP_INSTALL:-}" ]; then
    echo "== installing requirements"
    python -m pip install -q -r requirements.txt
fi
if [ ! -f "${DATA}/train.csv" ]; then
    echo "== writing the synthetic dataset to ${DATA} (once)"
    python -m datasets.synthetic --out "${DATA}" --train 2400 --val 400 --height 64 --frames 16
fi

LLAMA_ARGS=()
if [ -n "${LLAMA_PATH:-}" ]; then
    LLAMA_ARGS=(--llama_path "${LLAMA_PATH}")
    echo "== LLaMA block: layer 0 of ${LLAMA_PATH} (its width replaces the tiny 256-d block: much slower on CPU)"
else
    echo "== NOTE: the LLaMA block of this demo has RANDOM frozen weights (no LLAMA_PATH given)."
    echo "   It shows the pipeline, not the benefit of a pretrained LLaMA layer."
fi

NGPU=$(python -c "import torch; print(torch.cuda.device_count())")
# 16 videos per optimizer step; --lr is per 256 videos, so 8e-3 gives AdamW lr 5e-4.
COMMON=(--model vit_llama_tiny_patch16 --data_path "${DATA}" --nb_classes 8 --num_frames 8 --input_size 64
        --short_side_size 64 --num_sample 1 --lr 8e-3 --layer_decay 1.0 --warmup_steps 50 --min_lr 1e-4
        --epochs "${EPOCHS}" --aa none --reprob 0 --mixup 0 --cutmix 0 --smoothing 0 --drop_path 0
        --opt_betas 0.9 0.999 --test_num_segment 2 --test_num_crop 3 --save_ckpt_freq 100 --print_freq 50
        --output_dir "${OUT}" "${LLAMA_ARGS[@]}")
START=$(date +%s)
if [ "${NGPU}" -gt 0 ]; then
    NPROC=1  # the most GPUs that split the 16 videos of a step evenly
    for d in 2 4 8 16; do if [ "${d}" -le "${NGPU}" ]; then NPROC=${d}; fi; done
    echo "== training on ${NPROC} GPU(s)"
    OMP_NUM_THREADS=1 torchrun --nproc_per_node "${NPROC}" run_class_finetuning.py "${COMMON[@]}" \
        --batch_size $((16 / NPROC)) --device cuda --num_workers 4 --dist_eval
else
    echo "== training on the CPU (single process)"
    python run_class_finetuning.py "${COMMON[@]}" --batch_size 16 --device cpu --num_workers 2
fi
echo "== finished in $(( $(date +%s) - START )) s"

python plots.py "${OUT}" --out "${OUT}/curves.png"
# What the frozen block does to the tokens of the first validation video (README, "Frozen LLM blocks").
python analyze_tokens.py "${DATA}/$(head -n 1 "${DATA}/val.csv" | cut -d ' ' -f 1)" \
    --resume "${OUT}/checkpoint-$((EPOCHS - 1)).pth" --labels "${DATA}/something-something-v2-labels.json" \
    --out_dir "${OUT}/token_maps" --top 5 --device "$([ "${NGPU}" -gt 0 ] && echo cuda || echo cpu)"
python - "${OUT}" <<'PY'
import json, os, sys
out = sys.argv[1]
s = json.load(open(os.path.join(out, "test_summary.json")))
print(f"\nMulti-view test ({s['videos']} videos x {s['views_per_video']} views): "
      f"top-1 {s['top1']:.2f}%  top-5 {s['top5']:.2f}%  mean class acc {s.get('mean_class_acc', float('nan')):.2f}%")
ckpts = sorted(f for f in os.listdir(out) if f.startswith("checkpoint-"))
print(f"checkpoints:      {', '.join(os.path.join(out, c) for c in ckpts)}")
print(f"log (per epoch):  {os.path.join(out, 'log.txt')}")
print(f"TensorBoard:      tensorboard --logdir {out}")
print(f"test results:     {os.path.join(out, 'test_summary.json')}, test_per_video.npz, test_per_view.npz, per_class.csv")
print(f"confusion matrix: {os.path.join(out, 'confusion_matrix.png')}")
print(f"curves:           {os.path.join(out, 'curves.png')}")
print(f"token maps:       {os.path.join(out, 'token_maps')} (python analyze_tokens.py VIDEO --resume CKPT)")
print(f"predict a video:  python predict.py VIDEO.mp4 --resume {os.path.join(out, ckpts[-1])} "
      f"--labels {os.path.join(os.path.dirname(out), 'synthetic_ssv2', 'something-something-v2-labels.json')}")
PY
