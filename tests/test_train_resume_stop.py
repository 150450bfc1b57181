"""End to end on a tiny synthetic dataset (CPU, fp32): outputs and logs, resume == uninterrupted run, damaged
checkpoints skipped, a stop signal mid-epoch and its rerun bit for bit, kills between a checkpoint and its links."""
import json
import os
import random
import shutil
import signal

import numpy as np
import pytest
import torch

import checkpoint
import engine_for_finetuning as engine
import run_class_finetuning as run
import run_control
import utils
from benchmarks import preempt_harness as harness

from runs import (DEVICE_ARGV, STRAIGHT_ARGV, base_argv, checkpoint_files, fail_at_epoch, fake_val_accuracies,
                  log_epochs, per_video, signal_at_step, train)


def test_outputs_and_logs(straight):
    out, summary = straight
    for f in ("log.txt", "args.json", "checkpoint-0.pth", "checkpoint-1.pth", "checkpoint-best.pth",
              "test_per_view.npz", "test_per_video.npz", "test_summary.json", "per_class.csv",
              "confusion_matrix.png"):
        assert os.path.isfile(os.path.join(out, f)), f
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(out))
    lines = [json.loads(x) for x in open(os.path.join(out, "log.txt"))]
    assert [r["epoch"] for r in lines] == [0, 1]
    saved = json.load(open(os.path.join(out, "args.json")))
    assert (saved["device"], saved["amp"]) == ("cpu", "none")  # a CPU test on a GPU node too
    for key in ("train_loss", "train_lr", "train_clips_per_s", "val_acc1", "val_acc5", "val_loss", "n_parameters",
                "val_ema_acc1"):
        assert key in lines[0], key
    s = json.load(open(os.path.join(out, "test_summary.json")))
    assert s["videos"] == 7 and s["views_per_video"] == 4 and s["model"] == "vit_llama_tiny_patch16"
    assert s["checkpoint"].endswith("checkpoint-1.pth") and "mean_class_acc" in s
    pv = np.load(os.path.join(out, "test_per_view.npz"))
    vid = per_video(out)
    assert pv["probs"].shape == (28, 8) and vid["probs"].shape == (7, 8)
    np.testing.assert_allclose(pv["probs"].sum(1), 1, rtol=1e-5)
    # independent recomputation of the per-video mean and top-1 from the per-view file
    for i, v in enumerate(vid["video_ids"]):
        np.testing.assert_allclose(vid["probs"][i], pv["probs"][pv["video_ids"] == v].mean(0), rtol=1e-5)
    assert s["top1"] == pytest.approx(100 * np.mean(vid["probs"].argmax(1) == vid["labels"]))
    ck = checkpoint.safe_load(os.path.join(out, "checkpoint-1.pth"))
    assert {"model", "optimizer", "epoch", "args", "model_ema", "rng_states", "scaler"} <= set(ck)
    assert isinstance(ck["args"], dict) and ck["epoch"] == 1
    assert any(k.startswith("llama.") for k in ck["model"])  # frozen LLM weights saved (zoo format)
    trainable = [n for n, p in run.build_model(run.parse_args(base_argv("", out))).named_parameters()
                 if p.requires_grad]
    assert list(ck["model_ema"]) == trainable  # the EMA: trainable weights only, the frozen block is stored once


def test_resume_after_epoch_0_matches_uninterrupted_and_skips_damaged(straight, data_dir, tmp_path):
    out, _ = straight
    shutil.copy(os.path.join(out, "checkpoint-0.pth"), tmp_path / "checkpoint-0.pth")
    good = open(os.path.join(out, "checkpoint-1.pth"), "rb").read()
    (tmp_path / "checkpoint-1.pth").write_bytes(good[:5000])  # a newer, damaged file: must be skipped
    with pytest.warns(UserWarning, match="skipping damaged checkpoint"):
        train(base_argv(data_dir, tmp_path, "--save_ckpt_freq", "1", "--model_ema", "--model_ema_decay", "0.5",
                        "--clip_grad", "1.0", "--num_workers", "1"))
    a = checkpoint.safe_load(os.path.join(out, "checkpoint-1.pth"))
    b = checkpoint.safe_load(str(tmp_path / "checkpoint-1.pth"))
    for part in ("model", "model_ema"):
        for k in a[part]:
            torch.testing.assert_close(b[part][k], a[part][k], rtol=0, atol=1e-6, msg=f"{part}.{k}")
    log_a = [json.loads(x) for x in open(os.path.join(out, "log.txt"))][1]
    log_b = [json.loads(x) for x in open(tmp_path / "log.txt")]
    assert [r["epoch"] for r in log_b] == [1]
    assert log_b[0]["train_loss"] == pytest.approx(log_a["train_loss"], abs=1e-6)
    assert log_b[0]["train_lr"] == pytest.approx(log_a["train_lr"], rel=1e-12)


