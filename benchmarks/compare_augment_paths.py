"""Do the two augmentation paths train the same model? Same tiny model, start, data, steps and seeds, RandAugment
on: --augment_on workers (timm's PIL ops in the DataLoader workers) vs --augment_on device (DeviceAugment).

    python benchmarks/compare_augment_paths.py [--out /tmp/compare_augment_paths] [--seeds 0 1 2] [--epochs 8]
        [--warm_epochs 3]

Writes the demo's synthetic dataset (2,400 train / 400 val videos, 64 px) once. Trains --model (default the tiny
plain ViT) for --warm_epochs with the demo's recipe and no RandAugment: the start every compared run fine-tunes
from, as a real run starts from a pretrained checkpoint. Then, per seed and path, --epochs with the published
RandAugment (the --aa default) and `--reprob 0.25`, each run ending with the 2 x 3-view test. Runs go --jobs at a
time as separate processes, each with cores/jobs threads and one data worker. A run whose test_summary.json exists with
the same arguments is reused (and said so); one with other arguments is refused.

Why a warm start: from scratch (--warm_epochs 0), every RandAugment run on this data first sits at chance (loss
ln 8) for 2 to 9 or more epochs: the colour ops sometimes make the bright moving object dark, which this dataset's probe
found hard. When a run leaves that plateau varies with the seed, not the path, and sets its final top-1, so
from-scratch runs compare plateau exits more than augmentations.

Prints each run's top-1/top-5 and the epoch its validation top-1 first passed 25%, the per-seed differences and
the mean top-1 of each path; exits 1 when the means differ by more than --max_diff points. On 2 CPU cores: the warm
start ~2 minutes, then ~8 minutes per seed (both paths at once; the device path augments on the CPU here).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import run_class_finetuning as run  # noqa: E402
from datasets.synthetic import make_synthetic_dataset  # noqa: E402
from video_transforms import DEFAULT_AA  # noqa: E402

PATHS = ("workers", "device")
LEFT_CHANCE = 25.0  # validation top-1 (%) that counts as having left the chance plateau (12.5%)


def run_argv(a: argparse.Namespace, data: str, out_dir: str, path: str, seed: int, epochs: int,
             augment: bool = True, finetune: str = "") -> list[str]:
    """run_class_finetuning.py arguments of one run: the demo's recipe, with RandAugment and erasing on (augment)
    or off, from `finetune`'s weights when given."""
    aug = ["--aa", DEFAULT_AA, "--reprob", "0.25"] if augment else ["--aa", "none", "--reprob", "0"]
    return ["--model", a.model, "--data_path", data, "--nb_classes", "8", "--num_frames", "8",
            "--input_size", "64", "--short_side_size", "64", "--num_sample", "1", "--lr", "8e-3",
            "--layer_decay", "1.0", "--warmup_steps", "50", "--min_lr", "1e-4", "--epochs", str(epochs), *aug,
            "--mixup", "0", "--cutmix", "0", "--smoothing", "0", "--drop_path", "0", "--opt_betas", "0.9", "0.999",
            "--test_num_segment", "2", "--test_num_crop", "3", "--save_ckpt_freq", "100", "--print_freq", "50",
            "--batch_size", "16", "--device", a.device, "--num_workers", "1", "--augment_on", path,
            "--seed", str(seed), "--finetune", finetune, "--output_dir", out_dir, "--no_auto_resume"]


def finished(out_dir: str, argv: list[str]) -> bool:
    """True (said so) when out_dir holds a finished run of exactly these arguments, to be reused; raises if it holds
    another run's."""
    if not os.path.isfile(os.path.join(out_dir, "test_summary.json")):
        return False
    with open(os.path.join(out_dir, "args.json")) as f:
        saved = json.load(f)
    wanted = json.loads(json.dumps(vars(run.parse_args(argv))))
    differ = sorted(k for k in wanted if k in saved and saved[k] != wanted[k] and k not in ("output_dir", "log_dir"))
    if differ:
        raise SystemExit(f"{out_dir} holds a finished run with other arguments ({', '.join(differ)}): "
                         "remove it or pass another --out")
    print(f"== {out_dir}: finished earlier with the same arguments, reused")
    return True


def summary(out_dir: str) -> dict:
    """Test top-1/top-5 and the first epoch whose validation top-1 passed LEFT_CHANCE (None if never)."""
    with open(os.path.join(out_dir, "test_summary.json")) as f:
        s = json.load(f)
    left = None
    with open(os.path.join(out_dir, "log.txt")) as f:
        for line in f:
            row = json.loads(line)
            if left is None and row.get("val_acc1", 0.0) >= LEFT_CHANCE:
                left = row["epoch"]
    return {"top1": s["top1"], "top5": s["top5"], "left_chance_epoch": left}


