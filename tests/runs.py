"""Helpers of the end-to-end tests: the tiny run's command line, running it, and the recorders and signals
that the tests put into it."""
import json
import os
import signal

import numpy as np

import engine_for_finetuning as engine
import run_class_finetuning as run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL_FINAL_TEST = engine.final_test  # the multi-view test, for tests that replace only the training (recorded)


def base_argv(data_dir, out, *extra):
    return ["--model", "vit_llama_tiny_patch16", "--data_path", data_dir, "--nb_classes", "8", "--num_frames", "8",
            "--input_size", "32", "--short_side_size", "32", "--batch_size", "4", "--epochs", "2",
            "--warmup_epochs", "1", "--lr", "5e-2", "--num_workers", "0", "--test_num_segment", "2",
            "--test_num_crop", "2", "--print_freq", "2", "--device", "cpu", "--output_dir", str(out), *extra]


def train(argv):
    return run.main(run.parse_args(argv))


def per_video(out):
    with np.load(os.path.join(out, "test_per_video.npz")) as z:
        return {k: z[k] for k in z.files}


STRAIGHT_ARGV = ("--save_ckpt_freq", "1", "--model_ema", "--model_ema_decay", "0.5", "--clip_grad", "1.0",
                 "--num_workers", "1")


DEVICE_ARGV = ("--augment_on", "device", "--save_ckpt_freq", "1", "--num_workers", "1", "--reprob", "0.5",
               "--num_frames", "4")  # 4 of 8 frames: TSN sampling draws in the workers


def signal_at_step(monkeypatch, step: int, sig: int = signal.SIGTERM) -> None:
    """Deliver ``sig`` to this process inside the ``step``-th optimizer step (1-based) of the runs that follow."""
    real, calls = engine.optimizer_step, []


    def step_and_signal(*a, **k):
        calls.append(1)
        if len(calls) == step:
            os.kill(os.getpid(), sig)
        return real(*a, **k)
    monkeypatch.setattr(engine, "optimizer_step", step_and_signal)


def checkpoint_files(out) -> list[str]:
    return sorted(f for f in os.listdir(out) if f.startswith("checkpoint-"))


def free_ports(n: int) -> list[int]:
    """n TCP ports free right now (other test runs share this machine: no fixed port numbers)."""
    import socket
    socks = [socket.socket() for _ in range(n)]
    for sock in socks:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in socks]
    for sock in socks:
        sock.close()
    return ports


def fake_val_accuracies(monkeypatch, accs):
    """engine.validate replaced: val top-1 accs[0], accs[1], ... per call (the last one repeats); loss 1.0."""
    calls = []


    def fake_validate(model, loader, device, amp_dtype=None, reduce=False):
        calls.append(1)
        return {"acc1": float(accs[min(len(calls), len(accs)) - 1]), "acc5": 90.0, "loss": 1.0, "videos": 7}
    monkeypatch.setattr(engine, "validate", fake_validate)


def fail_at_epoch(monkeypatch, recorded, epoch, error=KeyboardInterrupt):
    """The recorded training epoch ``epoch`` raises ``error`` (a kill, as far as the run can tell)."""
    fake = engine.train_one_epoch


    def train_or_die(model, loader, training, device, e, **kw):
        if e == epoch:
            raise error(f"killed in epoch {e}")
        return fake(model, loader, training, device, e, **kw)
    monkeypatch.setattr(engine, "train_one_epoch", train_or_die)


def log_epochs(out) -> list[int]:
    return [json.loads(x)["epoch"] for x in open(out / "log.txt")]
