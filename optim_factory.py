"""Parameter groups with layer-wise lr decay (VideoMAE/BEiT recipe), the optimizer built from them, and the
exponential moving average (EMA) of the same trainable parameters.

Layer ids for a ViT of depth L: patch_embed, pos_embed, cls_token -> 0; blocks.i -> i + 1; everything else
(fc_norm, head, the LLaMA dim mappers) -> L + 1. Group lr_scale = layer_decay ** (L + 1 - layer_id), so patch_embed
gets decay^(L+1), blocks.i decay^(L-i) and the rest 1.0. The engine sets lr = schedule * lr_scale every iteration.
"""
from __future__ import annotations

import contextlib
from typing import Iterable, Iterator, Mapping

import torch
from torch import nn

_EMBED_NAMES = ("cls_token", "mask_token", "pos_embed")


def layer_id(name: str, num_layers: int) -> int:
    """Layer id of a parameter name (see module docstring)."""
    if name in _EMBED_NAMES or name.startswith("patch_embed"):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return num_layers + 1


def get_parameter_groups(model: nn.Module, weight_decay: float, layer_decay: float = 1.0,
                         skip_list: Iterable[str] = ()) -> list[dict]:
    """Trainable parameters grouped by (layer id, decay or not).

    No weight decay on 1-D parameters (norms, biases, tokens), names ending in '.bias' and names in skip_list
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


class TrainableEma:
    """Exponential moving average of a model's trainable parameters (what the optimizer updates).

    Frozen parameters (the LLaMA block) and buffers are constant, so they are neither copied nor averaged: the
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
