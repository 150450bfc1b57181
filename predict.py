"""Top-5 classes for video files with a fine-tuned checkpoint, using the multi-view test pipeline.

    python predict.py VIDEO [VIDEO ...] --model NAME --resume CKPT [--labels something-something-v2-labels.json]
                      [--json OUT.json] [--device cpu|cuda]

Every video is decoded once into test_num_segment x test_num_crop views (the same pixels as the multi-view test);
the softmaxes of its views are averaged, so a video gets the prediction `--eval` gives it. Data and model flags left
out default to the checkpoint's saved args when it has them, else to the SSv2 recipe (16 x 224, 2 x 3 views).
"""
import argparse
import json
import os
import sys
import warnings

import torch

from checkpoint import safe_load
from datasets import load_class_names, read_test_views
from engine_for_finetuning import predict_views
from video_transforms import normalize_clips
from modeling_finetune import create_model

DEFAULTS = dict(model=None, num_frames=16, input_size=224, short_side_size=224, test_num_segment=2,
                test_num_crop=3, tubelet_size=2, llama_layer=15, llama_dtype="float32")


class PredictError(RuntimeError):
    """A problem with the user's inputs (video, checkpoint, flags), reported without a traceback."""


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Predict the top-5 classes of video files with a fine-tuned checkpoint.")
    p.add_argument("videos", nargs="+", help="video files (any format the decoder reads)")
    p.add_argument("--model", default=None, help="model name (default: the one saved in the checkpoint's args)")
    p.add_argument("--resume", required=True, help="fine-tuned checkpoint (ours or a model-zoo .pth)")
    p.add_argument("--labels", default=None, help="something-something-v2-labels.json for class names")
    p.add_argument("--json", default=None, help="also write the predictions to this JSON file")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    p.add_argument("--use_ema", action="store_true", help="use the checkpoint's model_ema weights")
    p.add_argument("--nb_classes", type=int, default=None, help="default: rows of the checkpoint's head.weight")
    for name in ("num_frames", "input_size", "short_side_size", "test_num_segment", "test_num_crop", "tubelet_size",
                 "llama_layer"):
        p.add_argument(f"--{name}", type=int, default=None, help=f"default: checkpoint args, else {DEFAULTS[name]}")
    p.add_argument("--llama_dtype", default=None, choices=["float32", "bfloat16", "float16"])
    p.add_argument("--llama_path", default=None,
                   help="LLaMA folder, only to take the LLaMA block's config from it; its weights come from the "
                        "checkpoint")
    p.add_argument("--decoder", default="auto", choices=["auto", "decord", "pyav"])
    p.add_argument("--decode_threads", type=int, default=1)
    return p


def _saved_args(ckpt: dict) -> dict:
    saved = ckpt.get("args")
    if isinstance(saved, argparse.Namespace):
        return vars(saved)
    return saved if isinstance(saved, dict) else {}


def _state_dict(ckpt: dict, path: str, use_ema: bool) -> dict:
    if use_ema:
        if not isinstance(ckpt.get("model_ema"), dict):
            raise PredictError(f"checkpoint {path} has no model_ema weights (it was trained without --model_ema)")
        # the EMA covers the trainable weights (older checkpoints: all of them); the frozen ones are in 'model'
        return {**_state_dict(ckpt, path, use_ema=False), **ckpt["model_ema"]}
    for key in ("model", "module"):
        if isinstance(ckpt.get(key), dict):
            return ckpt[key]
    if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return ckpt
    raise PredictError(f"checkpoint {path} holds no model weights: expected a 'model' entry, found keys "
                       f"{sorted(ckpt)[:10]}")


def resolve_args(args: argparse.Namespace, ckpt: dict) -> argparse.Namespace:
    """Fill flags left out from the checkpoint's saved args, then from DEFAULTS; nb_classes from head.weight."""
    saved = _saved_args(ckpt)
    for name, default in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, saved.get(name, default))
    if args.model is None:
        raise PredictError(f"checkpoint {args.resume} does not record its model name: pass --model")
    if args.nb_classes is None:
        head = _state_dict(ckpt, args.resume, args.use_ema).get("head.weight")
        if head is None:
            raise PredictError(f"checkpoint {args.resume} has no head.weight to infer the classes from: "
                               f"pass --nb_classes")
        args.nb_classes = head.shape[0]
    args.saved_model = saved.get("model")
    args.use_mean_pooling = saved.get("use_mean_pooling", True)
    return args


