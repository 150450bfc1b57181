"""A stack of frozen LLaMA-family decoder layers for visual tokens, and readers for their weights.

The layers follow LLaMA (RMSNorm, SwiGLU, grouped-query attention when the config says so, q/k/v biases for Qwen2)
without rotary embeddings and without an attention mask: visual tokens have no order, so every token attends to every
other. Weights come from a Meta folder (``params.json`` + ``consolidated.00.pth``) or a Hugging Face folder
(``config.json`` + ``*.safetensors`` / ``pytorch_model*.bin``) of LLaMA-1/2/3, Mistral or Qwen2; the chosen layers are
read one at a time, memory-mapped, so one 7B layer costs ~800 MB of RAM (fp32), not the whole checkpoint.

Every block records which LLM and which layers it holds (``LLaMATransformer.llm_identity``: the config, the layer
indices and a SHA-256 of each layer's weights as stored in the folder); checkpoints carry it, and
``checkpoint.check_llm_identity`` refuses a checkpoint whose block differs from the one a model was built with.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from checkpoint import safe_load

# Per-layer tensor names in Meta's layout (the one the model's state_dict uses); biases only in the q/k/v-bias families.
LAYER_KEYS = (
    "attention.wq.weight", "attention.wk.weight", "attention.wv.weight", "attention.wo.weight",
    "feed_forward.w1.weight", "feed_forward.w2.weight", "feed_forward.w3.weight",
    "attention_norm.weight", "ffn_norm.weight",
)
# Hugging Face names of the same tensors (gate = w1, up = w3, down = w2).
HF_LAYER_KEYS = {
    "attention.wq.weight": "self_attn.q_proj.weight", "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight", "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight", "feed_forward.w2.weight": "mlp.down_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "attention_norm.weight": "input_layernorm.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
    "attention.wq.bias": "self_attn.q_proj.bias", "attention.wk.bias": "self_attn.k_proj.bias",
    "attention.wv.bias": "self_attn.v_proj.bias",
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Hugging Face model_type -> (q/k/v biases, rows of wq/wk permuted for HF's rotary layout by the conversion script).
HF_FAMILIES = {"llama": (False, True), "mistral": (False, True), "qwen2": (True, False)}


@dataclass
class LLaMAConfig:
    """Shape of a LLaMA-family decoder layer. ``n_layers`` is the depth of the source model (to check indices)."""
    dim: int = 4096
    n_heads: int = 32
    n_layers: int = 32
    multiple_of: int = 256
    norm_eps: float = 1e-6
    ffn_dim_multiplier: float | None = None
    hidden_dim: int | None = None  # explicit SwiGLU width (Hugging Face intermediate_size); None -> LLaMA's rule
    n_kv_heads: int | None = None  # grouped-query attention: key/value heads (None -> n_heads)
    head_dim: int | None = None  # None -> dim // n_heads
    qkv_bias: bool = False  # Qwen2
    model_type: str = "llama"

    @property
    def ffn_hidden_dim(self) -> int:
        """SwiGLU width: int(2 * 4 * dim / 3) (times ffn_dim_multiplier) rounded up to multiple_of (11008 for 7B)."""
        if self.hidden_dim is not None:
            return self.hidden_dim
        hidden = int(2 * 4 * self.dim / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_size(self) -> int:
        return self.head_dim or self.dim // self.n_heads

    def layer_shapes(self) -> dict[str, tuple[int, ...]]:
        """Expected shape of every per-layer tensor, by Meta name."""
        d, h, q, kv = self.dim, self.ffn_hidden_dim, self.n_heads * self.head_size, self.kv_heads * self.head_size
        shapes = {"attention.wq.weight": (q, d), "attention.wk.weight": (kv, d), "attention.wv.weight": (kv, d),
                  "attention.wo.weight": (d, q), "feed_forward.w1.weight": (h, d), "feed_forward.w2.weight": (d, h),
                  "feed_forward.w3.weight": (h, d), "attention_norm.weight": (d,), "ffn_norm.weight": (d,)}
        if self.qkv_bias:
            shapes.update({"attention.wq.bias": (q,), "attention.wk.bias": (kv,), "attention.wv.bias": (kv,)})
        return shapes

    def describe(self) -> dict:
        """The shape in Hugging Face's config.json terms (what checkpoints record and compare)."""
        return {"model_type": self.model_type, "hidden_size": self.dim, "num_attention_heads": self.n_heads,
                "num_key_value_heads": self.kv_heads, "head_dim": self.head_size,
                "intermediate_size": self.ffn_hidden_dim, "qkv_bias": self.qkv_bias, "rms_norm_eps": self.norm_eps,
                "num_hidden_layers": self.n_layers}

    @classmethod
    def from_description(cls, d: dict) -> "LLaMAConfig":
        """Inverse of ``describe`` (e.g. to rebuild a checkpoint's block without its LLM folder)."""
        return cls(dim=d["hidden_size"], n_heads=d["num_attention_heads"], n_layers=d["num_hidden_layers"],
                   norm_eps=d["rms_norm_eps"], hidden_dim=d["intermediate_size"], n_kv_heads=d["num_key_value_heads"],
                   head_dim=d["head_dim"], qkv_bias=d["qkv_bias"], model_type=d["model_type"])


