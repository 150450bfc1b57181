#!/usr/bin/env bash
# Every check that needs a GPU, in one call of about 7 minutes on a bare GPU machine (torch and timm installed),
# each under its own time limit; results and a compact table under OUT.
#   1. install what is missing from the wheels in .whl/ (git-ignored), offline: PyAV (writes and decodes the data),
#      decord (the production decoder), and pytest/tensorboard where the image lacks them (no check needs ffmpeg's
#      binary: the 68 MB imageio-ffmpeg wheel would not fit the 64 MiB carried). Fetch them beforehand, on a machine
#      with network access, from the repository root, for the GPU machine's Python (3.12 on the H200 image; pytest
#      and tensorboard are already there):
#        pip download -d .whl --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#            --platform manylinux2010_x86_64 av decord      # 49 MB together
#   2. synthetic SSv2-format videos at 240 rows and SSv2's mix of widths (320, 356, 400, 426)
#   3. bench_train.py, ViT-S-LLaMA, bf16 + --compile, 6 videos x 2 clips, --augment_on device and workers:
#      end-to-end and model-alone clips/s, their ratio, the data-wait share, peak memory, augmentation ms per batch
#   4. a short fp16 ViT-S-LLaMA run with the EMA on the GPU: grad_norm finite once the GradScaler has settled
#   5. pytest tests/test_cuda.py
#
#   bash benchmarks/gpu_checks.sh            # on a GPU machine
#   bash benchmarks/gpu_checks.sh --dry-run  # on the CPU with tiny models and frames: every step, in ~2 minutes
# Environment: OUT [gpu_checks], DATA [/tmp/gpu_checks_videos], WORKERS [cores - 2], STEPS [20],
#   LLAMA_PATH (default: the LLaMA block is the random stand-in, LLaMA-7B's shapes and cost).
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; fi
if ! command -v python > /dev/null; then  # images that have only python3 (timeout needs a program, not a function)
    mkdir -p /tmp/gpu_checks_bin && ln -sf "$(command -v python3)" /tmp/gpu_checks_bin/python
    export PATH="/tmp/gpu_checks_bin:${PATH}"
fi
SITE=${SITE:-/tmp/gpu_checks_site}  # where the carried wheels go (the image's own environment stays as it is)
export PYTHONPATH="${SITE}${PYTHONPATH:+:${PYTHONPATH}}"
OUT=${OUT:-gpu_checks}
mkdir -p "${OUT}"
: > "${OUT}/status.txt"
CORES=$(nproc --all)
echo "machine: ${CORES} cores (nproc --all)" | tee "${OUT}/machine.txt"
{ nvidia-smi || true; python -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)"; } \
    >> "${OUT}/machine.txt" 2>&1
export OMP_NUM_THREADS=1

if [ "${DRY}" = 1 ]; then
    DEVICE=cpu; MODEL=vit_llama_tiny_patch16; HEIGHT=64; FRAMES=8; STEPS=${STEPS:-2}; WORKERS=${WORKERS:-1}
    DATA=${DATA:-/tmp/gpu_checks_videos_dry}
    SIZE=(--input_size 32 --short_side_size 32 --num_frames 4); AMP=(--amp none); COMPILE=()
    FP16=(--amp none)  # fp16 autocast and its GradScaler are a GPU matter
else
    DEVICE=cuda; MODEL=vit_llama_small_patch16_224; HEIGHT=240; FRAMES=48; STEPS=${STEPS:-20}
    WORKERS=${WORKERS:-$(( CORES > 2 ? CORES - 2 : 1 ))}; DATA=${DATA:-/tmp/gpu_checks_videos}
    SIZE=(); AMP=(--amp bf16); COMPILE=(--compile); FP16=(--amp fp16)
fi
LLAMA_ARGS=()
if [ -n "${LLAMA_PATH:-}" ]; then LLAMA_ARGS=(--llama_path "${LLAMA_PATH}"); fi

check() {  # check NAME SECONDS COMMAND...: runs COMMAND under a time limit, logs to OUT/NAME.log
    local name=$1 limit=$2 start rc
    shift 2
    echo "== ${name} (at most ${limit} s)"
    start=$(date +%s)
    timeout --kill-after 10 "${limit}" "$@" > "${OUT}/${name}.log" 2>&1
    rc=$?
    echo "${name} exit ${rc} in $(( $(date +%s) - start )) s" | tee -a "${OUT}/status.txt"
    tail -n 3 "${OUT}/${name}.log"
}

install_missing() {  # pip installs, offline from .whl/, the packages whose module does not import
    local missing=() pair
    for pair in av:av decord:decord pytest:pytest tensorboard:tensorboard; do
        python -c "import ${pair%%:*}" 2> /dev/null || missing+=("${pair##*:}")
    done
    if [ "${#missing[@]}" = 0 ]; then echo "nothing to install"; return 0; fi
    echo "installing ${missing[*]} from .whl/"
    python -m pip install -q --no-index --no-deps --no-compile --find-links .whl --target "${SITE}" "${missing[@]}"
}
export -f install_missing; export SITE
check install 40 bash -c install_missing

