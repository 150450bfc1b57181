"""ViT-LLaMA: the VideoMAE ViT with a frozen LLaMA block between the last ViT block and the pooling.

tokens B x N x D -> llama_dim_mapper1 (D -> dim, no bias) -> frozen LLaMA layer(s) (no RoPE, no mask)
-> llama_dim_mapper2 (dim -> D, no bias) -> mean pool -> fc_norm -> head. No residual around the three.
"""
from __future__ import annotations

import warnings
from typing import Callable, Sequence

import torch
import torch.nn as nn

from llama import LLaMAConfig, build_llama
from modeling_finetune import VisionTransformer


class ViTLLaMA(VisionTransformer):
    """VisionTransformer + mappers + ``llama`` (LLaMATransformer, all parameters frozen).

    With ``llama_path`` the block shape (dim, heads, eps, hidden size) comes from that folder and layer(s)
    ``llama_layer`` are read from it into ``llama.layers.0..``; without it a random frozen block of
    ``llama_config`` is built (with a warning). ``llama_dtype`` holds the frozen weights in bf16/fp16.
    """

    def __init__(self, llama_config: LLaMAConfig, llama_path: str | None = None,
                 llama_layer: int | Sequence[int] = 15, llama_dtype: str = "float32", **kwargs):
        super().__init__(**kwargs)
        layers = [llama_layer] if isinstance(llama_layer, int) else list(llama_layer)
        if llama_path is None:
            warnings.warn(f"no llama_path given: the LLaMA block ({llama_config.dim} dim) holds RANDOM frozen weights; "
                          f"pass llama_path (a Meta or Hugging Face LLaMA folder) or load a full checkpoint",
                          stacklevel=2)
        self.llama = build_llama(llama_path, layers, llama_config, llama_dtype, self.use_checkpoint)
        dim = self.llama.config.dim
        self.llama_dim_mapper1 = nn.Linear(self.embed_dim, dim, bias=False)  # PyTorch default init, as released
        self.llama_dim_mapper2 = nn.Linear(dim, self.embed_dim, bias=False)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward_tokens(x)
        return self.llama_dim_mapper2(self.llama(self.llama_dim_mapper1(x)))


# The released video models: one layer (Meta's layers.15, i.e. first_layer 15 of a 16-layer config) of LLaMA-7B.
LLAMA_7B = LLaMAConfig(dim=4096, n_heads=32, n_layers=32, multiple_of=256, norm_eps=1e-6)
LLAMA_TINY = LLaMAConfig(dim=256, n_heads=4, n_layers=1, multiple_of=256, norm_eps=1e-6)


def _vit_llama(embed_dim: int, depth: int, num_heads: int, llama_config: LLaMAConfig) -> Callable[..., ViTLLaMA]:
    def make(**kwargs) -> ViTLLaMA:
        kwargs.setdefault("llama_layer", 15 if llama_config is LLAMA_7B else 0)
        return ViTLLaMA(llama_config=llama_config, patch_size=16, embed_dim=embed_dim, depth=depth,
                        num_heads=num_heads, mlp_ratio=4, qkv_bias=True, **kwargs)
    return make


MODELS: dict[str, Callable[..., nn.Module]] = {
    "vit_llama_tiny_patch16": _vit_llama(192, 4, 3, LLAMA_TINY),
    "vit_llama_small_patch16_224": _vit_llama(384, 12, 6, LLAMA_7B),
    "vit_llama_base_patch16_224": _vit_llama(768, 12, 12, LLAMA_7B),
}
