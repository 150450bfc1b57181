"""The training loop's precision paths on the CPU (bf16 autocast, fp16 with GradScaler through an overflow,
torch.compile), what its log lines report, and the engine's device guard."""
import os
import re
import shutil
import sys
import time
from functools import partial

import numpy as np
import pytest
import torch
from torch import nn

import engine_for_finetuning as engine
import run_class_finetuning as run
from modeling_finetune import VisionTransformer
from models import create_model

CPU = torch.device("cpu")


class Recorder:
    """Stands in for utils.TensorboardLogger: keeps every (head, step, scalars) record."""

    def __init__(self):
        self.rows = []

    def log(self, scalars, step, head):
        self.rows.append((head, step, dict(scalars)))


def tiny(seed: int = 0, depth: int | None = None) -> nn.Module:
    """vit_tiny_patch16 on 4 x 32 x 32 clips (8 tokens); `depth` blocks instead of 4 (compile time grows with it)."""
    torch.manual_seed(seed)
    if depth is None:
        return create_model("vit_tiny_patch16", num_classes=4, all_frames=4, img_size=32)
    return VisionTransformer(patch_size=16, embed_dim=192, depth=depth, num_heads=3, qkv_bias=True,
                             norm_layer=partial(nn.LayerNorm, eps=1e-6), num_classes=4, all_frames=4, img_size=32)


def batches(n: int, seed: int = 1) -> list:
    """n batches of 2 random clips (3 x 4 x 32 x 32) with labels in [0, 4)."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(2, 3, 4, 32, 32, generator=g), torch.randint(0, 4, (2,), generator=g)) for _ in range(n)]


def sgd(model: nn.Module, lr: float = 0.1) -> torch.optim.Optimizer:
    return torch.optim.SGD([{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": 0.0}],
                           lr=lr)


def sgd_training(model, steps: int, **kw) -> engine.Training:
    """Cross-entropy and `steps` SGD steps per epoch at lr 0.1; kw: the other engine.Training fields."""
    return engine.Training(nn.CrossEntropyLoss(), sgd(model), np.full(steps, 0.1), np.zeros(steps), steps, **kw)


def run_epoch(model, loader, steps, device=CPU, **kw) -> dict:
    """The stats of epoch 0 of train_one_epoch with sgd_training(model, steps, **kw)."""
    return engine.train_one_epoch(model, loader, sgd_training(model, steps, **kw), device, 0).stats


def test_bf16_autocast_steps_stay_close_to_fp32():
    """Three steps of the tiny ViT under bf16 autocast: per-step losses within 2% of fp32, but not identical (the
    autocast really ran)."""
    data = batches(3)
    losses = {}
    for dtype in (None, torch.bfloat16):
        rec = Recorder()
        run_epoch(tiny(), data, 3, amp_dtype=dtype, log_writer=rec, print_freq=1)
        losses[dtype] = [r["loss"] for _, _, r in rec.rows]
    assert len(losses[None]) == 3 and losses[torch.bfloat16] != losses[None]
    np.testing.assert_allclose(losses[torch.bfloat16], losses[None], rtol=2e-2)


def test_fp16_scaler_skips_the_overflow_step_and_logs_finite_numbers(capsys):
    """fp16 autocast + GradScaler: step 1 overflows at scale 2^40 and is skipped, step 2 (scale 2^10) is applied.

    Logged and returned: 1 skipped step, loss scale 1024, and the grad norm of step 2 alone (the skipped step's inf
    is not averaged in), equal to an independent fp16 computation; the weights moved by step 2's SGD step only."""
    data = batches(2)
    model, ref = tiny(), tiny()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 40, backoff_factor=2.0 ** -30, growth_interval=1000)
    rec = Recorder()
    stats = run_epoch(model, data, 2, scaler=scaler, amp_dtype=torch.float16, log_writer=rec, print_freq=2)

    x, y = data[1]  # independent: step 2 from the initial weights, loss scaled by 2^10 in fp16, then unscaled
    with torch.autocast("cpu", dtype=torch.float16):
        logits = ref(x)
    (nn.functional.cross_entropy(logits.float(), y) * 1024.0).backward()
    grads = {n: p.grad / 1024.0 for n, p in ref.named_parameters()}
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads.values()])).item()
    assert np.isfinite(norm)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), ref.get_parameter(n).detach() - 0.1 * grads[n], rtol=0, atol=1e-6)

    assert (stats["skipped_steps"], stats["loss_scale"], stats["nonfinite_steps"]) == (1, 1024.0, 0)
    assert stats["grad_norm"] == pytest.approx(norm, rel=1e-5)
    (_, step, logged), = rec.rows
    assert step == 2 and logged["skipped_steps"] == 1 and logged["loss_scale"] == 1024.0
    assert logged["grad_norm"] == pytest.approx(norm, rel=1e-5)
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("Epoch [0] [2/2]")][0]
    assert f"grad_norm {norm:.3f} loss_scale 1024 skipped 1/2 steps" in line


