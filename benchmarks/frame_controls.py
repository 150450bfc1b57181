"""Order controls for a trained model: multi-view top-1 when every clip is one frame repeated.

For each test video the normal views are built (datasets.read_test_views); the control replaces each view's T frames
by its first (or middle) frame. A model that reads motion falls towards chance (12.5% for the 8 synthetic classes);
one that reads appearance keeps its accuracy.

  python benchmarks/frame_controls.py --resume demo_output/vit_llama_tiny/checkpoint-5.pth \
      --data_path demo_output/synthetic_ssv2 [--model vit_llama_tiny_patch16 --num_frames 8 --input_size 64 ...]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import checkpoint  # noqa: E402
from datasets import TEST_NUM_CROP, TEST_NUM_SEGMENT, read_test_views, read_video_list  # noqa: E402
from engine_for_finetuning import predict_views  # noqa: E402
from models import create_model  # noqa: E402
from video_transforms import normalize_clips  # noqa: E402


def controls(model: torch.nn.Module, videos: list[tuple[str, int]], args) -> dict[str, float]:
    """Top-1 (percent) of the normal multi-view test and of the first-/middle-frame controls."""
    hits = {"normal": 0, "first_frame": 0, "middle_frame": 0}
    t = args.num_frames
    for path, label in videos:
        views = normalize_clips(read_test_views(path, args)[0])
        for name, frame in (("normal", None), ("first_frame", 0), ("middle_frame", t // 2)):
            x = views if frame is None else views[:, :, [frame] * t]
            _, probs = predict_views(model, x[None])
            hits[name] += int(probs[0].argmax().item() == label)
    return {k: 100.0 * v / len(videos) for k, v in hits.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--resume", required=True)
    p.add_argument("--data_path", required=True)
    p.add_argument("--csv", default="val.csv")
    p.add_argument("--model", default="vit_llama_tiny_patch16")
    p.add_argument("--nb_classes", type=int, default=8)
    p.add_argument("--num_frames", type=int, default=8)
    p.add_argument("--input_size", type=int, default=64)
    p.add_argument("--short_side_size", type=int, default=64)
    p.add_argument("--test_num_segment", type=int, default=TEST_NUM_SEGMENT)
    p.add_argument("--test_num_crop", type=int, default=TEST_NUM_CROP)
    p.add_argument("--limit", type=int, default=0, help="first N videos only (0: all)")
    args = p.parse_args()
    model = create_model(args.model, num_classes=args.nb_classes, all_frames=args.num_frames,
                         img_size=args.input_size)
    checkpoint.load_model_file(model, checkpoint.safe_load(args.resume), args.resume, args.model, allow_bare=True)
    model.eval()
    videos = read_video_list(os.path.join(args.data_path, args.csv))
    videos = videos[:args.limit] if args.limit else videos
    result = controls(model, videos, args)
    print(json.dumps({"videos": len(videos), **{k: round(v, 2) for k, v in result.items()}}))


if __name__ == "__main__":
    main()