make_data() {  # 24 videos per width (96 in all), the train list repeated so that no epoch ends mid-measurement
    python - "${DATA}" "${HEIGHT}" "${FRAMES}" <<'EOF'
import os, shutil, sys
from datasets.synthetic import LABELS_FILE, make_synthetic_dataset
out, height, frames = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if os.path.isfile(os.path.join(out, "train.csv")):
    sys.exit(print(f"{out}: already there"))
lines = {"train": [], "val": []}
for i, w240 in enumerate((320, 356, 400, 426)):  # SSv2's widths at 240 rows, even for H.264
    width = 2 * round(height * w240 / 240 / 2)
    sub = os.path.join(out, f"w{width}")
    make_synthetic_dataset(sub, num_train=24, num_val=2, height=height, width=width, num_frames=frames, seed=i)
    for split in lines:
        with open(os.path.join(sub, f"{split}.csv")) as f:
            lines[split] += [f"w{width}/{line}" for line in f]
for split, rows in lines.items():
    with open(os.path.join(out, f"{split}.csv"), "w") as f:
        f.writelines(rows * (50 if split == "train" else 1))
shutil.copyfile(os.path.join(out, "val.csv"), os.path.join(out, "test.csv"))
shutil.copyfile(os.path.join(sub, LABELS_FILE), os.path.join(out, LABELS_FILE))
print(f"{out}: {len(lines['train'])} train videos at {height} rows, widths 320-426 scaled")
EOF
}
export -f make_data
export DATA HEIGHT FRAMES
check data 50 bash -c make_data

bench() {  # bench PATH LIMIT: bench_train.py on --augment_on PATH
    check "train_${1}" "$2" python benchmarks/bench_train.py --device "${DEVICE}" --data_path "${DATA}" --nb_classes 8 \
        --model "${MODEL}" --batch_size 6 --num_sample 2 --num_workers "${WORKERS}" --augment_on "$1" \
        --steps "${STEPS}" --warmup 3 --json "${OUT}/train_${1}.json" "${AMP[@]}" "${COMPILE[@]}" "${SIZE[@]}" \
        "${LLAMA_ARGS[@]}"
}
bench device 100
bench workers 75

# 96 videos, 2 epochs of 8 steps; the first steps of an fp16 run may overflow while the GradScaler finds its scale
SHORT=${OUT}/short_data
mkdir -p "${SHORT}"
head -n 96 "${DATA}/train.csv" > "${SHORT}/train.csv"
cp "${DATA}/val.csv" "${DATA}/test.csv" "${DATA}/something-something-v2-labels.json" "${SHORT}/" 2> /dev/null
check short_fp16_ema 75 python run_class_finetuning.py --device "${DEVICE}" --model "${MODEL}" --data_path "${SHORT}" \
    --data_root "${DATA}" --nb_classes 8 --batch_size 6 --num_sample 2 --epochs 2 --warmup_steps 4 \
    --model_ema --num_workers "${WORKERS}" --print_freq 4 --output_dir "${OUT}/short_run" --no_auto_resume \
    --disable_eval_during_finetuning "${FP16[@]}" "${SIZE[@]}" "${LLAMA_ARGS[@]}"
check test_cuda 80 python -m pytest -q -rs tests/test_cuda.py

python - "${OUT}" <<'EOF' | tee "${OUT}/table.txt"
import json, math, os, sys
out = sys.argv[1]
print(open(os.path.join(out, "machine.txt")).readline().strip())
print(f"{'--augment_on':12s} {'end to end':>10s} {'model alone':>11s} {'ratio':>6s} {'data wait':>9s} "
      f"{'peak GiB':>8s} {'aug ms/batch':>12s}")
runs = {}
for path in ("device", "workers"):
    try:
        with open(os.path.join(out, f"train_{path}.json")) as f:
            r = runs[path] = json.load(f)
    except (OSError, ValueError):
        print(f"{path:12s} no figures (see train_{path}.log)")
        continue
    aug = (f"{1e3 * r['clips_per_step'] / r['device_augment_clips_per_s']:12.1f}" if "device_augment_clips_per_s" in r
           else f"{'in workers':>12s}")
    print(f"{path:12s} {r['end_to_end_clips_per_s']:10.1f} {r['model_clips_per_s']:11.1f} "
          f"{r['end_to_end_over_model']:6.2f} {100 * r['data_wait_share']:8.0f}% {r['peak_memory_gib']:8.2f} {aug}")
for r in list(runs.values())[:1]:
    print(f"({r['device']}, {r['model']}, {r['clips_per_step']} clips/step, {r['num_workers']} workers, amp {r['amp']}"
          f"{', compiled' if r['compile'] else ''}; clips/s)")
try:
    with open(os.path.join(out, "short_run", "log.txt")) as f:
        epochs = [json.loads(line) for line in f if line.strip()]
    last = epochs[-1]
    gn = last.get("train_grad_norm")
    ok = gn is not None and math.isfinite(gn) and not last.get("train_nonfinite_steps")
    print(f"short fp16 run: last epoch grad_norm {gn}, skipped steps per epoch "
          f"{[e.get('train_skipped_steps') for e in epochs]}, loss scale {last.get('train_loss_scale')}: "
          f"{'finite' if ok else 'NOT FINITE'}")
except (OSError, ValueError, IndexError) as e:
    print(f"short fp16 run: no log ({e})")
print("exit status and seconds per check:")
print(open(os.path.join(out, "status.txt")).read().rstrip())
EOF
echo "== results in ${OUT} (table.txt, status.txt, *.log, *.json)"