def test_device_augmentation_trains_evaluates_and_resumes_exactly(straight_device, straight, data_dir, tmp_path):
    out, summary = straight_device
    assert summary["videos"] == 7 and summary["checkpoint"].endswith("checkpoint-1.pth")
    ck0 = checkpoint.safe_load(os.path.join(out, "checkpoint-0.pth"))
    ck1 = checkpoint.safe_load(os.path.join(out, "checkpoint-1.pth"))
    assert len(ck1["device_augment"]) == 1  # one generator state per rank
    assert ck0["device_augment"][0]["sampler"]["python"] != ck1["device_augment"][0]["sampler"]["python"]
    workers = checkpoint.safe_load(os.path.join(straight[0], "checkpoint-1.pth"))
    assert "device_augment" not in workers and not torch.equal(workers["model"]["head.weight"],
                                                               ck1["model"]["head.weight"])
    shutil.copy(os.path.join(out, "checkpoint-0.pth"), tmp_path / "checkpoint-0.pth")
    train(base_argv(data_dir, tmp_path, *DEVICE_ARGV))  # resumes after epoch 0
    resumed = checkpoint.safe_load(str(tmp_path / "checkpoint-1.pth"))
    for k in ck1["model"]:
        torch.testing.assert_close(resumed["model"][k], ck1["model"][k], rtol=0, atol=1e-6, msg=k)
    log_a = [json.loads(x) for x in open(os.path.join(out, "log.txt"))][1]
    log_b = [json.loads(x) for x in open(tmp_path / "log.txt")]
    assert [r["epoch"] for r in log_b] == [1] and log_b[0]["train_loss"] == pytest.approx(log_a["train_loss"],
                                                                                        abs=1e-6)


@pytest.mark.parametrize("path", ["workers", "device"])
def test_stop_signal_mid_epoch_then_rerun_equals_uninterrupted(path, straight, straight_device, data_dir, tmp_path,
                                                                monkeypatch):
    """SIGTERM inside epoch 1's second optimizer step (of 4; a DataLoader worker, mixup, EMA, and on the device
    path the device augmentation's generators in play): the step finishes, checkpoint-last.pth records epoch 1 step
    2, the exit status is 75; rerunning the command ends with the uninterrupted run's weights, EMA, log numbers,
    checkpoints and test, bit for bit."""
    (ref, _), extra = (straight, STRAIGHT_ARGV) if path == "workers" else (straight_device, DEVICE_ARGV)
    argv = base_argv(data_dir, tmp_path, *extra)
    signal_at_step(monkeypatch, 6)
    with pytest.raises(SystemExit) as stopped:
        train(argv)
    assert stopped.value.code == run_control.EXIT_PREEMPTED == 75
    assert checkpoint_files(tmp_path) == [f for f in checkpoint_files(ref) if f != "checkpoint-1.pth"]
    last = checkpoint.safe_load(str(tmp_path / "checkpoint-last.pth"))
    assert last["epoch"] == 0 and (last["train_progress"]["epoch"], last["train_progress"]["step"]) == (1, 2)
    assert [json.loads(x)["epoch"] for x in open(tmp_path / "log.txt")] == [0]
    monkeypatch.undo()
    summary = train(argv)
    assert summary["checkpoint"].endswith("checkpoint-1.pth")
    assert [json.loads(x)["epoch"] for x in open(tmp_path / "log.txt")] == [0, 1]
    ref_test = "final_per_video.npz" if path == "workers" else "test_per_video.npz"
    assert harness.compare_runs(ref, str(tmp_path), ref_test=ref_test) == []


def test_stop_mid_epoch_with_gradient_accumulation_then_rerun_equals_uninterrupted(data_dir, tmp_path, monkeypatch):
    """--update_freq 2 (2 optimizer steps of 2 micro-batches per epoch): SIGTERM inside epoch 1's first step; the
    rerun starts the epoch's sample order after the 2 x 4 videos that step took, and ends with the uninterrupted
    run's weights, optimizer state, log numbers and test, bit for bit."""
    ref, out = tmp_path / "ref", tmp_path / "stopped"
    train(base_argv(data_dir, ref, "--update_freq", "2"))
    argv = base_argv(data_dir, out, "--update_freq", "2")
    signal_at_step(monkeypatch, 3)
    with pytest.raises(SystemExit, match=str(run_control.EXIT_PREEMPTED)):
        train(argv)
    last = checkpoint.safe_load(str(out / "checkpoint-last.pth"))
    assert (last["epoch"], last["train_progress"]["epoch"], last["train_progress"]["step"]) == (0, 1, 1)
    monkeypatch.undo()
    train(argv)
    assert harness.compare_runs(str(ref), str(out)) == []


