"""End to end on a tiny synthetic dataset (CPU, fp32): resume == uninterrupted run, damaged checkpoints skipped,
--eval --resume evaluates exactly the named file, model-zoo checkpoints evaluate, torchrun (gloo, 2 processes) gives
the single-process multi-view result, and every flag parses and acts."""
import argparse
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import checkpoint
import engine_for_finetuning as engine
import run_class_finetuning as run
import utils
from benchmarks import preempt_harness as harness

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    from datasets.synthetic import make_synthetic_dataset
    return make_synthetic_dataset(str(tmp_path_factory.mktemp("syn")), num_train=16, num_val=7, height=32,
                                  num_frames=8, workers=2)


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


@pytest.fixture(scope="session")
def straight(data_dir, tmp_path_factory):
    """2 epochs, a checkpoint every epoch, EMA, clip_grad, workers (seeded per epoch), default augmentation+mixup."""
    out = tmp_path_factory.mktemp("straight")
    summary = train(base_argv(data_dir, out, *STRAIGHT_ARGV))
    shutil.copy(os.path.join(out, "test_per_video.npz"), os.path.join(out, "final_per_video.npz"))
    return str(out), summary


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
    assert any(k.startswith("llama.") for k in ck["model"])  # frozen LLaMA weights saved (zoo format)
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


DEVICE_ARGV = ("--augment_on", "device", "--save_ckpt_freq", "1", "--num_workers", "1", "--reprob", "0.5",
               "--num_frames", "4")  # 4 of 8 frames: TSN sampling draws in the workers


@pytest.fixture(scope="session")
def straight_device(data_dir, tmp_path_factory):
    """2 epochs with --augment_on device (workers decode; RandAugment, crop, erasing and mixup on the device)."""
    out = tmp_path_factory.mktemp("straight_device")
    return str(out), train(base_argv(data_dir, out, *DEVICE_ARGV))


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
    assert stopped.value.code == run.EXIT_PREEMPTED == 75
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
    assert r["status"] == run.EXIT_PREEMPTED and r["seen_step"] == step and r["unreadable"] == [], \
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


def test_eval_resume_evaluates_named_checkpoint_not_newest(straight, data_dir):
    out, _ = straight
    final = np.load(os.path.join(out, "final_per_video.npz"))
    s0 = train(base_argv(data_dir, out, "--eval", "--resume", os.path.join(out, "checkpoint-0.pth")))
    assert s0["checkpoint"].endswith("checkpoint-0.pth")
    p0 = per_video(out)["probs"]
    s1 = train(base_argv(data_dir, out, "--eval"))  # auto-resume: the newest, checkpoint-1
    assert s1["checkpoint"].endswith("checkpoint-1.pth")
    np.testing.assert_allclose(per_video(out)["probs"], final["probs"], rtol=0, atol=1e-6)
    assert not np.allclose(p0, final["probs"], atol=1e-4)


def test_eval_refuses_frames_other_than_the_checkpoints(straight, data_dir, tmp_path):
    """A 8-frame checkpoint evaluated with --num_frames 4 would load (the position table is fixed, not stored) and
    report a wrong accuracy: refused, unless --allow_arg_mismatch."""
    argv = base_argv(data_dir, tmp_path, "--eval", "--resume", os.path.join(straight[0], "checkpoint-1.pth"),
                     "--num_frames", "4")
    with pytest.raises(RuntimeError, match=r"trained with other settings: --num_frames 8 -> 4 \(saved -> given\). "
                                           r"Pass the saved values, or --allow_arg_mismatch"):
        train(argv)
    assert train(argv + ["--allow_arg_mismatch"])["videos"] == 7


def test_eval_model_zoo_checkpoint(straight, data_dir, tmp_path):
    out, _ = straight
    ck = checkpoint.safe_load(os.path.join(out, "checkpoint-1.pth"))
    zoo = {"model": ck["model"], "optimizer": ck["optimizer"], "epoch": 29, "scaler": {},
           "args": argparse.Namespace(model="vit_llama_tiny_patch16", nb_classes=8)}
    torch.save(zoo, tmp_path / "zoo.pth")
    s = train(base_argv(data_dir, tmp_path / "eval", "--eval", "--resume", str(tmp_path / "zoo.pth")))
    final = np.load(os.path.join(out, "final_per_video.npz"))
    np.testing.assert_allclose(per_video(tmp_path / "eval")["probs"], final["probs"], rtol=0, atol=1e-6)
    assert s["checkpoint"] == str(tmp_path / "zoo.pth")


def test_eval_with_nothing_to_evaluate_errors(data_dir, tmp_path):
    with pytest.raises(SystemExit, match="nothing to evaluate"):
        train(base_argv(data_dir, tmp_path, "--eval"))


def test_eval_wrong_model_names_file(straight, data_dir, tmp_path):
    out, _ = straight
    with pytest.raises(RuntimeError, match="checkpoint-1.pth does not fit --model vit_tiny_patch16"):
        train(base_argv(data_dir, tmp_path, "--eval", "--model", "vit_tiny_patch16", "--resume",
                        os.path.join(out, "checkpoint-1.pth")))


def test_eval_refuses_a_checkpoint_of_another_llm_block(straight, data_dir, tmp_path):
    from fakes import write_meta_llama
    from llama import LLaMAConfig
    out, _ = straight
    path = os.path.join(out, "checkpoint-1.pth")
    recorded = checkpoint.safe_load(path)["llm"]  # written by training: the demo-style random tiny block
    assert (recorded["source"], recorded["layers"], recorded["hidden_size"]) == ("random", [0], 256)
    write_meta_llama(str(tmp_path / "llm"), LLaMAConfig(dim=64, n_heads=4, n_layers=2, multiple_of=32))
    with pytest.raises(checkpoint.LLMMismatchError, match=r"checkpoint-1.pth holds another LLM block(?s:.*)checkpoint: "
                                                          r"llama \(hidden 256.*random weights\n  model: +llama "
                                                          r"\(hidden 64.*layers \[1\], from .*llm \(sha256"):
        train(base_argv(data_dir, tmp_path / "o", "--eval", "--resume", path, "--llama_path", str(tmp_path / "llm"),
                        "--llama_layer", "-1"))


def test_resume_loads_an_old_checkpoint_whose_ema_is_the_whole_model(straight, data_dir, tmp_path):
    out, _ = straight
    ck = checkpoint.safe_load(os.path.join(out, "checkpoint-0.pth"))
    ck["model_ema"] = {k: v + 1.0 if v.is_floating_point() else v for k, v in ck["model"].items()}
    torch.save(ck, tmp_path / "old.pth")
    args = run.parse_args(base_argv(data_dir, tmp_path, "--resume", str(tmp_path / "old.pth"), "--model_ema"))
    model = run.build_model(args)
    t = run.build_training(args, model, steps_per_epoch=4)
    checkpoint.resume_training(args, model, t["optimizer"], t["scaler"], t["model_ema"])
    assert list(t["model_ema"].state_dict()) == [n for n, p in model.named_parameters() if p.requires_grad]
    for n, v in t["model_ema"].state_dict().items():
        assert torch.equal(v, ck["model_ema"][n]), n


def test_resume_from_best_continues_after_its_epoch(straight, data_dir, tmp_path):
    out, _ = straight
    args = run.parse_args(base_argv(data_dir, tmp_path, "--resume", os.path.join(out, "checkpoint-best.pth")))
    model = run.build_model(args)
    t = run.build_training(args, model, steps_per_epoch=4)
    best = checkpoint.safe_load(os.path.join(out, "checkpoint-best.pth"))
    start, max_acc, path = checkpoint.resume_training(args, model, t["optimizer"], None, None)
    assert start == best["epoch"] + 1 and max_acc == best["max_accuracy"] and path == args.resume


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


