"""Kill/preempt harness: a tiny training run stopped at random points, again and again, then rerun to the end; each
trial must end with the uninterrupted run's weights, and no checkpoint may be lost or corrupt.

    python benchmarks/preempt_harness.py --trials 10 [--signal TERM|USR1|INT|KILL|mixed] [--stops 2]
        [--augment_on workers|device] [--nproc 2] [--seed 0] [--workdir DIR]

The run (vit_llama_tiny_patch16 on a generated 16-video dataset, 3 epochs of 4 steps (2 with --nproc 2), a
DataLoader worker, EMA, mixup, numbered checkpoints every 2 epochs) is started as its own process group, as a
scheduler starts a job. For each stop a random optimizer step is drawn; when the run's log line for that step (or a
later one) appears, every process of the job gets the signal, as SLURM sends it: the trainer, its DataLoader workers
and, under torchrun, the agent and the ranks. KILL (no chance to save) comes up to a second after the line, so it
also lands inside validation and checkpoint writes. After each stop the same command is run again; after --stops
stops it runs to the end.

Reported per stop: the signal, the step whose log line triggered it, the exit status (75 after a clean stop), where
checkpoint-last.pth says training continues, and whether every checkpoint file reads. Per trial: whether the final
checkpoints hold the reference's weights, EMA and optimizer state bit for bit, the same checkpoint files with the
same epochs, and the same log numbers and multi-view test. Exit status 1 if any trial differs.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402

import checkpoint  # noqa: E402
from run_control import EXIT_PREEMPTED  # noqa: E402

STEP_LINE = re.compile(r"^Epoch \[(\d+)\] \[(\d+)/(\d+)\]")
TIMING = ("train_clips_per_s", "train_data_wait", "train_peak_mem_gib", "train_time")


def run_argv(data: str, out: str, augment_on: str = "workers", epochs: int = 3, print_freq: int = 1) -> list[str]:
    """The harness's training run: 4 optimizer steps per epoch, checkpoint-N.pth every 2 epochs."""
    return ["--model", "vit_llama_tiny_patch16", "--data_path", data, "--nb_classes", "8", "--num_frames", "4",
            "--input_size", "32", "--short_side_size", "32", "--batch_size", "4", "--epochs", str(epochs),
            "--warmup_epochs", "1", "--lr", "5e-2", "--num_workers", "1", "--test_num_segment", "2",
            "--test_num_crop", "2", "--print_freq", str(print_freq), "--device", "cpu", "--output_dir", out,
            "--save_ckpt_freq", "2", "--model_ema", "--model_ema_decay", "0.5", "--clip_grad", "1.0",
            "--augment_on", augment_on, "--reprob", "0.5"]


def command(argv: list[str], nproc: int = 1) -> list[str]:
    if nproc == 1:
        return [sys.executable, os.path.join(ROOT, "run_class_finetuning.py"), *argv]
    with socket.socket() as s:  # a free rendezvous port: other runs share the machine
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={port}",
            os.path.join(ROOT, "run_class_finetuning.py"), *argv]


def job_pids(root_pid: int) -> list[int]:
    """root_pid and all its descendants (torchrun's ranks run in sessions of their own), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    pids, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo += children.get(pid, [])
    return pids


def signal_job(proc: subprocess.Popen, sig: int) -> None:
    """Send ``sig`` to every process of the job, as a scheduler does."""
    for pid in job_pids(proc.pid):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def stop_once(cmd: list[str], out: str, sig: int, step: int, log, env: dict | None = None, after: float = 0.0,
              timeout: float = 600) -> dict:
    """Run ``cmd`` as a new process group; signal the whole job ``after`` seconds after the log line of optimizer
    step >= ``step`` appears; wait for its end. Returns {signal, seen_step (the step whose line triggered it),
    status, resumes_at ((epoch, step) checkpoint-last.pth continues at), unreadable (checkpoints that do not load)}."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env=env, cwd=ROOT, bufsize=1)
    seen, timer = None, threading.Timer(after, signal_job, (proc, sig))
    for line in proc.stdout:
        log.write(line)
        m = STEP_LINE.match(line)
        if m and seen is None:
            epoch, i, total = (int(x) for x in m.groups())
            if epoch * total + i >= step:
                seen = epoch * total + i
                timer.start()
    status = proc.wait(timeout=timeout)
    timer.cancel()
    last = os.path.join(out, checkpoint.LAST_CHECKPOINT)
    resumes_at = checkpoint.resume_position(checkpoint.safe_load(last)) if os.path.exists(last) else None
    return {"signal": signal.Signals(sig).name, "seen_step": seen, "status": status, "resumes_at": resumes_at,
            "unreadable": unreadable_checkpoints(out)}


def unreadable_checkpoints(out: str) -> list[str]:
    """Checkpoint files in ``out`` that do not load or hold no weights (there must be none, ever)."""
    bad = []
    for name in sorted(os.listdir(out)) if os.path.isdir(out) else []:
        if name.startswith("checkpoint-") and name.endswith(".pth"):
            try:
                checkpoint.model_state(checkpoint.safe_load(os.path.join(out, name)), "model")
            except RuntimeError as e:
                bad.append(f"{name}: {e}")
    return bad


