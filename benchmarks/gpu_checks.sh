#!/usr/bin/env bash
# Every check that needs a GPU, in one go, each under its own time limit, results under OUT (one log per check,
# bench_train's JSON figures, and OUT/status.txt with each check's exit status and seconds; 124 = its time ran out).
# The limits add up to 9 minutes, so the whole script fits one 10-minute call on a lent machine:
#   1. bench_train.py, the data-loading goal (end to end >= 90% of model alone), --augment_on device:
#      ViT-S-LLaMA (bf16, --compile, 6 videos x 2 clips) and ViT-S (bf16, 24 x 2), WORKERS workers, 240 px videos
#   2. the same two on --augment_on workers (the published PIL path), for the before/after figure
#   3. a short training run: fp16 + --compile + --model_ema + --model_ema_force_cpu, 2 epochs with a validation
#   4. pytest tests/test_cuda.py (bf16/fp16 steps, GradScaler, compile, EMA on the CPU, torchrun on all GPUs)
# The LLaMA block is the random stand-in (the same shapes and cost as LLaMA-7B's layer) unless LLAMA_PATH is set.
#   bash benchmarks/gpu_checks.sh
# Environment (defaults in brackets):
#   OUT      results folder                                                  [gpu_checks]
#   DATA     240 px synthetic SSv2-format videos (bench_train.py writes them when missing; that needs PyAV)
#                                                                            [/tmp/bench_train_videos]
#   WORKERS  DataLoader workers per run                                      [14]
#   STEPS    timed steps per bench_train measurement                        [20]
#   DEVICE   [cuda]; LLAMA_MODEL [vit_llama_small_patch16_224]; VIT_MODEL [vit_small_patch16_224]
#   EXTRA    flags added to every run (a CPU dry run: DEVICE=cpu EXTRA="--input_size 112 --num_frames 4")
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_checks}
DATA=${DATA:-/tmp/bench_train_videos}
WORKERS=${WORKERS:-14}
STEPS=${STEPS:-20}
DEVICE=${DEVICE:-cuda}
LLAMA_MODEL=${LLAMA_MODEL:-vit_llama_small_patch16_224}
VIT_MODEL=${VIT_MODEL:-vit_small_patch16_224}
read -r -a EXTRA_ARGS <<< "${EXTRA:-}"
LLAMA_ARGS=()
if [ -n "${LLAMA_PATH:-}" ]; then LLAMA_ARGS=(--llama_path "${LLAMA_PATH}"); fi
mkdir -p "${OUT}"
: > "${OUT}/status.txt"
export OMP_NUM_THREADS=1

check() {  # check NAME SECONDS COMMAND...: runs COMMAND under a time limit, logs to OUT/NAME.log
    local name=$1 limit=$2 start rc
    shift 2
    echo "== ${name} (at most ${limit} s)"
    start=$(date +%s)
    timeout --kill-after 10 "${limit}" "$@" > "${OUT}/${name}.log" 2>&1
    rc=$?
    echo "${name} exit ${rc} in $(( $(date +%s) - start )) s" | tee -a "${OUT}/status.txt"
    tail -n 4 "${OUT}/${name}.log"
}

{ nvidia-smi || true; python -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)"
  python -c "import decord; print('decord', decord.__version__)" || true; nproc; } > "${OUT}/machine.txt" 2>&1

bench() {  # bench NAME LIMIT AUGMENT_ON MODEL VIDEOS [flags]
    local name=$1 limit=$2 path=$3 model=$4 videos=$5
    shift 5
    check "${name}" "${limit}" python benchmarks/bench_train.py --device "${DEVICE}" --bench_data "${DATA}" \
        --model "${model}" --batch_size "${videos}" --num_sample 2 --num_workers "${WORKERS}" --augment_on "${path}" \
        --amp bf16 --steps "${STEPS}" --warmup 3 --json "${OUT}/${name}.json" "$@" "${EXTRA_ARGS[@]}"
}
bench train_vits_llama_device 140 device "${LLAMA_MODEL}" 6 --compile "${LLAMA_ARGS[@]}"
bench train_vits_device 80 device "${VIT_MODEL}" 24
bench train_vits_llama_workers 80 workers "${LLAMA_MODEL}" 6 --compile "${LLAMA_ARGS[@]}"
bench train_vits_workers 50 workers "${VIT_MODEL}" 24

# 3: 96 videos, 2 epochs of 12 steps, then validation and the multi-view test on 4 videos
SHORT=${OUT}/short_data
mkdir -p "${SHORT}"
head -n 96 "${DATA}/train.csv" > "${SHORT}/train.csv"
cp "${DATA}/val.csv" "${DATA}/test.csv" "${DATA}/something-something-v2-labels.json" "${SHORT}/"
check short_fp16_compile_ema_cpu 110 python run_class_finetuning.py --device "${DEVICE}" --model "${VIT_MODEL}" \
    --data_path "${SHORT}" --data_root "${DATA}" --nb_classes 8 --batch_size 8 --num_sample 2 --epochs 2 \
    --warmup_steps 4 --amp fp16 --compile --model_ema --model_ema_force_cpu --num_workers "${WORKERS}" \
    --print_freq 4 --output_dir "${OUT}/short_run" --no_auto_resume "${EXTRA_ARGS[@]}"
check test_cuda 80 python -m pytest -q -x tests/test_cuda.py
echo "== results in ${OUT} (status.txt, *.log, *.json)"
cat "${OUT}/status.txt"