DDP_ARGV = ("--epochs", "1", "--batch_size", "2", "--dist_eval", "--num_workers", "1")  # 4 steps per rank


@pytest.fixture(scope="module")
def ddp(data_dir, tmp_path_factory):
    """One torchrun launch (2 processes, gloo; tests/ddp_driver.py) running, for the worker and the device
    augmentation paths: an uninterrupted epoch (ref), the same run stopped by SIGTERM sent to rank 1 only inside its
    2nd optimizer step (stopped: exit 75), and its rerun (stopped again, now to the end)."""
    root = tmp_path_factory.mktemp("ddp")
    ports = free_ports(7)
    plan = []
    for path, extra in (("workers", ()), ("device", DEVICE_ARGV)):
        for name, signal_rank, code in (("ref", None, 0), ("stopped", 1, run.EXIT_PREEMPTED), ("stopped", None, 0)):
            plan.append({"argv": base_argv(data_dir, root / path / name, *extra, *DDP_ARGV), "port": ports[len(plan)],
                         "signal_rank": signal_rank, "signal_step": 2, "exit": code})
    (root / "plan.json").write_text(json.dumps(plan))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={ports[-1]}",
           os.path.join(ROOT, "tests", "ddp_driver.py"), str(root / "plan.json")]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    return root, res.stdout + res.stderr


def test_torchrun_two_processes_matches_single_process(ddp, data_dir, tmp_path):
    root, output = ddp
    out = root / "workers" / "ref"
    assert "distributed init rank 1/2" in output
    ddp_videos = per_video(out)
    ddp_summary = json.load(open(out / "test_summary.json"))
    assert ddp_summary["videos"] == 7 and len(ddp_videos["video_ids"]) == 7  # 7 videos over 2 ranks: none twice
    lines = [json.loads(x) for x in open(out / "log.txt")]
    assert lines[0]["val_videos"] == 7
    single = train(base_argv(data_dir, tmp_path / "single", "--eval", "--resume", str(out / "checkpoint-0.pth")))
    one = per_video(tmp_path / "single")
    assert list(one["video_ids"]) == list(ddp_videos["video_ids"])
    assert np.array_equal(one["labels"], ddp_videos["labels"])
    np.testing.assert_allclose(one["probs"], ddp_videos["probs"], rtol=0, atol=1e-5)
    assert single["top1"] == ddp_summary["top1"] and single["top5"] == ddp_summary["top5"]


@pytest.mark.parametrize("path", ["workers", "device"])
def test_torchrun_stop_signal_on_one_rank_then_rerun_equals_uninterrupted(ddp, path):
    """SIGTERM reaching rank 1 alone, in its 2nd step: both ranks stop after the same step (the 3rd: the flag is
    all-reduced without waiting, so it takes effect one step later), rank 0 saves both ranks' states, both exit 75;
    the rerun ends with the uninterrupted run's weights, log numbers and multi-view test."""
    root, output = ddp
    ref, out = root / path / "ref", root / path / "stopped"
    assert output.count("Stopping on a signal received by another rank") >= 2  # rank 0, once per path
    timing = ("train_clips_per_s", "train_data_wait", "train_peak_mem_gib", "train_time")
    logs = [[{k: v for k, v in json.loads(x).items() if k not in timing} for x in open(d / "log.txt")]
            for d in (ref, out)]
    assert logs[0] == logs[1] and len(logs[1]) == 1
    a, b = (checkpoint.safe_load(str(d / "checkpoint-0.pth")) for d in (ref, out))
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert len(b["rng_states"]) == 2 and (path == "workers") == ("device_augment" not in b)
    np.testing.assert_array_equal(per_video(out)["probs"], per_video(ref)["probs"])


def test_predict_views_is_the_mean_of_view_softmaxes():
    torch.manual_seed(0)
    w = torch.randn(3 * 2 * 4 * 4, 5)
    model = lambda x: x.flatten(1) @ w  # noqa: E731  (a linear "model" on 3 x 2 x 4 x 4 clips)
    views = torch.randn(2, 3, 3, 2, 4, 4)  # 2 videos x 3 views
    per_view, per_video = engine.predict_views(model, views)
    for b in range(2):
        ref = [torch.exp(model(views[b, v:v + 1])[0]) / torch.exp(model(views[b, v:v + 1])[0]).sum() for v in range(3)]
        torch.testing.assert_close(per_view[b], torch.stack(ref))
        torch.testing.assert_close(per_video[b], sum(ref) / 3)


def _epoch_clips(data_dir, tmp_path, epoch, fresh=None):
    """The train loader's clips in one epoch (2 workers; every item is the same video, so only augmentation
    draws differ), the loader built and seeded as run_class_finetuning does. Returns {worker: [clips]}."""
    same = (tmp_path / "same")
    same.mkdir(exist_ok=True)
    first = open(os.path.join(data_dir, "train.csv")).readline().split()[0]
    (same / "train.csv").write_text(f"{os.path.join(data_dir, first)} 0\n" * 4)
    for split in ("val.csv", "test.csv"):
        shutil.copy(os.path.join(data_dir, split), same / split)
    loaders = fresh or run.build_loaders(run.parse_args(base_argv(  # val/test list relative paths: --data_root
        str(same), tmp_path, "--num_workers", "2", "--batch_size", "1", "--num_sample", "1", "--data_root",
        data_dir)), eval_only=False)
    run.set_train_epoch(loaders, run.parse_args(base_argv(str(same), tmp_path)), epoch)
    clips = {0: [], 1: []}
    for i, (x, _) in enumerate(loaders["train"]):
        clips[i % 2].append(x)  # batches alternate between the two workers
    return clips, loaders


def test_train_workers_and_epochs_draw_their_own_augmentation_and_reruns_equal(data_dir, tmp_path):
    torch.manual_seed(0), np.random.seed(0)
    e0, loaders = _epoch_clips(data_dir, tmp_path, 0)
    e1, _ = _epoch_clips(data_dir, tmp_path, 1, fresh=loaders)  # the next epoch of the same loaders
    torch.manual_seed(1), np.random.seed(1)
    again, _ = _epoch_clips(data_dir, tmp_path, 1)  # a resumed run: new loaders (and processes) for epoch 1
    for a, b in zip(e1[0] + e1[1], again[0] + again[1]):
        assert torch.equal(a, b)
    clips = e0[0] + e0[1] + e1[0] + e1[1]
    assert len(clips) == 8
    for i in range(8):
        for j in range(i):
            assert not torch.equal(clips[i], clips[j]), (i, j)  # across workers, steps and epochs