def _tensors(obj, prefix: str = ""):
    """(name, tensor) pairs of every tensor in a nested checkpoint entry."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for k, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}.{k}")


def compare_runs(ref: str, out: str, ref_test: str = "test_per_video.npz") -> list[str]:
    """Differences between a finished reference run and a finished resumed one (empty: identical): the set of
    checkpoint files and their epochs, every tensor of the final checkpoint (model, EMA, optimizer state), the log
    numbers (not timings) and the multi-view test's probabilities."""
    problems = []
    files = [sorted(f for f in os.listdir(d) if f.startswith("checkpoint-") and ".bad." not in f) for d in (ref, out)]
    if files[0] != files[1]:
        problems.append(f"checkpoint files differ: {files[0]} vs {files[1]}")
    for name in set(files[0]) & set(files[1]):
        a, b = (checkpoint.safe_load(os.path.join(d, name)) for d in (ref, out))
        if a["epoch"] != b["epoch"]:
            problems.append(f"{name}: epoch {a['epoch']} vs {b['epoch']}")
        if name == checkpoint.LAST_CHECKPOINT:
            for part in ("model", "model_ema", "optimizer"):
                ta, tb = dict(_tensors(a[part])), dict(_tensors(b[part]))
                diff = [k for k in ta if k not in tb or not torch.equal(ta[k], tb[k])]
                if diff or ta.keys() != tb.keys():
                    problems.append(f"{name} {part}: {len(diff)} of {len(ta)} tensors differ, e.g. {diff[:3]}")
    logs = [[{k: v for k, v in json.loads(x).items() if k not in TIMING} for x in open(os.path.join(d, "log.txt"))]
            for d in (ref, out)]
    if logs[0] != logs[1]:
        problems.append(f"log.txt differs: {len(logs[0])} vs {len(logs[1])} lines")
    probs = [np.load(os.path.join(d, f))["probs"] for d, f in ((ref, ref_test), (out, "test_per_video.npz"))]
    if not np.array_equal(*probs):
        problems.append("multi-view test probabilities differ")
    return problems


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--stops", type=int, default=2, help="stops per trial before the run may finish")
    p.add_argument("--signal", default="TERM", choices=["TERM", "USR1", "INT", "KILL", "mixed"])
    p.add_argument("--augment_on", default="workers", choices=["workers", "device"])
    p.add_argument("--nproc", type=int, default=1, help="processes (torchrun, gloo) per run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default="preempt_harness")
    a = p.parse_args()
    rng = random.Random(a.seed)
    os.makedirs(a.workdir, exist_ok=True)
    data = os.path.join(a.workdir, "data")
    if not os.path.isfile(os.path.join(data, "train.csv")):
        from datasets.synthetic import make_synthetic_dataset
        make_synthetic_dataset(data, num_train=16, num_val=7, height=32, num_frames=8, workers=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE",
           "PET_SIGNALS_TO_HANDLE": "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"}  # as scripts/ssv2_vits.sh
    log = open(os.path.join(a.workdir, "runs.log"), "a")
    ref = os.path.join(a.workdir, f"ref_{a.augment_on}_{a.nproc}")
    if not os.path.isfile(os.path.join(ref, "test_summary.json")):
        subprocess.run(command(run_argv(data, ref, a.augment_on), a.nproc), env=env, cwd=ROOT, check=True,
                       stdout=log, stderr=subprocess.STDOUT)
    total_steps, failed = 3 * (16 // (4 * a.nproc)), 0  # 3 epochs of 16 videos, 4 per process and step
    for trial in range(a.trials):
        out = os.path.join(a.workdir, f"trial_{a.augment_on}_{a.nproc}_{a.seed}_{trial}")
        shutil.rmtree(out, ignore_errors=True)
        print(f"trial {trial}:", flush=True)
        ok = True
        for _ in range(a.stops):
            sig = signal.Signals["SIG" + (rng.choice(["TERM", "USR1", "INT", "KILL"]) if a.signal == "mixed"
                                          else a.signal)]
            cmd = command(run_argv(data, out, a.augment_on), a.nproc)
            # KILL comes up to a second after the step's line: inside a step, validation or a checkpoint write
            r = stop_once(cmd, out, sig, rng.randint(1, total_steps), log, env,
                          after=rng.uniform(0.0, 1.0) if sig == signal.SIGKILL else 0.0)
            # a clean stop exits 75 (torchrun reports its ranks' stop as a failure); 0: the signal came after the end
            expected = {0, EXIT_PREEMPTED} if a.nproc == 1 else {0, 1}
            ok &= not r["unreadable"] and (sig == signal.SIGKILL or r["status"] in expected)
            print(f"  {r['signal']:>7} at step {r['seen_step']}: exit {r['status']}, checkpoint-last.pth continues at "
                  f"(epoch, step) {r['resumes_at']}, unreadable checkpoints: {r['unreadable'] or 'none'}", flush=True)
        final = subprocess.run(command(run_argv(data, out, a.augment_on), a.nproc), env=env, cwd=ROOT,
                               stdout=log, stderr=subprocess.STDOUT)
        problems = ([f"final run exit {final.returncode}"] if final.returncode else []) + compare_runs(ref, out)
        ok &= not problems
        failed += not ok
        print("  final run: " + ("; ".join(problems) if problems else "weights, EMA, optimizer state, checkpoints, "
                                 "log and test equal to the uninterrupted run"), flush=True)
    print(f"{a.trials - failed}/{a.trials} trials identical to the uninterrupted run with no checkpoint lost or "
          f"corrupt ({a.signal}, {a.augment_on}, {a.nproc} process(es))")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
