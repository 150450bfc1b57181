"""Runs that must stop: unreadable checkpoints, a live folder, a diverged epoch, a failing validation, a failing
loader worker."""
import json
import os
import re
import signal
import subprocess
import sys

import pytest
import torch

import checkpoint
import engine_for_finetuning as engine
import run_class_finetuning as run

from runs import ROOT, base_argv, checkpoint_files, free_ports, log_epochs, train


def test_unreadable_checkpoints_stop_the_run_unless_no_auto_resume(data_dir, tmp_path, recorded):
    argv = base_argv(data_dir, tmp_path, "--epochs", "2", "--save_ckpt_freq", "1")
    train(argv)
    for f in checkpoint_files(tmp_path):
        (tmp_path / f).write_bytes((tmp_path / f).read_bytes()[:3000])  # every file cut short (links: once)
    recorded["train"].clear()
    with pytest.raises(RuntimeError, match=r"(?s)none of the 4 checkpoints in .* can be read:.*checkpoint-last.pth"
                                           r".*checkpoint-best.pth.*checkpoint-1.pth.*checkpoint-0.pth.*"
                                           r"--no_auto_resume to start from scratch"):
        train(argv)
    assert recorded["train"] == []
    train(argv + ["--no_auto_resume"])
    assert [c["epoch"] for c in recorded["train"]] == [0, 1]