def test_merge_views_deduplicates_repeated_videos_and_sorts():
    rng = np.random.default_rng(0)
    vids = np.array(["b", "b", "a", "a", "a", "a"])  # video "a" listed twice (e.g. a padding sampler)
    view_ids = np.array([[0, 1], [0, 0], [0, 1], [0, 0], [0, 1], [0, 0]])
    probs = rng.random((6, 3)).astype(np.float32)
    probs[4:] = probs[2:4]
    video_probs = rng.random((3, 3)).astype(np.float32)
    per_video = {"video_ids": np.array(["b", "a", "a"]), "labels": np.array([2, 1, 1]), "probs": video_probs,
                 "views": np.array([2, 2, 2])}
    pv, vid = engine.merge_views({"video_ids": vids, "view_ids": view_ids, "labels": np.array([2, 2, 1, 1, 1, 1]),
                                  "probs": probs}, per_video)
    assert list(pv["video_ids"]) == ["a", "a", "b", "b"]
    assert pv["view_ids"].tolist() == [[0, 0], [0, 1], [0, 0], [0, 1]]
    np.testing.assert_array_equal(pv["probs"], probs[[3, 2, 1, 0]])
    assert list(vid["video_ids"]) == ["a", "b"] and vid["labels"].tolist() == [1, 2]
    np.testing.assert_array_equal(vid["probs"], video_probs[[1, 0]])
    with pytest.raises(RuntimeError, match="video a appears with different labels"):
        engine.merge_views({"video_ids": vids, "view_ids": view_ids, "labels": np.array([2, 2, 0, 0, 0, 0]),
                            "probs": probs}, per_video)
    top1, top5 = engine.topk_percent(np.array([[0.1, 0.9], [0.8, 0.2]]), np.array([1, 1]))
    assert (top1, top5) == (50.0, 100.0)


# ---------------------------------------------------------------------------------------------------------------------
# Every flag acts. Each row of FLAG_TABLE builds the run's components (cheap, no training) with the flag and checks an
# effect of it (a tensor, a draw, a schedule value, a loss), so that the row fails if the flag were ignored. Loop-level
# flags run main() with the engine's compute replaced by recorders.
# ---------------------------------------------------------------------------------------------------------------------

def build(data_dir, out, extra):
    args = run.parse_args(base_argv(data_dir, out, *extra))
    b = argparse.Namespace(args=args, loaders=run.build_loaders(args, eval_only=False), model=run.build_model(args))
    b.steps = len(b.loaders["train"]) // args.update_freq
    b.t = run.build_training(args, b.model, b.steps)
    return b


def _seeded(seed, np_seed=None):
    random.seed(seed), np.random.seed(seed if np_seed is None else np_seed), torch.manual_seed(seed)


def _clip(b, seed=0, np_seed=None, **other_flags):
    """Train item 0 (first clip) under fixed seeds, from this build or, with other_flags, a build with those values."""
    from datasets import build_dataset
    ds = build_dataset(True, False, argparse.Namespace(**{**vars(b.args), **other_flags}))[0] if other_flags \
        else b.loaders["train"].dataset
    _seeded(seed, np_seed)
    return ds[0][0][0]


def _zeros(clip):
    """Pixels (over H x W) that are exactly 0 in every channel and frame (an erased box in 'const' mode)."""
    return (clip == 0).all(0).all(0)


def _is_one_box(mask):
    ys, xs = mask.nonzero(as_tuple=True)
    return len(ys) > 0 and int(mask.sum()) == (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)


def _captured_input(b, module, train=True):
    """The input tensor of `module` during one forward of a random clip (train mode: dropouts active)."""
    seen = []
    handle = module.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))
    b.model.train(train)
    with torch.no_grad():
        torch.manual_seed(0)
        b.model(torch.randn(8, 3, b.args.num_frames, b.args.input_size, b.args.input_size))
    handle.remove()
    return seen[0]


def _tokens(b, frames, size):
    with torch.no_grad():
        return b.model.eval().forward_tokens(torch.zeros(1, 3, frames, size, size)).shape[1]


def _peak_lr(b):
    return max(g["lr"] / g["lr_scale"] for g in b.t["optimizer"].param_groups)


def _mixed(b, seed=0):
    """(clips, labels, mixed clips, targets) of the run's mixup on a random batch of 4 clips."""
    _seeded(seed)
    x, y = torch.rand(4, 3, 2, 16, 16), torch.tensor([0, 1, 2, 3])
    out, target = engine.apply_mixup(b.t["mixup_fn"], x.clone(), y)
    return x, y, out, target


def _lams(x, out):
    """Per-clip lambda of out_i = lam_i x_i + (1 - lam_i) x_(B-1-i), by least squares."""
    d, e = (x - x.flip(0)).flatten(1), (out - x.flip(0)).flatten(1)
    return (d * e).sum(1) / (d * d).sum(1)


def _smoothed(y, eps, n=8):
    return torch.nn.functional.one_hot(y, n).float() * (1 - eps) + eps / n


def _mixup_consistent(x, y, out, target, eps):
    """out is a per-clip blend with its mirror clip and the targets blend the smoothed labels alike."""
    lam = _lams(x, out)[:, None]
    blend = lam[..., None, None, None] * x + (1 - lam[..., None, None, None]) * x.flip(0)
    return (torch.allclose(out, blend, atol=1e-5) and
            torch.allclose(target, lam * _smoothed(y, eps) + (1 - lam) * _smoothed(y.flip(0), eps), atol=1e-5))


def _kind(x, out):
    """'none', 'cutmix' (whole pixels from the mirror clip in a box, the rest untouched) or 'mixup' (blend)."""
    if torch.equal(out, x):
        return "none"
    same, swapped = (out == x).flatten(2).all(1), (out == x.flip(0)).flatten(2).all(1)
    return "cutmix" if bool((same | swapped).all()) else "mixup"


def _cut_box(x, out):
    """H x W mask of the box CutMix took from the mirror clip (one box for all channels and frames), or None."""
    b, c, t, h, w = x.shape
    taken = (out != x).reshape(b, c * t, h, w)
    return taken[0].all(0) if bool((taken == taken[:, :1]).all()) and bool((taken == taken[:1]).all()) else None


def _beta_spread(alpha):
    """E|lam - 1/2| of Beta(alpha, alpha), by a large independent sample."""
    return float(np.abs(np.random.default_rng(0).beta(alpha, alpha, 400_000) - 0.5).mean())


def _decoder_calls(b):
    import datasets.ssv2 as ssv2
    calls = []
    real = ssv2.read_frames

    def spy(path, indices, decoder, threads):
        calls.append((decoder, threads))
        return real(path, indices, decoder, threads)
    with mock.patch.object(ssv2, "read_frames", spy):
        b.loaders["train"].dataset[0]
    return calls


def _bad_videos_stop_after(b, n_bad=6):
    ds = b.loaders["train"].dataset
    ds.samples = [(f"/missing/{i}.mp4", 0) for i in range(n_bad)]
    ds.reset_bad_video_count()
    with pytest.raises(RuntimeError, match="more than max_bad_videos"):
        _seeded(0), ds[0]
    return ds.bad_video_count()


def _pinned(b, extra_args):
    """pin_memory of the train loader that this run would build on a CUDA device."""
    args = argparse.Namespace(**{**vars(b.args), "device": "cuda", **extra_args})
    return run.build_loaders(args, eval_only=False)["train"].pin_memory


def _ema_follows(b, decay):
    """One EMA update after the head moved by +1: ema = decay * ema + (1 - decay) * model, on the EMA's device."""
    ema = b.t["model_ema"]
    before = ema.state_dict()["head.weight"].clone()
    with torch.no_grad():
        b.model.head.weight.add_(1.0)
    ema.update()
    expect = decay * before + (1 - decay) * b.model.head.weight.detach().to(before.device)
    return torch.allclose(ema.state_dict()["head.weight"], expect, atol=1e-7)


def _erase_rate(b, seeds=24):
    return np.mean([bool(_zeros(_clip(b, s)).any()) for s in range(seeds)])


