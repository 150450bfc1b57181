"""Where does the frozen LLM block act? Per-token feature norms of a video, drawn over its frames.

    python analyze_tokens.py VIDEO [VIDEO ...] --resume CKPT [--out_dir DIR] [--view K] [--top 10] [--json OUT.json]

For a ViT-LLaMA checkpoint, each tubelet token's L2 norm is taken at the LLM block's input (the output of
llama_dim_mapper1) and at its output (the last LLM layer's residual stream: the block's final RMSNorm, which feeds
llama_dim_mapper2, would scale every token to norm sqrt(width)), and the change is output minus input. For a plain
ViT it is the norm of the last block's output, so that a ViT and a ViT-LLaMA can be compared side by side.

The PNG (DIR/<video>_tokens.png) has one column per tubelet (2 frames; the first one is shown) and one row per map:
the frames, then each map over them (one colour scale per row; the change on a diverging scale around 0). The maps
are also saved as T' x H' x W' arrays (DIR/<video>_tokens.npz), and the tokens the block amplifies most (plain ViT:
the largest norms) are printed. The clip is one test view (default: the centre crop of the first temporal view);
flags not given default to the checkpoint's saved args, as in predict.py.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

import predict
from models import model_spec
from video_transforms import normalize_clips


def get_args_parser() -> argparse.ArgumentParser:
    p = predict.get_args_parser()
    p.prog, p.description = "analyze_tokens.py", __doc__.splitlines()[0]
    p.add_argument("--out_dir", default="token_maps", help="where the PNG and npz of each video go")
    p.add_argument("--view", type=int, default=None,
                   help="test view to analyse, temporal-major (default: the centre crop of temporal view 0)")
    p.add_argument("--top", type=int, default=10, help="tokens to print")
    return p


@torch.inference_mode()
def token_maps(model: torch.nn.Module, clip: torch.Tensor, has_llama: bool) -> dict[str, np.ndarray]:
    """T' x H' x W' float32 maps of one clip (C x T x H x W): 'llm_input', 'llm_output', 'change' for a model with
    an LLM block, 'last_block' otherwise."""
    grid = model.patch_embed.grid_size
    x = clip[None].to(next(model.parameters()).device, torch.float32)
    if not has_llama:
        return {"last_block": model.forward_tokens(x)[0].float().norm(dim=-1).reshape(grid).cpu().numpy()}
    before, after = model.llm_tokens(x)
    b = before[0].float().norm(dim=-1).reshape(grid).cpu().numpy()
    a = after[0].float().norm(dim=-1).reshape(grid).cpu().numpy()
    return {"llm_input": b, "llm_output": a, "change": a - b}


def top_tokens(maps: dict[str, np.ndarray], k: int, patch: tuple[int, int], tubelet: int) -> list[dict]:
    """The k tokens with the largest change (plain ViT: the largest norm), with their place in the clip."""
    key = "change" if "change" in maps else "last_block"
    order = np.argsort(-maps[key], axis=None)[:k]
    rows = []
    for flat in order:
        t, r, c = (int(i) for i in np.unravel_index(flat, maps[key].shape))
        rows.append({"tubelet": t, "frames": [t * tubelet, (t + 1) * tubelet - 1],
                     "pixels_yx": [r * patch[0], c * patch[1]], **{n: float(m[t, r, c]) for n, m in maps.items()}})
    return rows


def draw(frames: np.ndarray, maps: dict[str, np.ndarray], tubelet: int, title: str, path: str):
    """Save the grid to path and return the figure. frames: T' x H x W x 3 in [0, 1], the first of each tubelet."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = {"llm_input": "LLM input norm", "llm_output": "LLM output norm", "change": "output - input",
             "last_block": "last block norm"}
    T, H, W = frames.shape[:3]
    fig, axes = plt.subplots(1 + len(maps), T, figsize=(1.6 * T + 1.0, 1.6 * (1 + len(maps)) * H / W + 0.4),
                             squeeze=False, layout="constrained")
    for t in range(T):
        axes[0, t].imshow(frames[t])
        axes[0, t].set_title(f"frames {tubelet * t}-{tubelet * (t + 1) - 1}", fontsize=8)
    axes[0, 0].set_ylabel("clip", fontsize=8)
    for row, (key, m) in enumerate(maps.items(), start=1):
        if key == "change":
            lim = float(np.abs(m).max()) or 1.0
            cmap, vmin, vmax = "RdBu_r", -lim, lim
        else:
            cmap, vmin, vmax = "viridis", float(m.min()), float(m.max())
        for t in range(T):
            ax = axes[row, t]
            ax.imshow(frames[t].mean(-1), cmap="gray", vmin=0, vmax=1)
            im = ax.imshow(m[t], cmap=cmap, vmin=vmin, vmax=vmax, alpha=0.65, extent=(0, W, H, 0),
                           interpolation="nearest")
        axes[row, 0].set_ylabel(names[key], fontsize=8)
        fig.colorbar(im, ax=list(axes[row]), fraction=0.03, pad=0.02)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return fig


def main(argv: list[str] | None = None) -> list[dict]:
    args, model, class_names = predict.setup(get_args_parser().parse_args(argv))
    has_llama = model_spec(args.model).has_llama
    view = args.test_num_crop // 2 if args.view is None else args.view
    if not 0 <= view < args.test_num_segment * args.test_num_crop:
        raise predict.PredictError(f"--view {view}: the test has {args.test_num_segment * args.test_num_crop} "
                                   f"views (test_num_segment x test_num_crop)")
    os.makedirs(args.out_dir, exist_ok=True)
    tubelet, patch = model.patch_embed.tubelet_size, model.patch_embed.patch_size
    results = []
    for path in args.videos:
        raw = predict.decode_views(path, args)[view]  # uint8 T x H x W x C, the pixels the model sees
        clip = normalize_clips(raw.to(args.device))
        maps = token_maps(model, clip, has_llama)
        with torch.inference_mode():
            probs = model(clip[None]).float().softmax(-1)[0].cpu()
        best = predict.top5(probs, class_names)[0]
        frames = raw[::tubelet].float().div(255).numpy()
        stem = os.path.join(args.out_dir, os.path.splitext(os.path.basename(path))[0] + "_tokens")
        label = best["name"] or f"class {best['class_id']}"
        draw(frames, maps, tubelet, f"{os.path.basename(path)} (view {view}) - {args.model} - predicted {label} "
                                    f"({best['prob']:.2f})", stem + ".png")
        np.savez(stem + ".npz", **maps)
        top = top_tokens(maps, args.top, patch, tubelet)
        results.append({"video": path, "view": view, "png": stem + ".png", "npz": stem + ".npz", "prediction": best,
                        "top_tokens": top})
        print(f"{path}: view {view}, predicted {label} ({best['prob']:.3f}); {stem}.png")
        what = "amplified most by the LLM block (output - input norm)" if has_llama else "largest last-block norm"
        print(f"  tokens {what}:")
        for r in top:
            values = ", ".join(f"{k} {r[k]:+.3f}" if k == "change" else f"{k} {r[k]:.3f}" for k in maps)
            print(f"    tubelet {r['tubelet']} (frames {r['frames'][0]}-{r['frames'][1]}), patch at y "
                  f"{r['pixels_yx'][0]} x {r['pixels_yx'][1]}: {values}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    try:
        main()
    except predict.PredictError as e:
        sys.exit(f"analyze_tokens.py: {e}")
