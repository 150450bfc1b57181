"""Runs that must stop: unreadable checkpoints, a live folder, a diverged epoch, a failing validation."""
import json
import os

import pytest

import checkpoint
import engine_for_finetuning as engine

from runs import base_argv, checkpoint_files, log_epochs, train


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
