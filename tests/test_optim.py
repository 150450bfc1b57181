"""Layer-wise lr decay groups, weight-decay exclusions, frozen parameters, optimizer flags, and the lr/wd the engine
applies per iteration, checked against independent computations."""
import argparse

import numpy as np
import pytest
import torch
from torch import nn

import engine_for_finetuning as engine
import optim_factory

DEPTH, DECAY = 3, 0.7


class Stub(nn.Module):
    """ViT-LLaMA-shaped module: learnable pos_embed, blocks, fc_norm, head, mappers, a frozen 'llama'."""

    def __init__(self):
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv3d(3, 8, (2, 4, 4), (2, 4, 4))
        self.pos_embed = nn.Parameter(torch.randn(1, 4, 8))
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 8)) for _ in range(DEPTH))
        self.llama_dim_mapper1 = nn.Linear(8, 16, bias=False)
        self.llama = nn.Linear(16, 16)
        self.llama_dim_mapper2 = nn.Linear(16, 8, bias=False)
        self.fc_norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 5)
        self.scale = nn.Parameter(torch.ones(8, 8))  # a 2-D parameter named in no_weight_decay()
        self.llama.requires_grad_(False)

    def get_num_layers(self):
        return DEPTH

    def no_weight_decay(self):
        return {"pos_embed", "scale"}

    def forward(self, x):  # x: B x 3 x 2 x 8 x 8
        t = self.patch_embed.proj(x).flatten(2).transpose(1, 2) + self.pos_embed
        for b in self.blocks:
            t = b(t)
        t = self.llama_dim_mapper2(self.llama(self.llama_dim_mapper1(t)))
        return self.head(self.fc_norm(t.mean(1)) @ self.scale)


# lr_scale by name prefix for DEPTH 3, DECAY 0.7 (VideoMAE: decay ** (depth + 1 - layer id)); everything else 1.0
SCALES = {"patch_embed.": 0.2401, "pos_embed": 0.2401, "blocks.0.": 0.343, "blocks.1.": 0.49, "blocks.2.": 0.7}


def args_for(**kw):
    base = dict(opt="adamw", lr=1e-3, weight_decay=0.05, layer_decay=DECAY, opt_eps=1e-8, opt_betas=None,
                momentum=0.9)
    return argparse.Namespace(**{**base, **kw})


