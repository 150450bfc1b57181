"""Reading checkpoints safely, and adapting a VideoMAE self-supervised checkpoint to a fine-tuning model.

Every load uses ``weights_only=True`` (with argparse.Namespace allowed, which the model-zoo files store under
'args'), so a downloaded file cannot run code.
"""
from __future__ import annotations

import argparse
import math
import os
from collections import Counter

import torch
import torch.nn as nn
import torch.nn.functional as F

DROP_PREFIXES = ("decoder.", "encoder_to_decoder.", "mask_token")


def safe_load(path: str, mmap: bool = False) -> dict:
    """torch.load on CPU with weights_only=True and argparse.Namespace allowlisted; RuntimeError naming the file."""
    if not os.path.isfile(path):
        raise RuntimeError(f"cannot read checkpoint {path}: no such file")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # truncated/corrupt archive, or a pickle that would need to run code
        raise RuntimeError(f"cannot read checkpoint {path} (truncated, not a torch file, or holding objects other "
                           f"than tensors/containers/argparse.Namespace): {type(e).__name__}: {e}") from e


def _state_dict_of(ckpt: dict, model_key: str, path: str) -> dict[str, torch.Tensor]:
    for key in model_key.split("|"):
        if key in ckpt and isinstance(ckpt[key], dict):
            print(f"Loading weights from {path} ['{key}']")
            return ckpt[key]
    print(f"Loading weights from {path} (no {model_key!r} key: using the file's top-level dict)")
    return ckpt


def _strip(key: str, model_prefix: str) -> str:
    if model_prefix and key.startswith(model_prefix):
        key = key[len(model_prefix):]
    for prefix in ("encoder.", "backbone."):
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def _checkpoint_grid(n: int, ckpt: dict, model_grid: tuple[int, int, int]) -> tuple[int, int, int]:
    """(T, H, W) token grid of a checkpoint's pos_embed with n tokens: from its saved args, else the model's T or
    H x W, whichever divides n into a square / whole grid."""
    args = ckpt.get("args")
    if isinstance(args, argparse.Namespace) and hasattr(args, "num_frames") and hasattr(args, "input_size"):
        t = args.num_frames // getattr(args, "tubelet_size", 2)
        s = args.input_size // 16
        if t * s * s == n:
            return t, s, s
    tm, hm, wm = model_grid
    s = math.isqrt(n // tm) if n % tm == 0 else 0
    if s * s * tm == n:
        return tm, s, s
    if n % (hm * wm) == 0:
        return n // (hm * wm), hm, wm
    raise ValueError(f"cannot infer the token grid of a pos_embed with {n} tokens (model grid {model_grid})")


def interpolate_pos_embed(pos: torch.Tensor, src: tuple[int, int, int], dst: tuple[int, int, int]) -> torch.Tensor:
    """1 x (T*H*W) x C position table on grid src -> grid dst: bicubic in space, linear in time."""
    (ts, hs, ws), (td, hd, wd) = src, dst
    c = pos.shape[-1]
    x = pos.float().reshape(ts, hs, ws, c).permute(0, 3, 1, 2)  # T C H W
    if (hs, ws) != (hd, wd):
        x = F.interpolate(x, size=(hd, wd), mode="bicubic", align_corners=False)
    x = x.permute(1, 2, 3, 0).reshape(1, c * hd * wd, ts)  # 1 x (C H W) x T
    if ts != td:
        x = F.interpolate(x, size=td, mode="linear", align_corners=False)
    return x.reshape(c, hd, wd, td).permute(3, 1, 2, 0).reshape(1, td * hd * wd, c).to(pos.dtype)


def _summary(keys: list[str]) -> str:
    groups = Counter(k.split(".")[0] for k in keys)
    return ", ".join(f"{g}.* x{n}" if n > 1 else g for g, n in groups.items()) or "none"


def load_finetune_weights(model: nn.Module, path: str, model_key: str = "model|module",
                          model_prefix: str = "") -> dict:
    """Load a VideoMAE self-supervised (or any compatible) checkpoint into ``model`` for fine-tuning.

    Strips ``model_prefix`` then ``encoder.``/``backbone.``; drops the decoder, ``encoder_to_decoder``,
    ``mask_token``, the encoder's ``norm`` when the model mean-pools, a ``head`` of another shape, and a
    ``pos_embed`` the model does not learn (it uses the fixed table); interpolates a learnable ``pos_embed`` to the
    model's grid. Loads with strict=False and returns {"missing", "unexpected", "dropped", "notes"}. LLaMA keys
    (read from the LLaMA folder) are not reported as missing. Raises when no tensor matched (wrong file) or when
    tensors other than the head have other shapes (wrong model size).
    """
    ckpt = safe_load(path)
    state = _state_dict_of(ckpt, model_key, path)
    own = model.state_dict()
    learnable_pos = isinstance(getattr(model, "pos_embed", None), nn.Parameter)
    new_state, dropped, notes = {}, [], []
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        k = _strip(key, model_prefix)
        if k.startswith(DROP_PREFIXES) or (k.startswith("norm.") and k not in own):
            dropped.append(k)
        elif k.startswith("head.") and k in own and own[k].shape != value.shape:
            dropped.append(k)
            notes.append(f"{k}: checkpoint shape {tuple(value.shape)} != model {tuple(own[k].shape)} (new head)")
        elif k == "pos_embed" and not learnable_pos:
            dropped.append(k)
            notes.append("pos_embed: the model uses the fixed sinusoid table; the checkpoint's table is not used")
        elif k == "pos_embed" and value.shape != own[k].shape:
            grid = tuple(model.patch_embed.grid_size)
            src = _checkpoint_grid(value.shape[1], ckpt, grid)
            new_state[k] = interpolate_pos_embed(value, src, grid)
            notes.append(f"pos_embed interpolated from grid {src} to {grid}")
        else:
            new_state[k] = value
    mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in new_state.items() if k in own and own[k].shape != v.shape]
    if mismatched:
        raise ValueError(f"{path}: {len(mismatched)} tensors do not fit the model (another model size?): "
                         + "; ".join(mismatched[:5]))
    if not any(k in own for k in new_state):
        raise RuntimeError(f"{path}: no tensor matches the model (wrong file?). Checkpoint keys look like "
                           f"{list(state)[:5]}; model keys look like {list(own)[:5]}")
    result = model.load_state_dict(new_state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("llama.")]
    report = {"missing": missing, "unexpected": list(result.unexpected_keys), "dropped": dropped, "notes": notes}
    loaded = sum(k in own for k in new_state)
    print(f"Loaded {loaded}/{len(own)} model tensors from {path}\n"
          f"  dropped: {_summary(dropped)}\n  missing: {missing or 'none'}\n"
          f"  unexpected: {report['unexpected'] or 'none'}" + "".join(f"\n  note: {n}" for n in notes))
    return report
