"""Safe loading, the --finetune adapter (VideoMAE pretrain files) and strict loading of model-zoo files."""
import argparse
import math
import os
import pickle
import re
import warnings
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

import checkpoint
import distributed
import utils
from checkpoint import (LLMMismatchError, check_llm_identity, epoch_checkpoint_names, find_resume_checkpoint,
                        interpolate_pos_embed, list_epoch_checkpoints, load_finetune_weights, load_model_file,
                        model_state, resume_training, safe_load, save_checkpoint, training_state)
from fakes import (published_model_shapes, single_thread, write_hf_llama, write_meta_llama,  # noqa: F401
                   write_videomae_pretrain, write_zoo_checkpoint)
from llama import LLaMAConfig, build_llama
from models import create_model

TINY = dict(all_frames=4, img_size=32, num_classes=7)


def vit(**kw):
    return create_model("vit_tiny_patch16", **{**TINY, **kw})


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_safe_load_allows_namespace_and_refuses_code(tmp_path):
    ok = tmp_path / "ok.pth"
    torch.save({"model": {"w": torch.ones(2)}, "args": argparse.Namespace(lr=1.0), "epoch": 3}, ok)
    ck = safe_load(str(ok))
    assert ck["args"].lr == 1.0 and torch.equal(ck["model"]["w"], torch.ones(2))
    evil = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, evil)
    with pytest.raises(RuntimeError, match="evil.pth"):
        safe_load(str(evil))
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps({"x": Evil()}))
    with pytest.raises(RuntimeError, match="raw.pkl"):
        safe_load(str(raw))