def load_model(args: argparse.Namespace, ckpt: dict) -> torch.nn.Module:
    """Build args.model and load the checkpoint strictly; a mismatch names the tensors and the likely cause."""
    kwargs = dict(num_classes=args.nb_classes, all_frames=args.num_frames, img_size=args.input_size,
                  tubelet_size=args.tubelet_size, use_mean_pooling=args.use_mean_pooling)
    if "llama" in args.model:
        kwargs.update(llama_path=args.llama_path, llama_layer=args.llama_layer, llama_dtype=args.llama_dtype)
    try:
        with warnings.catch_warnings():  # the random-LLaMA warning does not apply: the strict load below replaces it
            warnings.filterwarnings("ignore", message="no llama_path given")
            model = create_model(args.model, **kwargs)
    except ValueError as e:  # unknown name or an impossible configuration
        raise PredictError(f"--model {args.model}: {e}") from None
    state = _state_dict(ckpt, args.resume, args.use_ema)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        lines = [f"checkpoint {args.resume} does not fit --model {args.model} "
                 f"(num_frames {args.num_frames}, input_size {args.input_size}, tubelet_size {args.tubelet_size}, "
                 f"nb_classes {args.nb_classes}):"]
        if "head.weight" in state and state["head.weight"].shape[0] != args.nb_classes:
            lines.append(f"  it was saved from a model with a {state['head.weight'].shape[0]}-class head; "
                         f"--nb_classes {args.nb_classes} was asked for")
        if args.saved_model and args.saved_model != args.model:
            lines.append(f"  its saved args say --model {args.saved_model}")
        for title, keys in (("shape mismatches", mismatched), ("missing keys", missing),
                            ("unexpected keys", unexpected)):
            if keys:
                lines.append(f"  {len(keys)} {title}: {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}")
        raise PredictError("\n".join(lines))
    model.load_state_dict(state, strict=True)
    return model.to(args.device).eval()


@torch.inference_mode()
def predict_video(model: torch.nn.Module, path: str, args: argparse.Namespace) -> torch.Tensor:
    """Mean of the view softmaxes of one video (nb_classes,), float32 on the CPU."""
    if not os.path.isfile(path):
        raise PredictError(f"video {path}: no such file")
    try:
        views, _ = read_test_views(path, args)
    except Exception as e:  # any decoder failure: name the file and pass on the decoder's reason
        raise PredictError(f"video {path}: cannot be decoded ({type(e).__name__}: {e})") from None
    _, probs = predict_views(model, normalize_clips(views.to(args.device))[None])
    return probs[0].cpu()


def top5(probs: torch.Tensor, class_names: list[str] | None) -> list[dict]:
    values, ids = probs.topk(min(5, probs.numel()))
    return [{"class_id": int(c), "name": class_names[c] if class_names else None, "prob": float(v)}
            for v, c in zip(values, ids)]


def main(argv: list[str] | None = None) -> list[dict]:
    args = get_args_parser().parse_args(argv)
    args.data_set = "SSV2"
    missing = [v for v in args.videos if not os.path.isfile(v)]
    if missing:
        raise PredictError(f"video {missing[0]}: no such file" + (f" (and {len(missing) - 1} more)"
                                                                   if len(missing) > 1 else ""))
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise PredictError("--device cuda: no CUDA device is visible; use --device cpu")
    if not os.path.isfile(args.resume):
        raise PredictError(f"checkpoint {args.resume}: no such file")
    try:
        ckpt = safe_load(args.resume)
    except RuntimeError as e:
        raise PredictError(str(e)) from None
    if not isinstance(ckpt, dict):
        raise PredictError(f"checkpoint {args.resume} holds a {type(ckpt).__name__}, not a dict of weights")
    args = resolve_args(args, ckpt)
    try:
        class_names = load_class_names(args.labels) if args.labels else None
    except (OSError, ValueError) as e:
        raise PredictError(f"--labels {args.labels}: {e}") from None
    if class_names is not None and len(class_names) != args.nb_classes:
        raise PredictError(f"--labels {args.labels} names {len(class_names)} classes; the checkpoint's head has "
                           f"{args.nb_classes}")
    model = load_model(args, ckpt)
    del ckpt
    results = []
    for path in args.videos:
        ranked = top5(predict_video(model, path, args), class_names)
        results.append({"video": path, "top5": ranked})
        print(path)
        for i, r in enumerate(ranked, 1):
            label = f"{r['name']} ({r['class_id']})" if r["name"] is not None else f"class {r['class_id']}"
            print(f"  {i}. {r['prob']:.4f}  {label}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        print(f"predictions written to {args.json}")
    return results


if __name__ == "__main__":
    try:
        main()
    except PredictError as e:
        sys.exit(f"predict.py: {e}")
