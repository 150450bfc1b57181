"""Parameter groups with layer-wise lr decay (VideoMAE/BEiT recipe), the optimizer built from them, the lr and
weight-decay schedules applied to those groups every step, and the exponential moving average (EMA) of the same
trainable parameters.

Layer ids for a ViT of depth L: patch_embed, pos_embed -> 0; blocks.i -> i + 1; everything else
(fc_norm, head, the LLM dim mappers) -> L + 1. Group lr_scale = layer_decay ** (L + 1 - layer_id), so patch_embed
gets decay^(L+1), blocks.i decay^(L-i) and the rest 1.0. The engine sets lr = schedule * lr_scale every iteration.
"""
from __future__ import annotations

import contextlib
from typing import Iterable, Iterator, Mapping

import numpy as np
import torch
from torch import nn



def layer_id(name: str, num_layers: int) -> int:
    """Layer id of a parameter name (see module docstring)."""
    if name == "pos_embed" or name.startswith("patch_embed"):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return num_layers + 1


def get_parameter_groups(model: nn.Module, weight_decay: float, layer_decay: float = 1.0,
                         skip_list: Iterable[str] = ()) -> list[dict]:
    """Trainable parameters grouped by (layer id, decay or not).

    No weight decay on 1-D parameters (norms, biases), names ending in '.bias' and names in skip_list
    (model.no_weight_decay()). Frozen parameters (requires_grad False) are left out. Each group carries lr_scale,
    weight_decay, layer_id and the parameter names (for inspection and tests).
    """
    num_layers = model.get_num_layers()
    skip = set(skip_list)
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1 or name.endswith(".bias") or name in skip
        lid = layer_id(name, num_layers)
        g = groups.setdefault((lid, no_decay), {
            "params": [], "names": [], "layer_id": lid,
            "lr_scale": float(layer_decay ** (num_layers + 1 - lid)),
            "weight_decay": 0.0 if no_decay else weight_decay})
        g["params"].append(p)
        g["names"].append(name)
    return [groups[k] for k in sorted(groups)]


def create_optimizer(args, model: nn.Module) -> torch.optim.Optimizer:
    """Optimizer named args.opt (any timm optimizer: adamw, sgd, momentum, lamb, ...) over get_parameter_groups.

    Reads args.opt, lr, weight_decay, layer_decay, opt_eps, opt_betas, momentum. Group lrs start at lr * lr_scale.
    """
    from timm.optim import create_optimizer_v2

    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    groups = get_parameter_groups(model, args.weight_decay, args.layer_decay, skip)
    for g in groups:
        g["lr"] = args.lr * g["lr_scale"]
    kwargs = {}
    if args.opt_eps is not None:
        kwargs["eps"] = args.opt_eps
    if args.opt_betas is not None:
        kwargs["betas"] = tuple(args.opt_betas)
    try:
        return create_optimizer_v2(groups, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay,
                                   momentum=args.momentum, **kwargs)
    except (AssertionError, ValueError, TypeError) as e:
        raise ValueError(f"--opt {args.opt!r} with eps={args.opt_eps} betas={args.opt_betas}: {e}") from e


def cosine_scheduler(base_value: float, final_value: float, epochs: int, niter_per_ep: int,
                     warmup_epochs: int = 0, start_warmup_value: float = 0.0, warmup_steps: int = -1) -> np.ndarray:
    """One value per iteration: linear warmup from start_warmup_value to base_value, then cosine to final_value.

    As VideoMAE's: the W warmup values include both ends (start + i (base - start) / (W - 1)), the cosine starts
    again at base_value and stops one step short of final_value (step i of N: angle pi i / N). warmup_steps > 0
    overrides warmup_epochs; a run shorter than its warmup ends partway up the ramp.
    """
    total = epochs * niter_per_ep
    warmup = warmup_steps if warmup_steps > 0 else warmup_epochs * niter_per_ep
    warm = np.linspace(start_warmup_value, base_value, warmup)[:total]
    n = total - len(warm)
    cos = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * np.arange(n) / max(n, 1)))
    sched = np.concatenate([warm, cos])
    assert len(sched) == total
    return sched


def set_schedules(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float) -> None:
    """This step's lr (times each group's lr_scale) and weight decay (on the groups that decay: a group built with
    weight_decay 0 never decays, as in VideoMAE)."""
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
        if g["weight_decay"] > 0:
            g["weight_decay"] = weight_decay


class TrainableEma:
    """Exponential moving average of a model's trainable parameters (what the optimizer updates).

    Frozen parameters (the LLM block) and buffers are constant, so they are neither copied nor averaged: the
    average costs memory and time for the trainable parameters only, and a checkpoint stores the frozen block once
    (in its `model` entry). `device` (e.g. CPU for --model_ema_force_cpu) holds the average elsewhere than the model;
    `applied()` puts it into the model, wherever the model lives, for evaluation.
    """

    def __init__(self, model: nn.Module, decay: float, device: torch.device | str | None = None):
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.decay = decay
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.device = torch.device(device) if device is not None else None
        self.shadow = [p.detach().to(self.device or p.device, copy=True) for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        """shadow += (1 - decay) * (param - shadow), for every trainable parameter."""
        current = [p.detach().to(s.device) for p, s in zip(self.params, self.shadow)]
        torch._foreach_lerp_(self.shadow, current, 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged trainable parameters by name (a subset of the model's state_dict keys)."""
        return dict(zip(self.names, self.shadow))

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load the trainable entries of `state`; a full model state_dict (older checkpoints stored the whole model
        as EMA) works too, its frozen entries are ignored."""
        missing = [n for n in self.names if n not in state]
        if missing:
            raise KeyError(f"EMA state lacks {len(missing)} of the {len(self.names)} trainable parameters, e.g. "
                           f"{missing[:5]}")
        for name, s in zip(self.names, self.shadow):
            if state[name].shape != s.shape:
                raise ValueError(f"EMA state {name}: shape {tuple(state[name].shape)}, the model has {tuple(s.shape)}")
            s.copy_(state[name])

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Within the block the model's trainable parameters hold the average; the training weights come back after
        (kept meanwhile on the EMA's device, so a CPU EMA costs no accelerator memory)."""
        with torch.no_grad():
            backup = [p.detach().to(s.device, copy=True) for p, s in zip(self.params, self.shadow)]
            for p, s in zip(self.params, self.shadow):
                p.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, b in zip(self.params, backup):
                    p.copy_(b)
