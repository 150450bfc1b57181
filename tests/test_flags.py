"""Every flag acts: each row builds the run's parts with the flag and checks an effect of it."""
import argparse
import json
import math
import os
import random
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import checkpoint
import distributed
import engine_for_finetuning as engine
import run_class_finetuning as run
import utils

from runs import base_argv, train


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
    return max(g["lr"] / g["lr_scale"] for g in b.t.optimizer.param_groups)


def _mixed(b, seed=0):
    """(clips, labels, mixed clips, targets) of the run's mixup on a random batch of 4 clips."""
    _seeded(seed)
    x, y = torch.rand(4, 3, 2, 16, 16), torch.tensor([0, 1, 2, 3])
    out, target = engine.apply_mixup(b.t.mixup_fn, x.clone(), y)
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
    ema = b.t.model_ema
    before = ema.state_dict()["head.weight"].clone()
    with torch.no_grad():
        b.model.head.weight.add_(1.0)
    ema.update()
    expect = decay * before + (1 - decay) * b.model.head.weight.detach().to(before.device)
    return torch.allclose(ema.state_dict()["head.weight"], expect, atol=1e-7)


def _erase_rate(b, seeds=24):
    return np.mean([bool(_zeros(_clip(b, s)).any()) for s in range(seeds)])


def _llm_input_dtype(b):
    """The dtype the LLM block's first layer computes in, in a forward of a random clip."""
    return _captured_input(b, b.model.llama.layers[0], train=False).dtype


def _two_unit_steps(optimizer):
    """How far the first parameter moves in two optimizer steps of gradient 1 at lr 1 without weight decay (SGD
    with momentum m: 1 + (1 + m))."""
    p = optimizer.param_groups[0]["params"][0]
    before = p.detach().clone()
    for g in optimizer.param_groups:
        g["lr"], g["weight_decay"] = 1.0, 0.0
    for _ in range(2):
        p.grad = torch.ones_like(p)
        optimizer.step()
    return float((before - p.detach()).mean())


def _worker_pids(loader):
    """The number of distinct worker processes that produce the loader's first batches."""
    batches = iter(loader)
    next(batches)
    return len({w.pid for w in batches._workers})


