"""The GPU paths, where CUDA exists (skipped elsewhere; their CPU versions: test_engine.py, test_distributed.py):
bf16 and fp16 steps, GradScaler through an overflow, torch.compile, an EMA kept on the CPU and validated on the GPU,
torchrun on every visible GPU, and more processes than GPUs."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import engine_for_finetuning as engine
import optim_factory
from runs import ROOT, base_argv, per_video, train
from test_engine import Recorder, batches, run_epoch, tiny

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA device (the CPU versions of these checks run everywhere)")
GPU = torch.device("cuda", 0)


def on_gpu(data):
    return [(x.to(GPU), y.to(GPU)) for x, y in data]


def test_bf16_steps_close_to_fp32_on_gpu():
    data = on_gpu(batches(3))
    losses = {}
    for dtype in (None, torch.bfloat16):
        rec = Recorder()
        run_epoch(tiny().to(GPU), data, 3, device=GPU, amp_dtype=dtype, log_writer=rec, print_freq=1)
        losses[dtype] = [r["loss"] for _, _, r in rec.rows]
    np.testing.assert_allclose(losses[torch.bfloat16], losses[None], rtol=2e-2)


def test_fp16_scaler_skips_the_overflow_step_on_gpu():
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0 ** 40, backoff_factor=2.0 ** -30, growth_interval=1000)
    rec = Recorder()
    stats = run_epoch(tiny().to(GPU), on_gpu(batches(2)), 2, device=GPU, scaler=scaler, amp_dtype=torch.float16,
                      log_writer=rec, print_freq=2)
    assert (stats["skipped_steps"], stats["loss_scale"]) == (1, 1024.0) and np.isfinite(stats["grad_norm"])
    assert rec.rows[0][2]["skipped_steps"] == 1 and np.isfinite(rec.rows[0][2]["grad_norm"])
    assert stats["peak_mem_gib"] == pytest.approx(torch.cuda.max_memory_allocated(GPU) / 2**30)


def test_compile_equals_eager_on_gpu():
    pytest.importorskip("triton", reason="torch.compile on CUDA needs triton")
    data = on_gpu(batches(2))
    out = {}
    for compiled in (False, True):
        model = tiny().to(GPU)
        rec = Recorder()
        run_epoch(torch.compile(model) if compiled else model, data, 2, device=GPU, log_writer=rec, print_freq=1)
        out[compiled] = ([r["loss"] for _, _, r in rec.rows], model.state_dict())
    np.testing.assert_allclose(out[True][0], out[False][0], rtol=1e-4)
    for k, v in out[False][1].items():
        torch.testing.assert_close(out[True][1][k], v, rtol=1e-3, atol=1e-4, msg=k)


def test_ema_on_the_cpu_validates_on_the_gpu():
    """--model_ema_force_cpu: the average lives in CPU memory; validation swaps it into the GPU model and gives what a
    GPU model holding the EMA weights gives; the training weights come back."""
    model = tiny().to(GPU)
    ema = optim_factory.TrainableEma(model, decay=0.5, device="cpu")
    with torch.no_grad():
        model.head.bias.add_(1.0)
    ema.update()
    assert all(s.device.type == "cpu" for s in ema.shadow)
    data = on_gpu(batches(2))
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    with ema.applied():
        got = engine.validate(model, data, GPU)
    reference = tiny().to(GPU)
    reference.load_state_dict({**trained, **{k: v.to(GPU) for k, v in ema.state_dict().items()}})
    assert got == pytest.approx(engine.validate(reference, data, GPU))
    for k, v in model.state_dict().items():
        assert torch.equal(v, trained[k]), k
    with pytest.raises(ValueError, match="parameters are on cpu but its batches go to cuda"):
        engine.validate(tiny(), data, GPU)  # what the CPU copy fed CUDA clips used to do, now a clear error


def _torchrun(nproc, argv, port):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={port}",
           os.path.join(ROOT, "run_class_finetuning.py"), *argv]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_torchrun_on_every_visible_gpu_matches_one_process(data_dir, tmp_path):  # noqa: F811
    n = torch.cuda.device_count()
    argv = [a if a != "cpu" else "cuda" for a in base_argv(data_dir, tmp_path / "ddp", "--epochs", "1", "--dist_eval",
                                                            "--mixup", "0", "--cutmix", "0", "--amp", "none")]
    res = _torchrun(n, argv, 29631)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    ddp = per_video(tmp_path / "ddp")
    train([a if a != "cpu" else "cuda" for a in base_argv(data_dir, tmp_path / "one", "--eval", "--amp", "none",
                                                          "--resume", str(tmp_path / "ddp" / "checkpoint-0.pth"))])
    one = per_video(tmp_path / "one")
    assert list(one["video_ids"]) == list(ddp["video_ids"]) and len(one["video_ids"]) == 7
    np.testing.assert_allclose(one["probs"], ddp["probs"], rtol=0, atol=1e-4)


def test_more_processes_than_gpus_stop_with_a_message(data_dir, tmp_path):  # noqa: F811
    n = torch.cuda.device_count()
    argv = [a if a != "cpu" else "cuda" for a in base_argv(data_dir, tmp_path, "--epochs", "1")]
    res = _torchrun(n + 1, argv, 29632)
    assert res.returncode != 0 and f"has no GPU: {n} visible on this node" in res.stdout + res.stderr