def _pooled_logits(b, pool):
    """The model's eval logits vs head(<pooling of the last block's tokens>), on one random clip."""
    m = b.model.eval()
    x = torch.randn(2, 3, 8, 32, 32)
    with torch.no_grad():
        tokens = m.forward_tokens(x)
        return torch.allclose(m(x), m.head(pool(m, tokens)), atol=1e-5)


S = 4 / 256  # base_argv: batch_size 4 x update_freq 1 x 1 process, lr per 256 videos
FLAG_TABLE = [
    (["--batch_size", "2"], lambda b: b.loaders["train"].batch_size == 2 and
     _peak_lr(b) == pytest.approx(5e-2 * 2 / 256)),
    (["--epochs", "3"], lambda b: len(b.t["lr_schedule"]) == 3 * len(b.loaders["train"])),
    (["--update_freq", "2"], lambda b: _peak_lr(b) == pytest.approx(5e-2 * 8 / 256) and
     b.t["lr_schedule"].max() == pytest.approx(5e-2 * 8 / 256)),
    (["--model", "vit_tiny_patch16"], lambda b: not any(k.startswith("llama") for k in b.model.state_dict())),
    (["--tubelet_size", "4"], lambda b: _tokens(b, 8, 32) == 2 * 2 * 2),  # 8 frames / 4 x (32 / 16)^2
    (["--fc_drop_rate", "0.3"], lambda b: 0.25 < (_captured_input(b, b.model.head) == 0).float().mean() < 0.35),
    (["--drop", "0.2"], lambda b: 0.17 < (_captured_input(b, b.model.blocks[0]) == 0).float().mean() < 0.23),
    (["--drop_path", "0.3"], lambda b: [round(float((b.model.train().blocks[i].drop_path(torch.ones(20000, 1, 1)) == 0)
                                                   .float().mean()), 1) for i in range(4)] == [0.0, 0.1, 0.2, 0.3]),
    (["--init_scale", "0"], lambda b: b.model.head.weight.abs().sum() == 0 and b.model.head.bias.abs().sum() == 0),
    (["--use_mean_pooling"], lambda b: _pooled_logits(b, lambda m, t: m.fc_norm(t.mean(1)))),
    (["--llama_dtype", "bfloat16"], lambda b: {p.dtype for p in b.model.llama.parameters()} == {torch.bfloat16}),
    (["--model_ema", "--model_ema_decay", "0.9"], lambda b: _ema_follows(b, 0.9)),
    (["--model_ema", "--model_ema_force_cpu"], lambda b: b.t["model_ema"].device == torch.device("cpu") and
     _ema_follows(b, 0.9999)),  # on a GPU machine the model would sit on the GPU and the EMA on the CPU
    (["--opt", "momentum", "--momentum", "0.7"],
     lambda b: isinstance(b.t["optimizer"], torch.optim.SGD) and b.t["optimizer"].param_groups[0]["momentum"] == 0.7),
    (["--opt_eps", "1e-5", "--opt_betas", "0.8", "0.9"], lambda b: all(
        g["eps"] == 1e-5 and g["betas"] == (0.8, 0.9) for g in b.t["optimizer"].param_groups)),
    (["--weight_decay", "0.2"], lambda b: b.t["wd_schedule"].max() == 0.2 and
     max(g["weight_decay"] for g in b.t["optimizer"].param_groups) == 0.2),
    (["--weight_decay_end", "0.5"], lambda b: b.t["wd_schedule"][0] == pytest.approx(0.05) and
     b.t["wd_schedule"][-1] == pytest.approx(0.5 - 0.45 * 0.5 * (1 + math.cos(math.pi * 7 / 8)))),
    (["--lr", "1e-2"], lambda b: b.t["lr_schedule"].max() == pytest.approx(1e-2 * S) and
     _peak_lr(b) == b.t["lr_schedule"].max()),
    (["--layer_decay", "0.5"], lambda b: sorted({g["lr_scale"] for g in b.t["optimizer"].param_groups}) ==
     [0.5 ** k for k in range(5, -1, -1)]),  # patch_embed 0.5^5, blocks 0.5^4..0.5^1, head/fc_norm/mappers 1
    (["--warmup_lr", "2.56e-1"], lambda b: b.t["lr_schedule"][0] == pytest.approx(2.56e-1 * S)),
    (["--min_lr", "2.56e-2", "--warmup_epochs", "0"], lambda b: b.t["lr_schedule"][-1] == pytest.approx(
        2.56e-2 * S + 0.5 * (5e-2 - 2.56e-2) * S * (1 + math.cos(math.pi * 7 / 8)))),
    (["--warmup_epochs", "2"], lambda b: np.all(np.diff(b.t["lr_schedule"]) > 0)),
    (["--warmup_steps", "1"], lambda b: b.t["lr_schedule"][0] == pytest.approx(1e-6 * S) and
     b.t["lr_schedule"][1] == pytest.approx(5e-2 * S)),
    (["--num_sample", "1"], lambda b: b.loaders["train"].dataset[0][0].shape[0] == 1),
    (["--augment_on", "device"], lambda b: (lambda batch, out: batch[0].dtype == torch.uint8 and batch[0].dim() == 5
     and out[0].shape == (8, 3, 8, 32, 32) and out[1].tolist() == batch[2].repeat_interleave(2).tolist())(
        *(lambda batch: (batch, b.t["prepare_batch"](batch)))(next(iter(b.loaders["train"]))))),  # decoded frames in
    (["--augment_on", "workers"], lambda b: (lambda batch: batch[0].dtype == torch.float32 and batch[0].shape == (
        8, 3, 8, 32, 32) and b.t["per_rank"] == {})(next(iter(b.loaders["train"])))),  # augmented clips in
    (["--aa", "none"], lambda b: torch.equal(_clip(b, np_seed=0), _clip(b, np_seed=1)) and  # nothing drawn from numpy
     not torch.equal(_clip(b), _clip(b, aa="rand-m7-n4-mstd0.5-inc1"))),
    (["--aa", ""], lambda b: torch.equal(_clip(b, np_seed=0), _clip(b, np_seed=1))),
    (["--aa", "rand-m9-n2"], lambda b: not torch.equal(_clip(b, np_seed=0), _clip(b, np_seed=1)) and
     not torch.equal(_clip(b), _clip(b, aa="rand-m7-n4-mstd0.5-inc1"))),
    (["--train_interpolation", "bilinear"], lambda b: any(not torch.equal(_clip(b, s), _clip(
        b, s, train_interpolation="bicubic")) for s in range(3))),  # RandAugment's rotate/shear/translate resample
    (["--mixup", "0", "--cutmix", "0", "--smoothing", "0.2"], lambda b: b.t["mixup_fn"] is None and torch.allclose(
        b.t["criterion"](L := torch.randn(4, 8), Y := torch.arange(4)), F.cross_entropy(L, Y, label_smoothing=0.2))),
    (["--mixup", "0", "--cutmix", "0", "--smoothing", "0"], lambda b: torch.allclose(
        b.t["criterion"](L := torch.randn(4, 8), Y := torch.arange(4)), F.cross_entropy(L, Y))),
    (["--cutmix", "0", "--mixup", "0.3", "--smoothing", "0.05"], lambda b: _mixup_consistent(*_mixed(b), eps=0.05) and
     abs(np.mean([abs(float(_lams(*_mixed(b, s)[::2])[0]) - 0.5) for s in range(400)]) - _beta_spread(0.3)) < 0.03),
    (["--mixup_prob", "0"], lambda b: all(torch.equal(x, o) and torch.allclose(t, _smoothed(y, 0.1))
                                          for x, y, o, t in (_mixed(b, s) for s in range(5)))),
    (["--mixup", "0", "--cutmix", "0.5", "--cutmix_minmax", "0.2", "0.8"], lambda b: all(  # box sides in [3, 12)
        (m := _cut_box(x, o)) is not None and _is_one_box(m) and 3 <= m.any(1).sum() < 12 and 3 <= m.any(0).sum() < 12
        and torch.allclose(t, (1 - m.float().mean()) * _smoothed(y, 0.1) + m.float().mean() * _smoothed(y.flip(0), 0.1))
        for x, y, o, t in (_mixed(b, s) for s in range(10)))),
    (["--mixup_switch_prob", "1"], lambda b: {_kind(*_mixed(b, s)[::2]) for s in range(10)} == {"cutmix"}),
    (["--mixup_switch_prob", "0"], lambda b: {_kind(*_mixed(b, s)[::2]) for s in range(10)} == {"mixup"}),
    (["--cutmix", "0", "--mixup_mode", "elem"],
     lambda b: len({round(float(v), 6) for v in _lams(*_mixed(b)[::2])}) == 4),
    (["--cutmix", "0", "--mixup_mode", "pair"], lambda b: (lambda lam: torch.allclose(lam, lam.flip(0), atol=1e-6) and
                                                          abs(lam[0] - lam[1]) > 1e-4)(_lams(*_mixed(b)[::2]))),
    (["--aa", "none", "--reprob", "0", "--remode", "const"], lambda b: _erase_rate(b) == 0),
    (["--aa", "none", "--reprob", "1", "--remode", "const"], lambda b: all(
        _is_one_box(_zeros(_clip(b, s))) for s in range(5))),  # one box, the same in every frame and channel
    (["--aa", "none", "--reprob", "0.5", "--remode", "const"], lambda b: 0.3 < _erase_rate(b) < 0.7),
    (["--aa", "none", "--reprob", "1", "--remode", "const", "--recount", "3"], lambda b: (lambda masks: all(
        m.any() for m in masks) and not all(_is_one_box(m) for m in masks))([_zeros(_clip(b, s)) for s in range(8)])),
    # every clip erased, and with up to 3 boxes some erased area is not one rectangle
    (["--aa", "none", "--reprob", "1", "--remode", "rand"], lambda b: all(
        (lambda c, m: bool(m.any()) and torch.all(c[..., m].std(-1) == 0) and bool((c[..., m] != 0).all()))(
            _clip(b, s), _clip(b, s, remode="const") .eq(0).all(0).all(0)) for s in range(3))),  # a colour per plane
    (["--short_side_size", "40"], lambda b: b.loaders["test"].dataset[0][0].shape[-3:] == (32, 32, 3) and
     not torch.equal(b.loaders["test"].dataset[0][0],  # uint8 V x T x H x W x C: 32 px crops of 40 px frames
        run.build_loaders(argparse.Namespace(**{**vars(b.args), "short_side_size": 32}), True)["test"].dataset[0][0])),
    (["--test_num_segment", "3", "--test_num_crop", "1"],
     lambda b: b.loaders["test"].dataset[0][3].tolist() == [[0, 0], [1, 0], [2, 0]]),
    (["--input_size", "48", "--short_side_size", "48"],
     lambda b: b.loaders["train"].dataset[0][0].shape[-2:] == (48, 48) and _tokens(b, 8, 48) == 4 * 3 * 3),
    (["--num_frames", "4"],
     lambda b: b.loaders["train"].dataset[0][0].shape[2] == 4 and _tokens(b, 4, 32) == 2 * 2 * 2),
    (["--nb_classes", "11"], lambda b: b.model.eval()(torch.zeros(1, 3, 8, 32, 32)).shape == (1, 11)),
    (["--decoder", "pyav", "--decode_threads", "2"], lambda b: _decoder_calls(b) == [("pyav", 2)]),
    (["--max_bad_videos", "3"], lambda b: _bad_videos_stop_after(b) == 4),
    (["--disable_eval_during_finetuning"], lambda b: "val" not in b.loaders),
    (["--num_workers", "2"], lambda b: all(b.loaders[k].num_workers == 2 for k in ("train", "val", "test"))),
    (["--no_pin_mem"], lambda b: _pinned(b, {}) is False),
    (["--no_pin_mem", "--pin_mem"], lambda b: _pinned(b, {}) is True and not b.loaders["train"].pin_memory),  # CPU here
    (["--seed", "5"], lambda b: (run.set_train_epoch(b.loaders, b.args, 1), list(b.loaders["train"].sampler))[1] ==
     [(i, utils.item_seed(5, 1, i)) for i in torch.randperm(16, generator=torch.Generator().manual_seed(5 + 1))
      .tolist()]),  # DistributedSampler's order (seed + epoch), each video with its seed from (seed, epoch, index)
]