class RMSNorm(nn.Module):
    """x / rms(x) computed in fp32, cast back to x's dtype, times a learned scale (LLaMA's norm)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """SDPA of B x H x N x d queries over B x H_kv x N x d keys/values (H_kv divides H; query head i reads key/value
    head i // (H / H_kv), as in grouped-query attention). No N x N matrix is stored."""
    return F.scaled_dot_product_attention(q, k, v, enable_gqa=k.shape[1] != q.shape[1])


class Attention(nn.Module):
    """Multi-head (or grouped-query) self-attention without rotary embedding and without mask."""

    def __init__(self, cfg: LLaMAConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_size
        self.wq = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_size, bias=cfg.qkv_bias)
        self.wk = nn.Linear(cfg.dim, cfg.kv_heads * cfg.head_size, bias=cfg.qkv_bias)
        self.wv = nn.Linear(cfg.dim, cfg.kv_heads * cfg.head_size, bias=cfg.qkv_bias)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_size, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        q = self.wq(x).view(B, N, self.n_heads, self.head_dim).transpose(1, 2)
        k, v = (w(x).view(B, N, self.n_kv_heads, self.head_dim).transpose(1, 2) for w in (self.wk, self.wv))
        return self.wo(attention(q, k, v).transpose(1, 2).reshape(B, N, -1))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    """h = x + attention(attention_norm(x)); out = h + feed_forward(ffn_norm(h))."""

    def __init__(self, cfg: LLaMAConfig):
        super().__init__()
        self.attention = Attention(cfg)
        self.feed_forward = FeedForward(cfg.dim, cfg.ffn_hidden_dim)
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x))
        return h + self.feed_forward(self.ffn_norm(h))


