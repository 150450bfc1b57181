"""The VideoMAE fine-tuning ViT (state_dict keys exactly VideoMAE's) and its registry entries.

A clip B x 3 x T x H x W is cut into tubelets (2 x 16 x 16) by a Conv3d, a fixed sinusoid table is added, pre-norm
transformer blocks follow, and the tokens are mean-pooled -> fc_norm -> head. ``ModelSpec`` is the form in which every
model module declares its entries (its ``MODELS`` table); ``models.py`` collects them.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from timm.layers import DropPath, trunc_normal_


def get_sinusoid_encoding_table(n_position: int, d_hid: int) -> torch.Tensor:
    """1 x n_position x d_hid table: channel j of position p is sin (j even) / cos (j odd) of p / 10000^(2*(j//2)/d)."""
    pos = np.arange(n_position, dtype=np.float64)[:, None]
    angle = pos / np.power(10000, 2 * (np.arange(d_hid) // 2) / d_hid)[None, :]
    angle[:, 0::2] = np.sin(angle[:, 0::2])
    angle[:, 1::2] = np.cos(angle[:, 1::2])
    return torch.tensor(angle, dtype=torch.float32).unsqueeze(0)


class PatchEmbed(nn.Module):
    """Tubelets of tubelet_size x patch x patch pixels -> tokens B x N x D (N = T/t * H/p * W/p)."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768,
                 num_frames: int = 16, tubelet_size: int = 2):
        super().__init__()
        self.img_size = (img_size, img_size)
        self.patch_size = (patch_size, patch_size)
        self.tubelet_size = int(tubelet_size)
        self.grid_size = (num_frames // self.tubelet_size, img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1] * self.grid_size[2]
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=(self.tubelet_size, patch_size, patch_size),
                              stride=(self.tubelet_size, patch_size, patch_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Non-overlapping tubelets: the Conv3d is one GEMM of the cut-out patches with the flattened kernel, several
        # times faster than the CPU conv3d kernels (backward included). Equal up to fp32 summation order: at most
        # 5.2e-6 apart from F.conv3d on N(0, 1) 16 x 224 x 224 clips (ViT-S/B init, outputs up to ~3).
        B, C, T, H, W = x.shape
        t, (p, q) = self.tubelet_size, self.patch_size
        if T % t or H % p or W % q:
            raise ValueError(f"clip {T}x{H}x{W} is not divisible into {t}x{p}x{q} tubelets")
        patches = x.view(B, C, T // t, t, H // p, p, W // q, q).permute(0, 2, 4, 6, 1, 3, 5, 7)
        return F.linear(patches.reshape(B, -1, C * t * p * q), self.proj.weight.flatten(1), self.proj.bias)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


class Attention(nn.Module):
    """Self-attention with a fused qkv projection; q and v carry learned biases, the k bias is fixed at zero."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = self.v_bias = None
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        bias = None
        if self.q_bias is not None:
            bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias, requires_grad=False), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias).view(B, N, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, C)))


class Block(nn.Module):
    """Pre-norm block: x + attn(norm1(x)), x + mlp(norm2(x)), with optional layer scale and drop path."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True, drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: float = 0.0, init_values: float = 0.0,
                 norm_layer: Callable[[int], nn.Module] = nn.LayerNorm):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        if init_values > 0:
            self.gamma_1 = nn.Parameter(init_values * torch.ones(dim))
            self.gamma_2 = nn.Parameter(init_values * torch.ones(dim))
        else:
            self.gamma_1 = self.gamma_2 = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gamma_1 is None:
            x = x + self.drop_path(self.attn(self.norm1(x)))
            return x + self.drop_path(self.mlp(self.norm2(x)))
        x = x + self.drop_path(self.gamma_1 * self.attn(self.norm1(x)))
        return x + self.drop_path(self.gamma_2 * self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """VideoMAE's fine-tuning ViT: patch_embed -> (+pos) -> blocks -> mean pool -> fc_norm -> head."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, num_classes: int = 174,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, fc_drop_rate: float = 0.0, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 norm_layer: Callable[[int], nn.Module] = partial(nn.LayerNorm, eps=1e-6), init_values: float = 0.0,
                 use_learnable_pos_emb: bool = False, init_scale: float = 0.001, all_frames: int = 16,
                 tubelet_size: int = 2, use_checkpoint: bool = False):
        super().__init__()
        self.num_classes = num_classes
        self.num_features = self.embed_dim = embed_dim
        self.use_checkpoint = use_checkpoint
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, all_frames, tubelet_size)
        n = self.patch_embed.num_patches
        if use_learnable_pos_emb:
            self.pos_embed = nn.Parameter(torch.zeros(1, n, embed_dim))
            trunc_normal_(self.pos_embed, std=0.02)
        else:  # fixed table: computed once, moves with .to(device), not saved in checkpoints
            self.register_buffer("pos_embed", get_sinusoid_encoding_table(n, embed_dim), persistent=False)
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = np.linspace(0, drop_path_rate, depth).tolist()  # stochastic depth grows with depth
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, dpr[i], init_values,
                  norm_layer) for i in range(depth))
        self.fc_norm = norm_layer(embed_dim)
        self.fc_dropout = nn.Dropout(fc_drop_rate) if fc_drop_rate > 0 else nn.Identity()
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)
        if isinstance(self.head, nn.Linear):
            self.head.weight.data.mul_(init_scale)
            self.head.bias.data.mul_(init_scale)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def get_num_layers(self) -> int:
        return len(self.blocks)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"}

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Clip B x 3 x T x H x W -> tokens B x N x D after the last block."""
        x = self.patch_embed(x)
        if x.shape[1] != self.pos_embed.shape[1]:
            pe = self.patch_embed
            raise ValueError(f"input gives {x.shape[1]} tokens, the model expects {self.pos_embed.shape[1]}: feed "
                             f"B x 3 x {pe.grid_size[0] * pe.tubelet_size} x {pe.img_size[0]} x {pe.img_size[1]} "
                             f"clips (or build the model with matching all_frames / img_size)")
        x = self.pos_drop(x + self.pos_embed.to(x.dtype))
        for blk in self.blocks:
            if self.use_checkpoint and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of the tokens -> fc_norm (there is no CLS token)."""
        return self.fc_norm(self.forward_tokens(x).mean(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc_dropout(self.forward_features(x)))


@dataclass(frozen=True)
class ModelSpec:
    """A registry entry: the constructor and what the model holds, so callers ask the spec instead of the name."""
    build: Callable[..., nn.Module]
    has_llama: bool = False  # a frozen LLM block: takes llama_path / llama_layer / llama_dtype / llama_config


def _vit(embed_dim: int, depth: int, num_heads: int) -> ModelSpec:
    def make(**kwargs) -> VisionTransformer:
        return VisionTransformer(patch_size=16, embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=4,
                                 qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6), **kwargs)
    return ModelSpec(make)


# This module's entries (models.py collects every module's table). Local names, not timm's registry, so timm's own
# image models are not shadowed.
MODELS: dict[str, ModelSpec] = {
    "vit_tiny_patch16": _vit(192, 4, 3),
    "vit_small_patch16_224": _vit(384, 12, 6),
    "vit_base_patch16_224": _vit(768, 12, 12),
    "vit_large_patch16_224": _vit(1024, 24, 16),
    "vit_huge_patch16_224": _vit(1280, 32, 16),
}