@pytest.mark.parametrize("extra, check", FLAG_TABLE, ids=[" ".join(e) or "defaults" for e, _ in FLAG_TABLE])
def test_flag_acts(data_dir, tmp_path, extra, check):
    assert check(build(data_dir, tmp_path, extra))


@pytest.mark.parametrize("argv, env, expect", [
    (["--world_size", "2", "--local_rank", "1", "--dist_url", "tcp://127.0.0.1:1"], {}, (1, 2, "tcp://127.0.0.1:1")),
    (["--world_size", "2", "--local-rank=1"], {}, (1, 2, "env://")),
    (["--dist_on_itp"], {"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "0"},
     (3, 4, "env://")),
])
def test_distributed_flags_reach_init_process_group(data_dir, tmp_path, monkeypatch, argv, env, expect):
    import builtins
    import torch.distributed as dist
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_NTASKS", "SLURM_PROCID", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(builtins, "print", builtins.print)  # init silences non-zero ranks: restored after the test
    calls = []
    monkeypatch.setattr(dist, "init_process_group", lambda **kw: calls.append(kw))
    monkeypatch.setattr(dist, "barrier", lambda: None)
    args = run.parse_args(base_argv(data_dir, tmp_path, *argv))
    utils.init_distributed(args)
    assert (calls[0]["rank"], calls[0]["world_size"], calls[0]["init_method"]) == expect and args.distributed


def test_compatibility_flags_take_only_their_default(data_dir, tmp_path, capsys):
    group = next(g for g in run.get_args_parser()._action_groups if g.title == "VideoMAE compatibility")
    assert sorted(a.dest for a in group._group_actions) == sorted(
        ["color_jitter", "crop_pct", "resplit", "num_segments", "sampling_rate", "enable_deepspeed", "data_set",
         "use_cls"])
    args = run.parse_args(base_argv(data_dir, tmp_path, "--data_set", "SSV2", "--num_segments", "1",
                                    "--sampling_rate", "4", "--color_jitter", "0.4"))
    assert (args.data_set, args.num_segments, args.sampling_rate, args.color_jitter) == ("SSV2", 1, 4, 0.4)
    with pytest.raises(SystemExit):
        run.parse_args(base_argv(data_dir, tmp_path, "--imagenet_default_mean_and_std"))
    assert "unrecognized arguments: --imagenet_default_mean_and_std" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--enable_deepspeed"], "--enable_deepspeed is not supported .*native mixed precision"),
    (["--crop_pct", "0.9"], "--crop_pct is not supported .*image-only"),
    (["--resplit"], "--resplit is not supported .*image-only"),
    (["--num_segments", "2"], "--num_segments 2: only 1 is supported"),
    (["--sampling_rate", "2"], "--sampling_rate 2: only 4 is supported .*one frame per segment"),
    (["--color_jitter", "0.2"], "--color_jitter 0.2: only 0.4 is supported .*unused for video"),
    (["--data_set", "Kinetics-400"], "--data_set Kinetics-400: only SSV2 is supported"),
    (["--use_cls"], "--use_cls is not supported .*no CLS token"),
    (["--opt_betas", "0.9"], "two numbers"),
    (["--cutmix_minmax", "0.3"], "two numbers"),
    (["--device", "cuda"], "no CUDA device"),
])
def test_flag_fails_clearly(data_dir, tmp_path, extra, message):
    if extra == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(SystemExit, match=message):
        run.parse_args(base_argv(data_dir, tmp_path, *extra))