class LLaMATransformer(nn.Module):
    """``layers.{k}`` blocks then a final RMSNorm ``norm`` (kept at ones, as in the released video models).

    Tokens are cast to the weights' dtype on entry and the output is returned in float32, so the frozen blocks can
    be held in bf16/fp16 inside an fp32 model. ``llm_identity`` says which LLM and layers the block holds (see
    ``block_identity``); it is not part of the state dict.
    """

    def __init__(self, cfg: LLaMAConfig, num_layers: int = 1, use_checkpoint: bool = False):
        super().__init__()
        self.config = cfg
        self.use_checkpoint = use_checkpoint
        self.layers = nn.ModuleList(TransformerBlock(cfg) for _ in range(num_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.llm_identity = block_identity(cfg, list(range(num_layers)), None, "random")

    def hidden(self, tokens: torch.Tensor) -> torch.Tensor:
        """The residual stream after the last layer, before the final norm (in the weights' dtype)."""
        h = tokens.to(self.norm.weight.dtype)
        for layer in self.layers:
            if self.use_checkpoint and torch.is_grad_enabled():
                h = torch.utils.checkpoint.checkpoint(layer, h, use_reentrant=False)
            else:
                h = layer(h)
        return h

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.norm(self.hidden(tokens)).float()


# ---------------------------------------------------------------------------------------------------------------------
# Which layers


def parse_layer_spec(spec: str | int | Sequence[int]) -> list[int | slice]:
    """``15``, ``-1``, ``14,15``, ``12:16``, ``-4:`` (or an int / a list of ints) -> indices and slices, in order."""
    if isinstance(spec, int):
        return [spec]
    if not isinstance(spec, str):
        return [int(i) for i in spec]
    items: list[int | slice] = []
    for item in spec.split(","):
        parts = [p.strip() for p in item.split(":")]
        try:
            if len(parts) == 1:
                items.append(int(parts[0]))
            elif len(parts) <= 3:
                items.append(slice(*(int(p) if p else None for p in parts)))
            else:
                raise ValueError
        except ValueError:
            raise ValueError(f"LLM layers {spec!r}: {item.strip()!r} is not an index (15, -1), a list (14,15) or a "
                             f"range (12:16, -4:)") from None
    return items


def layer_spec_arg(text: str) -> str:
    """argparse type of --llama_layer: checks the syntax; the text is resolved against the LLM's depth at build."""
    try:
        parse_layer_spec(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def resolve_layers(spec: str | int | Sequence[int], n_layers: int, check_range: bool = True) -> list[int]:
    """Layer indices in 0..n_layers-1 (negative ones count from the end; ranges as Python slices), in the given
    order. ``check_range=False`` (a random block: no source model) accepts any non-negative index."""
    out = []
    for item in parse_layer_spec(spec):
        if isinstance(item, slice):
            chosen = list(range(*item.indices(n_layers)))
            if not chosen:
                raise ValueError(f"LLM layers {spec!r}: the range {item.start}:{item.stop} selects no layer of "
                                 f"{n_layers}")
            out += chosen
            continue
        i = item + n_layers if item < 0 else item
        if i < 0 or (check_range and i >= n_layers):
            raise IndexError(f"LLM layer {item} out of range: the model has {n_layers} layers (0..{n_layers - 1}, "
                             f"or -{n_layers}..-1 from the end)")
        out.append(i)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Reading weights


def _unpermute_hf(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Hugging Face -> Meta row order of wq/wk. Hugging Face's conversion script moved each head's interleaved rotary
    pairs (rows 0,1 | 2,3 | ...) into two halves (even rows, then odd rows); this puts them back."""
    d_out, d_in = w.shape
    return w.view(n_heads, 2, d_out // n_heads // 2, d_in).transpose(1, 2).reshape(d_out, d_in)


def detect_format(path: str) -> str:
    """'meta' for params.json + consolidated.*.pth, 'hf' for config.json + safetensors/bin weights."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"LLM folder not found: {path}")
    if os.path.isfile(os.path.join(path, "params.json")) and glob.glob(os.path.join(path, "consolidated.*.pth")):
        return "meta"
    if os.path.isfile(os.path.join(path, "config.json")) and (
            glob.glob(os.path.join(path, "*.safetensors")) or glob.glob(os.path.join(path, "pytorch_model*.bin"))):
        return "hf"
    raise FileNotFoundError(
        f"{path} is not a LLaMA-family folder: looked for Meta's params.json + consolidated.*.pth, or Hugging Face's "
        f"config.json + *.safetensors / pytorch_model*.bin; found {sorted(os.listdir(path))[:20]}")


def _config_from_meta(p: dict, file: str) -> LLaMAConfig:
    if "moe" in p:
        raise ValueError(f"{file}: a mixture-of-experts model (params.json has 'moe') is not supported: the block "
                         f"needs one SwiGLU feed-forward per layer")
    try:
        return LLaMAConfig(dim=p["dim"], n_heads=p["n_heads"], n_layers=p["n_layers"],
                           multiple_of=p.get("multiple_of", 256), norm_eps=p.get("norm_eps", 1e-6),
                           ffn_dim_multiplier=p.get("ffn_dim_multiplier"), hidden_dim=p.get("hidden_dim"),
                           n_kv_heads=p.get("n_kv_heads"), head_dim=p.get("head_dim"))
    except KeyError as e:
        raise KeyError(f"{file}: missing key {e} (expected dim, n_heads, n_layers)") from None


def _config_from_hf(c: dict, file: str) -> LLaMAConfig:
    model_type = c.get("model_type")
    found = f"model_type {model_type!r}, architectures {c.get('architectures')}"
    if model_type not in HF_FAMILIES:
        raise ValueError(f"{file}: {found} is not supported; supported model_type values: "
                         f"{', '.join(HF_FAMILIES)} (LLaMA-1/2/3, Mistral, Qwen2: RMSNorm + SwiGLU decoder layers)")
    if c.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{file}: hidden_act {c['hidden_act']!r} ({found}); only SwiGLU ('silu') is supported")
    if c.get("attention_bias") or c.get("mlp_bias"):
        raise ValueError(f"{file}: attention_bias/mlp_bias true ({found}): biases are supported only as Qwen2's "
                         f"q/k/v biases")
    try:
        heads = c["num_attention_heads"]
        kv = c.get("num_key_value_heads") or heads
        if heads % kv:
            raise ValueError(f"{file}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv}")
        return LLaMAConfig(dim=c["hidden_size"], n_heads=heads, n_layers=c["num_hidden_layers"],
                           norm_eps=c.get("rms_norm_eps", 1e-6), hidden_dim=c["intermediate_size"], n_kv_heads=kv,
                           head_dim=c.get("head_dim") or None, qkv_bias=HF_FAMILIES[model_type][0],
                           model_type=model_type)
    except KeyError as e:
        raise KeyError(f"{file}: missing key {e} (expected hidden_size, intermediate_size, num_attention_heads, "
                       f"num_hidden_layers)") from None


def load_llama_config(path: str) -> LLaMAConfig:
    """The block shape from a Meta params.json or a Hugging Face config.json; unsupported models are refused with
    what the file says and what is supported."""
    fmt = detect_format(path)
    file = os.path.join(path, "params.json" if fmt == "meta" else "config.json")
    with open(file) as f:
        cfg = json.load(f)
    return _config_from_meta(cfg, file) if fmt == "meta" else _config_from_hf(cfg, file)


def _take(sd: dict, key: str, file: str, shape: tuple[int, ...]) -> torch.Tensor:
    """sd[key], checked to exist and to have the shape the folder's config implies."""
    if key not in sd:
        raise KeyError(f"{file}: tensor {key!r} not found (keys look like {list(sd)[:4]})")
    if tuple(sd[key].shape) != shape:
        raise ValueError(f"{file}: tensor {key!r} has shape {tuple(sd[key].shape)}, expected {shape} from the "
                         f"folder's config")
    return sd[key]


class LLMFolder:
    """A Meta or Hugging Face LLM folder: its config, and its layers read one at a time, memory-mapped."""

    def __init__(self, path: str):
        self.path = path
        self.format = detect_format(path)
        self.config = load_llama_config(path)
        if self.format == "meta":
            files = sorted(glob.glob(os.path.join(path, "consolidated.*.pth")))
            if len(files) > 1:
                raise ValueError(f"{path} holds {len(files)} model-parallel shards ({os.path.basename(files[0])} .. "
                                 f"{os.path.basename(files[-1])}); only single-file Meta checkpoints "
                                 f"(consolidated.00.pth: LLaMA-7B, Llama-2-7B, Llama-3-8B) are supported. Use the "
                                 f"Hugging Face format for larger models.")
            self.files = files
            return
        # Which file holds each tensor: from the shard index when there is one, else every weight file.
        self.index_file = next((os.path.join(path, n) for n in ("model.safetensors.index.json",
                                                                 "pytorch_model.bin.index.json")
                                if os.path.isfile(os.path.join(path, n))), None)
        self.weight_map = None
        if self.index_file is not None:
            with open(self.index_file) as f:
                self.weight_map = json.load(f)["weight_map"]
        self.files = sorted(glob.glob(os.path.join(path, "*.safetensors"))) or \
            sorted(glob.glob(os.path.join(path, "pytorch_model*.bin")))

    def read_layer(self, i: int) -> dict[str, torch.Tensor]:
        """Layer i's tensors by Meta name, in the folder's dtype; wq/wk rows in Meta order for the families whose
        Hugging Face conversion permuted them (so Meta and HF folders give identical tensors). Shapes are checked
        against the config; errors name the file, the key and the expected shape."""
        if not 0 <= i < self.config.n_layers:
            raise IndexError(f"LLM layer {i} out of range: {self.path} has {self.config.n_layers} layers")
        shapes = self.config.layer_shapes()
        if self.format == "meta":
            sd = safe_load(self.files[0], mmap=True, what="LLM weights")
            return {k: _take(sd, f"layers.{i}.{k}", self.files[0], s) for k, s in shapes.items()}
        names = {f"model.layers.{i}.{HF_LAYER_KEYS[k]}": k for k in shapes}
        if self.weight_map is not None:
            missing = sorted(set(names) - set(self.weight_map))
            if missing:
                raise KeyError(f"{self.index_file}: tensor {missing[0]!r} not in weight_map")
            by_file: dict[str, list[str]] = {}
            for name in names:
                by_file.setdefault(os.path.join(self.path, self.weight_map[name]), []).append(name)
        else:
            by_file = {f: list(names) for f in self.files}
        found: dict[str, torch.Tensor] = {}
        origin: dict[str, str] = {}  # tensor -> the file it came from, for error messages
        for file, wanted in by_file.items():
            if file.endswith(".safetensors"):
                from safetensors import safe_open
                try:
                    with safe_open(file, framework="pt", device="cpu") as f:
                        have = set(f.keys())
                        part = {n: f.get_tensor(n) for n in wanted if n in have}
                except Exception as e:
                    raise RuntimeError(f"cannot read LLM weights {file}: {e}") from e
            else:
                sd = safe_load(file, mmap=True, what="LLM weights")
                part = {n: sd[n] for n in wanted if n in sd}
            found.update(part)
            origin.update(dict.fromkeys(part, file))
        permuted = self.config.model_type not in HF_FAMILIES or HF_FAMILIES[self.config.model_type][1]
        heads = {"attention.wq.weight": self.config.n_heads, "attention.wk.weight": self.config.kv_heads}
        state = {}
        for name, k in names.items():
            t = _take(found, name, origin.get(name, self.index_file or ", ".join(by_file)), shapes[k])
            # Undo the rotary row permutation so the weights equal Meta's (outputs are the same either way).
            state[k] = _unpermute_hf(t, heads[k]) if permuted and k in heads else t
        return state


def layer_sha256(state: dict[str, torch.Tensor]) -> str:
    """First 16 hex digits of the SHA-256 of a layer's tensors (names, dtypes, shapes and bytes, by sorted name)."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy())
    return h.hexdigest()[:16]


def block_identity(cfg: LLaMAConfig, layers: list[int], sha256: list[str] | None, source: str) -> dict:
    """Which LLM block: the config (config.json terms), the layer indices, each layer's weight hash (None when the
    weights were not read from a folder) and where they came from ('random', a folder, or an unrecorded file)."""
    return {**cfg.describe(), "layers": list(layers), "sha256": sha256, "source": source}


def init_random_block(model: nn.Module) -> None:
    """A stand-in block with no LLM folder: weights N(0, 0.02), zero biases (Hugging Face's Llama initialisation,
    initializer_range 0.02). Like a trained layer inside a deep stack, its attention and MLP then add small updates
    to the residual stream instead of drowning it, as nn.Linear's default init would: with that init the demo's tiny
    ViT-LLaMA sat at chance for 2-3 of its 6 epochs and ended at 46-72% top-1."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def build_llama(path: str | None, layers: str | int | Sequence[int], cfg: LLaMAConfig | None = None,
                dtype: str = "float32", use_checkpoint: bool = False) -> LLaMATransformer:
    """A frozen LLaMATransformer holding ``layers`` (index, list or range; see ``resolve_layers``) of the folder at
    ``path``, stacked in that order, or random weights of ``cfg`` when path is None; parameters in ``dtype``,
    ``requires_grad`` False. Layers are read, hashed and converted one at a time."""
    if dtype not in DTYPES:
        raise ValueError(f"llama_dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if path is None:
        if cfg is None:
            raise ValueError("build_llama needs an LLM folder or a config")
        chosen = resolve_layers(layers, cfg.n_layers, check_range=False)
        model = LLaMATransformer(cfg, len(chosen), use_checkpoint)
        init_random_block(model)
        model.llm_identity = block_identity(cfg, chosen, None, "random")
    else:
        folder = LLMFolder(path)
        cfg = folder.config
        chosen = resolve_layers(layers, cfg.n_layers)
        with torch.device("meta"):  # no throw-away random init of ~200M parameters per layer
            model = LLaMATransformer(cfg, len(chosen), use_checkpoint)
        hashes = []
        for block, i in zip(model.layers, chosen):
            state = folder.read_layer(i)
            hashes.append(layer_sha256(state))
            block.load_state_dict({k: t.to(DTYPES[dtype], copy=True) for k, t in state.items()}, assign=True)
            del state  # releases this layer's memory map / source copy before the next layer is read
        model.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        model.llm_identity = block_identity(cfg, chosen, hashes, os.path.abspath(path))
    model.to(DTYPES[dtype])
    for p in model.parameters():
        p.requires_grad = False
    return model
