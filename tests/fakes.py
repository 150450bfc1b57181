"""Writers of small fake checkpoint files with the exact key layouts and formats of the real ones.

- ``write_meta_llama``: a Meta LLaMA folder (params.json + consolidated.00.pth).
- ``write_hf_llama``: a Hugging Face LLaMA folder (config.json + sharded model-*.safetensors with
  model.safetensors.index.json, or pytorch_model-*.bin with pytorch_model.bin.index.json), wq/wk rows permuted for
  rotary as Hugging Face's conversion script does.
- ``write_hf_family``: a Hugging Face folder of Llama-3, Mistral or Qwen2 (their real config.json fields, shrunk
  where asked; Hugging Face tensor names, Qwen2's q/k/v biases), sharded in key order like ``save_pretrained``.
- ``write_videomae_pretrain``: a VideoMAE self-supervised checkpoint (encoder.*, decoder.*, encoder_to_decoder.*,
  mask_token under 'model').
- ``published_model_shapes`` + ``write_zoo_checkpoint``: a model-zoo fine-tuned checkpoint {'model', 'optimizer',
  'epoch', 'scaler', 'args'} with the released models' key names and shapes.
"""
from __future__ import annotations

import argparse
import json
import os

import pytest
import torch
import torch.nn as nn

from llama import HF_LAYER_KEYS, LLaMAConfig


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tiny models run fastest on one thread (and do not spin-wait when the cores are shared); restored after."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_meta_llama_state(cfg: LLaMAConfig, vocab_size: int = 32, seed: int = 0,
                          dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """A full LLaMA state dict in Meta's naming (tok_embeddings, layers.*, norm, output, rope.freqs)."""
    g = torch.Generator().manual_seed(seed)
    shapes = cfg.layer_shapes()
    sd = {"tok_embeddings.weight": torch.randn(vocab_size, cfg.dim, generator=g)}
    for i in range(cfg.n_layers):
        for k, shape in shapes.items():
            scale = 0.1 if k.endswith("norm.weight") else cfg.dim ** -0.5
            base = 1.0 if k.endswith("norm.weight") else 0.0
            sd[f"layers.{i}.{k}"] = base + scale * torch.randn(shape, generator=g)
    sd["norm.weight"] = 1 + 0.1 * torch.randn(cfg.dim, generator=g)
    sd["output.weight"] = torch.randn(vocab_size, cfg.dim, generator=g) * cfg.dim ** -0.5
    sd = {k: v.to(dtype) for k, v in sd.items()}
    head_dim = cfg.dim // cfg.n_heads
    sd["rope.freqs"] = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))  # LLaMA-1 holds it
    return sd


