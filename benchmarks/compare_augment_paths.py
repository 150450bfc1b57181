"""Do the two augmentation paths train the same model? Same tiny model, data, steps and seed, RandAugment on:
--augment_on workers (timm's PIL ops in the DataLoader workers) vs --augment_on device (DeviceAugment).

    python benchmarks/compare_augment_paths.py [--out /tmp/compare_aug] [--epochs 8] [--device cpu]

Writes the demo's synthetic dataset (2,400 train / 400 val videos, 64 px) once, trains --model (default the tiny
plain ViT: with RandAugment on, the tiny ViT-LLaMA's random stand-in block kept it at chance for 4+ epochs on both
paths, which would compare nothing) with the demo's recipe plus `--aa rand-m7-n4-mstd0.5-inc1 --reprob 0.25`, runs the 2 x 3-view test for each path and
prints both top-1/top-5 and their difference; exits 1 when the top-1 values differ by more than --max_diff points.
About 20 minutes on 2 CPU cores (the device path runs its augmentation on the CPU here).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import run_class_finetuning as run  # noqa: E402
from datasets.synthetic import make_synthetic_dataset  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="/tmp/compare_augment_paths")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--model", default="vit_tiny_patch16")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--num_workers", type=int, default=2)
    p.add_argument("--max_diff", type=float, default=3.0, help="top-1 points")
    a = p.parse_args()
    data = os.path.join(a.out, "synthetic_ssv2")
    if not os.path.isfile(os.path.join(data, "train.csv")):
        make_synthetic_dataset(data, num_train=2400, num_val=400, height=64, num_frames=16)
    results = {}
    for path in ("workers", "device"):
        argv = ["--model", a.model, "--data_path", data, "--nb_classes", "8", "--num_frames", "8",
                "--input_size", "64", "--short_side_size", "64", "--num_sample", "1", "--lr", "8e-3",
                "--layer_decay", "1.0", "--warmup_steps", "50", "--min_lr", "1e-4", "--epochs", str(a.epochs),
                "--aa", "rand-m7-n4-mstd0.5-inc1", "--reprob", "0.25", "--mixup", "0", "--cutmix", "0",
                "--smoothing", "0", "--drop_path", "0", "--opt_betas", "0.9", "0.999", "--test_num_segment", "2",
                "--test_num_crop", "3", "--save_ckpt_freq", "100", "--print_freq", "50", "--batch_size", "16",
                "--device", a.device, "--num_workers", str(a.num_workers), "--augment_on", path,
                "--seed", str(a.seed), "--output_dir", os.path.join(a.out, f"{path}_seed{a.seed}"), "--no_auto_resume"]
        results[path] = run.main(run.parse_args(argv))
    diff = results["device"]["top1"] - results["workers"]["top1"]
    for path, r in results.items():
        print(f"--augment_on {path:8s} top-1 {r['top1']:6.2f}%  top-5 {r['top5']:6.2f}%  ({r['videos']} videos)")
    print(f"device - workers: {diff:+.2f} top-1 points (allowed: +-{a.max_diff})")
    with open(os.path.join(a.out, f"compare_seed{a.seed}.json"), "w") as f:
        json.dump({**{k: {"top1": v["top1"], "top5": v["top5"]} for k, v in results.items()}, "top1_diff": diff}, f,
                  indent=1)
    return int(abs(diff) > a.max_diff)


if __name__ == "__main__":
    sys.exit(main())
