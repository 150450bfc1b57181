"""A stack of LLaMA transformer blocks for visual tokens, and readers for LLaMA weights.

The blocks follow Meta's LLaMA (RMSNorm, SwiGLU) without rotary embeddings and without a causal mask: visual tokens
have no order, so every token attends to every other. Weights come from a Meta folder (``params.json`` +
``consolidated.00.pth``) or a Hugging Face folder (``config.json`` + ``*.safetensors`` / ``pytorch_model*.bin``);
only the tensors of the chosen layers are read (memory-mapped / lazily), so one layer of LLaMA-7B costs ~800 MB of
RAM, not the 13 GB file.
"""
from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from checkpoint import safe_load

# Per-layer tensor names in Meta's layout (the one the model's state_dict uses).
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
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LLaMAConfig:
    """Shape of a LLaMA block. ``n_layers`` is the depth of the source model (to validate layer indices)."""
    dim: int = 4096
    n_heads: int = 32
    n_layers: int = 32
    multiple_of: int = 256
    norm_eps: float = 1e-6
    ffn_dim_multiplier: float | None = None
    hidden_dim: int | None = None  # explicit SwiGLU width (Hugging Face intermediate_size); None -> LLaMA's rule

    @property
    def ffn_hidden_dim(self) -> int:
        """SwiGLU width: int(2 * 4 * dim / 3) (times ffn_dim_multiplier) rounded up to multiple_of (11008 for 7B)."""
        if self.hidden_dim is not None:
            return self.hidden_dim
        hidden = int(2 * 4 * self.dim / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)

    def layer_shapes(self) -> dict[str, tuple[int, ...]]:
        """Expected shape of every per-layer tensor, by Meta name."""
        d, h = self.dim, self.ffn_hidden_dim
        return {"attention.wq.weight": (d, d), "attention.wk.weight": (d, d), "attention.wv.weight": (d, d),
                "attention.wo.weight": (d, d), "feed_forward.w1.weight": (h, d), "feed_forward.w2.weight": (d, h),
                "feed_forward.w3.weight": (h, d), "attention_norm.weight": (d,), "ffn_norm.weight": (d,)}


