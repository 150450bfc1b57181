"""LLaMA block math and reading layers from Meta / Hugging Face folders."""
import math
import os

import pytest
import torch
import torch.nn.functional as F

import llama
from fakes import meta_to_hf, single_thread, write_hf_llama, write_meta_llama  # noqa: F401 (autouse fixture)
from llama import (LAYER_KEYS, LLaMAConfig, LLaMATransformer, _permute_hf, _unpermute_hf, build_llama,
                   load_llama_config, read_llama_layers)

CFG = LLaMAConfig(dim=64, n_heads=4, n_layers=3, multiple_of=32, norm_eps=1e-5)


def reference_block(x, sd, cfg):
    """Independent computation of one visual LLaMA block (explicit softmax attention, no RoPE, no mask)."""
    def rms(t, w):
        return t / torch.sqrt((t * t).mean(-1, keepdim=True) + cfg.norm_eps) * w
    B, N, D = x.shape
    hd = D // cfg.n_heads
    h = rms(x, sd["attention_norm.weight"])
    q, k, v = [(h @ sd[f"attention.w{n}.weight"].T).view(B, N, cfg.n_heads, hd).transpose(1, 2) for n in "qkv"]
    a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1) @ v
    h = x + a.transpose(1, 2).reshape(B, N, D) @ sd["attention.wo.weight"].T
    f = rms(h, sd["ffn_norm.weight"])
    ff = (F.silu(f @ sd["feed_forward.w1.weight"].T) * (f @ sd["feed_forward.w3.weight"].T)) @ sd[
        "feed_forward.w2.weight"].T
    return h + ff


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("llama")
    meta = write_meta_llama(str(root / "meta"), CFG, seed=1, dtype=torch.bfloat16)
    write_hf_llama(str(root / "hf"), meta, CFG, fmt="safetensors", num_shards=2)
    write_hf_llama(str(root / "hf_single"), meta, CFG, fmt="safetensors", num_shards=1)
    write_hf_llama(str(root / "hf_bin"), meta, CFG, fmt="bin", num_shards=2)
    return root, meta


def test_hidden_size_rule_and_7b_counts():
    cfg = LLaMAConfig()  # LLaMA-7B params.json
    assert cfg.ffn_hidden_dim == 11008
    with torch.device("meta"):
        m = LLaMATransformer(cfg, num_layers=1)
    assert sum(p.numel() for p in m.parameters()) == 4 * 4096 ** 2 + 3 * 4096 * 11008 + 3 * 4096


def test_block_matches_reference_and_output_is_fp32():
    torch.manual_seed(0)
    m = LLaMATransformer(CFG, num_layers=1)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    x = torch.randn(2, 10, 64)
    sd = {k: v for k, v in m.layers[0].state_dict().items()}
    h = reference_block(x, sd, CFG)
    expect = h / torch.sqrt((h * h).mean(-1, keepdim=True) + CFG.norm_eps) * m.norm.weight
    out = m(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expect, rtol=1e-5, atol=1e-5)


def test_rmsnorm_computes_in_fp32_and_casts_back():
    from llama import RMSNorm
    n = RMSNorm(8, eps=1e-6).to(torch.bfloat16)
    x = (torch.randn(3, 8) * 100).to(torch.bfloat16)
    y = n(x)
    xf = x.float()
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, (xf / torch.sqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)).to(torch.bfloat16))


def test_permute_roundtrip():
    w = torch.randn(64, 64)
    p = _permute_hf(w, 4)
    assert not torch.equal(p, w)
    assert torch.equal(_unpermute_hf(p, 4), w)


@pytest.mark.parametrize("name", ["meta", "hf", "hf_single", "hf_bin"])
def test_layer_loads_bit_exactly(folders, name):
    root, meta = folders
    cfg, states = read_llama_layers(str(root / name), [2, 0])
    assert (cfg.dim, cfg.n_heads, cfg.n_layers, cfg.ffn_hidden_dim, cfg.norm_eps) == (64, 4, 3, 192, 1e-5)
    for i, state in zip([2, 0], states):
        assert set(state) == set(LAYER_KEYS)
        for k in LAYER_KEYS:
            assert state[k].dtype == torch.float32
            assert torch.equal(state[k], meta[f"layers.{i}.{k}"].float()), (name, k)


