"""End to end on a tiny synthetic dataset (CPU, fp32): resume == uninterrupted run, damaged checkpoints skipped,
--eval --resume evaluates exactly the named file, model-zoo checkpoints evaluate, torchrun (gloo, 2 processes) gives
the single-process multi-view result, and every flag parses and acts."""
import argparse
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import checkpoint
import engine_for_finetuning as engine
import run_class_finetuning as run
import utils

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
            "--test_num_crop", "2", "--print_freq", "2", "--output_dir", str(out), *extra]


def train(argv):
    return run.main(run.parse_args(argv))


def per_video(out):
    with np.load(os.path.join(out, "test_per_video.npz")) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="session")
def straight(data_dir, tmp_path_factory):
    """2 epochs, a checkpoint every epoch, EMA, clip_grad, workers (seeded per epoch), default augmentation+mixup."""
    out = tmp_path_factory.mktemp("straight")
    summary = train(base_argv(data_dir, out, "--save_ckpt_freq", "1", "--model_ema", "--model_ema_decay", "0.5",
                              "--clip_grad", "1.0", "--num_workers", "1"))
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


def test_resume_from_best_continues_after_its_epoch(straight, data_dir, tmp_path):
    out, _ = straight
    args = run.parse_args(base_argv(data_dir, tmp_path, "--resume", os.path.join(out, "checkpoint-best.pth")))
    model = run.build_model(args)
    t = run.build_training(args, model, steps_per_epoch=4)
    best = checkpoint.safe_load(os.path.join(out, "checkpoint-best.pth"))
    start, max_acc = utils.resume_training(args, model, t["optimizer"], None, None, checkpoint.safe_load)
    assert start == best["epoch"] + 1 and max_acc == best["max_accuracy"]


def test_torchrun_two_processes_matches_single_process(data_dir, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29617",
           os.path.join(ROOT, "run_class_finetuning.py"),
           *base_argv(data_dir, out, "--epochs", "1", "--dist_eval", "--mixup", "0", "--cutmix", "0")]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "distributed init rank 1/2" in res.stdout + res.stderr
    ddp = per_video(out)
    ddp_summary = json.load(open(out / "test_summary.json"))
    assert ddp_summary["videos"] == 7 and len(ddp["video_ids"]) == 7  # 7 videos over 2 ranks: none counted twice
    lines = [json.loads(x) for x in open(out / "log.txt")]
    assert lines[0]["val_videos"] == 7
    single = train(base_argv(data_dir, tmp_path / "single", "--eval", "--resume", str(out / "checkpoint-0.pth")))
    one = per_video(tmp_path / "single")
    assert list(one["video_ids"]) == list(ddp["video_ids"]) and np.array_equal(one["labels"], ddp["labels"])
    np.testing.assert_allclose(one["probs"], ddp["probs"], rtol=0, atol=1e-5)
    assert single["top1"] == ddp_summary["top1"] and single["top5"] == ddp_summary["top5"]


def test_merge_views_deduplicates_padding_and_sorts():
    rng = np.random.default_rng(0)
    vids = np.array(["b", "a", "b", "a", "a"])  # last row: a padded duplicate of ("a", 0, 0)
    view_ids = np.array([[0, 0], [0, 1], [0, 1], [0, 0], [0, 0]])
    probs = rng.random((5, 3)).astype(np.float32)
    probs[4] = probs[3]
    pv, vid = engine.merge_views({"video_ids": vids, "view_ids": view_ids, "labels": np.array([2, 1, 2, 1, 1]),
                                  "probs": probs})
    assert list(pv["video_ids"]) == ["a", "a", "b", "b"] and pv["view_ids"].tolist() == [[0, 0], [0, 1], [0, 0],
                                                                                        [0, 1]]
    assert list(vid["video_ids"]) == ["a", "b"] and vid["labels"].tolist() == [1, 2]
    np.testing.assert_allclose(vid["probs"][0], (probs[3] + probs[1]) / 2, rtol=1e-6)
    np.testing.assert_allclose(vid["probs"][1], (probs[0] + probs[2]) / 2, rtol=1e-6)
    top1, top5 = engine.topk_percent(np.array([[0.1, 0.9], [0.8, 0.2]]), np.array([1, 1]))
    assert (top1, top5) == (50.0, 100.0)


def test_shard_sampler_covers_each_index_once():
    parts = [list(engine.ShardSampler(range(7), 3, r)) for r in range(3)]
    assert sorted(sum(parts, [])) == list(range(7)) and [len(p) for p in parts] == [3, 2, 2]
