#!/usr/bin/env bash
# SLURM example: ViT-S-LLaMA on 2 nodes x 4 GPUs, one task per GPU, 3 videos per GPU = the published 24 per step.
# Ranks come from SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID, the master host from scontrol (or MASTER_ADDR).
#   sbatch scripts/slurm_example.sh            (env: DATA_PATH, FINETUNE, LLAMA_PATH, OUTPUT_DIR as in ssv2_vits.sh)
# Other GPU counts: keep BATCH x UPDATE_FREQ x GPUs = 24 (ViT-S) or 12 (ViT-B, with --lr 5e-4 --layer_decay 0.75
# --epochs 30 and the ViT-B checkpoints). torch.compile is on (its first step compiles); COMPILE=0 turns it off.
#SBATCH --job-name=ssv2_vits_llama
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=10
#SBATCH --time=48:00:00
#SBATCH --requeue
#SBATCH --signal=USR1@120
#SBATCH --output=slurm-%j.out
# Preemption and time limits (README, "Preemption and reruns"): 120 s before the time limit SLURM sends SIGUSR1 to
# every task; each finishes its optimizer step, rank 0 writes checkpoint-last.pth (mid-epoch), and all exit with
# status 75, on which this script requeues the job. A preemption (SIGTERM) saves the same way; SLURM requeues a
# preempted job itself. The requeued job runs this script again and resumes from checkpoint-last.pth.
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
export MASTER_PORT=${MASTER_PORT:-29500}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
OUTPUT_DIR=${OUTPUT_DIR:-output/ssv2_vits_llama}
COMPILE_ARGS=()
if [ "${COMPILE:-1}" != 0 ]; then COMPILE_ARGS=(--compile); fi
status=0
srun python run_class_finetuning.py --exit_signal USR1 \
    --model vit_llama_small_patch16_224 --llama_path "${LLAMA_PATH:-checkpoints/llama-7b}" \
    --data_set SSV2 --nb_classes 174 --data_path "${DATA_PATH:-data/ssv2}" \
    --finetune "${FINETUNE:-checkpoints/videomae_ssv2_vits.pth}" \
    --output_dir "${OUTPUT_DIR}" --log_dir "${OUTPUT_DIR}" "${COMPILE_ARGS[@]}" \
    --batch_size "${BATCH:-3}" --update_freq "${UPDATE_FREQ:-1}" --num_sample 2 --input_size 224 \
    --short_side_size 224 --save_ckpt_freq 10 --num_frames 16 --opt adamw --lr 1e-3 --layer_decay 0.7 \
    --opt_betas 0.9 0.999 --weight_decay 0.05 --epochs 40 --test_num_segment 2 --test_num_crop 3 --dist_eval "$@" \
    || status=$?
if [ "${status}" -eq 75 ]; then  # stopped by the signal after saving: continue in a new allocation
    echo "checkpoint saved on SIGUSR1/SIGTERM: requeueing job ${SLURM_JOB_ID}"
    scontrol requeue "${SLURM_JOB_ID}"
fi
exit "${status}"