class RMSNorm(nn.Module):
    """x / rms(x) computed in fp32, cast back to x's dtype, times a learned scale (LLaMA's norm)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class Attention(nn.Module):
    """Multi-head self-attention without rotary embedding and without mask."""

    def __init__(self, cfg: LLaMAConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.wq = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.wk = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.wv = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.wo = nn.Linear(cfg.dim, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = (w(x).view(B, N, self.n_heads, -1).transpose(1, 2) for w in (self.wq, self.wk, self.wv))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.wo(out.transpose(1, 2).reshape(B, N, D))


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
    be held in bf16/fp16 inside an fp32 model.
    """

    def __init__(self, cfg: LLaMAConfig, num_layers: int = 1, use_checkpoint: bool = False):
        super().__init__()
        self.config = cfg
        self.use_checkpoint = use_checkpoint
        self.layers = nn.ModuleList(TransformerBlock(cfg) for _ in range(num_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = tokens.to(self.norm.weight.dtype)
        for layer in self.layers:
            if self.use_checkpoint and torch.is_grad_enabled():
                h = torch.utils.checkpoint.checkpoint(layer, h, use_reentrant=False)
            else:
                h = layer(h)
        return self.norm(h).float()

    def load_layers(self, layer_states: Sequence[dict[str, torch.Tensor]], assign: bool = False) -> None:
        """Load per-layer tensors (Meta names, no ``layers.{i}.`` prefix) into ``layers.0..``; ``norm`` untouched.
        ``assign`` adopts the given tensors instead of copying (for a model built on the meta device)."""
        if len(layer_states) != len(self.layers):
            raise ValueError(f"got weights for {len(layer_states)} LLaMA layers, the model has {len(self.layers)}")
        for layer, state in zip(self.layers, layer_states):
            layer.load_state_dict(state, strict=True, assign=assign)


# ---------------------------------------------------------------------------------------------------------------------
# Reading weights


def _permute_hf(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Meta -> Hugging Face row order of wq/wk (HF's convert script; interleaved rotary pairs -> two halves)."""
    d_out, d_in = w.shape
    return w.view(n_heads, d_out // n_heads // 2, 2, d_in).transpose(1, 2).reshape(d_out, d_in)


def _unpermute_hf(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Inverse of ``_permute_hf``: Hugging Face -> Meta row order of wq/wk."""
    d_out, d_in = w.shape
    return w.view(n_heads, 2, d_out // n_heads // 2, d_in).transpose(1, 2).reshape(d_out, d_in)


def detect_format(path: str) -> str:
    """'meta' for params.json + consolidated.*.pth, 'hf' for config.json + safetensors/bin weights."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"LLaMA folder not found: {path}")
    if os.path.isfile(os.path.join(path, "params.json")) and glob.glob(os.path.join(path, "consolidated.*.pth")):
        return "meta"
    if os.path.isfile(os.path.join(path, "config.json")) and (
            glob.glob(os.path.join(path, "*.safetensors")) or glob.glob(os.path.join(path, "pytorch_model*.bin"))):
        return "hf"
    raise FileNotFoundError(
        f"{path} is not a LLaMA folder: looked for Meta's params.json + consolidated.*.pth, or Hugging Face's "
        f"config.json + *.safetensors / pytorch_model*.bin; found {sorted(os.listdir(path))[:20]}")


def load_llama_config(path: str) -> LLaMAConfig:
    """Read the block shape from a Meta params.json or a Hugging Face config.json."""
    if detect_format(path) == "meta":
        file = os.path.join(path, "params.json")
        with open(file) as f:
            p = json.load(f)
        try:
            if p.get("n_kv_heads", p["n_heads"]) != p["n_heads"]:
                raise ValueError(f"{file}: grouped-query attention (n_kv_heads={p['n_kv_heads']} != n_heads="
                                 f"{p['n_heads']}) is not supported; use LLaMA-1/LLaMA-2 7B")
            return LLaMAConfig(dim=p["dim"], n_heads=p["n_heads"], n_layers=p["n_layers"],
                               multiple_of=p.get("multiple_of", 256), norm_eps=p.get("norm_eps", 1e-6),
                               ffn_dim_multiplier=p.get("ffn_dim_multiplier"))
        except KeyError as e:
            raise KeyError(f"{file}: missing key {e} (expected dim, n_heads, n_layers)") from None
    file = os.path.join(path, "config.json")
    with open(file) as f:
        c = json.load(f)
    try:
        n_heads = c["num_attention_heads"]
        if c.get("num_key_value_heads", n_heads) != n_heads:
            raise ValueError(f"{file}: grouped-query attention (num_key_value_heads={c['num_key_value_heads']} != "
                             f"num_attention_heads={n_heads}) is not supported; use LLaMA-1/LLaMA-2 7B")
        return LLaMAConfig(dim=c["hidden_size"], n_heads=n_heads, n_layers=c["num_hidden_layers"],
                           norm_eps=c.get("rms_norm_eps", 1e-6), hidden_dim=c["intermediate_size"])
    except KeyError as e:
        raise KeyError(f"{file}: missing key {e} (expected hidden_size, intermediate_size, num_attention_heads, "
                       f"num_hidden_layers)") from None


def _torch_load_mmap(file: str) -> dict:
    return safe_load(file, mmap=True, what="LLaMA weights")


def _read_meta(path: str, cfg: LLaMAConfig, layers: Sequence[int]) -> list[dict[str, torch.Tensor]]:
    files = sorted(glob.glob(os.path.join(path, "consolidated.*.pth")))
    if len(files) > 1:
        raise ValueError(f"{path} holds {len(files)} model-parallel shards ({os.path.basename(files[0])} .. "
                         f"{os.path.basename(files[-1])}); only single-file Meta checkpoints (LLaMA-7B, "
                         f"consolidated.00.pth) are supported. Use the Hugging Face format for larger models.")
    file = files[0]
    sd = _torch_load_mmap(file)
    shapes = cfg.layer_shapes()
    return [{k: _take(sd, f"layers.{i}.{k}", file, shapes[k]) for k in LAYER_KEYS} for i in layers]


def _take(sd: dict, key: str, file: str, shape: tuple[int, ...]) -> torch.Tensor:
    """sd[key], checked to exist and to have the shape the folder's config implies."""
    if key not in sd:
        raise KeyError(f"{file}: tensor {key!r} not found (keys look like {list(sd)[:4]})")
    if tuple(sd[key].shape) != shape:
        raise ValueError(f"{file}: tensor {key!r} has shape {tuple(sd[key].shape)}, expected {shape} from the "
                         f"folder's config")
    return sd[key]


def _read_hf(path: str, cfg: LLaMAConfig, layers: Sequence[int]) -> list[dict[str, torch.Tensor]]:
    wanted = {f"model.layers.{i}.{HF_LAYER_KEYS[k]}" for i in layers for k in LAYER_KEYS}
    # Which file holds each wanted tensor: from the shard index when there is one.
    index_file = next((os.path.join(path, n) for n in ("model.safetensors.index.json", "pytorch_model.bin.index.json")
                       if os.path.isfile(os.path.join(path, n))), None)
    if index_file is not None:
        with open(index_file) as f:
            weight_map = json.load(f)["weight_map"]
        missing = sorted(wanted - set(weight_map))
        if missing:
            raise KeyError(f"{index_file}: tensor {missing[0]!r} not in weight_map")
        by_file: dict[str, list[str]] = {}
        for key in sorted(wanted):
            by_file.setdefault(os.path.join(path, weight_map[key]), []).append(key)
    else:
        files = sorted(glob.glob(os.path.join(path, "*.safetensors"))) or \
            sorted(glob.glob(os.path.join(path, "pytorch_model*.bin")))
        by_file = {f: sorted(wanted) for f in files}
    tensors: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}  # tensor -> the file it came from, for error messages
    for file, keys in by_file.items():
        if file.endswith(".safetensors"):
            from safetensors import safe_open
            try:
                with safe_open(file, framework="pt", device="cpu") as f:
                    have = set(f.keys())
                    found = {k: f.get_tensor(k) for k in keys if k in have}
            except Exception as e:
                raise RuntimeError(f"cannot read LLaMA weights {file}: {e}") from e
        else:
            sd = _torch_load_mmap(file)
            found = {k: sd[k] for k in keys if k in sd}
        tensors.update(found)
        origin.update(dict.fromkeys(found, file))
    shapes = cfg.layer_shapes()
    out = []
    for i in layers:
        state = {}
        for k in LAYER_KEYS:
            hf_key = f"model.layers.{i}.{HF_LAYER_KEYS[k]}"
            file = origin.get(hf_key, index_file or ", ".join(by_file))
            t = _take(tensors, hf_key, file, shapes[k])
            # Undo the rotary row permutation so the weights equal Meta's (outputs are the same either way).
            state[k] = _unpermute_hf(t, cfg.n_heads) if k in ("attention.wq.weight", "attention.wk.weight") else t
        out.append(state)
    return out


def read_llama_layers(path: str, layers: Iterable[int], dtype: torch.dtype = torch.float32,
                      ) -> tuple[LLaMAConfig, list[dict[str, torch.Tensor]]]:
    """Read the chosen layers' tensors (Meta names, Meta row order) from a Meta or Hugging Face LLaMA folder.

    Returns the folder's config and one state dict per layer, each tensor a fresh copy in ``dtype`` (the memory map
    is released). Shapes are checked against the config; errors name the file, the key and the expected shape.
    """
    layers = list(layers)
    cfg = load_llama_config(path)
    for i in layers:
        if not 0 <= i < cfg.n_layers:
            raise IndexError(f"LLaMA layer {i} out of range: {path} has {cfg.n_layers} layers (0..{cfg.n_layers - 1})")
    fmt = detect_format(path)
    states = (_read_meta if fmt == "meta" else _read_hf)(path, cfg, layers)
    return cfg, [{k: t.to(dtype=dtype, copy=True) for k, t in state.items()} for state in states]


def build_llama(path: str | None, layers: Sequence[int], cfg: LLaMAConfig | None = None, dtype: str = "float32",
                use_checkpoint: bool = False) -> LLaMATransformer:
    """A frozen LLaMATransformer holding ``layers`` of the folder at ``path`` (or random weights of ``cfg`` when
    path is None), with its parameters in ``dtype`` and ``requires_grad`` False."""
    if dtype not in DTYPES:
        raise ValueError(f"llama_dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if path is None:
        if cfg is None:
            raise ValueError("build_llama needs a LLaMA folder or a config")
        model = LLaMATransformer(cfg, len(layers), use_checkpoint)
    else:
        cfg, states = read_llama_layers(path, layers, DTYPES[dtype])
        with torch.device("meta"):  # no throw-away random init of ~200M parameters
            model = LLaMATransformer(cfg, len(layers), use_checkpoint)
        model.load_layers(states, assign=True)
        model.norm = RMSNorm(cfg.dim, cfg.norm_eps)
    model.to(DTYPES[dtype])
    for p in model.parameters():
        p.requires_grad = False
    return model
