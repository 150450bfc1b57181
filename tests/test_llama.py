"""LLaMA-family block math, reading layers from Meta / Hugging Face folders (LLaMA-1/2/3, Mistral, Qwen2), layer
choices, and the LLM identity that checkpoints record."""
import argparse
import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

import llama
from fakes import (hf_row_order, meta_to_hf, single_thread, write_hf_family, write_hf_llama,  # noqa: F401
                   write_meta_llama)
from llama import (LAYER_KEYS, LLaMAConfig, LLaMATransformer, LLMFolder, _unpermute_hf, build_llama, layer_spec_arg,
                   load_llama_config, resolve_layers)

CFG = LLaMAConfig(dim=64, n_heads=4, n_layers=3, multiple_of=32, norm_eps=1e-5)
# Llama-3's rule in miniature: 2 KV heads for 4 query heads, ffn_dim_multiplier and a multiple_of of 64.
CFG_GQA = LLaMAConfig(dim=64, n_heads=4, n_layers=3, multiple_of=64, norm_eps=1e-5, n_kv_heads=2,
                      ffn_dim_multiplier=1.3)
SMALL = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96, num_hidden_layers=3,
             vocab_size=32)


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
    gqa = write_meta_llama(str(root / "meta_gqa"), CFG_GQA, seed=2, dtype=torch.bfloat16)
    write_hf_llama(str(root / "hf_gqa"), gqa, CFG_GQA, fmt="safetensors", num_shards=2)
    return root, meta, gqa


def test_hidden_size_rule_and_7b_counts():
    cfg = LLaMAConfig()  # LLaMA-7B params.json
    assert cfg.ffn_hidden_dim == 11008
    with torch.device("meta"):
        m = LLaMATransformer(cfg, num_layers=1)
    assert sum(p.numel() for p in m.parameters()) == 4 * 4096 ** 2 + 3 * 4096 * 11008 + 3 * 4096
    llama3 = LLaMAConfig(n_kv_heads=8, multiple_of=1024, ffn_dim_multiplier=1.3, norm_eps=1e-5)  # Meta params.json
    assert llama3.ffn_hidden_dim == 14336
    with torch.device("meta"):
        m = LLaMATransformer(llama3, num_layers=1)
    assert sum(p.numel() for p in m.parameters()) == 2 * 4096 ** 2 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 3 * 4096


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


# Hugging Face's convert_llama_weights_to_hf.py stores wq/wk as
#   w.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)
# Worked by hand on Meta rows numbered 0..rows-1: one head of 8 rows is viewed as the pairs (0,1) (2,3) (4,5) (6,7);
# the transpose lists the first members, then the second ones. Each head is permuted on its own. (At head_dim 4 the
# permutation is its own inverse, so it could not tell the two directions apart.)
HF_ROWS = {(1, 8): [0, 2, 4, 6, 1, 3, 5, 7],
           (2, 8): [0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15]}


@pytest.mark.parametrize("n_heads, head_dim", list(HF_ROWS))
def test_hf_rows_go_back_to_meta_order(n_heads, head_dim):
    """A Hugging Face wq whose row r holds Meta row HF_ROWS[r] is read back in Meta order 0..rows-1."""
    rows = n_heads * head_dim
    hf = torch.tensor(HF_ROWS[n_heads, head_dim], dtype=torch.float32)[:, None].repeat(1, 3)
    assert torch.equal(_unpermute_hf(hf, n_heads), torch.arange(rows, dtype=torch.float32)[:, None].repeat(1, 3))
    assert hf_row_order(n_heads, head_dim) == HF_ROWS[n_heads, head_dim]  # the fixtures' HF folders use this order


@pytest.mark.parametrize("name", ["meta", "hf", "hf_single", "hf_bin", "meta_gqa", "hf_gqa"])
def test_layer_loads_bit_exactly(folders, name):
    root, meta, gqa = folders
    folder = LLMFolder(str(root / name))
    cfg, source = (CFG_GQA, gqa) if name.endswith("gqa") else (CFG, meta)
    got = folder.config
    assert (got.dim, got.n_heads, got.kv_heads, got.n_layers, got.ffn_hidden_dim, got.norm_eps) == \
        (64, 4, cfg.kv_heads, 3, cfg.ffn_hidden_dim, 1e-5)
    assert cfg.ffn_hidden_dim == (256 if name.endswith("gqa") else 192)  # int(int(170) * 1.3) = 221 -> 256
    for i in (2, 0):
        state = folder.read_layer(i)
        assert set(state) == set(LAYER_KEYS)
        for k in LAYER_KEYS:
            assert state[k].dtype == torch.bfloat16  # the folder's dtype; build_llama converts
            assert torch.equal(state[k], source[f"layers.{i}.{k}"]), (name, k)


