"""ViT-LLaMA: the VideoMAE ViT with frozen LLaMA-family layers between the last ViT block and the pooling.

tokens B x N x D -> llama_dim_mapper1 (D -> width, no bias) -> frozen LLM layer(s) (no RoPE, no mask)
-> llama_dim_mapper2 (width -> D, no bias) -> mean pool -> fc_norm -> head. No residual around the three.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import torch
import torch.nn as nn

from llama import LLaMAConfig, build_llama
from modeling_finetune import ModelSpec, VisionTransformer


class ViTLLaMA(VisionTransformer):
    """VisionTransformer + mappers + ``llama`` (LLaMATransformer, all parameters frozen).

    With ``llama_path`` the block's shape (width, heads, KV heads, FFN size, biases, eps) comes from that folder and
    the layers ``llama_layer`` (an index, a list or a range, e.g. ``15``, ``14,15``, ``12:16``, ``-1``) are read from
    it into ``llama.layers.0..`` in that order; without it a random frozen block of ``llama_config`` is built (with a
    warning). ``llama_dtype`` holds the frozen weights in bf16/fp16.
    """

    def __init__(self, llama_config: LLaMAConfig, llama_path: str | None = None,
                 llama_layer: str | int | Sequence[int] = 15, llama_dtype: str = "float32", **kwargs):
        super().__init__(**kwargs)
        if llama_path is None:
            warnings.warn(f"no llama_path given: the LLM block ({llama_config.dim} wide) holds RANDOM frozen weights; "
                          f"pass llama_path (a Meta or Hugging Face LLaMA/Mistral/Qwen2 folder) or load a full "
                          f"checkpoint", stacklevel=2)
        self.llama = build_llama(llama_path, llama_layer, llama_config, llama_dtype, self.use_checkpoint)
        width = self.llama.config.dim
        self.llama_dim_mapper1 = nn.Linear(self.embed_dim, width, bias=False)  # PyTorch default init, as released
        self.llama_dim_mapper2 = nn.Linear(width, self.embed_dim, bias=False)

    @property
    def llm_identity(self) -> dict:
        """Which LLM and layers the frozen block holds (``llama.block_identity``); checkpoints record it ('llm')."""
        return self.llama.llm_identity

    @llm_identity.setter
    def llm_identity(self, value: dict) -> None:
        self.llama.llm_identity = value

    def llm_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the LLM block's input: llama_dim_mapper1's output, its output before the final norm), B x N x width each.
        The block's final RMSNorm makes every token's norm sqrt(width), so the norm is read before it."""
        before = self.llama_dim_mapper1(super().forward_tokens(x))
        return before, self.llama.hidden(before)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.llama_dim_mapper2(self.llama(self.llama_dim_mapper1(super().forward_tokens(x))))


# The released video models: one layer (Meta's layers.15) of LLaMA-7B.
LLAMA_7B = LLaMAConfig(dim=4096, n_heads=32, n_layers=32, multiple_of=256, norm_eps=1e-6)
LLAMA_TINY = LLaMAConfig(dim=256, n_heads=4, n_layers=1, multiple_of=256, norm_eps=1e-6)


def _vit_llama(embed_dim: int, depth: int, num_heads: int, default_config: LLaMAConfig,
               default_layer: int) -> ModelSpec:
    def make(llama_config: LLaMAConfig | None = None, llama_layer=None, llama_dtype: str | None = None,
             **kwargs) -> ViTLLaMA:
        """``llama_config`` replaces the entry's random-block shape (e.g. a checkpoint's recorded one); None
        options take the entry's defaults."""
        return ViTLLaMA(llama_config=llama_config or default_config,
                        llama_layer=default_layer if llama_layer is None else llama_layer,
                        llama_dtype=llama_dtype or "float32", patch_size=16, embed_dim=embed_dim, depth=depth,
                        num_heads=num_heads, mlp_ratio=4, qkv_bias=True, **kwargs)
    return ModelSpec(make, has_llama=True)


MODELS: dict[str, ModelSpec] = {
    "vit_llama_tiny_patch16": _vit_llama(192, 4, 3, LLAMA_TINY, default_layer=0),
    "vit_llama_small_patch16_224": _vit_llama(384, 12, 6, LLAMA_7B, default_layer=15),
    "vit_llama_base_patch16_224": _vit_llama(768, 12, 12, LLAMA_7B, default_layer=15),
}
