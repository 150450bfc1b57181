"""analyze_tokens.py on tiny trained checkpoints (a ViT-LLaMA on two Mistral-style GQA layers, and a plain ViT): the
maps it draws and saves equal the norms read from the model's own forward pass by hooks."""
import argparse
import json
import os

import matplotlib.image
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import analyze_tokens
from datasets import read_test_views
from fakes import single_thread, write_hf_family  # noqa: F401 (autouse fixture)
from models import create_model
from video_transforms import normalize_clips

ARGS = {"num_frames": 4, "input_size": 32, "short_side_size": 32, "test_num_segment": 2, "test_num_crop": 3}


def tiny_trained(path, name, **kw):
    """``name`` after 3 AdamW steps on random clips, saved as training saves it (model, args, llm)."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, all_frames=4, img_size=32, **kw)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        F.cross_entropy(model(torch.randn(2, 3, 4, 32, 32)), torch.tensor([0, 2])).backward()
        opt.step()
        opt.zero_grad()
    torch.save({"model": model.state_dict(), "args": {"model": name, **ARGS}, "llm": getattr(model, "llm_identity", None)}, path)
    return model.eval()


def hooked_norms(model, clip, module):
    """Token norms of ``module``'s output during model(clip), as a T' x H' x W' array, and the logits."""
    seen = []
    handle = module.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    with torch.no_grad():
        logits = model(clip[None])
    handle.remove()
    return seen[0][0].float().norm(dim=-1).reshape(model.patch_embed.grid_size).numpy(), logits[0]


@pytest.fixture
def figures(monkeypatch):
    """The figures analyze_tokens draws (each is also saved as the PNG)."""
    drawn = []
    real = analyze_tokens.draw
    monkeypatch.setattr(analyze_tokens, "draw", lambda *a: drawn.append(real(*a)) or drawn[-1])
    return drawn


def overlay_rows(fig, n_rows, T):
    """The values each overlay image of the grid shows: row r (1..) -> T' x H' x W'. Row 0 holds the frames."""
    grid = fig.axes[:n_rows * T]  # the subplots, row-major; colour bars come after
    return [np.stack([ax.images[1].get_array() for ax in grid[r * T:(r + 1) * T]]) for r in range(1, n_rows)]


def first_val_video(data_dir):
    return os.path.join(data_dir, open(os.path.join(data_dir, "val.csv")).readline().split()[0])


def test_llm_maps_equal_the_model_s_intermediate_tensors(synthetic_dir, tmp_path, figures):
    write_hf_family(str(tmp_path / "mistral"), "mistral", seed=1, hidden_size=64, num_attention_heads=4,
                    num_key_value_heads=2, intermediate_size=96, num_hidden_layers=2, vocab_size=32)
    model = tiny_trained(tmp_path / "ck.pth", "vit_llama_tiny_patch16", llama_path=str(tmp_path / "mistral"),
                         llama_layer="0:2")
    video = first_val_video(synthetic_dir)
    out = tmp_path / "maps"
    result, = analyze_tokens.main([video, "--resume", str(tmp_path / "ck.pth"), "--out_dir", str(out), "--top", "3",
                                   "--json", str(tmp_path / "top.json")])
    clip = normalize_clips(read_test_views(video, argparse.Namespace(**ARGS))[0][1])  # centre crop, temporal view 0
    before, logits = hooked_norms(model, clip, model.llama_dim_mapper1)
    after, _ = hooked_norms(model, clip, model.llama.layers[-1])  # before the block's final RMSNorm
    expect = {"llm_input": before, "llm_output": after, "change": after - before}
    assert before.shape == (2, 2, 2) and np.abs(after - before).max() > 0.1
    saved = np.load(result["npz"])
    drawn = overlay_rows(figures[0], 4, 2)
    for i, (key, value) in enumerate(expect.items()):
        np.testing.assert_allclose(saved[key], value, rtol=1e-5, atol=1e-5, err_msg=key)
        np.testing.assert_allclose(drawn[i], value, rtol=1e-5, atol=1e-5, err_msg=key)
    png = matplotlib.image.imread(result["png"])
    assert png.shape[:2] == (round(100 * figures[0].get_figheight()), round(100 * figures[0].get_figwidth()))
    assert result["view"] == 1 and result["prediction"]["class_id"] == int(logits.argmax())
    top = json.loads((tmp_path / "top.json").read_text())[0]["top_tokens"]
    assert [t["change"] for t in top] == pytest.approx(sorted(expect["change"].ravel(), reverse=True)[:3], abs=1e-5)
    t, r, c = np.unravel_index(expect["change"].argmax(), (2, 2, 2))
    assert (top[0]["tubelet"], top[0]["frames"], top[0]["pixels_yx"]) == (t, [2 * t, 2 * t + 1], [16 * r, 16 * c])


def test_plain_vit_maps_its_last_block(synthetic_dir, tmp_path, figures):
    model = tiny_trained(tmp_path / "vit.pth", "vit_tiny_patch16")
    video = first_val_video(synthetic_dir)
    result, = analyze_tokens.main([video, "--resume", str(tmp_path / "vit.pth"), "--out_dir", str(tmp_path),
                                   "--view", "4"])
    clip = normalize_clips(read_test_views(video, argparse.Namespace(**ARGS))[0][4])
    norms, _ = hooked_norms(model, clip, model.blocks[-1])
    assert list(np.load(result["npz"])) == ["last_block"]
    np.testing.assert_allclose(np.load(result["npz"])["last_block"], norms, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(overlay_rows(figures[0], 2, 2)[0], norms, rtol=1e-5, atol=1e-5)
    with pytest.raises(analyze_tokens.predict.PredictError, match="--view 6: the test has 6 views"):
        analyze_tokens.main([video, "--resume", str(tmp_path / "vit.pth"), "--out_dir", str(tmp_path), "--view", "6"])