def run_all(jobs: list[tuple[str, list[str]]], parallel: int, threads: int) -> None:
    """Runs (out_dir, argv) jobs, `parallel` at a time, each logging to out_dir + '.log'; stops on a failure."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE"}
    pending, running = list(jobs), []
    while pending or running:
        while pending and len(running) < parallel:
            out_dir, argv = pending.pop(0)
            log = open(out_dir + ".log", "w")
            print(f"== started {out_dir} (log {out_dir}.log)", flush=True)
            running.append((out_dir, log, subprocess.Popen(
                [sys.executable, os.path.join(ROOT, "run_class_finetuning.py"), *argv], cwd=ROOT, env=env,
                stdout=log, stderr=subprocess.STDOUT)))
        time.sleep(2)
        for item in [r for r in running if r[2].poll() is not None]:
            out_dir, log, proc = item
            log.close()
            running.remove(item)
            if proc.returncode:
                for _, _, other in running:
                    other.terminate()
                raise SystemExit(f"{out_dir} failed (exit {proc.returncode}); see {out_dir}.log")
            print(f"== finished {out_dir}", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="/tmp/compare_augment_paths")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=8, help="epochs of each compared run")
    p.add_argument("--warm_epochs", type=int, default=3,
                   help="epochs without RandAugment that every compared run starts from (0: from scratch)")
    p.add_argument("--model", default="vit_tiny_patch16")
    p.add_argument("--device", default="cpu")
    p.add_argument("--jobs", type=int, default=2, help="runs at once")
    p.add_argument("--max_diff", type=float, default=3.0, help="allowed |mean top-1 difference|, points")
    a = p.parse_args()
    a.out = os.path.abspath(a.out)
    data = os.path.join(a.out, "synthetic_ssv2")
    if not os.path.isfile(os.path.join(data, "train.csv")):
        make_synthetic_dataset(data, num_train=2400, num_val=400, height=64, num_frames=16)
    design = os.path.join(a.out, f"warm{a.warm_epochs}" if a.warm_epochs else "scratch")
    os.makedirs(design, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // a.jobs)
    finetune = ""
    if a.warm_epochs:  # one start for every compared run: a short run without RandAugment that has left chance
        start = os.path.join(design, "start")
        argv = run_argv(a, data, start, "workers", 0, a.warm_epochs, augment=False)
        if not finished(start, argv):
            run_all([(start, argv)], 1, os.cpu_count() or 1)
        left = summary(start)
        if left["left_chance_epoch"] is None:
            raise SystemExit(f"the warm start {start} is still at chance after {a.warm_epochs} epochs (test top-1 "
                             f"{left['top1']:.2f}%): raise --warm_epochs")
        finetune = os.path.join(start, f"checkpoint-{a.warm_epochs - 1}.pth")
    jobs = []
    for seed in a.seeds:
        for path in PATHS:
            out_dir = os.path.join(design, f"{path}_seed{seed}")
            argv = run_argv(a, data, out_dir, path, seed, a.epochs, finetune=finetune)
            if not finished(out_dir, argv):
                jobs.append((out_dir, argv))
    run_all(jobs, a.jobs, threads)

    results = {path: {s: summary(os.path.join(design, f"{path}_seed{s}")) for s in a.seeds} for path in PATHS}
    origin = f"from {a.warm_epochs} epochs without RandAugment" if a.warm_epochs else "from scratch"
    print(f"\n{a.model}, {a.epochs} epochs {origin}, RandAugment {DEFAULT_AA} + erasing 0.25, "
          "2 x 3-view test")
    print("seed  path      top-1   top-5   left chance at epoch")
    for s in a.seeds:
        for path in PATHS:
            r = results[path][s]
            print(f"{s:4d}  {path:8s} {r['top1']:6.2f}  {r['top5']:6.2f}   {r['left_chance_epoch']}")
        print(f"      device - workers: {results['device'][s]['top1'] - results['workers'][s]['top1']:+.2f}")
    mean = {path: sum(r["top1"] for r in results[path].values()) / len(a.seeds) for path in PATHS}
    diff = mean["device"] - mean["workers"]
    print(f"mean top-1: workers {mean['workers']:.2f}%, device {mean['device']:.2f}%; "
          f"device - workers {diff:+.2f} points (allowed +-{a.max_diff})")
    with open(os.path.join(design, "compare.json"), "w") as f:
        json.dump({"model": a.model, "epochs": a.epochs, "warm_epochs": a.warm_epochs, "runs": results,
                   "mean_top1": mean, "top1_diff": diff}, f, indent=1)
    return int(abs(diff) > a.max_diff)


if __name__ == "__main__":
    sys.exit(main())
