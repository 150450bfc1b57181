"""Runs that must stop: unreadable checkpoints, a live folder, a diverged epoch (at any step, in validation, at a
stop), a failing validation, a full disk, a failing loader worker; and what the checkpoints cost on disk."""
import errno
import io
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
import run_control

from runs import (ROOT, base_argv, checkpoint_files, fake_val_accuracies, free_ports, log_epochs,
                  signal_at_step, train)


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
        data_dir, tmp_path, recorded, monkeypatch, capsys, nonfinite, val_loss, problem):
    """Epoch 1 diverges (weights hit by inf/NaN gradients, or a NaN validation loss): its state goes to
    checkpoint-1.bad.pth only, checkpoint-last.pth keeps epoch 0, and the run stops naming it."""
    def fake_train(model, loader, training, device, epoch, **kw):
        bad = nonfinite if epoch == 1 else 0
        return engine.EpochResult({"loss": 1.0, "nonfinite_steps": bad}, {}, None, bad)
    monkeypatch.setattr(engine, "train_one_epoch", fake_train)
    losses = iter([1.0, val_loss, 1.0])
    monkeypatch.setattr(engine, "validate", lambda *a, **kw: {"acc1": 10.0, "acc5": 50.0, "loss": next(losses),
                                                              "videos": 7})
    with pytest.raises(SystemExit) as stopped:
        train(base_argv(data_dir, tmp_path, "--epochs", "3"))
    assert stopped.value.code == run_control.EXIT_DIVERGED
    assert re.search(rf"epoch 1 diverged: {problem}.*kept for inspection as .*checkpoint-1.bad.pth.*last good "
                     rf"checkpoint is .*checkpoint-last.pth \(after epoch 0\)", capsys.readouterr().err)
    assert checkpoint.safe_load(str(tmp_path / "checkpoint-last.pth"))["epoch"] == 0  # the good one, kept
    assert "checkpoint-1.bad.pth" in os.listdir(tmp_path) and log_epochs(tmp_path) == [0, 1]
    assert checkpoint.find_resume_checkpoint(str(tmp_path))[0].endswith("checkpoint-last.pth")  # never .bad


def poison_step(monkeypatch, step: int) -> None:
    """The ``step``-th optimizer step (1-based, counted over the runs that follow) applies a NaN gradient."""
    real, calls = engine.optimizer_step, []

    def nan_step(optimizer, scaler, params, *a, **k):
        calls.append(1)
        if len(calls) == step:
            params[0].grad.fill_(float("nan"))
        return real(optimizer, scaler, params, *a, **k)
    monkeypatch.setattr(engine, "optimizer_step", nan_step)


@pytest.mark.parametrize("nan_step, signal_step, stopped_at, problems", [
    (5, None, 2, r"2 optimizer steps applied a non-finite gradient \(grad_norm inf/NaN\); 1 training losses were not "
                 r"finite"),  # epoch 1's first step: seen at the next log point, step 2 of 4
    (8, None, 4, r"1 optimizer steps applied a non-finite gradient \(grad_norm inf/NaN\)\."),  # the epoch's last
    (5, 5, 1, r"1 optimizer steps applied a non-finite gradient \(grad_norm inf/NaN\)\."),  # a stop at that step
])
def test_a_non_finite_gradient_at_any_step_keeps_bad_pth_names_the_last_good_and_exits_diverged(
        data_dir, tmp_path, monkeypatch, capsys, nan_step, signal_step, stopped_at, problems):
    """Real training, 4 steps per epoch, a log point every 2 steps: a NaN gradient in epoch 1 ends the run at the
    log point (or the stop) that sees it, with checkpoint-1.bad.pth at that step, checkpoint-last.pth still epoch
    0's, a message naming it, and EXIT_DIVERGED."""
    poison_step(monkeypatch, nan_step)
    if signal_step:
        signal_at_step(monkeypatch, signal_step)
    with pytest.raises(SystemExit) as stopped:
        train(base_argv(data_dir, tmp_path, "--disable_eval_during_finetuning"))
    assert stopped.value.code == run_control.EXIT_DIVERGED
    err = capsys.readouterr().err
    assert re.search(rf"error: epoch 1 \(at step {stopped_at} of 4\) diverged: {problems}.*kept for inspection as "
                     rf".*checkpoint-1.bad.pth\). The last good checkpoint is .*checkpoint-last.pth \(after epoch 0\)"
                     rf".*Exit status {run_control.EXIT_DIVERGED}", err), err
    bad = checkpoint.safe_load(str(tmp_path / "checkpoint-1.bad.pth"))
    assert bad["train_progress"]["step"] == stopped_at and bad["epoch"] == 0
    assert not torch.isfinite(bad["model"][next(iter(bad["model"]))]).all()  # the poisoned weights, for inspection
    assert checkpoint.safe_load(str(tmp_path / "checkpoint-last.pth"))["epoch"] == 0


def test_a_diverged_run_without_checkpoints_says_why_nothing_is_kept(data_dir, tmp_path, monkeypatch, capsys):
    poison_step(monkeypatch, 1)
    with pytest.raises(SystemExit) as stopped:
        train(base_argv(data_dir, tmp_path, "--disable_eval_during_finetuning", "--no_save_ckpt", "--epochs", "1"))
    assert stopped.value.code == run_control.EXIT_DIVERGED
    assert re.search(r"epoch 0 \(at step 2 of 4\) diverged: .*not kept: the run saves no checkpoint .*The last good "
                     r"checkpoint is none", capsys.readouterr().err)