def test_llama_flags_on_plain_vit_fail(data_dir, tmp_path):
    for flag, value in (("--llama_path", str(tmp_path)), ("--llama_layer", "3"), ("--llama_dtype", "float32")):
        with pytest.raises(ValueError, match=f"vit_tiny_patch16 has no LLaMA block: {flag[2:]} apply only to"):
            build(data_dir, tmp_path, ["--model", "vit_tiny_patch16", flag, value])


def test_llama_flags_and_finetune_flags_reach_the_model(data_dir, tmp_path, monkeypatch):
    import models
    seen = {}
    real = models.create_model

    def record(name, **kw):
        seen.update(kw, name=name)
        return real(name, **{k: v for k, v in kw.items() if k not in ("llama_path", "llama_layer")})
    monkeypatch.setattr(models, "create_model", record)
    ref = real("vit_llama_tiny_patch16", num_classes=8, all_frames=8, img_size=32)
    torch.save({"weights": {"net." + k: v for k, v in ref.state_dict().items()}}, tmp_path / "ft.pth")
    b = build(data_dir, tmp_path, ["--llama_path", "/llama", "--llama_layer", "3", "--use_checkpoint",
                                   "--attn_drop_rate", "0.1", "--finetune", str(tmp_path / "ft.pth"),
                                   "--model_key", "other|weights", "--model_prefix", "net."])
    assert (seen["llama_path"], seen["llama_layer"], seen["use_checkpoint"], seen["attn_drop_rate"]) == \
        ("/llama", "3", True, 0.1)
    for k, v in ref.state_dict().items():
        assert torch.equal(b.model.state_dict()[k], v), k


def test_data_root_eval_data_path_and_labels(data_dir, tmp_path):
    alt = tmp_path / "alt"
    alt.mkdir()
    lines = open(os.path.join(data_dir, "val.csv")).read().splitlines()[:3]
    for split in ("val.csv", "test.csv"):
        (alt / split).write_text("".join(f"{os.path.join(data_dir, p.split()[0])} {p.split()[1]}\n" for p in lines))
    b = build(data_dir, tmp_path, ["--eval_data_path", str(alt), "--data_root", data_dir,
                                   "--labels", os.path.join(data_dir, "something-something-v2-labels.json")])
    assert len(b.loaders["test"].dataset) == 3 and len(b.loaders["val"].dataset) == 3
    assert len(b.loaders["train"].dataset) == 16
    assert all(p.startswith(data_dir) for p, _ in b.loaders["train"].dataset.samples)
    assert b.args.labels.endswith("labels.json")
    assert run.parse_args(base_argv(data_dir, tmp_path)).labels == os.path.join(
        data_dir, "something-something-v2-labels.json")  # the default, found next to the CSVs


@pytest.fixture
def recorded(monkeypatch):
    """main() with the engine's compute replaced by recorders (flags that act inside the training loop; --compile
    acts in a real run: test_compile_two_steps_equal_eager)."""
    calls = {"train": [], "validate": [], "test": []}

    def fake_train(model, criterion, loader, optimizer, device, epoch, **kw):
        calls["train"].append(dict(kw, epoch=epoch, model=model))
        return {"loss": 1.0, "lr": 0.1, "clips_per_s": 1.0}

    def fake_validate(model, loader, device, amp_dtype=None, reduce=False):
        calls["validate"].append(dict(amp_dtype=amp_dtype, reduce=reduce))
        return {"acc1": 10.0 * len(calls["validate"]), "acc5": 50.0, "loss": 1.0, "videos": 7}

    def fake_test(model, loader, device, **kw):
        calls["test"].append(kw)
        ids, labels, probs = np.array(["v0", "v1"]), np.array([0, 1]), np.eye(8, dtype=np.float32)[:2]
        return {"top1": 100.0, "top5": 100.0, "videos": 2, "views_per_video": 1,
                "per_view": {"video_ids": ids, "view_ids": np.zeros((2, 2), np.int64), "labels": labels,
                             "probs": probs},
                "per_video": {"video_ids": ids, "labels": labels, "probs": probs, "views": np.array([1, 1])}}
    monkeypatch.setattr(engine, "train_one_epoch", fake_train)
    monkeypatch.setattr(engine, "validate", fake_validate)
    monkeypatch.setattr(engine, "final_test", fake_test)
    return calls


def test_loop_flags_act(data_dir, tmp_path, recorded):
    out, logs = tmp_path / "out", tmp_path / "tb"
    train(base_argv(data_dir, out, "--epochs", "3", "--save_ckpt_freq", "2", "--clip_grad", "0.5", "--print_freq",
                    "7", "--amp", "fp16", "--dist_eval", "--log_dir", str(logs), "--model_ema"))
    kw = recorded["train"][0]
    assert (kw["clip_grad"], kw["print_freq"], kw["amp_dtype"]) == (0.5, 7, torch.float16)
    assert kw["scaler"].is_enabled() and kw["model_ema"] is not None
    assert [c["epoch"] for c in recorded["train"]] == [0, 1, 2]
    assert all(v["reduce"] for v in recorded["validate"]) and len(recorded["validate"]) == 6  # model + EMA
    assert recorded["test"][0]["gather"] is True
    summary = json.load(open(out / "test_summary.json"))  # the entry writes the test's arrays and reports
    assert (summary["top1"], summary["videos"], summary["epochs"]) == (100.0, 2, 3)
    assert summary["checkpoint"].endswith("checkpoint-2.pth") and os.path.isfile(out / "test_per_video.npz")
    assert sorted(f for f in os.listdir(out) if f.endswith(".pth")) == ["checkpoint-1.pth", "checkpoint-2.pth",
                                                                         "checkpoint-best.pth", "checkpoint-last.pth"]
    assert os.path.samefile(out / "checkpoint-best.pth", out / "checkpoint-2.pth")  # links of the epoch's file
    assert os.path.samefile(out / "checkpoint-last.pth", out / "checkpoint-2.pth")
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(logs))
    assert json.load(open(out / "args.json"))["clip_grad"] == 0.5
    best = checkpoint.safe_load(str(out / "checkpoint-best.pth"))
    assert best["epoch"] == 2 and best["max_accuracy"] == 50.0  # fake val acc1 grows: 10, 30, 50 (EMA calls between)