def test_preempt_harness_fast_variant(straight, data_dir, tmp_path):
    """benchmarks/preempt_harness.py, one stop: the training command as its own process group gets SIGTERM, like a
    scheduler sends it to every process of a job (the trainer and its DataLoader worker), at a random logged step;
    it exits 75 with every checkpoint readable, and the rerun ends identical to the uninterrupted run (same thread
    count as the reference: float sums differ across thread counts)."""
    argv = base_argv(data_dir, tmp_path, *STRAIGHT_ARGV)
    step = random.Random(os.getpid()).choice([2, 4, 6])  # --print_freq 2: lines after steps 2, 4, 6 (of 8)
    with open(tmp_path / "run.log", "w") as log:
        r = harness.stop_once(harness.command(argv), str(tmp_path), signal.SIGTERM, step, log,
                              env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}, timeout=300)
    assert r["status"] == run_control.EXIT_PREEMPTED and r["seen_step"] == step and r["unreadable"] == [], \
        (tmp_path / "run.log").read_text()[-3000:]
    assert r["resumes_at"][0] * 4 + r["resumes_at"][1] >= step  # (epoch, step): at or after the signalled step
    train(argv)
    assert harness.compare_runs(straight[0], str(tmp_path), ref_test="final_per_video.npz") == []


def test_loader_workers_ignore_stop_signals(data_dir, tmp_path):
    """The scheduler signals every process of the job: a DataLoader worker must not die of it (the main process
    saves and exits)."""
    loaders = run.build_loaders(run.parse_args(base_argv(data_dir, tmp_path, "--num_workers", "1",
                                                         "--exit_signal", "USR2")), eval_only=False)
    run.set_train_epoch(loaders, run.parse_args(base_argv(data_dir, tmp_path)), 0)
    batches = iter(loaders["train"])
    next(batches)
    worker = batches._workers[0]
    for sig in (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT):
        os.kill(worker.pid, sig)
    assert len(list(batches)) == 3 and worker.exitcode in (None, 0)


def test_resume_loads_an_old_checkpoint_whose_ema_is_the_whole_model(straight, data_dir, tmp_path):
    out, _ = straight
    ck = checkpoint.safe_load(os.path.join(out, "checkpoint-0.pth"))
    ck["model_ema"] = {k: v + 1.0 if v.is_floating_point() else v for k, v in ck["model"].items()}
    torch.save(ck, tmp_path / "old.pth")
    args = run.parse_args(base_argv(data_dir, tmp_path, "--resume", str(tmp_path / "old.pth"), "--model_ema"))
    model = run.build_model(args)
    t = run.build_training(args, model, steps_per_epoch=4)
    checkpoint.resume_training(args, model, t.optimizer, t.scaler, t.model_ema, steps_per_epoch=4)
    assert list(t.model_ema.state_dict()) == [n for n, p in model.named_parameters() if p.requires_grad]
    for n, v in t.model_ema.state_dict().items():
        assert torch.equal(v, ck["model_ema"][n]), n


def test_resume_from_best_continues_after_its_epoch(straight, data_dir, tmp_path):
    out, _ = straight
    args = run.parse_args(base_argv(data_dir, tmp_path, "--resume", os.path.join(out, "checkpoint-best.pth")))
    model = run.build_model(args)
    t = run.build_training(args, model, steps_per_epoch=4)
    best = checkpoint.safe_load(os.path.join(out, "checkpoint-best.pth"))
    state = checkpoint.resume_training(args, model, t.optimizer, None, None, steps_per_epoch=4)
    assert (state.epoch, state.step, state.max_accuracy, state.best_epoch, state.path) == (
        best["epoch"] + 1, 0, best["max_accuracy"], best["epoch"], args.resume)


def test_kill_with_sparse_numbered_checkpoints_resumes_where_it_was(data_dir, tmp_path, recorded, monkeypatch):
    """--save_ckpt_freq 100 (the default, as in demo.sh): checkpoint-last.pth is written every epoch, so a run
    killed in epoch 2 continues at epoch 2 instead of starting over from epoch 0."""
    argv = base_argv(data_dir, tmp_path, "--epochs", "4")
    fail_at_epoch(monkeypatch, recorded, 2)
    with pytest.raises(KeyboardInterrupt):
        train(argv)
    assert checkpoint_files(tmp_path) == ["checkpoint-best.pth", "checkpoint-last.pth"]
    monkeypatch.setattr(engine, "train_one_epoch", lambda model, loader, training, device, epoch, **kw:
                        recorded["train"].append(dict(kw, epoch=epoch)) or engine.EpochResult({"loss": 1.0}, {}))
    recorded["train"].clear()
    train(argv)
    assert [c["epoch"] for c in recorded["train"]] == [2, 3] and log_epochs(tmp_path) == [0, 1, 2, 3]


