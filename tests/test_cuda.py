"""The GPU paths, where CUDA exists (skipped elsewhere; their CPU versions are in test_engine.py, test_distributed.py and
test_device_augment.py): bf16 and fp16 steps, GradScaler through an overflow, torch.compile, an EMA kept on the CPU and
validated on the GPU, the device augmentation against its CPU run and without a host-device synchronisation, torchrun
on every visible GPU, and more processes than GPUs."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import engine_for_finetuning as engine
import optim_factory
from datasets import pack_videos_collate
from datasets.synthetic import render_video
from device_augment import DeviceAugment
from models import create_model
from runs import ROOT, base_argv, per_video, train
from test_device_augment import COLOUR_CASES, GEOMETRIC_CASES, GEOMETRIC_MEAN_TOL
from test_engine import Recorder, batches, run_epoch, tiny
from video_transforms import AugmentConfig

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


def _padded_clip(pad: int = 9) -> tuple[torch.Tensor, np.ndarray]:
    """4 rendered 120 x 160 frames as one uint8 clip (1, T, 3, H, W), padded as in a batch of wider videos."""
    frames = torch.from_numpy(render_video(3, 7, 120, 160, 4)).permute(0, 3, 1, 2)
    x = torch.zeros(1, 4, 3, 120 + pad, 160 + pad, dtype=torch.uint8)
    x[0, :, :, :120, :160] = frames
    return x, np.array([[120, 160]])


def test_device_augment_on_cuda_gives_the_cpu_pixels():
    """Every RandAugment op on CUDA and on the CPU: colour ops bit-equal (integer Sharpness: TF32 has no say, and it
    is on here), geometric ops within the CPU tests' tolerance; then the whole recipe for the same draws."""
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    x, hw = _padded_clip()
    for name, arg in COLOUR_CASES + GEOMETRIC_CASES:
        cpu = DeviceAugment("cpu").rand_augment(x, hw, [[(name, arg)]])
        gpu = DeviceAugment(GPU).rand_augment(x.to(GPU), hw, [[(name, arg)]]).cpu()
        diff = (gpu.int() - cpu.int()).abs()[..., :120, :160]
        if (name, arg) in COLOUR_CASES:
            assert torch.equal(gpu, cpu), (name, arg, diff.max())
        else:
            assert diff.float().mean() <= GEOMETRIC_MEAN_TOL and (diff <= 1).float().mean() >= 0.95, (name, arg)
    videos = [render_video(s, 7, 120, w, 16) for s, w in enumerate((160, 136, 150))]
    batch = pack_videos_collate([(torch.from_numpy(v), i) for i, v in enumerate(videos)])
    config = AugmentConfig(input_size=64, num_sample=4, reprob=1, remode="const")  # no noise: generators differ
    level = 1 / (255 * 0.225)  # one grey level, normalised
    cpu, labels = DeviceAugment("cpu", config, seed=5)(batch)
    gpu, gpu_labels = DeviceAugment(GPU, config, seed=5)(tuple(t.pin_memory() for t in batch))
    diff = (gpu.cpu() - cpu).abs()
    assert torch.equal(gpu_labels.cpu(), labels) and diff.mean() <= 0.05 * level, diff.max()


def test_augmented_bf16_steps_never_synchronise():
    """DeviceAugment + ViT-LLaMA forward/backward in bf16 + clipping + AdamW, three steps under
    torch.cuda.set_sync_debug_mode("error"): a blocking copy or a read-back of a device value raises."""
    torch.manual_seed(0)
    model = create_model("vit_llama_tiny_patch16", num_classes=4, all_frames=4, img_size=32).to(GPU)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    augment = DeviceAugment(GPU, AugmentConfig(input_size=32, num_sample=2), seed=0)
    videos = [render_video(s, 7, 48, w, 4) for s, w in enumerate((64, 56, 60))]
    batch = tuple(t.pin_memory() for t in pack_videos_collate([(torch.from_numpy(v), i % 4)
                                                               for i, v in enumerate(videos)]))

    def step():
        clips, labels = augment(batch)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(clips), labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    step()  # first use: library handles and workspaces
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        losses = [step() for _ in range(3)]
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert all(torch.isfinite(loss) for loss in losses)


def _torchrun(nproc, argv, port):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={port}",
           os.path.join(ROOT, "run_class_finetuning.py"), *argv]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_torchrun_on_every_visible_gpu_matches_one_process(data_dir, tmp_path):
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