def test_meta_and_hf_give_identical_outputs_hashes_and_norm_stays_ones(folders):
    root, _, _ = folders
    x = torch.randn(2, 12, 64)
    outs, hashes = [], []
    for name in ("meta", "hf", "hf_bin"):
        m = build_llama(str(root / name), [1])
        assert torch.equal(m.norm.weight, torch.ones(64))  # the final norm is not loaded (released video models)
        assert all(not p.requires_grad for p in m.parameters())
        outs.append(m(x))
        hashes.append(m.llm_identity["sha256"])
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    assert hashes[0] == hashes[1] == hashes[2] and len(hashes[0]) == 1 and len(hashes[0][0]) == 16
    assert build_llama(str(root / "meta"), [2]).llm_identity["sha256"] != hashes[0]


def test_hf_permutation_is_invisible_without_rope(folders):
    """Loading HF's permuted wq/wk as-is permutes q and k features identically: q.k and the output are unchanged."""
    root, meta, _ = folders
    m = build_llama(str(root / "meta"), [1])
    hf = meta_to_hf(meta, CFG)
    permuted = LLaMATransformer(CFG, 1)
    state = {k: meta[f"layers.1.{k}"].float() for k in LAYER_KEYS}
    state["attention.wq.weight"] = hf["model.layers.1.self_attn.q_proj.weight"].float()
    state["attention.wk.weight"] = hf["model.layers.1.self_attn.k_proj.weight"].float()
    assert not torch.equal(state["attention.wq.weight"], m.layers[0].attention.wq.weight)
    permuted.layers[0].load_state_dict(state)
    x = torch.randn(2, 12, 64)
    torch.testing.assert_close(permuted(x), m(x), rtol=1e-5, atol=1e-5)


def test_meta_loader_reads_via_mmap(folders, monkeypatch):
    root, _, _ = folders
    calls = []
    orig = llama.safe_load

    def spy(*a, **kw):
        calls.append(kw)
        return orig(*a, **kw)
    monkeypatch.setattr(llama, "safe_load", spy)  # checkpoint.safe_load: weights_only=True always
    build_llama(str(root / "meta"), "0:2")
    assert len(calls) == 2 and all(c.get("mmap") for c in calls)  # one memory map per layer, released after it


def test_llama_dtype_bf16_holds_weights_and_returns_fp32(folders):
    root, _, _ = folders
    m = build_llama(str(root / "meta"), [0], dtype="bfloat16")
    assert all(p.dtype == torch.bfloat16 for p in m.parameters())
    out = m(torch.randn(1, 5, 64))
    assert out.dtype == torch.float32


def test_layer_out_of_range_names_layer_count(folders):
    root, _, _ = folders
    with pytest.raises(IndexError, match=r"LLM layer 3 out of range: the model has 3 layers \(0..2, or -3..-1"):
        build_llama(str(root / "hf"), [3])


def test_folder_with_neither_format(tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="params.json \\+ consolidated.*config.json \\+ \\*.safetensors"):
        load_llama_config(str(tmp_path))


def test_multi_shard_meta_is_refused(folders, tmp_path):
    root, _, _ = folders
    meta = tmp_path / "meta13b"
    meta.mkdir()
    for f in ("params.json", "consolidated.00.pth"):
        (meta / f).write_bytes((root / "meta" / f).read_bytes())
    (meta / "consolidated.01.pth").write_bytes((root / "meta" / "consolidated.00.pth").read_bytes())
    with pytest.raises(ValueError, match="only single-file Meta checkpoints \\(consolidated.00.pth: LLaMA-7B"):
        LLMFolder(str(meta))


def _meta_folder_with(tmp_path, root, state: dict):
    """A Meta folder with the good params.json and the given (damaged) consolidated.00.pth."""
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "params.json").write_text((root / "meta" / "params.json").read_text())
    torch.save(state, bad / "consolidated.00.pth")
    return bad


def test_wrong_shape_names_file_key_and_expected_shape(folders, tmp_path):
    root, meta, _ = folders
    bad = _meta_folder_with(tmp_path, root, {**meta, "layers.0.feed_forward.w1.weight": torch.zeros(100, 64)})
    msg = r"consolidated.00.pth: tensor 'layers.0.feed_forward.w1.weight' has shape \(100, 64\), expected \(192, 64\)"
    with pytest.raises(ValueError, match=msg):
        LLMFolder(str(bad)).read_layer(0)


def test_missing_tensor_names_file_and_key(folders, tmp_path):
    root, meta, _ = folders
    bad = _meta_folder_with(tmp_path, root, {k: v for k, v in meta.items() if k != "layers.0.attention.wv.weight"})
    with pytest.raises(KeyError, match="consolidated.00.pth.*layers.0.attention.wv.weight"):
        LLMFolder(str(bad)).read_layer(0)