def test_a_step_that_applies_a_non_finite_gradient_is_counted():
    """fp32 (no GradScaler to skip it): an inf gradient in the last of 3 steps reaches the weights; the epoch ends
    diverged with nonfinite_steps 1 (the run then refuses to save the epoch), while the loss stayed finite."""
    model, calls = tiny(), []
    model.head.bias.register_hook(lambda g: (calls.append(1), g if len(calls) < 3 else g * float("inf"))[1])
    result = engine.train_one_epoch(model, batches(3), sgd_training(model, 3, print_freq=100), CPU, 0)
    assert (result.diverged, result.stopped_at, result.nonfinite_steps, result.nonfinite_losses) == (True, 3, 1, 0)
    assert not torch.isfinite(model.head.bias).all()


def test_an_epoch_stopped_and_resumed_gives_the_uninterrupted_numbers():
    """stop after step 3 of 5 (print_freq 2: inside a log window), resume at step 3 with the saved meter state and
    the same model: weights, loss, grad norm and lr equal the uninterrupted epoch's, bit for bit."""
    data = batches(5)
    straight_model = tiny()
    straight = run_epoch(straight_model, data, 5, print_freq=2)
    model, calls = tiny(), []
    training = sgd_training(model, 5, print_freq=2)
    stopped = engine.train_one_epoch(model, data, training, CPU, 0, stop=lambda: calls.append(1) or len(calls) == 3)
    assert (stopped.stats, stopped.stopped_at, stopped.nonfinite_steps) == ({}, 3, 0)
    resumed = engine.train_one_epoch(model, data[3:], training, CPU, 0, first_step=3, meter_state=stopped.meter)
    assert resumed.stopped_at is None
    for k in ("loss", "grad_norm", "lr", "nonfinite_steps"):
        assert resumed.stats[k] == straight[k], k
    for a, b in zip(model.parameters(), straight_model.parameters()):
        assert torch.equal(a, b)


def test_a_non_finite_loss_ends_the_epoch_at_the_next_log_point(capsys):
    """A NaN clip in step 2 of 5 (print_freq 2): the epoch ends at that log point, saying so, with the counts of
    the non-finite loss and of the NaN gradient it applied; steps 3-5 never run."""
    data = batches(5)
    data[1] = (torch.full_like(data[1][0], float("nan")), data[1][1])
    model = tiny()
    result = engine.train_one_epoch(model, data, sgd_training(model, 5, print_freq=2), CPU, 0)
    assert (result.diverged, result.stopped_at, result.nonfinite_losses, result.nonfinite_steps) == (True, 2, 1, 1)
    assert result.stats == {} and result.meter["steps"] == 2
    assert "Epoch [0] [2/5] diverged: 1 non-finite losses and 1 optimizer steps with a non-finite gradient" in \
        capsys.readouterr().out


def test_every_log_line_shows_data_wait_and_peak_memory(capsys):
    """A loader that sleeps 0.4 s per batch: each line's data-wait share is most of the wall time (the tiny step takes
    milliseconds) and agrees with TensorBoard's record; peak memory is printed and recorded on every line."""
    def slow_loader():
        for batch in batches(3):
            time.sleep(0.4)
            yield batch
    rec = Recorder()
    stats = run_epoch(tiny(), slow_loader(), 3, log_writer=rec, print_freq=1)
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("Epoch [0] [")]
    assert len(lines) == 3 and len(rec.rows) == 3
    for line, (_, _, logged) in zip(lines, rec.rows):
        wait, mem = re.search(r"data_wait (\d+)% peak_mem (\d+\.\d+)GiB$", line).groups()
        assert int(wait) == round(100 * logged["data_wait"]) and logged["data_wait"] > 0.5
        assert float(mem) == pytest.approx(logged["peak_mem_gib"], abs=0.01) and logged["peak_mem_gib"] > 0
    assert stats["data_wait"] > 0.5 and stats["peak_mem_gib"] > 0


