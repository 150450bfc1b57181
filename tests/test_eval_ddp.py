"""Evaluation end to end: --eval --resume evaluates exactly the named file, model-zoo checkpoints evaluate,
and torchrun (gloo, 2 processes) gives the single-process result, also across a stop signal on one rank."""
import argparse
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import checkpoint
import engine_for_finetuning as engine
import run_control

from runs import DEVICE_ARGV, ROOT, base_argv, free_ports, per_video, train


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
    kinetics = base_argv(data_dir, tmp_path, "--eval", "--resume", os.path.join(straight[0], "checkpoint-1.pth"),
                         "--data_set", "Kinetics-400")  # another protocol's views: refused the same way
    with pytest.raises(RuntimeError, match=r"--data_set 'SSV2' -> 'Kinetics-400'"):
        train(kinetics)


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


DDP_ARGV = ("--epochs", "1", "--batch_size", "2", "--dist_eval", "--num_workers", "1")  # 4 steps per rank


KINETICS_DDP_ARGV = ("--data_set", "Kinetics-400", "--test_num_segment", "5", "--test_num_crop", "3")


@pytest.fixture(scope="module")
def ddp(data_dir, kinetics_data_dir, tmp_path_factory):
    """One torchrun launch (2 processes, gloo; tests/ddp_driver.py) running, for the worker and the device
    augmentation paths: an uninterrupted epoch (ref), the same run stopped by SIGTERM sent to rank 1 only inside its
    2nd optimizer step (stopped: exit 75), and its rerun (stopped again, now to the end); then an epoch of
    Kinetics-400 with its 5 x 3 test (kinetics)."""
    root = tmp_path_factory.mktemp("ddp")
    ports = free_ports(8)
    plan = []
    for path, extra in (("workers", ()), ("device", DEVICE_ARGV)):
        for name, signal_rank, code in (("ref", None, 0), ("stopped", 1, run_control.EXIT_PREEMPTED),
                                        ("stopped", None, 0)):
            plan.append({"argv": base_argv(data_dir, root / path / name, *extra, *DDP_ARGV), "port": ports[len(plan)],
                         "signal_rank": signal_rank, "signal_step": 2, "exit": code})
    plan.append({"argv": base_argv(kinetics_data_dir, root / "kinetics", *KINETICS_DDP_ARGV, *DDP_ARGV),
                 "port": ports[len(plan)]})
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


def test_torchrun_kinetics_matches_single_process(ddp, kinetics_data_dir, tmp_path):
    """Kinetics-400 under torchrun: 8 steps per rank over the 32 videos, validation and the 5 x 3 test sharded over
    the ranks, each video once; the single-process test of its checkpoint gives the same probabilities."""
    root, _ = ddp
    out = root / "kinetics"
    lines = [json.loads(x) for x in open(out / "log.txt")]
    summary = json.load(open(out / "test_summary.json"))
    assert lines[0]["val_videos"] == 16 and (summary["videos"], summary["views_per_video"]) == (16, 15)
    args = json.load(open(out / "args.json"))
    assert (args["data_set"], args["sampling_rate"], args["world_size"]) == ("Kinetics-400", 4, 2)
    single = train(base_argv(kinetics_data_dir, tmp_path, *KINETICS_DDP_ARGV, "--eval", "--resume",
                             str(out / "checkpoint-0.pth")))
    np.testing.assert_allclose(per_video(tmp_path)["probs"], per_video(out)["probs"], rtol=0, atol=1e-5)
    assert list(per_video(tmp_path)["video_ids"]) == list(per_video(out)["video_ids"])
    assert (single["top1"], single["top5"]) == (summary["top1"], summary["top5"])


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