S = 4 / 256  # base_argv: batch_size 4 x update_freq 1 x 1 process, lr per 256 videos
FLAG_TABLE = [
    (["--batch_size", "2"], lambda b: b.loaders["train"].batch_size == 2 and
     _peak_lr(b) == pytest.approx(5e-2 * 2 / 256)),
    (["--epochs", "3"], lambda b: len(b.t.lr_schedule) == 12 and b.t.lr_schedule[-1] == pytest.approx(  # 4 steps
        1e-6 * S + 0.5 * (5e-2 - 1e-6) * S * (1 + math.cos(math.pi * 7 / 8)))),  # the cosine's last of 8 steps
    (["--update_freq", "2"], lambda b: _peak_lr(b) == pytest.approx(5e-2 * 8 / 256) and
     b.t.lr_schedule.max() == pytest.approx(5e-2 * 8 / 256)),
    (["--model", "vit_tiny_patch16"], lambda b: not any(k.startswith("llama") for k in b.model.state_dict())),
    (["--tubelet_size", "4"], lambda b: _tokens(b, 8, 32) == 2 * 2 * 2),  # 8 frames / 4 x (32 / 16)^2
    (["--fc_drop_rate", "0.3"], lambda b: 0.25 < (_captured_input(b, b.model.head) == 0).float().mean() < 0.35),
    (["--drop", "0.2"], lambda b: 0.17 < (_captured_input(b, b.model.blocks[0]) == 0).float().mean() < 0.23),
    (["--drop_path", "0.3"], lambda b: [round(float((b.model.train().blocks[i].drop_path(torch.ones(20000, 1, 1)) == 0)
                                                   .float().mean()), 1) for i in range(4)] == [0.0, 0.1, 0.2, 0.3]),
    (["--init_scale", "0"], lambda b: b.model.head.weight.abs().sum() == 0 and b.model.head.bias.abs().sum() == 0),
    (["--llama_dtype", "bfloat16"], lambda b: {p.dtype for p in b.model.llama.parameters()} == {torch.bfloat16}
     and _llm_input_dtype(b) == torch.bfloat16),
    (["--model_ema", "--model_ema_decay", "0.9"], lambda b: _ema_follows(b, 0.9)),
    (["--model_ema", "--model_ema_force_cpu"], lambda b: b.t.model_ema.device == torch.device("cpu") and
     _ema_follows(b, 0.9999)),  # on a GPU machine the model would sit on the GPU and the EMA on the CPU
    (["--opt", "momentum", "--momentum", "0.7"], lambda b: _two_unit_steps(b.t.optimizer) == pytest.approx(2.7)),
    (["--opt_eps", "1e-5", "--opt_betas", "0.8", "0.9"], lambda b: all(
        g["eps"] == 1e-5 and g["betas"] == (0.8, 0.9) for g in b.t.optimizer.param_groups)),
    (["--weight_decay", "0.2"], lambda b: b.t.wd_schedule.max() == 0.2 and
     max(g["weight_decay"] for g in b.t.optimizer.param_groups) == 0.2),
    (["--weight_decay_end", "0.5"], lambda b: b.t.wd_schedule[0] == pytest.approx(0.05) and
     b.t.wd_schedule[-1] == pytest.approx(0.5 - 0.45 * 0.5 * (1 + math.cos(math.pi * 7 / 8)))),
    (["--lr", "1e-2"], lambda b: b.t.lr_schedule.max() == pytest.approx(1e-2 * S) and
     _peak_lr(b) == b.t.lr_schedule.max()),
    (["--layer_decay", "0.5"], lambda b: sorted({g["lr_scale"] for g in b.t.optimizer.param_groups}) ==
     [0.5 ** k for k in range(5, -1, -1)]),  # patch_embed 0.5^5, blocks 0.5^4..0.5^1, head/fc_norm/mappers 1
    (["--warmup_lr", "2.56e-1"], lambda b: b.t.lr_schedule[0] == pytest.approx(2.56e-1 * S)),
    (["--min_lr", "2.56e-2", "--warmup_epochs", "0"], lambda b: b.t.lr_schedule[-1] == pytest.approx(
        2.56e-2 * S + 0.5 * (5e-2 - 2.56e-2) * S * (1 + math.cos(math.pi * 7 / 8)))),
    (["--warmup_epochs", "2"], lambda b: np.all(np.diff(b.t.lr_schedule) > 0)),
    (["--warmup_steps", "1"], lambda b: b.t.lr_schedule[0] == pytest.approx(1e-6 * S) and
     b.t.lr_schedule[1] == pytest.approx(5e-2 * S)),
    (["--num_sample", "1"], lambda b: b.loaders["train"].dataset[0][0].shape[0] == 1),
    (["--augment_on", "device"], lambda b: (lambda batch, out: batch[0].dtype == torch.uint8 and batch[0].dim() == 5
     and out[0].shape == (8, 3, 8, 32, 32) and out[1].tolist() == batch[2].repeat_interleave(2).tolist())(
        *(lambda batch: (batch, b.t.prepare_batch(batch)))(next(iter(b.loaders["train"]))))),  # decoded frames in
    (["--augment_on", "workers"], lambda b: (lambda batch: batch[0].dtype == torch.float32 and batch[0].shape == (
        8, 3, 8, 32, 32) and b.t.per_rank == {})(next(iter(b.loaders["train"])))),  # augmented clips in
    (["--aa", "none"], lambda b: torch.equal(_clip(b, np_seed=0), _clip(b, np_seed=1)) and  # nothing drawn from numpy
     not torch.equal(_clip(b), _clip(b, aa="rand-m7-n4-mstd0.5-inc1"))),
    (["--aa", ""], lambda b: torch.equal(_clip(b, np_seed=0), _clip(b, np_seed=1))),
    (["--aa", "rand-m9-n2"], lambda b: not torch.equal(_clip(b, np_seed=0), _clip(b, np_seed=1)) and
     not torch.equal(_clip(b), _clip(b, aa="rand-m7-n4-mstd0.5-inc1"))),
    (["--train_interpolation", "bilinear"], lambda b: any(not torch.equal(_clip(b, s), _clip(
        b, s, train_interpolation="bicubic")) for s in range(3))),  # RandAugment's rotate/shear/translate resample
    (["--mixup", "0", "--cutmix", "0", "--smoothing", "0.2"], lambda b: b.t.mixup_fn is None and torch.allclose(
        b.t.criterion(L := torch.randn(4, 8), Y := torch.arange(4)), F.cross_entropy(L, Y, label_smoothing=0.2))),
    (["--mixup", "0", "--cutmix", "0", "--smoothing", "0"], lambda b: torch.allclose(
        b.t.criterion(L := torch.randn(4, 8), Y := torch.arange(4)), F.cross_entropy(L, Y))),
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
    (["--nb_classes", "11"], lambda b: b.model.eval()(torch.zeros(1, 3, 8, 32, 32)).shape == (1, 11) and
     _mixed(b)[3].shape == (4, 11)),  # the head and mixup's soft targets
    (["--decoder", "pyav", "--decode_threads", "2"], lambda b: _decoder_calls(b) == [("pyav", 2)]),
    (["--max_bad_videos", "3"], lambda b: _bad_videos_stop_after(b) == 4),
    (["--disable_eval_during_finetuning"], lambda b: "val" not in b.loaders),
    (["--num_workers", "2"], lambda b: _worker_pids(b.loaders["train"]) == 2 and
     all(b.loaders[k].num_workers == 2 for k in ("val", "test"))),
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
    (["--world_size", "2", "--local_rank", "1", "--dist_url", "tcp://127.0.0.1:1"], {},
     (1, 2, "tcp://127.0.0.1:1", 10)),
    (["--world_size", "2", "--local-rank=1", "--dist_timeout", "2.5"], {}, (1, 2, "env://", 2.5)),
    (["--dist_on_itp"], {"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "0"},
     (3, 4, "env://", 10)),
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
    distributed.init_distributed(args)
    assert (calls[0]["rank"], calls[0]["world_size"], calls[0]["init_method"],
            calls[0]["timeout"].total_seconds() / 60) == expect and args.distributed


def _flip_kinds(args) -> set[str]:
    """How the run's training clips relate to the same draws without the flip: {'same'}, or {'same', 'mirrored'}
    when the flip acts (per clip, on the path args.augment_on names)."""
    from dataclasses import replace

    from datasets import build_dataset, pack_videos_collate
    from device_augment import DeviceAugment
    from video_transforms import AugmentConfig
    config = AugmentConfig.from_args(args)
    pairs = []
    if args.augment_on == "workers":
        on, off = (build_dataset(True, False, args, c)[0] for c in (config, replace(config, flip=False)))
        for seed in range(4):
            pairs += zip(on[(0, seed)][0], off[(0, seed)][0])
    else:
        ds = build_dataset(True, False, args)[0]
        batch = pack_videos_collate([ds[(i, 0)] for i in range(4)])
        on, off = (DeviceAugment("cpu", c, seed=0)(batch)[0] for c in (config, replace(config, flip=False)))
        pairs += zip(on, off)
    return {"same" if torch.equal(a, b) else "mirrored" if torch.allclose(a, b.flip(-1), atol=1e-6) else "other"
            for a, b in pairs}


@pytest.mark.parametrize("path", ["workers", "device"])
def test_flip_acts_for_kinetics_and_not_for_ssv2(kinetics_data_dir, data_dir, tmp_path, path):
    """The same draws with and without the flip: Kinetics-400 clips are mirrored about half the time (one decision
    per clip, all its frames), SSV2 clips never."""
    for data, data_set, kinds in ((kinetics_data_dir, "Kinetics-400", {"same", "mirrored"}), (data_dir, "SSV2",
                                                                                               {"same"})):
        args = run.parse_args(base_argv(data, tmp_path, "--data_set", data_set, "--aa", "none", "--reprob", "0",
                                        "--augment_on", path))
        assert _flip_kinds(args) == kinds, data_set


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
    (tmp_path / "llm").mkdir()  # a folder the recorder never reads
    b = build(data_dir, tmp_path, ["--llama_path", str(tmp_path / "llm"), "--llama_layer", "3", "--use_checkpoint",
                                   "--attn_drop_rate", "0.1", "--finetune", str(tmp_path / "ft.pth"),
                                   "--model_key", "other|weights", "--model_prefix", "net."])
    assert (seen["llama_path"], seen["llama_layer"], seen["use_checkpoint"], seen["attn_drop_rate"]) == \
        (str(tmp_path / "llm"), "3", True, 0.1)
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

    def fake_train(model, loader, training, device, epoch, **kw):
        with torch.no_grad():
            model.head.bias.add_(1.0)
        training.model_ema.update()  # decay 0.5: the average is 0.5 behind the model
        return engine.EpochResult({"loss": 1.0}, {})

    def fake_validate(model, loader, device, amp_dtype=None, reduce=False):
        engine.check_device(model, device)
        seen.append((model, model.head.bias.detach().clone()))
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