def test_truncated_shard_names_file(folders, tmp_path):
    root, _, _ = folders
    bad = tmp_path / "trunc"
    bad.mkdir()
    for f in os.listdir(root / "hf_single"):
        data = (root / "hf_single" / f).read_bytes()
        (bad / f).write_bytes(data[: len(data) // 2] if f.endswith(".safetensors") else data)
    with pytest.raises(RuntimeError, match="cannot read LLM weights .*model.safetensors"):
        LLMFolder(str(bad)).read_layer(0)


# ---------------------------------------------------------------------------------------------------------------------
# LLM families from Hugging Face folders


def hf_reference(x, hf, layers, config):
    """Independent forward of the chosen Hugging Face layers in plain tensor ops: explicit softmax attention in which
    query head h reads key/value head h // (heads / kv_heads), biases where the file has them, then an RMSNorm of
    weight one."""
    H, KV, eps = config["num_attention_heads"], config["num_key_value_heads"], config["rms_norm_eps"]
    B, N, D = x.shape
    hd = D // H

    def rms(t, w):
        return t / torch.sqrt((t * t).mean(-1, keepdim=True) + eps) * w

    def linear(t, name):
        bias = hf.get(name[:-len("weight")] + "bias")
        return t @ hf[name].float().T + (0 if bias is None else bias.float())

    h = x
    for i in layers:
        p = f"model.layers.{i}."
        a = rms(h, hf[p + "input_layernorm.weight"].float())
        q, k, v = (linear(a, p + f"self_attn.{n}_proj.weight").view(B, N, -1, hd) for n in "qkv")
        heads = []
        for head in range(H):
            kv = head // (H // KV)
            scores = q[:, :, head] @ k[:, :, kv].transpose(1, 2) / math.sqrt(hd)
            heads.append(torch.softmax(scores, -1) @ v[:, :, kv])
        h = h + linear(torch.cat(heads, -1), p + "self_attn.o_proj.weight")
        f = rms(h, hf[p + "post_attention_layernorm.weight"].float())
        h = h + (F.silu(linear(f, p + "mlp.gate_proj.weight")) * linear(f, p + "mlp.up_proj.weight")) @ \
            hf[p + "mlp.down_proj.weight"].float().T
    return rms(h, 1.0)


@pytest.mark.parametrize("family", ["llama3", "mistral", "qwen2"])
def test_family_block_equals_reference(tmp_path, family):
    config, hf = write_hf_family(str(tmp_path), family, seed=3, num_shards=3, **SMALL)
    m = build_llama(str(tmp_path), "2,0")
    cfg = m.config
    assert (cfg.model_type, cfg.dim, cfg.n_heads, cfg.kv_heads, cfg.ffn_hidden_dim, cfg.qkv_bias, cfg.norm_eps) == \
        (config["model_type"], 64, 4, 2, 96, family == "qwen2", config["rms_norm_eps"])
    assert m.llm_identity["layers"] == [2, 0] and m.llm_identity["model_type"] == config["model_type"]
    if family == "qwen2":  # biases loaded from the file, layer 2 first
        assert torch.equal(m.layers[0].attention.wk.bias, hf["model.layers.2.self_attn.k_proj.bias"].float())
    x = torch.randn(2, 12, 64)
    expect = hf_reference(x, hf, [2, 0], config)
    torch.testing.assert_close(m(x), expect, rtol=1e-5, atol=1e-5)


def test_sharded_layers_are_read_one_at_a_time_from_their_shards(tmp_path, monkeypatch):
    _, hf = write_hf_family(str(tmp_path), "llama3", seed=4, num_shards=4, **SMALL)
    with open(tmp_path / "model.safetensors.index.json") as f:
        weight_map = json.load(f)["weight_map"]
    events = []
    import safetensors
    real_open, real_hash = safetensors.safe_open, llama.layer_sha256
    monkeypatch.setattr(safetensors, "safe_open", lambda f, **kw: events.append(os.path.basename(f)) or
                        real_open(f, **kw))
    monkeypatch.setattr(llama, "layer_sha256", lambda state: events.append("hash") or real_hash(state))
    m = build_llama(str(tmp_path), "2,1")
    shards = [sorted({weight_map[k] for k in hf if k.startswith(f"model.layers.{i}.")}) for i in (2, 1)]
    assert len(shards[0]) == 2  # layer 2 straddles two shards
    assert events == [*shards[0], "hash", *shards[1], "hash"]  # each layer read, hashed, converted, then the next
    assert torch.equal(m.layers[1].feed_forward.w2.weight, hf["model.layers.1.mlp.down_proj.weight"].float())


@pytest.mark.parametrize("spec, n, expect", [
    ("15", 32, [15]), (15, 32, [15]), ("-1", 32, [31]), ("14,15", 32, [14, 15]), ("12:16", 32, [12, 13, 14, 15]),
    ("-4:", 32, [28, 29, 30, 31]), (":2,-1", 32, [0, 1, 31]), ("0:32:10", 32, [0, 10, 20, 30]), ([3, 1], 4, [3, 1]),
])
def test_layer_specs(spec, n, expect):
    assert resolve_layers(spec, n) == expect


@pytest.mark.parametrize("spec, error, message", [
    ("32", IndexError, r"LLM layer 32 out of range: the model has 32 layers"),
    ("-33", IndexError, r"LLM layer -33 out of range"),
    ("16:12", ValueError, r"the range 16:12 selects no layer of 32"),
    ("3-5", ValueError, r"'3-5' is not an index \(15, -1\), a list \(14,15\) or a range"),
    ("1:2:3:4", ValueError, r"'1:2:3:4' is not an index"),
])
def test_layer_spec_errors(spec, error, message):
    with pytest.raises(error, match=message):
        resolve_layers(spec, 32)
    if error is ValueError and "range" not in message:
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            layer_spec_arg(spec)


def test_layers_stack_in_the_given_order(folders):
    root, meta, _ = folders
    m = build_llama(str(root / "meta"), "-1,0:2")
    assert m.llm_identity["layers"] == [2, 0, 1]
    for block, i in zip(m.layers, [2, 0, 1]):
        assert torch.equal(block.attention.wq.weight, meta[f"layers.{i}.attention.wq.weight"].float())
    x = torch.randn(1, 6, 64)
    h = x
    for i in [2, 0, 1]:
        h = reference_block(h, {k: meta[f"layers.{i}.{k}"].float() for k in LAYER_KEYS}, CFG)
    torch.testing.assert_close(m(x), h / torch.sqrt((h * h).mean(-1, keepdim=True) + 1e-5), rtol=1e-5, atol=1e-5)
    assert build_llama(None, "40,-1", CFG).llm_identity["layers"] == [40, 2]  # random block: no source depth to check


@pytest.mark.parametrize("change, message", [
    ({"model_type": "gemma", "architectures": ["GemmaForCausalLM"]},
     r"model_type 'gemma', architectures \['GemmaForCausalLM'\] is not supported; supported model_type values: "
     r"llama, mistral, qwen2"),
    ({"hidden_act": "gelu_pytorch_tanh"}, r"hidden_act 'gelu_pytorch_tanh' .*only SwiGLU"),
    ({"attention_bias": True}, r"attention_bias/mlp_bias true .*only as Qwen2's q/k/v biases"),
    ({"num_key_value_heads": 3}, r"num_attention_heads 4 is not a multiple of num_key_value_heads 3"),
])
def test_unsupported_config_is_refused_with_what_was_found(tmp_path, change, message):
    write_hf_family(str(tmp_path), "llama3", num_shards=1, **{**SMALL, "num_hidden_layers": 1})
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(ValueError, match=r"config.json: " + message):
        load_llama_config(str(tmp_path))


def test_meta_moe_is_refused(folders, tmp_path):
    root, _, _ = folders
    params = {"dim": 64, "n_heads": 4, "n_layers": 3, "moe": {"num_experts": 8}}  # Mixtral's own format
    (tmp_path / "params.json").write_text(json.dumps(params))
    (tmp_path / "consolidated.00.pth").write_bytes((root / "meta" / "consolidated.00.pth").read_bytes())
    with pytest.raises(ValueError, match="params.json: a mixture-of-experts model"):
        load_llama_config(str(tmp_path))


def test_random_stand_in_block_is_initialised_like_an_untrained_llama():
    """No folder: N(0, 0.02) weights, zero biases (Qwen2-style biases included), so the block adds small updates to
    the residual stream (nn.Linear's default init would replace the stream by its own output)."""
    torch.manual_seed(0)
    cfg = LLaMAConfig(dim=256, n_heads=4, n_layers=1, multiple_of=256, norm_eps=1e-6, qkv_bias=True)
    block = llama.build_llama(None, 0, cfg)
    weights = [m.weight for m in block.modules() if isinstance(m, torch.nn.Linear)]
    assert len(weights) == 7 and all(abs(w.std().item() - 0.02) < 0.002 for w in weights)
    assert all(not m.bias.any() for m in block.modules() if isinstance(m, torch.nn.Linear) and m.bias is not None)
    x = torch.randn(2, 10, 256)
    assert ((block.hidden(x) - x).norm() / x.norm()).item() < 0.3