def test_meta_and_hf_give_identical_outputs_and_norm_stays_ones(folders):
    root, meta = folders
    x = torch.randn(2, 12, 64)
    outs = []
    for name in ("meta", "hf", "hf_bin"):
        m = build_llama(str(root / name), [1])
        assert torch.equal(m.norm.weight, torch.ones(64))  # the final norm is not loaded (released video models)
        assert all(not p.requires_grad for p in m.parameters())
        outs.append(m(x))
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def test_hf_permutation_is_invisible_without_rope(folders):
    """Loading HF's permuted wq/wk as-is permutes q and k features identically: q.k and the output are unchanged."""
    root, meta = folders
    m = build_llama(str(root / "meta"), [1])
    hf = meta_to_hf(meta, CFG)
    permuted = LLaMATransformer(CFG, 1)
    state = {k: meta[f"layers.1.{k}"].float() for k in LAYER_KEYS}
    state["attention.wq.weight"] = hf["model.layers.1.self_attn.q_proj.weight"].float()
    state["attention.wk.weight"] = hf["model.layers.1.self_attn.k_proj.weight"].float()
    assert not torch.equal(state["attention.wq.weight"], m.layers[0].attention.wq.weight)
    permuted.load_layers([state])
    x = torch.randn(2, 12, 64)
    torch.testing.assert_close(permuted(x), m(x), rtol=1e-5, atol=1e-5)


def test_meta_loader_reads_via_mmap(folders, monkeypatch):
    root, _ = folders
    calls = []
    orig = llama.safe_load

    def spy(*a, **kw):
        calls.append(kw)
        return orig(*a, **kw)
    monkeypatch.setattr(llama, "safe_load", spy)  # checkpoint.safe_load: weights_only=True always
    read_llama_layers(str(root / "meta"), [0])
    assert calls and all(c.get("mmap") for c in calls)


def test_llama_dtype_bf16_holds_weights_and_returns_fp32(folders):
    root, _ = folders
    m = build_llama(str(root / "meta"), [0], dtype="bfloat16")
    assert all(p.dtype == torch.bfloat16 for p in m.parameters())
    out = m(torch.randn(1, 5, 64))
    assert out.dtype == torch.float32


def test_layer_out_of_range_names_layer_count(folders):
    root, _ = folders
    with pytest.raises(IndexError, match="has 3 layers"):
        read_llama_layers(str(root / "hf"), [3])


def test_folder_with_neither_format(tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="params.json \\+ consolidated.*config.json \\+ \\*.safetensors"):
        load_llama_config(str(tmp_path))


def test_multi_shard_meta_is_refused(folders, tmp_path):
    root, _ = folders
    meta = tmp_path / "meta13b"
    meta.mkdir()
    for f in ("params.json", "consolidated.00.pth"):
        (meta / f).write_bytes((root / "meta" / f).read_bytes())
    (meta / "consolidated.01.pth").write_bytes((root / "meta" / "consolidated.00.pth").read_bytes())
    with pytest.raises(ValueError, match="only single-file Meta checkpoints \\(LLaMA-7B"):
        read_llama_layers(str(meta), [0])


def _meta_folder_with(tmp_path, root, state: dict):
    """A Meta folder with the good params.json and the given (damaged) consolidated.00.pth."""
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "params.json").write_text((root / "meta" / "params.json").read_text())
    torch.save(state, bad / "consolidated.00.pth")
    return bad


def test_wrong_shape_names_file_key_and_expected_shape(folders, tmp_path):
    root, meta = folders
    bad = _meta_folder_with(tmp_path, root, {**meta, "layers.0.feed_forward.w1.weight": torch.zeros(100, 64)})
    msg = r"consolidated.00.pth: tensor 'layers.0.feed_forward.w1.weight' has shape \(100, 64\), expected \(192, 64\)"
    with pytest.raises(ValueError, match=msg):
        read_llama_layers(str(bad), [0])


def test_missing_tensor_names_file_and_key(folders, tmp_path):
    root, meta = folders
    bad = _meta_folder_with(tmp_path, root, {k: v for k, v in meta.items() if k != "layers.0.attention.wv.weight"})
    with pytest.raises(KeyError, match="consolidated.00.pth.*layers.0.attention.wv.weight"):
        read_llama_layers(str(bad), [0])


def test_truncated_shard_names_file(folders, tmp_path):
    root, _ = folders
    bad = tmp_path / "trunc"
    bad.mkdir()
    for f in os.listdir(root / "hf_single"):
        data = (root / "hf_single" / f).read_bytes()
        (bad / f).write_bytes(data[: len(data) // 2] if f.endswith(".safetensors") else data)
    with pytest.raises(RuntimeError, match="model.safetensors"):
        read_llama_layers(str(bad), [0])