def test_log_rates_leave_out_the_first_step():
    """The first batch waits 0.5 s (worker start-up; with --compile also the compilation): the first log line's rates
    describe steps 2-3 only, so its data-wait share stays small."""
    def loader():
        for i, batch in enumerate(batches(3)):
            if i == 0:
                time.sleep(0.5)
            yield batch
    rec = Recorder()
    run_epoch(tiny(), loader(), 3, log_writer=rec, print_freq=3)
    (_, _, logged), = rec.rows
    assert logged["data_wait"] < 0.3


CXX = os.environ.get("CXX", "clang++" if sys.platform == "darwin" else "g++")  # the compiler inductor calls


@pytest.mark.skipif(shutil.which(CXX) is None, reason=f"torch.compile's CPU backend (inductor) runs the C++ compiler "
                    f"{CXX!r} (or $CXX), which is not on PATH here")
def test_compile_two_steps_equal_eager(capsys, tmp_path):
    """--compile as the entry wires it (run_class_finetuning.wrap_model), for two real training steps of the tiny ViT
    cut to one block (inductor's compile time grows with the blocks; ~20 s of CPU time for one): losses and
    weights equal eager mode within float tolerance; the first step is reported as compilation."""
    import torch._inductor.config as inductor_config
    data = batches(2)
    out = {}
    for flag in ([], ["--compile"]):
        args = run.parse_args(["--device", "cpu", "--data_path", str(tmp_path), *flag])
        args.distributed = False
        model = tiny(depth=1)
        run_model = run.wrap_model(args, model, CPU)
        assert engine.is_compiled(run_model) == bool(flag)
        rec = Recorder()
        # scalar C++ kernels: half the g++ time of the vectorised ones (a CPU-only detail; GPUs compile to triton)
        with inductor_config.patch({"cpp.vec_isa_ok": False}):
            run_epoch(run_model, data, 2, log_writer=rec, print_freq=1)
        out[bool(flag)] = ([r["loss"] for _, _, r in rec.rows], model.state_dict())
    np.testing.assert_allclose(out[True][0], out[False][0], rtol=1e-5)
    for k, v in out[False][1].items():
        torch.testing.assert_close(out[True][1][k], v, rtol=1e-4, atol=1e-5, msg=k)
    printed = capsys.readouterr().out
    assert printed.count("Epoch [0] first step") == 1 and "torch.compile compiles the model on its first steps" in printed


@pytest.mark.parametrize("call", ["train", "validate", "test"])
def test_engine_refuses_a_model_on_another_device(call):
    """The mismatch --model_ema_force_cpu once caused on GPUs (CPU weights fed CUDA clips), made on the CPU: a model
    on the meta device fed CPU batches fails at once with both devices named."""
    with torch.device("meta"):
        model = tiny()
    loaders = {"train": batches(1), "validate": batches(1),
               "test": [(torch.zeros(1, 2, 3, 4, 32, 32), torch.zeros(1), ["v"], torch.zeros(1, 2, 2))]}
    calls = {"train": lambda: run_epoch(model, loaders["train"], 1),
             "validate": lambda: engine.validate(model, loaders["validate"], CPU),
             "test": lambda: engine.multi_view_predict(model, loaders["test"], CPU)}
    with pytest.raises(ValueError, match="parameters are on meta but its batches go to cpu"):
        calls[call]()


def test_first_step_note_only_for_compiled_models(capsys):
    run_epoch(tiny(), batches(1), 1, print_freq=1)
    assert "first step" not in capsys.readouterr().out
    assert engine.is_compiled(torch.compile(tiny())) and not engine.is_compiled(tiny())


def test_topk_hits_counts_ties_for_the_lower_class_and_caps_k():
    """Scores of 3 samples over 6 classes: a tie at the top goes to the lower class id; the label ranked 5th is a
    top-5 hit, the one ranked 6th is not; with 3 classes k is 3 and every label is a top-k hit."""
    scores = torch.tensor([[0.3, 0.3, 0.1, 0.1, 0.1, 0.1],
                           [0.6, 0.5, 0.4, 0.3, 0.2, 0.1],
                           [0.6, 0.5, 0.4, 0.3, 0.2, 0.1]])
    hit1, hit5 = engine.topk_hits(scores, torch.tensor([1, 4, 5]))
    assert hit1.tolist() == [False, False, False] and hit5.tolist() == [True, True, False]
    hit1, hit5 = engine.topk_hits(scores[:, :3], torch.tensor([0, 2, 1]))
    assert hit1.tolist() == [True, False, False] and hit5.tolist() == [True, True, True]
    assert engine.topk_percent(scores.numpy(), np.array([1, 4, 5])) == (0.0, pytest.approx(200 / 3))