def test_best_is_never_overwritten_by_a_worse_epoch_after_resuming_an_older_file(data_dir, tmp_path, recorded,
                                                                                 monkeypatch):
    argv = base_argv(data_dir, tmp_path, "--epochs", "3", "--save_ckpt_freq", "1")
    fake_val_accuracies(monkeypatch, [10, 50, 30])
    train(argv)
    assert checkpoint.safe_load(str(tmp_path / "checkpoint-best.pth"))["epoch"] == 1
    fake_val_accuracies(monkeypatch, [40])
    train(argv + ["--resume", str(tmp_path / "checkpoint-0.pth")])  # best so far in it: 10%; epochs 1, 2 at 40%
    best = checkpoint.safe_load(str(tmp_path / "checkpoint-best.pth"))
    assert (best["epoch"], best["max_accuracy"]) == (1, 50.0)
    assert checkpoint.safe_load(str(tmp_path / "checkpoint-2.pth"))["max_accuracy"] == 50.0


def test_rerun_of_a_finished_run_says_so_lists_changed_args_and_tests_the_named_checkpoint(data_dir, tmp_path,
                                                                                           recorded, capsys):
    train(base_argv(data_dir, tmp_path, "--epochs", "2"))
    recorded["train"].clear()
    capsys.readouterr()
    summary = train(base_argv(data_dir, tmp_path, "--epochs", "2", "--lr", "0.5", "--batch_size", "2"))
    out = capsys.readouterr().out
    assert recorded["train"] == [] and len(recorded["test"]) == 2
    assert "Nothing to train:" in out and "checkpoint-1.pth ends at epoch 1 and --epochs is 2" in out
    assert "--lr 0.05 -> 0.5" in out and "--batch_size 4 -> 2" in out and "--scaled_lr 0.00078125 -> " in out
    assert summary["checkpoint"].endswith("checkpoint-1.pth")
    assert json.load(open(tmp_path / "test_summary.json"))["checkpoint"].endswith("checkpoint-1.pth")
    assert json.load(open(tmp_path / "args.json"))["lr"] == 0.05  # the args of the run that trained it


def test_log_line_before_checkpoint_and_best_repaired_after_a_kill_between_them(data_dir, tmp_path, recorded,
                                                                                monkeypatch):
    argv = base_argv(data_dir, tmp_path, "--epochs", "3")
    real_link = utils.link_or_copy

    def killed_linking_best(src, dst):
        if dst.endswith("checkpoint-best.pth") and checkpoint.safe_load(src)["epoch"] == 1:
            raise KeyboardInterrupt("killed between checkpoint-last.pth and checkpoint-best.pth")
        real_link(src, dst)
    monkeypatch.setattr(utils, "link_or_copy", killed_linking_best)
    with pytest.raises(KeyboardInterrupt):
        train(argv)  # val top-1 10, 20: epoch 1 is the best
    assert log_epochs(tmp_path) == [0, 1]  # epoch 1's line was written before its checkpoint
    assert checkpoint.safe_load(str(tmp_path / "checkpoint-best.pth"))["epoch"] == 0
    monkeypatch.setattr(utils, "link_or_copy", real_link)
    fake_val_accuracies(monkeypatch, [15])  # epoch 2 is worse than epoch 1 (20)
    train(argv)
    best = checkpoint.safe_load(str(tmp_path / "checkpoint-best.pth"))
    assert (best["epoch"], best["max_accuracy"]) == (1, 20.0) and log_epochs(tmp_path) == [0, 1, 2]


def test_numbered_checkpoint_repaired_after_a_kill_before_its_link(data_dir, tmp_path, recorded, monkeypatch):
    """A kill after the last epoch's checkpoint-last.pth but before its checkpoint-N.pth link: the rerun has
    nothing to train, but creates checkpoint-1.pth (the final numbered file is not lost)."""
    argv = base_argv(data_dir, tmp_path, "--epochs", "2", "--save_ckpt_freq", "100")
    real_link = utils.link_or_copy

    def killed_linking(src, dst):
        if dst.endswith("checkpoint-1.pth"):
            raise KeyboardInterrupt("killed between checkpoint-last.pth and checkpoint-1.pth")
        real_link(src, dst)
    monkeypatch.setattr(utils, "link_or_copy", killed_linking)
    with pytest.raises(KeyboardInterrupt):
        train(argv)
    assert checkpoint_files(tmp_path) == ["checkpoint-best.pth", "checkpoint-last.pth"]
    monkeypatch.setattr(utils, "link_or_copy", real_link)
    recorded["train"].clear()
    train(argv)
    assert recorded["train"] == [] and checkpoint_files(tmp_path) == ["checkpoint-1.pth", "checkpoint-best.pth",
                                                                      "checkpoint-last.pth"]
    assert os.path.samefile(tmp_path / "checkpoint-1.pth", tmp_path / "checkpoint-last.pth")