def test_a_second_run_into_a_live_folder_stops_and_stale_temp_files_go(data_dir, tmp_path, recorded):
    import socket
    (tmp_path / "run.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
    with pytest.raises(SystemExit, match="is in use by .* pid"):
        train(base_argv(data_dir, tmp_path, "--epochs", "1"))
    assert recorded["train"] == []
    os.remove(tmp_path / "run.lock")
    (tmp_path / "checkpoint-0.pth.tmp.4242").write_bytes(b"left by a kill")
    train(base_argv(data_dir, tmp_path, "--epochs", "1"))
    assert not any(".tmp." in f for f in os.listdir(tmp_path)) and not (tmp_path / "run.lock").exists()


@pytest.mark.parametrize("nonfinite, val_loss, problem", [
    (3, 1.0, r"3 optimizer steps applied a non-finite gradient"),
    (0, float("nan"), r"val_loss nan"),
])
def test_a_diverged_epoch_is_not_saved_and_the_run_names_the_last_good_checkpoint(
        data_dir, tmp_path, recorded, monkeypatch, nonfinite, val_loss, problem):
    """Epoch 1 diverges (weights hit by inf/NaN gradients, or a NaN validation loss): its state goes to
    checkpoint-1.bad.pth only, checkpoint-last.pth keeps epoch 0, and the run stops naming it."""
    def fake_train(model, loader, training, device, epoch, **kw):
        bad = nonfinite if epoch == 1 else 0
        return engine.EpochResult({"loss": 1.0, "nonfinite_steps": bad}, {}, None, bad)
    monkeypatch.setattr(engine, "train_one_epoch", fake_train)
    losses = iter([1.0, val_loss, 1.0])
    monkeypatch.setattr(engine, "validate", lambda *a, **kw: {"acc1": 10.0, "acc5": 50.0, "loss": next(losses),
                                                              "videos": 7})
    with pytest.raises(SystemExit, match=rf"epoch 1 diverged: {problem}.*kept for inspection as .*checkpoint-1.bad.pth"
                                         rf".*last good checkpoint is .*checkpoint-last.pth \(after epoch 0\)"):
        train(base_argv(data_dir, tmp_path, "--epochs", "3"))
    assert checkpoint.safe_load(str(tmp_path / "checkpoint-last.pth"))["epoch"] == 0  # the good one, kept
    assert "checkpoint-1.bad.pth" in os.listdir(tmp_path) and log_epochs(tmp_path) == [0, 1]
    assert checkpoint.find_resume_checkpoint(str(tmp_path))[0].endswith("checkpoint-last.pth")  # never .bad


def test_validation_failure_keeps_the_trained_epoch(data_dir, tmp_path, recorded, monkeypatch):
    """A video that breaks validation after an epoch of training: the trained epoch is saved (validation pending);
    the rerun validates it without training it again."""
    argv = base_argv(data_dir, tmp_path, "--epochs", "2")
    fake = engine.validate
    monkeypatch.setattr(engine, "validate", lambda *a, **kw: fake(*a, **kw) if len(recorded["train"]) < 2 else
                        (_ for _ in ()).throw(RuntimeError("cannot decode frames of 'bad.mp4'")))
    with pytest.raises(RuntimeError, match="bad.mp4"):
        train(argv)
    last = checkpoint.safe_load(str(tmp_path / "checkpoint-last.pth"))
    assert (last["train_progress"]["epoch"], last["train_progress"]["step"]) == (1, 4) and last["epoch"] == 0
    monkeypatch.setattr(engine, "validate", fake)
    recorded["train"].clear()
    train(argv)
    assert [(c["epoch"], c["first_step"]) for c in recorded["train"]] == [(1, 4)]  # no step left to train
    assert log_epochs(tmp_path) == [0, 1]


# ---------------------------------------------------------------------------------------------------------------------
# An error raised in a DataLoader worker (a bad video) ends the whole job within seconds, with the worker's message
# naming the video, although the workers ignore the stop signals (SIGTERM included). Each run is a real process: the
# failure is a hang at interpreter exit.
# ---------------------------------------------------------------------------------------------------------------------

def _bad_lists(data_dir, folder, which: str, bad: int = 1) -> str:
    """A copy of data_dir's lists (absolute video paths) whose ``which`` list starts with ``bad`` zero-byte videos."""
    os.makedirs(folder / "videos", exist_ok=True)
    for name in ("train", "val", "test"):
        lines = [os.path.join(data_dir, line) for line in open(os.path.join(data_dir, f"{name}.csv"))]
        if name == which:
            for i in range(bad):
                (folder / "videos" / f"empty{i}.mp4").write_bytes(b"")
            lines = [f"{folder / 'videos' / f'empty{i}.mp4'} 1\n" for i in range(bad)] + lines
        (folder / f"{name}.csv").write_text("".join(lines))
    return str(folder)


def _tiny_checkpoint(data_dir, tmp_path) -> str:
    """The weights of the tiny run's model, untrained (what --eval and predict.py read)."""
    args = run.parse_args(base_argv(data_dir, tmp_path, "--num_workers", "0"))
    path = str(tmp_path / "model.pth")
    torch.save({"model": run.build_model(args).state_dict()}, path)
    return path


def _run_until_exit(cmd, tmp_path, timeout=60):
    """Run ``python cmd`` from the project's folder and return the completed process. A hang fails the test at
    ``timeout``, after SIGTERM to what it started (torchrun passes it on) and, 40 s later, SIGKILL."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    with open(tmp_path / "stdout.txt", "w+") as out, open(tmp_path / "stderr.txt", "w+") as err:
        proc = subprocess.Popen([sys.executable, *cmd], cwd=ROOT, env=env, stdout=out, stderr=err,
                                start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            pytest.fail(f"still running after {timeout} s: {' '.join(cmd)}\n{(tmp_path / 'stderr.txt').read_text()}")
        out.seek(0), err.seek(0)
        return subprocess.CompletedProcess(cmd, proc.returncode, out.read(), err.read())


@pytest.mark.parametrize("which, extra, message", [
    ("train", ["--max_bad_videos", "0"], r"unreadable training videos this epoch \(more than max_bad_videos=0\); "
                                         r"last: video file is empty \(0 bytes\): '[^']*empty\d\.mp4'"),
    ("val", [], r"video file is empty \(0 bytes\): '[^']*empty0\.mp4'"),
    ("test", ["--eval"], r"video file is empty \(0 bytes\): '[^']*empty0\.mp4'"),
], ids=["training", "validation", "eval"])
def test_a_failing_loader_worker_ends_the_run(data_dir, tmp_path, which, extra, message):
    data = _bad_lists(data_dir, tmp_path / "data", which, bad=8 if which == "train" else 1)
    if "--eval" in extra:
        extra = extra + ["--resume", _tiny_checkpoint(data_dir, tmp_path)]
    argv = base_argv(data, tmp_path / "out", "--epochs", "1", "--num_workers", "1", *extra)
    res = _run_until_exit(["run_class_finetuning.py", *argv], tmp_path)
    assert res.returncode == 1, res.stderr[-3000:]
    assert re.search(message, res.stderr.strip().splitlines()[-1]), res.stderr[-3000:]
    assert "killed by signal" not in res.stderr


def test_predict_names_a_bad_video_and_exits(data_dir, tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    weights = _tiny_checkpoint(data_dir, tmp_path)
    res = _run_until_exit(["predict.py", str(tmp_path / "empty.mp4"), "--resume", weights, "--model",
                           "vit_llama_tiny_patch16", "--num_frames", "8", "--input_size", "32", "--short_side_size",
                           "32", "--device", "cpu"], tmp_path)
    assert res.returncode == 1
    assert re.search(r"predict.py: video .*empty\.mp4: cannot be decoded .*empty \(0 bytes\)",
                     res.stderr.strip().splitlines()[-1]), res.stderr[-3000:]


def test_a_failing_loader_worker_ends_a_torchrun_job(data_dir, tmp_path):
    """--dist_eval: the bad video is in rank 0's shard only; rank 1 finishes its shard and waits for rank 0, which
    fails. Both processes end and torchrun exits non-zero, with the worker's message naming the video."""
    data = _bad_lists(data_dir, tmp_path / "data", "test")
    argv = base_argv(data, tmp_path / "out", "--eval", "--dist_eval", "--num_workers", "1", "--resume",
                     _tiny_checkpoint(data_dir, tmp_path))
    res = _run_until_exit(["-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_ports(1)[0]}",
                           "run_class_finetuning.py", *argv], tmp_path, timeout=90)
    assert res.returncode != 0, res.stderr[-3000:]
    assert re.search(r"VideoDecodeError: video file is empty \(0 bytes\): '[^']*empty0\.mp4'", res.stderr), \
        res.stderr[-3000:]