def test_ema_is_validated_inside_the_model_on_the_training_device(data_dir, tmp_path, recorded, monkeypatch):
    """--model_ema_force_cpu: the EMA (kept on the CPU) is validated by putting its weights into the model that runs
    on --device, not by feeding the CPU copy the device's clips; the training weights come back after, and the
    checkpoint holds both."""
    seen = []

    def fake_train(model, criterion, loader, optimizer, device, epoch, **kw):
        with torch.no_grad():
            engine.unwrap(model).head.bias.add_(1.0)
        kw["model_ema"].update()  # decay 0.5: the average is 0.5 behind the model
        return {"loss": 1.0}

    def fake_validate(model, loader, device, amp_dtype=None, reduce=False):
        engine.check_device(model, device)
        seen.append((model, engine.unwrap(model).head.bias.detach().clone()))
        return {"acc1": 10.0, "acc5": 50.0, "loss": 1.0, "videos": 7}
    monkeypatch.setattr(engine, "train_one_epoch", fake_train)
    monkeypatch.setattr(engine, "validate", fake_validate)
    train(base_argv(data_dir, tmp_path, "--epochs", "1", "--model_ema", "--model_ema_decay", "0.5",
                    "--model_ema_force_cpu"))
    (model, trained_bias), (ema_model, ema_bias) = seen
    assert ema_model is model
    torch.testing.assert_close(ema_bias, trained_bias - 0.5)
    ck = checkpoint.safe_load(str(tmp_path / "checkpoint-0.pth"))
    assert torch.equal(ck["model"]["head.bias"], trained_bias) and torch.equal(ck["model_ema"]["head.bias"], ema_bias)


def test_loop_flags_no_save_no_eval_start_epoch_no_auto_resume(data_dir, tmp_path, recorded):
    out = tmp_path / "out"
    train(base_argv(data_dir, out, "--epochs", "2", "--save_ckpt_freq", "1", "--amp", "bf16"))
    assert recorded["train"][0]["amp_dtype"] == torch.bfloat16 and not recorded["train"][0]["scaler"].is_enabled()
    recorded["train"].clear()
    train(base_argv(data_dir, out, "--epochs", "3", "--no_save_ckpt", "--disable_eval_during_finetuning"))
    assert [c["epoch"] for c in recorded["train"]] == [2]  # auto-resumed after checkpoint-1
    assert not os.path.exists(out / "checkpoint-2.pth")
    n_val = len(recorded["validate"])
    recorded["train"].clear()
    train(base_argv(data_dir, out, "--epochs", "3", "--no_auto_resume", "--start_epoch", "1",
                    "--disable_eval_during_finetuning", "--amp", "none"))
    assert [c["epoch"] for c in recorded["train"]] == [1, 2] and len(recorded["validate"]) == n_val
    assert recorded["train"][0]["amp_dtype"] is None
    assert "val_acc1" not in json.loads(open(out / "log.txt").read().splitlines()[-1])


def test_empty_output_dir_writes_nothing(data_dir, tmp_path, recorded, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = run.parse_args(base_argv(data_dir, "", "--epochs", "1"))
    run.main(args)
    assert os.listdir(tmp_path) == [] and len(recorded["test"]) == 1


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

    def train_or_die(model, criterion, loader, optimizer, device, e, **kw):
        if e == epoch:
            raise error(f"killed in epoch {e}")
        return fake(model, criterion, loader, optimizer, device, e, **kw)
    monkeypatch.setattr(engine, "train_one_epoch", train_or_die)


def log_epochs(out) -> list[int]:
    return [json.loads(x)["epoch"] for x in open(out / "log.txt")]


def test_kill_with_sparse_numbered_checkpoints_resumes_where_it_was(data_dir, tmp_path, recorded, monkeypatch):
    """--save_ckpt_freq 100 (the default, as in demo.sh): checkpoint-last.pth is written every epoch, so a run
    killed in epoch 2 continues at epoch 2 instead of starting over from epoch 0."""
    argv = base_argv(data_dir, tmp_path, "--epochs", "4")
    fail_at_epoch(monkeypatch, recorded, 2)
    with pytest.raises(KeyboardInterrupt):
        train(argv)
    assert checkpoint_files(tmp_path) == ["checkpoint-best.pth", "checkpoint-last.pth"]
    monkeypatch.setattr(engine, "train_one_epoch", lambda *a, **kw: recorded["train"].append(dict(kw, epoch=a[5]))
                        or {"loss": 1.0})
    recorded["train"].clear()
    train(argv)
    assert [c["epoch"] for c in recorded["train"]] == [2, 3] and log_epochs(tmp_path) == [0, 1, 2, 3]


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


@pytest.mark.parametrize("train_out, val_loss, problem", [
    ({"nonfinite_steps": 3}, 1.0, r"3 optimizer steps applied a non-finite gradient"),
    ({}, float("nan"), r"val_loss nan"),
])
def test_a_diverged_epoch_is_not_saved_and_the_run_names_the_last_good_checkpoint(
        data_dir, tmp_path, recorded, monkeypatch, train_out, val_loss, problem):
    """Epoch 1 diverges (weights hit by inf/NaN gradients, or a NaN validation loss): its state goes to
    checkpoint-1.bad.pth only, checkpoint-last.pth keeps epoch 0, and the run stops naming it."""
    monkeypatch.setattr(engine, "train_one_epoch", lambda *a, **kw: {"loss": 1.0, **(train_out if a[5] == 1 else {})})
    losses = iter([1.0, val_loss, 1.0])
    monkeypatch.setattr(engine, "validate", lambda *a, **kw: {"acc1": 10.0, "acc5": 50.0, "loss": next(losses),
                                                              "videos": 7})
    with pytest.raises(SystemExit, match=rf"epoch 1 diverged: {problem}.*kept for inspection as .*checkpoint-1.bad.pth"
                                         rf".*last good checkpoint is .*checkpoint-last.pth \(after epoch 0\)"):
        train(base_argv(data_dir, tmp_path, "--epochs", "3"))
    assert checkpoint.safe_load(str(tmp_path / "checkpoint-last.pth"))["epoch"] == 0  # the good one, kept
    assert "checkpoint-1.bad.pth" in os.listdir(tmp_path) and log_epochs(tmp_path) == [0, 1]
    assert checkpoint.find_resume_checkpoint(str(tmp_path))[0].endswith("checkpoint-last.pth")  # never .bad


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


SCRIPT_ENV = ("MODEL", "TOTAL_BATCH", "LR", "LAYER_DECAY", "EPOCHS", "MAX_BATCH_PER_GPU", "PUBLISHED_BATCH_PER_GPU",
              "COMPILE", "AUGMENT_ON", "NPROC", "NNODES", "DATA_ROOT", "FINETUNE", "PET_SIGNALS_TO_HANDLE")


def run_script(tmp_path, script, env, gpu_mib=None):
    """Run a training script with a fake torchrun (prints its argv) and a fake nvidia-smi (gpu_mib per GPU, or
    absent); returns (returncode, torchrun argv, stdout, stderr)."""
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "torchrun").write_text('#!/bin/sh\necho "SIGNALS $PET_SIGNALS_TO_HANDLE"\n'
                                   'for a in "$@"; do echo "ARG $a"; done\n')
    smi = ('#!/bin/sh\ncase "$*" in *--query-gpu=memory.total*) for i in $(seq ${NPROC}); do echo %s; done ;; '
           '*) for i in $(seq ${NPROC}); do echo "GPU $i"; done ;; esac\n' % gpu_mib) if gpu_mib else "#!/bin/sh\nexit 1\n"
    (fake / "nvidia-smi").write_text(smi)
    for f in ("torchrun", "nvidia-smi"):
        (fake / f).chmod(0o755)
    (tmp_path / "llama").mkdir(exist_ok=True)
    own = {k: v for k, v in os.environ.items() if k not in SCRIPT_ENV}  # the caller's settings must not leak in
    env = {**own, "PATH": f"{fake}:{os.environ['PATH']}", "OUTPUT_DIR": str(tmp_path / "o"),
           "LLAMA_PATH": str(tmp_path / "llama"), **env}
    res = subprocess.run(["bash", os.path.join(ROOT, "scripts", script), "--extra_flag"], env=env,
                         capture_output=True, text=True, timeout=60)
    argv = [x[4:] for x in res.stdout.splitlines() if x.startswith("ARG ")]
    return res.returncode, argv, res.stdout, res.stderr


