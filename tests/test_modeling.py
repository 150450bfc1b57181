"""The VideoMAE ViT and ViT-LLaMA: the registry, keys and shapes, math, gradients, checkpointing, dtypes."""
import ast
import glob
import math
import os
import re
import warnings

import numpy as np
import pytest
import torch

from fakes import published_model_shapes, single_thread, write_meta_llama  # noqa: F401 (autouse fixture)
from llama import LLaMAConfig, LLaMATransformer
from modeling_finetune import Attention, get_sinusoid_encoding_table
from models import create_model, list_models, model_spec

TINY = dict(all_frames=4, img_size=32, num_classes=7)


def tiny_llama(**kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return create_model("vit_llama_tiny_patch16", **TINY, **kw)


@pytest.mark.parametrize("name, dim, llama", [("vit_small_patch16_224", 384, None),
                                              ("vit_base_patch16_224", 768, None),
                                              ("vit_llama_small_patch16_224", 384, (4096, 11008)),
                                              ("vit_llama_base_patch16_224", 768, (4096, 11008))])
def test_models_have_the_published_keys_and_shapes(name, dim, llama):
    """Every tensor of the released fine-tuned models (key list written from the published code), nothing more; all
    but the LLaMA block train."""
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = create_model(name)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == published_model_shapes(dim, 12, 174, *(llama or (None, None)))
    assert {k for k, p in model.named_parameters() if p.requires_grad} == {k for k in got if not k.startswith("llama.")}


# The names the published fine-tuning scripts pass to --model (VideoMAE's ViTs; LM4VisualEncoding's ViT-LLaMA), and
# whether the model has an LLM block.
PUBLISHED_NAMES = {"vit_small_patch16_224": False, "vit_base_patch16_224": False,
                   "vit_llama_small_patch16_224": True, "vit_llama_base_patch16_224": True}


def test_every_registered_model_builds_as_its_entry_declares():
    """Each name builds a classifier of the asked size, and its entry's family (LLM block or not) is what it builds."""
    for name in list_models():
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = create_model(name, num_classes=5)
        assert m.head.out_features == 5, name
        assert model_spec(name).has_llama == isinstance(getattr(m, "llama", None), LLaMATransformer), name
    assert {n: model_spec(n).has_llama for n in PUBLISHED_NAMES} == PUBLISHED_NAMES


def test_every_model_the_scripts_name_is_registered():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    named = set()
    for script in glob.glob(os.path.join(root, "scripts", "*.sh")):
        named |= set(re.findall(r"(?:--model |MODEL:-)[\"']?(\w+)", open(script).read()))
    assert PUBLISHED_NAMES.keys() <= named and named <= set(list_models())


def test_llm_options_are_refused_by_models_without_an_llm_block():
    with pytest.raises(ValueError, match="unknown model 'vit_nope'.*vit_small_patch16_224"):
        create_model("vit_nope")
    create_model("vit_tiny_patch16", llama_path=None, llama_layer=None, llama_dtype=None, **TINY)  # "not given"
    for option, value in (("llama_path", "/somewhere"), ("llama_layer", 15), ("llama_dtype", "float32"),
                          ("llama_config", LLaMAConfig())):
        with pytest.raises(ValueError, match=f"vit_tiny_patch16 has no LLaMA block: {option} apply only to "
                                             f"vit_llama_base_patch16_224, vit_llama_small"):
            create_model("vit_tiny_patch16", **{option: value}, **TINY)
    import models
    with pytest.raises(ValueError, match="model 'vit_tiny_patch16' is declared by two model modules"):
        models.collect(models.modeling_finetune.MODELS, {"vit_tiny_patch16": model_spec("vit_llama_tiny_patch16")})


def test_timm_models_of_the_same_name_stay_timm_s():
    """Our registry is not timm's: after importing it, timm still builds its own image ViT for the names we share
    and knows none of the others."""
    import timm
    from timm.models.vision_transformer import VisionTransformer as TimmViT
    shared = [n for n in list_models() if timm.is_model(n)]
    assert shared == ["vit_base_patch16_224", "vit_large_patch16_224", "vit_small_patch16_224"]
    with torch.device("meta"):
        theirs = timm.create_model("vit_small_patch16_224")
    assert type(theirs) is TimmViT and theirs.patch_embed.proj.kernel_size == (16, 16)  # 2-D images, a CLS token
    assert type(create_model("vit_small_patch16_224", **TINY)).__module__ == "modeling_finetune"


def test_sinusoid_table_matches_formula_and_is_a_nonpersistent_buffer():
    n, d = 50, 12
    expect = np.zeros((n, d))
    for p in range(n):
        for j in range(d):
            angle = p / 10000 ** (2 * (j // 2) / d)
            expect[p, j] = math.sin(angle) if j % 2 == 0 else math.cos(angle)
    np.testing.assert_allclose(get_sinusoid_encoding_table(n, d)[0].numpy(), expect, rtol=0, atol=1e-6)
    m = create_model("vit_tiny_patch16", **TINY)
    assert "pos_embed" in dict(m.named_buffers()) and "pos_embed" not in m.state_dict()
    assert m.pos_embed.shape == (1, 2 * 2 * 2, 192)
    assert m.to(torch.float64).pos_embed.dtype == torch.float64  # moves with the module
    learn = create_model("vit_tiny_patch16", use_learnable_pos_emb=True, **TINY)
    assert learn.state_dict()["pos_embed"].shape == (1, 8, 192)


def test_forward_shapes_tokens_and_init():
    m = create_model("vit_tiny_patch16", all_frames=4, img_size=48, num_classes=5, init_scale=0.001)
    assert m.patch_embed.patch_size == (16, 16) and m.patch_embed.tubelet_size == 2 and m.get_num_layers() == 4
    assert m.patch_embed.num_patches == 2 * 3 * 3
    assert "pos_embed" in m.no_weight_decay()
    x = torch.randn(2, 3, 4, 48, 48)
    assert m.forward_tokens(x).shape == (2, 18, 192)
    assert m(x).shape == (2, 5) and m(x).dtype == torch.float32
    assert m.head.weight.std() < 0.02 * 0.01 and m.blocks[0].attn.q_bias.abs().sum() == 0
    with pytest.raises(ValueError, match="input gives 8 tokens, the model expects 18.*3 x 4 x 48 x 48"):
        m(torch.randn(1, 3, 4, 32, 32))


def test_patch_embed_equals_conv3d():
    m = create_model("vit_tiny_patch16", all_frames=4, img_size=48)
    x = torch.randn(2, 3, 4, 48, 48)
    expect = torch.nn.functional.conv3d(x, m.patch_embed.proj.weight, m.patch_embed.proj.bias, stride=(2, 16, 16))
    torch.testing.assert_close(m.patch_embed(x), expect.flatten(2).transpose(1, 2), rtol=1e-5, atol=1e-5)


def test_attention_equals_explicit_softmax_and_k_bias_stays_zero():
    torch.manual_seed(0)
    a = Attention(24, num_heads=3)
    with torch.no_grad():
        a.q_bias.normal_()
        a.v_bias.normal_()
    x = torch.randn(2, 7, 24)
    w = a.qkv.weight
    q = x @ w[:24].T + a.q_bias
    k = x @ w[24:48].T  # no k bias
    v = x @ w[48:].T + a.v_bias
    split = lambda t: t.view(2, 7, 3, 8).transpose(1, 2)  # noqa: E731
    attn = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(8), dim=-1)
    expect = a.proj((attn @ split(v)).transpose(1, 2).reshape(2, 7, 24))
    out = a(x)
    torch.testing.assert_close(out, expect, rtol=1e-5, atol=1e-5)
    out.sum().backward()
    assert a.q_bias.grad is not None and a.v_bias.grad is not None


def test_mean_pooling_and_no_weight_decay_names_real_parameters():
    m = create_model("vit_tiny_patch16", use_learnable_pos_emb=True, **TINY).eval()
    x = torch.randn(1, 3, 4, 32, 32)
    torch.testing.assert_close(m(x), m.head(m.fc_norm(m.forward_tokens(x).mean(1))))
    assert m.no_weight_decay() <= dict(m.named_parameters()).keys()  # every name it gives exists (no CLS token)


def test_gradients_reach_vit_and_mappers_never_llama():
    m = tiny_llama()
    m(torch.randn(2, 3, 4, 32, 32)).logsumexp(-1).sum().backward()
    for name, p in m.named_parameters():
        if name.startswith("llama."):
            assert not p.requires_grad and p.grad is None, name
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_gradient_checkpointing_gives_equal_outputs_and_grads():
    torch.manual_seed(0)
    a = tiny_llama(drop_path_rate=0.0)
    b = tiny_llama(use_checkpoint=True)
    b.load_state_dict(a.state_dict())
    assert b.llama.use_checkpoint
    x = torch.randn(2, 3, 4, 32, 32)
    ya, yb = a(x), b(x)
    torch.testing.assert_close(ya, yb, rtol=0, atol=0)
    ya.square().sum().backward()
    yb.square().sum().backward()
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        if pa.requires_grad:
            torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-6, atol=1e-7, msg=n)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_llama_keeps_fp32_io_and_grads(dtype):
    torch.manual_seed(0)
    ref = tiny_llama()
    m = tiny_llama(llama_dtype=dtype)
    m.load_state_dict(ref.state_dict())
    assert all(p.dtype == getattr(torch, dtype) for p in m.llama.parameters())
    assert m.llama_dim_mapper1.weight.dtype == torch.float32 and m.blocks[0].attn.qkv.weight.dtype == torch.float32
    x = torch.randn(2, 3, 4, 32, 32)
    y = m(x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, ref(x), rtol=0.05, atol=0.05 * ref(x).abs().max().item())
    y.sum().backward()
    assert m.llama_dim_mapper1.weight.grad is not None and m.patch_embed.proj.weight.grad is not None
    assert all(p.grad is None for p in m.llama.parameters())


def test_llama_folder_sets_config_and_mapper_dims(tmp_path):
    cfg = LLaMAConfig(dim=64, n_heads=4, n_layers=2, multiple_of=32, norm_eps=1e-5)
    sd = write_meta_llama(str(tmp_path), cfg, seed=3)
    m = create_model("vit_llama_tiny_patch16", llama_path=str(tmp_path), llama_layer=1, **TINY)
    assert m.llama_dim_mapper1.weight.shape == (64, 192) and m.llama_dim_mapper2.weight.shape == (192, 64)
    assert m.llama.config.norm_eps == 1e-5
    assert torch.equal(m.llama.layers[0].feed_forward.w2.weight, sd["layers.1.feed_forward.w2.weight"].float())
    assert m(torch.randn(1, 3, 4, 32, 32)).shape == (1, 7)


def test_random_llama_warns():
    with pytest.warns(UserWarning, match="RANDOM frozen weights"):
        create_model("vit_llama_tiny_patch16", **TINY)


def test_building_models_loads_no_data_or_training_code():
    """predict.py and analyze_tokens.py build models without the training stack: no import reachable from the
    registry (function-level ones included) reaches the data, augmentation or training modules."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    files = {os.path.basename(p).removesuffix(".py"): p for p in glob.glob(os.path.join(root, "*.py"))}
    files.update((os.path.basename(os.path.dirname(p)), p) for p in glob.glob(os.path.join(root, "*", "__init__.py")))
    reached, todo = set(), ["models"]
    while todo:
        module = todo.pop()
        reached.add(module)
        for node in ast.walk(ast.parse(open(files[module]).read())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            todo += [n.split(".")[0] for n in names if n.split(".")[0] in files.keys() - reached]
    assert {"modeling_finetune_llama", "llama", "checkpoint"} <= reached
    training = {"datasets", "video_transforms", "device_augment", "engine_for_finetuning", "optim_factory",
                "run_class_finetuning", "run_control", "reports"}
    assert training.isdisjoint(reached), sorted(training & reached)