def write_meta_llama(folder: str, cfg: LLaMAConfig, seed: int = 0,
                     dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """Write params.json + consolidated.00.pth; returns the state dict written."""
    os.makedirs(folder, exist_ok=True)
    params = {"dim": cfg.dim, "multiple_of": cfg.multiple_of, "n_heads": cfg.n_heads, "n_layers": cfg.n_layers,
              "norm_eps": cfg.norm_eps, "vocab_size": -1}
    if cfg.n_kv_heads is not None:  # Llama-3's params.json
        params.update(n_kv_heads=cfg.n_kv_heads, ffn_dim_multiplier=cfg.ffn_dim_multiplier, rope_theta=500000.0)
    with open(os.path.join(folder, "params.json"), "w") as f:
        json.dump(params, f)
    sd = make_meta_llama_state(cfg, seed=seed, dtype=dtype)
    torch.save(sd, os.path.join(folder, "consolidated.00.pth"))
    return sd


def hf_row_order(n_heads: int, head_dim: int) -> list[int]:
    """Meta row of each Hugging Face row of wq/wk, from the published convention: within a head, Meta interleaves
    the rotary pairs (rows 2i, 2i+1 rotate together); Hugging Face's conversion script stores the first member of
    every pair, then the second (HF row j * head_dim/2 + i of a head = Meta row 2i + j)."""
    return [h * head_dim + 2 * i + j for h in range(n_heads) for j in (0, 1) for i in range(head_dim // 2)]


def meta_to_hf(sd: dict[str, torch.Tensor], cfg: LLaMAConfig) -> dict[str, torch.Tensor]:
    """Rename a Meta state dict to Hugging Face's keys, permuting wq/wk rows for HF's rotary layout."""
    out = {"model.embed_tokens.weight": sd["tok_embeddings.weight"], "model.norm.weight": sd["norm.weight"],
           "lm_head.weight": sd["output.weight"]}
    heads = {"attention.wq.weight": cfg.n_heads, "attention.wk.weight": cfg.kv_heads}
    for i in range(cfg.n_layers):
        for k in cfg.layer_shapes():
            t = sd[f"layers.{i}.{k}"]
            if k in heads:
                t = t[hf_row_order(heads[k], cfg.head_size)]
            out[f"model.layers.{i}.{HF_LAYER_KEYS[k]}"] = t.contiguous()
    return out


def write_hf_llama(folder: str, meta_sd: dict[str, torch.Tensor], cfg: LLaMAConfig, fmt: str = "safetensors",
                   num_shards: int = 2) -> dict[str, torch.Tensor]:
    """Write config.json + weights sharded by layer like ``save_pretrained``; fmt 'safetensors' or 'bin'.
    num_shards=1 writes a single model.safetensors / pytorch_model.bin without index. Returns the HF state dict."""
    os.makedirs(folder, exist_ok=True)
    hf = meta_to_hf(meta_sd, cfg)
    vocab = hf["model.embed_tokens.weight"].shape[0]
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": cfg.dim,
              "intermediate_size": cfg.ffn_hidden_dim, "num_attention_heads": cfg.n_heads,
              "num_hidden_layers": cfg.n_layers, "num_key_value_heads": cfg.kv_heads, "rms_norm_eps": cfg.norm_eps,
              "vocab_size": vocab, "hidden_act": "silu", "max_position_embeddings": 2048,
              "torch_dtype": str(meta_sd["norm.weight"].dtype).replace("torch.", "")}
    _write_hf_weights(folder, config, hf, fmt, [list(hf)[i::num_shards] for i in range(num_shards)])
    return hf


# The config.json of each family's released 7B/8B model (Hugging Face Hub), fields as published.
HF_CONFIGS = {
    "llama3": {"architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
               "bos_token_id": 128000, "eos_token_id": 128001, "hidden_act": "silu", "hidden_size": 4096,
               "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 8192,
               "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
               "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": 500000.0,
               "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.40.0.dev0",
               "use_cache": True, "vocab_size": 128256},
    "mistral": {"architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
                "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
                "max_position_embeddings": 32768, "model_type": "mistral", "num_attention_heads": 32,
                "num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
                "sliding_window": 4096, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
                "transformers_version": "4.34.0.dev0", "use_cache": True, "vocab_size": 32000},
    "qwen2": {"architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
              "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 3584, "initializer_range": 0.02,
              "intermediate_size": 18944, "max_position_embeddings": 131072, "max_window_layers": 28,
              "model_type": "qwen2", "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4,
              "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 131072, "tie_word_embeddings": False,
              "torch_dtype": "bfloat16", "transformers_version": "4.37.2", "use_cache": True,
              "use_sliding_window": False, "vocab_size": 152064},
}


def write_hf_family(folder: str, family: str, seed: int = 0, num_shards: int = 2, dtype: torch.dtype = torch.bfloat16,
                    **overrides) -> tuple[dict, dict[str, torch.Tensor]]:
    """A Hugging Face folder of ``family`` (a key of HF_CONFIGS) with ``overrides`` applied to its config.json (e.g.
    hidden_size=64 for a test). Weights are random, in Hugging Face's names and row order; the keys are split into
    ``num_shards`` contiguous safetensors shards (a layer may straddle two, as in save_pretrained) with an index.
    Returns (config, state dict)."""
    config = {**HF_CONFIGS[family], **overrides}
    g = torch.Generator().manual_seed(seed)
    d, n_heads, n_kv = config["hidden_size"], config["num_attention_heads"], config["num_key_value_heads"]
    hd, ffn, vocab = d // n_heads, config["intermediate_size"], config["vocab_size"]
    shapes = {"self_attn.q_proj.weight": (n_heads * hd, d), "self_attn.k_proj.weight": (n_kv * hd, d),
              "self_attn.v_proj.weight": (n_kv * hd, d), "self_attn.o_proj.weight": (d, n_heads * hd),
              "mlp.gate_proj.weight": (ffn, d), "mlp.up_proj.weight": (ffn, d), "mlp.down_proj.weight": (d, ffn),
              "input_layernorm.weight": (d,), "post_attention_layernorm.weight": (d,)}
    if family == "qwen2":
        shapes.update({"self_attn.q_proj.bias": (n_heads * hd,), "self_attn.k_proj.bias": (n_kv * hd,),
                       "self_attn.v_proj.bias": (n_kv * hd,)})
    hf = {"model.embed_tokens.weight": torch.randn(vocab, d, generator=g)}
    for i in range(config["num_hidden_layers"]):
        for name, shape in shapes.items():
            w = torch.randn(shape, generator=g)
            w = 1 + 0.1 * w if name.endswith("layernorm.weight") else w * (0.3 if name.endswith("bias") else d ** -0.5)
            hf[f"model.layers.{i}.{name}"] = w
    hf["model.norm.weight"] = torch.ones(d)
    hf["lm_head.weight"] = torch.randn(vocab, d, generator=g) * d ** -0.5
    hf = {k: v.to(dtype) for k, v in hf.items()}
    keys = list(hf)
    size = -(-len(keys) // num_shards)
    _write_hf_weights(folder, config, hf, "safetensors", [keys[i:i + size] for i in range(0, len(keys), size)])
    return config, hf


def _write_hf_weights(folder: str, config: dict, hf: dict[str, torch.Tensor], fmt: str,
                      chunks: list[list[str]]) -> None:
    """config.json + the tensors split into the given key chunks (with an index when more than one)."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    num_shards = len(chunks)
    ext, stem = ("safetensors", "model") if fmt == "safetensors" else ("bin", "pytorch_model")
    weight_map = {}
    for s, chunk in enumerate(chunks):
        name = f"{stem}-{s + 1:05d}-of-{num_shards:05d}.{ext}" if num_shards > 1 else f"{stem}.{ext}"
        part = {k: hf[k] for k in chunk}
        if fmt == "safetensors":
            from safetensors.torch import save_file
            save_file(part, os.path.join(folder, name), metadata={"format": "pt"})
        else:
            torch.save(part, os.path.join(folder, name))
        weight_map.update({k: name for k in chunk})
    if num_shards > 1:
        total = sum(t.numel() * t.element_size() for t in hf.values())
        with open(os.path.join(folder, f"{stem}.{ext}.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


def write_videomae_pretrain(path: str, encoder: nn.Module, decoder_dim: int = 96, decoder_depth: int = 1,
                            seed: int = 0) -> dict[str, torch.Tensor]:
    """Save a VideoMAE self-supervised checkpoint whose encoder is ``encoder``'s ViT (fc_norm/head removed, an
    encoder ``norm`` added), with a decoder, encoder_to_decoder and mask_token. Returns the encoder tensors written
    (without the 'encoder.' prefix)."""
    g = torch.Generator().manual_seed(seed)
    enc = {k: v.clone() for k, v in encoder.state_dict().items()
           if not k.startswith(("fc_norm.", "head.", "llama"))}
    d = encoder.embed_dim
    enc["norm.weight"], enc["norm.bias"] = 1 + torch.randn(d, generator=g) * 0.1, torch.randn(d, generator=g) * 0.1
    sd = {f"encoder.{k}": v for k, v in enc.items()}
    patch = encoder.patch_embed
    out_dim = 3 * patch.tubelet_size * patch.patch_size[0] * patch.patch_size[1]
    for i in range(decoder_depth):
        p = f"decoder.blocks.{i}."
        for name, shape in [("norm1.weight", (decoder_dim,)), ("norm1.bias", (decoder_dim,)),
                            ("attn.q_bias", (decoder_dim,)), ("attn.v_bias", (decoder_dim,)),
                            ("attn.qkv.weight", (3 * decoder_dim, decoder_dim)),
                            ("attn.proj.weight", (decoder_dim, decoder_dim)), ("attn.proj.bias", (decoder_dim,)),
                            ("norm2.weight", (decoder_dim,)), ("norm2.bias", (decoder_dim,)),
                            ("mlp.fc1.weight", (4 * decoder_dim, decoder_dim)), ("mlp.fc1.bias", (4 * decoder_dim,)),
                            ("mlp.fc2.weight", (decoder_dim, 4 * decoder_dim)), ("mlp.fc2.bias", (decoder_dim,))]:
            sd[p + name] = torch.randn(shape, generator=g) * 0.02
    sd["decoder.norm.weight"], sd["decoder.norm.bias"] = torch.ones(decoder_dim), torch.zeros(decoder_dim)
    sd["decoder.head.weight"] = torch.randn(out_dim, decoder_dim, generator=g) * 0.02
    sd["decoder.head.bias"] = torch.zeros(out_dim)
    sd["encoder_to_decoder.weight"] = torch.randn(decoder_dim, d, generator=g) * 0.02
    sd["mask_token"] = torch.zeros(1, 1, decoder_dim)
    args = argparse.Namespace(model="pretrain_videomae_small_patch16_224", mask_ratio=0.9, num_frames=16,
                              input_size=224, tubelet_size=2, epochs=2400)
    torch.save({"model": sd, "optimizer": {"state": {}, "param_groups": []}, "epoch": 2399,
                "scaler": {"scale": 65536.0}, "args": args}, path)
    return enc


def published_model_shapes(dim: int, depth: int, num_classes: int = 174, llama_dim: int | None = None,
                           llama_hidden: int | None = None, tubelet: int = 2, patch: int = 16) -> dict[str, tuple]:
    """Name -> shape of every tensor in a released fine-tuned model's state dict, written from reading the published
    code (VideoMAE modeling_finetune.py; LM4VisualEncoding video_understanding/modeling_finetune_llama.py + llama.py),
    not from this project's models: qkv_bias=True, fixed sinusoid table (a plain attribute, not saved), mean pooling
    (``norm`` is an Identity, ``fc_norm`` a LayerNorm), and for ViT-LLaMA one LLaMA layer at ``llama.layers.0``
    (first_layer 15 of a 16-layer config), ``llama.norm`` and the two bias-free mappers."""
    shapes = {"patch_embed.proj.weight": (dim, 3, tubelet, patch, patch), "patch_embed.proj.bias": (dim,)}
    for i in range(depth):
        b = f"blocks.{i}."
        shapes.update({b + "norm1.weight": (dim,), b + "norm1.bias": (dim,), b + "attn.q_bias": (dim,),
                       b + "attn.v_bias": (dim,), b + "attn.qkv.weight": (3 * dim, dim),
                       b + "attn.proj.weight": (dim, dim), b + "attn.proj.bias": (dim,), b + "norm2.weight": (dim,),
                       b + "norm2.bias": (dim,), b + "mlp.fc1.weight": (4 * dim, dim), b + "mlp.fc1.bias": (4 * dim,),
                       b + "mlp.fc2.weight": (dim, 4 * dim), b + "mlp.fc2.bias": (dim,)})
    shapes.update({"fc_norm.weight": (dim,), "fc_norm.bias": (dim,), "head.weight": (num_classes, dim),
                   "head.bias": (num_classes,)})
    if llama_dim is not None:
        L, H, p = llama_dim, llama_hidden, "llama.layers.0."
        shapes.update({p + "attention.wq.weight": (L, L), p + "attention.wk.weight": (L, L),
                       p + "attention.wv.weight": (L, L), p + "attention.wo.weight": (L, L),
                       p + "feed_forward.w1.weight": (H, L), p + "feed_forward.w2.weight": (L, H),
                       p + "feed_forward.w3.weight": (H, L), p + "attention_norm.weight": (L,),
                       p + "ffn_norm.weight": (L,), "llama.norm.weight": (L,),
                       "llama_dim_mapper1.weight": (L, dim), "llama_dim_mapper2.weight": (dim, L)})
    return shapes


def write_zoo_checkpoint(path: str, shapes: dict[str, tuple], seed: int = 0, epoch: int = 39,
                         args: dict | None = None) -> dict[str, torch.Tensor]:
    """A model-zoo fine-tuned checkpoint {'model', 'optimizer', 'epoch', 'scaler', 'args': argparse.Namespace} whose
    'model' holds random tensors of ``shapes`` (norm weights around 1); the optimizer state is AdamW's layout for the
    trainable (non-LLaMA) tensors. Returns the state dict written."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in shapes.items():
        scale = shape[-1] ** -0.5 if len(shape) > 1 else 0.1
        sd[k] = (1.0 if "norm" in k and k.endswith("weight") else 0.0) + scale * torch.randn(shape, generator=g)
    trainable = [k for k in sd if not k.startswith("llama.")]
    opt = {"state": {i: {"step": torch.tensor(100.0), "exp_avg": torch.zeros_like(sd[k]),
                         "exp_avg_sq": torch.zeros_like(sd[k])} for i, k in enumerate(trainable)},
           "param_groups": [{"lr": 1e-6, "weight_decay": 0.05, "params": list(range(len(trainable)))}]}
    ckpt = {"model": sd, "optimizer": opt, "epoch": epoch,
            "scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                       "_growth_tracker": 0},
            "args": argparse.Namespace(**{"model": "vit_small_patch16_224", "nb_classes": 174, "num_frames": 16,
                                          "input_size": 224, "tubelet_size": 2, **(args or {})})}
    torch.save(ckpt, path)
    return sd