H100_MIB, GPU24_MIB = 81559, 24576  # what nvidia-smi reports for an 80 GB H100 and a 24 GiB card


@pytest.mark.parametrize("script, nproc, gpu_mib, env, expect", [
    ("ssv2_vits.sh", 1, H100_MIB, {}, ("vit_small_patch16_224", "24", "1", "1e-3", "0.7", "40")),
    ("ssv2_vits.sh", 1, GPU24_MIB, {}, ("vit_small_patch16_224", "8", "3", "1e-3", "0.7", "40")),
    ("ssv2_vits.sh", 1, H100_MIB, {"MAX_BATCH_PER_GPU": "6"}, ("vit_small_patch16_224", "6", "4", "1e-3", "0.7", "40")),
    ("ssv2_vits.sh", 1, None, {}, ("vit_small_patch16_224", "6", "4", "1e-3", "0.7", "40")),
    ("ssv2_vits.sh", 4, GPU24_MIB, {}, ("vit_small_patch16_224", "6", "1", "1e-3", "0.7", "40")),
    ("ssv2_vits_llama.sh", 8, H100_MIB, {}, ("vit_llama_small_patch16_224", "3", "1", "1e-3", "0.7", "40")),
    ("ssv2_vitb.sh", 2, None, {}, ("vit_base_patch16_224", "3", "2", "5e-4", "0.75", "30")),
    ("ssv2_vitb_llama.sh", 1, H100_MIB, {}, ("vit_llama_base_patch16_224", "12", "1", "5e-4", "0.75", "30")),
    ("ssv2_vitb_llama.sh", 1, 16384, {}, ("vit_llama_base_patch16_224", "6", "2", "5e-4", "0.75", "30")),
    ("ssv2_vitb_llama.sh", 1, H100_MIB, {"MODEL": "vit_large_patch16_224"},
     ("vit_large_patch16_224", "3", "4", "5e-4", "0.75", "30")),
])
def test_training_scripts_fit_the_gpu_and_keep_the_published_step(tmp_path, script, nproc, gpu_mib, env, expect):
    """The per-GPU batch is the largest divisor of the GPU's share that fits its memory (1.6 GiB per video, 25% kept
    free), MAX_BATCH_PER_GPU overrides it, no nvidia-smi or an unmeasured model gives the published split; always
    batch x update_freq x GPUs = 24 (ViT-S) / 12 (ViT-B) videos per step, and the published recipe."""
    code, argv, out, err = run_script(tmp_path, script, {"NPROC": str(nproc), **env}, gpu_mib)
    assert code == 0, err
    value = lambda flag: argv[argv.index(flag) + 1]  # noqa: E731
    got = tuple(value(f) for f in ("--model", "--batch_size", "--update_freq", "--lr", "--layer_decay", "--epochs"))
    assert got == expect
    assert int(got[1]) * int(got[2]) * nproc == (24 if "vits" in script else 12)
    assert value("--test_num_segment") == "2" and value("--test_num_crop") == "3" and "--extra_flag" in argv
    assert ("--llama_path" in argv) == ("llama" in script) and "--compile" in argv
    assert value("--augment_on") == "device"  # workers only decode on GPU nodes


def test_script_compile_off_and_bad_inputs(tmp_path):
    code, argv, out, _ = run_script(tmp_path, "ssv2_vits.sh", {"NPROC": "1", "COMPILE": "0", "AUGMENT_ON": "workers"},
                                    H100_MIB)
    assert code == 0 and "--compile" not in argv and argv[argv.index("--batch_size") + 1] == "24"
    assert "SIGNALS SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1\n" in out  # torchrun passes SIGUSR1 on to the ranks
    assert argv[argv.index("--augment_on") + 1] == "workers"
    code, _, _, err = run_script(tmp_path, "ssv2_vits.sh", {"NPROC": "5"}, H100_MIB)
    assert code == 1 and "cannot be split over 5 GPUs" in err
    code, _, _, err = run_script(tmp_path, "ssv2_vits.sh", {"NPROC": "1", "MAX_BATCH_PER_GPU": "0"}, H100_MIB)
    assert code == 1 and "MAX_BATCH_PER_GPU=0: expected a whole number of videos >= 1" in err


@pytest.mark.parametrize("srun_status, requeued", [(75, True), (0, False), (1, False)])
def test_slurm_example_requeues_when_the_run_stopped_on_its_signal(tmp_path, srun_status, requeued):
    """--signal=USR1@120 with --requeue; the run gets --exit_signal USR1, and its exit status 75 (stopped after
    saving) makes the script requeue the job, while success or a crash does not."""
    script = open(os.path.join(ROOT, "scripts", "slurm_example.sh")).read()
    assert "#SBATCH --signal=USR1@120\n" in script and "#SBATCH --requeue\n" in script
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text(f'#!/bin/sh\nfor a in "$@"; do echo "ARG $a"; done\nexit {srun_status}\n')
    (fake / "scontrol").write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/scontrol.txt\n')
    for f in ("srun", "scontrol"):
        (fake / f).chmod(0o755)
    own = {k: v for k, v in os.environ.items() if k not in SCRIPT_ENV}
    res = subprocess.run(["bash", os.path.join(ROOT, "scripts", "slurm_example.sh")], capture_output=True, text=True,
                         env={**own, "PATH": f"{fake}:{os.environ['PATH']}", "SLURM_SUBMIT_DIR": ROOT,
                              "SLURM_JOB_ID": "4711"}, timeout=60)
    argv = [x[4:] for x in res.stdout.splitlines() if x.startswith("ARG ")]
    assert res.returncode == srun_status and argv[argv.index("--exit_signal") + 1] == "USR1"
    assert ((tmp_path / "scontrol.txt").read_text() == "requeue 4711\n") if requeued else \
        not (tmp_path / "scontrol.txt").exists()


@pytest.mark.parametrize("compile_env, expect", [({}, True), ({"COMPILE": "0"}, False)])
def test_slurm_example_passes_compile_unless_turned_off(tmp_path, compile_env, expect):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text('#!/bin/sh\nfor a in "$@"; do echo "ARG $a"; done\n')
    (fake / "srun").chmod(0o755)
    own = {k: v for k, v in os.environ.items() if k not in SCRIPT_ENV}
    res = subprocess.run(["bash", os.path.join(ROOT, "scripts", "slurm_example.sh")], capture_output=True, text=True,
                         env={**own, "PATH": f"{fake}:{os.environ['PATH']}", "SLURM_SUBMIT_DIR": ROOT,
                              **compile_env}, timeout=60)
    argv = [x[4:] for x in res.stdout.splitlines() if x.startswith("ARG ")]
    assert res.returncode == 0 and argv[:2] == ["python", "run_class_finetuning.py"], res.stderr
    assert ("--compile" in argv) == expect and argv[argv.index("--batch_size") + 1] == "3"