def disk_full_from(monkeypatch, call: int) -> dict:
    """torch.save into a file (not the in-memory buffers of pickled tensors) fails with ENOSPC from its ``call``-th
    use on (1-based), after writing a few bytes, until the returned dict's "full" is set False."""
    real, disk = torch.save, {"calls": 0, "full": True}

    def save(obj, f, *a, **k):
        if isinstance(f, io.BytesIO):
            return real(obj, f, *a, **k)
        disk["calls"] += 1
        if disk["calls"] < call or not disk["full"]:
            return real(obj, f, *a, **k)
        f.write(b"PK" * 512)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(torch, "save", save)
    return disk


def test_a_full_disk_stops_with_one_line_naming_the_file_and_the_space(data_dir, tmp_path, recorded, monkeypatch):
    """Epoch 1's save hits a full disk: one line names checkpoint-last.pth, the size it needs and the free space;
    no temporary file is left and checkpoint-last.pth still holds epoch 0."""
    disk_full_from(monkeypatch, 2)
    with pytest.raises(SystemExit) as stopped:
        train(base_argv(data_dir, tmp_path, "--epochs", "3"))
    message = str(stopped.value.code)
    assert "\n" not in message and re.fullmatch(
        rf"error: cannot write checkpoint {re.escape(str(tmp_path))}/checkpoint-last.pth: No space left on device; "
        rf"it needs about [0-9.]+ MiB and {re.escape(str(tmp_path))} has [0-9.]+ [MG]iB free\. .*", message), message
    assert checkpoint_files(tmp_path) == ["checkpoint-best.pth", "checkpoint-last.pth"]  # no temporary file
    assert checkpoint.safe_load(str(tmp_path / "checkpoint-last.pth"))["epoch"] == 0


def test_a_stop_signal_on_a_full_disk_exits_preempted_when_the_previous_checkpoint_is_intact(
        data_dir, tmp_path, recorded, monkeypatch, capsys):
    """SIGTERM in epoch 1 (of the first run), whose checkpoint finds the disk full: exit 75, the message says that
    epoch 0's checkpoint is intact, and the rerun continues from it."""
    real_train, signalled = engine.train_one_epoch, []

    def train_then_signal(model, loader, training, device, epoch, **kw):
        result = real_train(model, loader, training, device, epoch, **kw)
        if epoch == 1 and not signalled:
            signalled.append(epoch)
            os.kill(os.getpid(), signal.SIGTERM)
            return engine.EpochResult({}, {}, stopped_at=2)
        return result
    monkeypatch.setattr(engine, "train_one_epoch", train_then_signal)
    disk = disk_full_from(monkeypatch, 2)
    with pytest.raises(SystemExit) as stopped:
        train(base_argv(data_dir, tmp_path, "--epochs", "3"))
    assert stopped.value.code == run_control.EXIT_PREEMPTED
    assert re.search(r"Stopping on SIGTERM: cannot write checkpoint .*checkpoint-last.pth: No space left on device.*"
                     r"The previous checkpoint .*checkpoint-last.pth is intact: rerunning the same command continues "
                     r"from it", capsys.readouterr().out)
    recorded["train"].clear()
    disk["full"] = False
    train(base_argv(data_dir, tmp_path, "--epochs", "3"))
    assert [c["epoch"] for c in recorded["train"]] == [1, 2]  # continued from epoch 0's checkpoint


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
    ("test", ["--eval"], r"video file is empty \(0 bytes\): '[^']*empty0\.mp4'"),
], ids=["training", "eval"])  # validation reads through the same loader setup as eval
def test_a_failing_loader_worker_ends_the_run(data_dir, tmp_path, which, extra, message):
    data = _bad_lists(data_dir, tmp_path / "data", which, bad=8 if which == "train" else 1)
    if "--eval" in extra:
        extra = extra + ["--resume", _tiny_checkpoint(data_dir, tmp_path)]
    argv = base_argv(data, tmp_path / "out", "--epochs", "1", "--num_workers", "1", *extra)
    res = _run_until_exit(["run_class_finetuning.py", *argv], tmp_path)
    assert res.returncode == 1, res.stderr[-3000:]
    assert re.search(message, res.stderr.strip().splitlines()[-1]), res.stderr[-3000:]
    assert "killed by signal" not in res.stderr


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


def full_size_files(out) -> int:
    """Distinct files (inodes) behind the checkpoint names of a run folder: what it costs on disk."""
    return len({os.stat(out / f).st_ino for f in checkpoint_files(out)})


@pytest.mark.parametrize("keep_last, numbered", [(None, [0, 1, 2, 3, 4, 5]), (2, [4, 5]), (0, [])])
def test_keep_last_bounds_the_numbered_checkpoints_and_last_and_best_stay(
        data_dir, tmp_path, recorded, monkeypatch, keep_last, numbered):
    """6 epochs, a numbered file each, the best at epoch 1: --keep_last N keeps the N newest numbered files, and
    last/best always; every name holding another epoch is a full-size file, so the folder holds N + 2 at most."""
    fake_val_accuracies(monkeypatch, [10.0, 50.0, 20.0])
    extra = ["--keep_last", str(keep_last)] if keep_last is not None else []
    summary = train(base_argv(data_dir, tmp_path, "--epochs", "6", "--save_ckpt_freq", "1", *extra))
    assert os.path.isfile(summary["checkpoint"])  # the tested checkpoint is one the run kept
    assert checkpoint_files(tmp_path) == sorted(["checkpoint-best.pth", "checkpoint-last.pth",
                                                 *[f"checkpoint-{e}.pth" for e in numbered]])
    assert checkpoint.safe_load(str(tmp_path / "checkpoint-best.pth"))["epoch"] == 1
    assert checkpoint.safe_load(str(tmp_path / "checkpoint-last.pth"))["epoch"] == 5
    assert full_size_files(tmp_path) == len(set(numbered) | {1, 5})  # last is checkpoint-5.pth when that is kept