def test_truncated_and_missing_files_name_the_file(tmp_path):
    path = tmp_path / "ck.pth"
    torch.save({"model": vit().state_dict()}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(RuntimeError, match="ck.pth"):
        safe_load(str(path))
    with pytest.raises(RuntimeError, match="nope.pth: no such file"):
        safe_load(str(tmp_path / "nope.pth"))


def test_videomae_pretrain_checkpoint_loads_with_report(tmp_path):
    torch.manual_seed(0)
    source = vit()
    enc = write_videomae_pretrain(str(tmp_path / "pretrain.pth"), source)
    model = vit()
    report = load_finetune_weights(model, str(tmp_path / "pretrain.pth"))
    assert sorted(report["missing"]) == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    assert report["unexpected"] == []
    dropped = set(report["dropped"])
    assert {"norm.weight", "norm.bias", "mask_token", "encoder_to_decoder.weight", "decoder.head.weight"} <= dropped
    assert all(k.startswith(("decoder.", "encoder_to_decoder.", "mask_token", "norm.")) for k in dropped)
    own = model.state_dict()
    for k, v in enc.items():
        if not k.startswith("norm."):
            assert torch.equal(own[k], v), k


def test_llama_model_does_not_report_llama_keys_missing(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = create_model("vit_llama_tiny_patch16", **TINY)
    write_videomae_pretrain(str(tmp_path / "pretrain.pth"), vit())
    report = load_finetune_weights(model, str(tmp_path / "pretrain.pth"))
    assert sorted(report["missing"]) == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight",
                                         "llama_dim_mapper1.weight", "llama_dim_mapper2.weight"]


def test_prefixes_module_key_and_head_mismatch(tmp_path, capsys):
    src = vit(num_classes=400)
    sd = {f"backbone.{k}": v for k, v in src.state_dict().items()}
    torch.save({"module": {f"net.{k}": v for k, v in sd.items()}}, tmp_path / "ck.pth")
    model = vit()
    report = load_finetune_weights(model, str(tmp_path / "ck.pth"), model_prefix="net.")
    assert "  note: head: checkpoint has 400 classes, model 7: dropped (a new head is trained)\n" in \
        capsys.readouterr().out
    assert set(report["dropped"]) == {"head.weight", "head.bias"}
    assert sorted(report["missing"]) == ["head.bias", "head.weight"]
    assert torch.equal(model.blocks[3].mlp.fc2.weight, src.blocks[3].mlp.fc2.weight)
    # A bare state dict (no 'model'/'module' key) loads too.
    torch.save(src.state_dict(), tmp_path / "bare.pth")
    assert load_finetune_weights(vit(), str(tmp_path / "bare.pth"))["missing"] == ["head.weight", "head.bias"]


def test_a_head_that_fits_is_kept_and_said(tmp_path, capsys):
    src = vit()
    torch.save({"model": src.state_dict()}, tmp_path / "ck.pth")
    model = vit()
    report = load_finetune_weights(model, str(tmp_path / "ck.pth"))
    assert report["notes"][0] == "head: checkpoint has 7 classes, model 7: kept" and "head.weight" not in \
        report["dropped"]
    assert torch.equal(model.head.weight, src.head.weight) and "note: head: checkpoint has 7" in capsys.readouterr().out


def test_an_llm_block_checkpoint_into_a_plain_vit_is_refused_unless_allowed(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        src = create_model("vit_llama_tiny_patch16", **TINY)
    torch.save({"model": src.state_dict()}, tmp_path / "llm.pth")
    with pytest.raises(RuntimeError, match=r"llm.pth holds an LLM block \(llama.\*, llama_dim_mapper1.\*, "
                                           r"llama_dim_mapper2.\*\) that the model has not.*--allow_arg_mismatch"):
        load_finetune_weights(vit(), str(tmp_path / "llm.pth"))
    model = vit()
    report = load_finetune_weights(model, str(tmp_path / "llm.pth"), allow_arg_mismatch=True)
    assert {k.split(".")[0] for k in report["unexpected"]} == {"llama", "llama_dim_mapper1", "llama_dim_mapper2"}
    assert torch.equal(model.blocks[0].attn.qkv.weight, src.blocks[0].attn.qkv.weight)


def test_wrong_file_and_wrong_size_raise(tmp_path):
    torch.save({"model": {"foo.weight": torch.ones(3)}}, tmp_path / "other.pth")
    with pytest.raises(RuntimeError, match="other.pth: no tensor matches the model"):
        load_finetune_weights(vit(), str(tmp_path / "other.pth"))
    big = create_model("vit_small_patch16_224", **TINY)
    torch.save({"model": big.state_dict()}, tmp_path / "small.pth")
    with pytest.raises(ValueError, match=r"small.pth.*blocks.0.norm1.weight: checkpoint \(384,\) vs model \(192,\)"):
        load_finetune_weights(vit(), str(tmp_path / "small.pth"))


def interpolate_reference(pos, src, dst):
    """Space with bicubic per frame, then time with linear per (channel, position), written as plain loops."""
    (ts, hs, ws), (td, hd, wd) = src, dst
    c = pos.shape[-1]
    grid = pos.reshape(ts, hs, ws, c)
    frames = [torch.nn.functional.interpolate(grid[t].permute(2, 0, 1)[None], size=(hd, wd), mode="bicubic",
                                              align_corners=False)[0] for t in range(ts)]  # C x hd x wd each
    space = torch.stack(frames)  # ts x C x hd x wd
    out = torch.empty(td, c, hd, wd)
    for t in range(td):  # align_corners=False sample positions
        s = min(max((t + 0.5) * ts / td - 0.5, 0), ts - 1)
        lo = int(s)
        hi = min(lo + 1, ts - 1)
        out[t] = space[lo] * (1 - (s - lo)) + space[hi] * (s - lo)
    return out.permute(0, 2, 3, 1).reshape(1, td * hd * wd, c)


def test_pos_embed_interpolation_and_fixed_table_drop(tmp_path):
    pos = torch.randn(1, 4 * 3 * 3, 8)
    got = interpolate_pos_embed(pos, (4, 3, 3), (2, 2, 2))
    torch.testing.assert_close(got, interpolate_reference(pos, (4, 3, 3), (2, 2, 2)))
    assert torch.equal(interpolate_pos_embed(pos, (4, 3, 3), (4, 3, 3)), pos)
    # A learnable table on a 2 x 3 x 3 grid (48 px) into a model on 2 x 2 x 2 (32 px).
    src = vit(img_size=48, use_learnable_pos_emb=True)
    torch.save({"model": src.state_dict()}, tmp_path / "learn.pth")
    model = vit(use_learnable_pos_emb=True)
    report = load_finetune_weights(model, str(tmp_path / "learn.pth"))
    assert any("interpolated from grid (2, 3, 3) to (2, 2, 2)" in n for n in report["notes"])
    torch.testing.assert_close(model.pos_embed.data, interpolate_pos_embed(src.pos_embed.data, (2, 3, 3), (2, 2, 2)))
    fixed = vit()
    report = load_finetune_weights(fixed, str(tmp_path / "learn.pth"))
    assert "pos_embed" in report["dropped"] and "pos_embed" not in report["unexpected"]


def reference_logits(sd: dict, x: torch.Tensor, heads: int, llama_heads: int, eps: float = 1e-6) -> torch.Tensor:
    """The released ViT-LLaMA's forward written from its description, on a plain state dict: tubelet conv + sinusoid
    table, pre-norm blocks (q/v biases, k bias 0), mapper1, LLaMA layer without RoPE or mask (RMSNorm, SwiGLU),
    llama.norm, mapper2, mean over tokens, fc_norm, head."""
    w = sd["patch_embed.proj.weight"]
    h = F.conv3d(x, w, sd["patch_embed.proj.bias"], stride=w.shape[2:]).flatten(2).transpose(1, 2)
    B, N, D = h.shape
    angle = torch.tensor([[p / 10000 ** (2 * (j // 2) / D) for j in range(D)] for p in range(N)], dtype=x.dtype)
    h = h + torch.where(torch.arange(D) % 2 == 0, angle.sin(), angle.cos())

    def attend(q, k, v, n_heads):
        q, k, v = (t.reshape(B, N, n_heads, -1).transpose(1, 2) for t in (q, k, v))
        a = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(-1) @ v
        return a.transpose(1, 2).reshape(B, N, -1)

    for i in range(sum(k.endswith("attn.qkv.weight") for k in sd)):
        p = f"blocks.{i}."
        y = F.layer_norm(h, (D,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], 1e-6)
        q, k, v = (y @ sd[p + "attn.qkv.weight"].T).chunk(3, -1)
        h = h + attend(q + sd[p + "attn.q_bias"], k, v + sd[p + "attn.v_bias"], heads) @ sd[p + "attn.proj.weight"].T \
            + sd[p + "attn.proj.bias"]
        y = F.layer_norm(h, (D,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], 1e-6)
        h = h + F.gelu(y @ sd[p + "mlp.fc1.weight"].T + sd[p + "mlp.fc1.bias"]) @ sd[p + "mlp.fc2.weight"].T \
            + sd[p + "mlp.fc2.bias"]

    def rms(t, weight):
        return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + eps) * weight

    z = h @ sd["llama_dim_mapper1.weight"].T
    p = "llama.layers.0."
    y = rms(z, sd[p + "attention_norm.weight"])
    q, k, v = (y @ sd[p + f"attention.w{c}.weight"].T for c in "qkv")
    z = z + attend(q, k, v, llama_heads) @ sd[p + "attention.wo.weight"].T
    y = rms(z, sd[p + "ffn_norm.weight"])
    z = z + (F.silu(y @ sd[p + "feed_forward.w1.weight"].T) * (y @ sd[p + "feed_forward.w3.weight"].T)) \
        @ sd[p + "feed_forward.w2.weight"].T
    h = rms(z, sd["llama.norm.weight"]) @ sd["llama_dim_mapper2.weight"].T
    feat = F.layer_norm(h.mean(1), (D,), sd["fc_norm.weight"], sd["fc_norm.bias"], 1e-6)
    return feat @ sd["head.weight"].T + sd["head.bias"]


def test_zoo_checkpoint_loads_strictly_and_gives_the_published_forward(tmp_path):
    """A zoo file built from the published key list (not from this project's model) fills every tensor of
    vit_llama_tiny_patch16, which then computes the published forward on those weights."""
    shapes = published_model_shapes(192, 4, 7, llama_dim=256, llama_hidden=768)  # LLaMA rule: 256 * ceil(682 / 256)
    sd = write_zoo_checkpoint(str(tmp_path / "zoo.pth"), shapes, args={"model": "vit_llama_tiny_patch16"})
    ckpt = safe_load(str(tmp_path / "zoo.pth"))
    assert set(ckpt) == {"model", "optimizer", "epoch", "scaler", "args"}
    assert isinstance(ckpt["args"], argparse.Namespace)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = create_model("vit_llama_tiny_patch16", **TINY).eval()
    load_model_file(model, ckpt, str(tmp_path / "zoo.pth"), "vit_llama_tiny_patch16")
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        got = model(x)
    torch.testing.assert_close(got, reference_logits(sd, x, heads=3, llama_heads=4), rtol=1e-5, atol=2e-5)


def test_safe_load_passes_mmap(tmp_path):
    legacy = tmp_path / "legacy.pth"
    torch.save({"w": torch.ones(3)}, legacy, _use_new_zipfile_serialization=False)
    assert torch.equal(safe_load(str(legacy))["w"], torch.ones(3))
    with pytest.raises(RuntimeError, match=r"cannot read LLM weights .*legacy.pth.*mmap"):
        safe_load(str(legacy), mmap=True, what="LLM weights")  # mmap needs the zip format: the flag got through


def test_model_state_acceptance_rules():
    sd = {"a.weight": torch.ones(2), "b.bias": torch.zeros(1)}
    other = {"c": torch.ones(1)}
    assert model_state({"model": sd, "epoch": 1}) is sd
    assert model_state({"module": sd}) is sd
    assert model_state({"weights": sd, "model": other}, "weights|model") is sd  # first listed entry wins
    assert model_state({"weights": sd, "model": other}, ["model", "weights"]) is other
    assert model_state(sd, allow_bare=True) == sd
    with pytest.raises(RuntimeError, match=r"x.pth holds no weights under 'model' or 'module'; its entries: "
                                           r"\['a.weight', 'b.bias'\]"):
        model_state(sd, path="x.pth")
    with pytest.raises(RuntimeError, match=r"no weights under 'model_ema' \(nor is it a bare state dict\); its "
                                           r"entries: \['epoch', 'model'\]"):
        model_state({"model": sd, "epoch": 1}, "model_ema", allow_bare=True)
    with pytest.raises(RuntimeError, match="holds a list, not a dict"):
        model_state([sd], allow_bare=True)


def test_load_strict_refuses_misfit_with_report_and_loads_a_fit():
    torch.manual_seed(0)
    model, src = vit(), vit(num_classes=5)
    state = {k: v for k, v in src.state_dict().items() if k != "fc_norm.bias"}
    state["extra.weight"] = torch.ones(1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ckpt = {"model": state, "args": argparse.Namespace(model="vit_small_patch16_224")}
    with pytest.raises(RuntimeError) as err:
        load_model_file(model, ckpt, "ck.pth", "vit_tiny_patch16", "(nb_classes 7)")
    assert str(err.value).splitlines() == [
        "checkpoint ck.pth does not fit --model vit_tiny_patch16 (nb_classes 7):",
        "  it holds a 5-class head; the model has 7 classes (--nb_classes)",
        "  its saved args say --model vit_small_patch16_224",
        "  2 shape mismatches: head.weight: checkpoint (5, 192) vs model (7, 192), head.bias: checkpoint (5,) vs "
        "model (7,)",
        "  1 missing keys: fc_norm.bias",
        "  1 unexpected keys: extra.weight"]
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing half-loaded
    fit = vit()
    load_model_file(model, {"model": fit.state_dict(), "args": {"model": "vit_tiny_patch16"}}, "ok.pth",
                    "vit_tiny_patch16")
    assert all(torch.equal(v, fit.state_dict()[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("epoch, epochs, freq, best, names", [
    (0, 3, 1, False, ["checkpoint-last.pth", "checkpoint-0.pth"]),
    (0, 3, 2, True, ["checkpoint-last.pth", "checkpoint-best.pth"]),
    (1, 3, 2, False, ["checkpoint-last.pth", "checkpoint-1.pth"]),
    (1, 3, 100, False, ["checkpoint-last.pth"]),  # every epoch: a kill never sends the run back to epoch 0
    (2, 3, 100, True, ["checkpoint-last.pth", "checkpoint-2.pth", "checkpoint-best.pth"]),  # the last epoch: numbered
])
def test_epoch_checkpoint_names(epoch, epochs, freq, best, names):
    assert epoch_checkpoint_names(epoch, epochs, freq, best) == names


def test_training_state_round_trips_through_resume(tmp_path, capsys):
    """A mid-epoch state (epoch 4 done, epoch 5 stopped after 3 steps) comes back as one ResumeState: epoch 5 from
    step 3, this rank's meter sums and per-rank state, the best epoch, and this process's RNG stream."""
    torch.manual_seed(0)
    model = vit()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(7)
    args = argparse.Namespace(resume=str(tmp_path / "checkpoint-last.pth"), auto_resume=False, output_dir="",
                              model="vit_tiny_patch16", model_key="model|module", start_epoch=0, seed=0,
                              batch_size=4, update_freq=2)
    progress = {"epoch": 5, "step": 3, "layout": [4, 2, 1], "meters": [{"sums": torch.ones(5)}]}
    state = training_state(args, model, opt, None, None, epoch=4, max_accuracy=12.5,
                           rng_states=[utils.capture_rng_state()], aug_rng=[gen.get_state()], best_epoch=2,
                           train_progress=progress)
    save_checkpoint(args.resume, state)
    expected_gen, expected_rng = torch.rand(3, generator=gen), torch.rand(3)
    restored = vit()
    resumed = resume_training(args, restored, torch.optim.AdamW(restored.parameters()), None, None,
                              steps_per_epoch=10, per_rank=["aug_rng", "sampler"])
    assert (resumed.epoch, resumed.step, resumed.max_accuracy, resumed.best_epoch, resumed.path) == (
        5, 3, 12.5, 2, args.resume)
    assert torch.equal(resumed.meter_state["sums"], torch.ones(5)) and torch.equal(torch.rand(3), expected_rng)
    assert list(resumed.per_rank) == ["aug_rng"]  # an entry the file lacks starts afresh, with a warning
    assert "holds no 'sampler' state" in capsys.readouterr().out
    assert torch.equal(torch.rand(3, generator=torch.Generator().set_state(resumed.per_rank["aug_rng"])), expected_gen)
    assert torch.equal(restored.head.weight, model.head.weight)
    with pytest.raises(ValueError, match=r"extra entry 'llm' would overwrite"):
        training_state(args, model, opt, None, None, 4, 0.0, None, llm={})


def test_resume_step_after_another_batch_layout_scales_to_the_videos_seen(capsys):
    """Stopped after 3 steps of 4 videos x update_freq 2 x 1 process (24 videos): with batch 8 x 1 x 2 processes (16
    per step) epoch 5 continues at step 24 // 16 = 1, without the old meter sums, with a warning; other epochs and
    files without progress start at step 0."""
    args = argparse.Namespace(batch_size=8, update_freq=1)
    progress = {"epoch": 5, "step": 3, "layout": [4, 2, 1], "meters": [{"sums": torch.ones(5)}]}
    with mock.patch.object(distributed, "get_world_size", lambda: 2):
        assert checkpoint.resume_step(args, progress, 5, steps_per_epoch=10) == (1, None)
        assert "continues at step 1" in capsys.readouterr().out
        assert checkpoint.resume_step(args, {**progress, "step": 90}, 5, steps_per_epoch=10) == (10, None)
    assert checkpoint.resume_step(args, progress, 6, 10) == (0, None) == checkpoint.resume_step(args, None, 5, 10)


def test_atomic_save_keeps_previous_file_when_interrupted(tmp_path, monkeypatch):
    path = str(tmp_path / "checkpoint-0.pth")
    save_checkpoint(path, {"model": {"w": torch.ones(2)}})
    real_save = torch.save

    def dying_save(obj, f, *a, **k):
        f.write(b"partial garbage")
        raise KeyboardInterrupt("killed mid-save")
    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"model": {"w": torch.zeros(2)}})
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.equal(safe_load(path)["model"]["w"], torch.ones(2))
    assert os.listdir(tmp_path) == ["checkpoint-0.pth"]  # no temporary file left behind


def test_find_resume_skips_damaged_newest(tmp_path):
    for e in (1, 2, 10):
        save_checkpoint(str(tmp_path / f"checkpoint-{e}.pth"), {"model": {"e": torch.tensor(e)}})
    (tmp_path / "checkpoint-best.pth").write_bytes(b"ignored by auto-resume")
    data = (tmp_path / "checkpoint-10.pth").read_bytes()
    (tmp_path / "checkpoint-10.pth").write_bytes(data[: len(data) // 2])  # truncated
    assert [e for e, _ in list_epoch_checkpoints(str(tmp_path))] == [10, 2, 1]
    with pytest.warns(UserWarning, match="checkpoint-10.pth"):
        path, ckpt = find_resume_checkpoint(str(tmp_path))
    assert path.endswith("checkpoint-2.pth") and int(ckpt["model"]["e"]) == 2
    assert find_resume_checkpoint(str(tmp_path / "empty")) == (None, None)


# ---------------------------------------------------------------------------------------------------------------------
# Which LLM block a checkpoint holds

LLM = LLaMAConfig(dim=64, n_heads=4, n_layers=3, multiple_of=32, norm_eps=1e-5)
LLM_GQA = LLaMAConfig(dim=64, n_heads=4, n_layers=3, multiple_of=64, norm_eps=1e-5, n_kv_heads=2)


@pytest.fixture(scope="module")
def llm_folders(tmp_path_factory):
    """Meta and Hugging Face folders of one small LLaMA, another LLaMA of the same shape, and a GQA one."""
    root = tmp_path_factory.mktemp("llm")
    meta = write_meta_llama(str(root / "meta"), LLM, seed=1, dtype=torch.bfloat16)
    write_hf_llama(str(root / "hf"), meta, LLM, num_shards=2)
    write_meta_llama(str(root / "other"), LLM, seed=9, dtype=torch.bfloat16)
    write_hf_llama(str(root / "hf_gqa"), write_meta_llama(str(root / "gqa"), LLM_GQA, seed=2), LLM_GQA)
    return root


def test_identity_check_accepts_the_same_block_and_refuses_another(llm_folders):
    root = llm_folders
    saved = build_llama(str(root / "meta"), [1])
    recorded = saved.llm_identity
    assert recorded["source"] == os.path.abspath(root / "meta") and recorded["layers"] == [1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_llm_identity(recorded, build_llama(str(root / "hf"), [1]), "ck.pth")  # same LLM, HF format
    cases = [(build_llama(str(root / "meta"), [2]), r"layers \[1\].*\n.*layers \[2\]"),
             (build_llama(str(root / "other"), [1]), "sha256"),
             (build_llama(None, [1], LLaMAConfig(dim=32, n_heads=4, n_layers=3)), r"model: +llama \(hidden 32"),
             (build_llama(None, [1, 2], LLM), r"layers \[1\].*\n.*layers \[1, 2\]")]
    for model, detail in cases:
        with pytest.raises(LLMMismatchError, match=r"checkpoint ck.pth holds another LLM block than the model built:"
                                                   r"\n  checkpoint: llama \(hidden 64, 4 heads, FFN 192, eps 1e-05\) "
                                                   rf"(?s:.*){detail}"):
            check_llm_identity(recorded, model, "ck.pth")
    random_block = build_llama(None, [7], LLM)
    check_llm_identity(recorded, random_block, "ck.pth")  # weights will come from the checkpoint: adopt its record
    assert random_block.llm_identity == recorded
    with pytest.raises(LLMMismatchError, match=r"checkpoint: llama .* layers \[0\], random weights"):
        check_llm_identity(build_llama(None, [0], LLM).llm_identity, build_llama(str(root / "meta"), [0]), "ck.pth")
    with pytest.warns(UserWarning, match="ck.pth records no LLM identity .* replace the model's llama .* unchecked"):
        check_llm_identity(None, saved, "ck.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fresh = build_llama(None, [7], LLM)
        check_llm_identity(None, fresh, "zoo.pth")  # a random block just takes the file's weights
    assert fresh.llm_identity["source"] == "zoo.pth (unrecorded)" and fresh.llm_identity["sha256"] is None
    with pytest.warns(UserWarning, match="zoo.pth records no LLM identity"):  # and carries "unrecorded" onwards
        check_llm_identity(fresh.llm_identity, saved, "zoo.pth")


def test_identity_round_trips_a_weights_only_checkpoint(llm_folders, tmp_path):
    block = build_llama(str(llm_folders / "hf_gqa"), "0:2")
    torch.save({"model": block.state_dict(), "llm": block.llm_identity}, tmp_path / "ck.pth")
    recorded = safe_load(str(tmp_path / "ck.pth"))["llm"]
    assert recorded == block.llm_identity and recorded["num_key_value_heads"] == 2
    assert LLaMAConfig.from_description(recorded).describe() == block.config.describe()


@pytest.mark.parametrize("entry, value, expected", [
    ("optimizer", [1, 2], "a dict"), ("rng_states", "x", "a list"), ("max_accuracy", "high", "a number"),
    ("train_progress", [1], "a dict"), ("best_epoch", 1.5, "an integer"),
    ("device_augment", {"generator": 1}, r"a list \(one state per rank\)")])
def test_resume_names_an_entry_of_the_wrong_type(tmp_path, entry, value, expected):
    """A file that loads but is not a training checkpoint of ours fails with one line naming the entry, not with a
    TypeError from deep inside a load."""
    model = vit()
    args = argparse.Namespace(resume=str(tmp_path / "odd.pth"), auto_resume=False, output_dir="",
                              model="vit_tiny_patch16", model_key="model|module", start_epoch=0, seed=0)
    torch.save({"model": model.state_dict(), "epoch": 3, entry: value}, args.resume)
    with pytest.raises(RuntimeError, match=rf"odd.pth: its '{entry}' entry is a {type(value).__name__}, expected "
                                           rf"{expected}"):
        resume_training(args, model, torch.optim.AdamW(model.parameters()), None, None, steps_per_epoch=1,
                        per_rank=[entry] if entry == "device_augment" else [])


def test_find_resume_takes_the_furthest_of_last_numbered_and_best(tmp_path):
    """checkpoint-last.pth partway through epoch 3 beats checkpoint-2.pth; a legacy-format (not memory-mappable)
    checkpoint-best.pth is still read; on a tie the numbered file is named."""
    w = {"w": torch.ones(1)}
    save_checkpoint(str(tmp_path / "checkpoint-2.pth"), {"model": w, "epoch": 2})
    save_checkpoint(str(tmp_path / "checkpoint-last.pth"), {"model": w, "epoch": 2,
                                                             "train_progress": {"epoch": 3, "step": 5}})
    torch.save({"model": w, "epoch": 1}, tmp_path / "checkpoint-best.pth", _use_new_zipfile_serialization=False)
    assert find_resume_checkpoint(str(tmp_path))[0].endswith("checkpoint-last.pth")
    save_checkpoint(str(tmp_path / "checkpoint-last.pth"), {"model": w, "epoch": 2})
    assert find_resume_checkpoint(str(tmp_path))[0].endswith("checkpoint-2.pth")
    os.remove(tmp_path / "checkpoint-2.pth")
    os.remove(tmp_path / "checkpoint-last.pth")
    assert find_resume_checkpoint(str(tmp_path))[0].endswith("checkpoint-best.pth")  # an older version's folder


def flip_tensor_byte(path: str) -> None:
    """Flip one byte in the middle of the largest tensor record of a torch zip archive (its structure intact)."""
    import zipfile
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
        at = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
        f.seek(at)
        byte = f.read(1)[0]
        f.seek(at)
        f.write(bytes([byte ^ 0x01]))


def test_a_saved_checkpoint_records_the_sha256_of_its_archive_and_loading_checks_it(tmp_path):
    """The zip comment holds 'sha256:' + the digest of the bytes torch.save wrote (comment length 0), computed here
    independently; torch.load still reads the file; one flipped tensor byte, which torch.load alone accepts, is
    refused by name; a file without a hash (another tool's) loads unchecked."""
    import hashlib
    import zipfile
    path = str(tmp_path / "checkpoint-last.pth")
    state = {"model": {"w": torch.arange(1000, dtype=torch.float32)}, "epoch": 3}
    digest = save_checkpoint(path, state)
    data = open(path, "rb").read()
    assert data[-71:] == b"sha256:" + digest.encode() and zipfile.ZipFile(path).comment == data[-71:]
    assert hashlib.sha256(data[:-73] + b"\x00\x00").hexdigest() == digest
    assert checkpoint.verify_content_hash(path) and torch.equal(safe_load(path)["model"]["w"], state["model"]["w"])
    flip_tensor_byte(path)
    assert not torch.equal(torch.load(path, weights_only=True)["model"]["w"], state["model"]["w"])  # loads silently
    with pytest.raises(RuntimeError, match=rf"cannot read checkpoint {path}: its content does not match the sha256 "
                                           rf"recorded when it was written \({digest[:16]}\.\.\. vs"):
        safe_load(path)
    plain = str(tmp_path / "plain.pth")
    torch.save(state, plain)
    assert checkpoint.recorded_content_hash(plain) is None and safe_load(plain)["epoch"] == 3


def test_a_write_error_that_torch_wraps_surfaces_as_the_os_error(monkeypatch):
    """/dev/full gives ENOSPC on every write; torch's writer may wrap it in its own RuntimeError ([enforce fail at
    inline_container.cc]): write_checkpoint raises the OSError itself, which save_checkpoint turns into one line."""
    import errno
    real = torch.save

    def wrapping_save(obj, f, *a, **k):
        try:
            real(obj, f, *a, **k)
        except OSError as e:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing "
                               "file data/0: file write failed") from e
    monkeypatch.setattr(torch, "save", wrapping_save)
    with open("/dev/full", "wb", buffering=0) as full, pytest.raises(OSError) as raised:
        checkpoint.write_checkpoint(full, {"w": torch.ones(10_000)})
    assert raised.value.errno == errno.ENOSPC


def test_resume_falls_back_from_a_flipped_byte_with_a_warning(data_dir, tmp_path, recorded, capsys):
    """checkpoint-last.pth (and checkpoint-1.pth, its hard link) with one tensor byte flipped: the rerun skips both,
    saying why, and resumes checkpoint-0.pth."""
    from runs import base_argv, train
    train(base_argv(data_dir, tmp_path, "--epochs", "2", "--save_ckpt_freq", "1"))
    flip_tensor_byte(str(tmp_path / "checkpoint-last.pth"))
    recorded["train"].clear()
    capsys.readouterr()
    with pytest.warns(UserWarning, match="skipping damaged checkpoint .*checkpoint-last.pth: .*does not match the "
                                         "sha256"):
        train(base_argv(data_dir, tmp_path, "--epochs", "3", "--save_ckpt_freq", "1"))
    out = capsys.readouterr().out
    assert re.search(r"auto-resume skips damaged checkpoint .*checkpoint-1.pth: .*does not match the sha256", out)
    assert re.search(r"Resuming from .*checkpoint-0.pth", out)
    assert [c["epoch"] for c in recorded["train"]] == [1, 2]