def test_groups_scales_wd_and_frozen():
    model = Stub()
    groups = optim_factory.get_parameter_groups(model, 0.05, DECAY, model.no_weight_decay())
    seen = {}
    for g in groups:
        for name, p in zip(g["names"], g["params"]):
            assert name not in seen
            seen[name] = (g["lr_scale"], g["weight_decay"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(seen) == trainable and not any(n.startswith("llama.") for n in seen)
    for name, (scale, wd) in seen.items():
        p = dict(model.named_parameters())[name]
        assert scale == pytest.approx(next((v for k, v in SCALES.items() if name.startswith(k)), 1.0)), name
        no_wd = p.ndim == 1 or name.endswith(".bias") or name in {"pos_embed", "scale"}
        assert wd == (0.0 if no_wd else 0.05), name
    assert seen["llama_dim_mapper1.weight"] == (1.0, 0.05) and seen["head.bias"] == (1.0, 0.0)


def test_real_tiny_llama_model_groups():
    from models import create_model
    model = create_model("vit_llama_tiny_patch16", num_classes=4, all_frames=4, img_size=32)
    opt = optim_factory.create_optimizer(args_for(layer_decay=0.75), model)
    names = {n: g["lr_scale"] for g in opt.param_groups for n in g["names"]}
    assert not any(n.startswith("llama.") for n in names)
    depth = model.get_num_layers()
    assert names["patch_embed.proj.weight"] == pytest.approx(0.75 ** (depth + 1))
    assert names[f"blocks.{depth - 1}.mlp.fc1.weight"] == pytest.approx(0.75)
    for n in ("head.weight", "fc_norm.weight", "llama_dim_mapper1.weight", "llama_dim_mapper2.weight"):
        assert names[n] == 1.0
    n_opt = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_opt == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_optimizer_flags_act():
    model = Stub()
    opt = optim_factory.create_optimizer(args_for(opt_betas=[0.8, 0.95], opt_eps=1e-6), model)
    assert isinstance(opt, torch.optim.AdamW)
    assert all(g["betas"] == (0.8, 0.95) and g["eps"] == 1e-6 for g in opt.param_groups)
    assert all(g["lr"] == pytest.approx(1e-3 * g["lr_scale"]) for g in opt.param_groups)
    sgd = optim_factory.create_optimizer(args_for(opt="sgd", momentum=0.5), model)
    assert isinstance(sgd, torch.optim.SGD) and all(g["momentum"] == 0.5 for g in sgd.param_groups)
    with pytest.raises(ValueError, match="no_such_opt"):
        optim_factory.create_optimizer(args_for(opt="no_such_opt"), model)


def test_layer_decay_one_gives_uniform_lr():
    groups = optim_factory.get_parameter_groups(Stub(), 0.05, 1.0)
    assert {g["lr_scale"] for g in groups} == {1.0}


def test_engine_applies_schedule_per_group_and_adamw_step():
    """One AdamW step through train_one_epoch: each parameter moves by exactly lr_it*scale*(sign(g) + wd_it*p)."""
    torch.manual_seed(0)
    model = Stub()
    opt = optim_factory.create_optimizer(args_for(opt_eps=1e-30), model)
    lr_sched = np.array([2e-3, 1e-3, 5e-4])
    wd_sched = np.array([0.1, 0.2, 0.3])
    x = torch.randn(2, 1, 3, 2, 8, 8)
    loader = [(x[i], torch.tensor([i])) for i in range(2)]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    # epoch 1 of one step each starts at iteration 1 of the schedule: one step of two accumulated micro-batches
    engine.train_one_epoch(model, loader, engine.Training(nn.CrossEntropyLoss(), opt, lr_sched, wd_sched, 1, 2,
                                                          print_freq=100), torch.device("cpu"), 1)
    # independent gradient of the mean loss over the two micro-batches
    ref = Stub()
    ref.load_state_dict({k: v for k, v in before.items()}, strict=False)
    loss = sum(nn.functional.cross_entropy(ref(x[i]), torch.tensor([i])) for i in range(2)) / 2
    loss.backward()
    grads = {n: p.grad for n, p in ref.named_parameters() if p.grad is not None}
    groups = {n: g for g in opt.param_groups for n in g["names"]}
    for n, p in model.named_parameters():
        if n.startswith("llama."):
            assert torch.equal(p, before[n])
            continue
        g = groups[n]
        lr = lr_sched[1] * g["lr_scale"]
        assert g["lr"] == pytest.approx(lr)
        wd = wd_sched[1] if n in groups and g["weight_decay"] > 0 else 0.0
        assert g["weight_decay"] == pytest.approx(wd)
        expect = before[n] * (1 - lr * wd) - lr * torch.sign(grads[n])
        torch.testing.assert_close(p.detach(), expect, rtol=0, atol=1e-6, msg=n)


def test_accumulation_equals_big_batch():
    """update_freq=2 with batches of 2 == update_freq=1 with batches of 4 (same SGD step)."""
    torch.manual_seed(1)
    x, y = torch.randn(4, 3, 2, 8, 8), torch.tensor([0, 1, 2, 3])
    init = Stub().state_dict()
    results = []
    for uf, loader in ((1, [(x, y)]), (2, [(x[:2], y[:2]), (x[2:], y[2:])])):
        model = Stub()
        model.load_state_dict(init)
        opt = optim_factory.create_optimizer(args_for(opt="sgd", layer_decay=1.0, weight_decay=0.0), model)
        training = engine.Training(nn.CrossEntropyLoss(), opt, np.array([0.5]), np.array([0.0]), 1, uf)
        engine.train_one_epoch(model, loader, training, torch.device("cpu"), 0)
        results.append(model.state_dict())
    for k in init:
        torch.testing.assert_close(results[0][k], results[1][k], rtol=1e-5, atol=1e-6)


def test_clip_grad_bounds_update():
    torch.manual_seed(2)
    model = Stub()
    opt = optim_factory.create_optimizer(args_for(opt="momentum", layer_decay=1.0, weight_decay=0.0, momentum=0.0), model)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    x, y = torch.randn(2, 3, 2, 8, 8) * 100, torch.tensor([0, 1])
    training = engine.Training(nn.CrossEntropyLoss(), opt, np.array([1.0]), np.array([0.0]), 1, clip_grad=0.01)
    stats = engine.train_one_epoch(model, [(x, y)], training, torch.device("cpu"), 0).stats
    delta = torch.cat([(p.detach() - before[n]).flatten() for n, p in model.named_parameters() if p.requires_grad])
    assert stats["grad_norm"] > 0.01
    assert delta.norm().item() == pytest.approx(0.01, rel=1e-4)


# VideoMAE's cosine_scheduler worked by hand: W warmup values np.linspace(start, base, W) (both ends), then
# final + (base - final) / 2 * (1 + cos(pi * i / N)) for i = 0 .. N-1 over the N remaining steps.
@pytest.mark.parametrize("args, kw, expected", [
    ((1.0, 0.1, 3, 2), dict(warmup_epochs=1, start_warmup_value=0.2),  # W 2, N 4: cos(pi/4) = 0.70710678
     [0.2, 1.0, 1.0, 0.8681980515339464, 0.55, 0.23180194846605358]),
    ((1.0, 0.0, 2, 2), dict(warmup_epochs=1, warmup_steps=3), [0.0, 0.5, 1.0, 1.0]),  # warmup_steps wins
    ((1.0, 0.1, 1, 2), dict(warmup_steps=1, start_warmup_value=0.2), [0.2, 1.0]),  # W 1: the start value alone
    ((1.0, 0.0, 1, 4), dict(), [1.0, 0.8535533905932737, 0.5, 0.14644660940672624]),  # no warmup
    ((0.05, 0.05, 3, 1), dict(), [0.05, 0.05, 0.05]),  # constant (weight decay without --weight_decay_end)
    ((1.0, 0.1, 1, 3), dict(warmup_epochs=5), [0.0, 1 / 14, 2 / 14]),  # a run shorter than its warmup: the ramp's start
])
def test_cosine_scheduler_is_the_published_schedule(args, kw, expected):
    np.testing.assert_allclose(optim_factory.cosine_scheduler(*args, **kw), expected, rtol=0, atol=1e-12)


def test_ema_averages_only_trainable_parameters():
    """TrainableEma on the ViT-LLaMA-shaped stub: one shadow per trainable parameter (the frozen 'llama' is neither
    copied nor stored), update() = decay * shadow + (1 - decay) * param, a copy rather than a view of the model."""
    torch.manual_seed(3)
    model = Stub()
    ema = optim_factory.TrainableEma(model, decay=0.75, device="cpu")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert list(ema.state_dict()) == trainable and not any(n.startswith("llama.") for n in ema.state_dict())
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update()
    for n in trainable:
        torch.testing.assert_close(ema.state_dict()[n], start[n] + 0.25, rtol=0, atol=1e-6)
    assert all(s.data_ptr() != p.data_ptr() for s, p in zip(ema.shadow, ema.params))


def test_ema_loads_old_full_state_and_names_what_is_missing():
    model = Stub()
    ema = optim_factory.TrainableEma(model, decay=0.9)
    full = {k: v + 2.0 for k, v in model.state_dict().items()}  # older checkpoints: the whole model, frozen included
    ema.load_state_dict(full)
    for n, s in ema.state_dict().items():
        assert torch.equal(s, full[n])
    with pytest.raises(KeyError, match=r"lacks 1 of the \d+ trainable parameters, e.g. \['head.bias'\]"):
        ema.load_state_dict({k: v for k, v in full.items() if k != "head.bias"})


def test_ema_applied_swaps_the_average_in_and_the_training_weights_back():
    torch.manual_seed(4)
    model = Stub()
    ema = optim_factory.TrainableEma(model, decay=0.5)
    with torch.no_grad():
        model.head.bias.add_(4.0)
        model.llama.weight.add_(1.0)  # frozen: not the EMA's business; must stay as it is
    trained = {n: p.detach().clone() for n, p in model.named_parameters()}
    ema.update()
    with ema.applied():
        torch.testing.assert_close(model.head.bias.detach(), trained["head.bias"] - 2.0)
        assert torch.equal(model.llama.weight, trained["llama.weight"])
    for n, p in model.named_parameters():
        assert torch.equal(p, trained[n]), n
