"""Top-5 classes for video files with a fine-tuned checkpoint, using the multi-view test pipeline.

    python predict.py VIDEO [VIDEO ...] --model NAME --resume CKPT [--labels something-something-v2-labels.json]
                      [--json OUT.json] [--device cpu|cuda]

Every video is decoded once into test_num_segment x test_num_crop views (the same pixels as the multi-view test);
the softmaxes of its views are averaged, so a video gets the prediction `--eval` gives it. Data and model flags left
out default to the checkpoint's saved args when it has them, else to the SSv2 recipe (16 x 224, 2 x 3 views). The
views follow the dataset's protocol (--data_set): SSv2's segments, or dense chunks at --sampling_rate for the others
(5 x 3 views unless the checkpoint or a flag says otherwise). A video that decodes fewer frames than its header
promises (cut short) is predicted on the frames it has, with a warning (and "truncated" in the JSON).
"""
import argparse
import json
import os
import sys
import warnings

import torch

import checkpoint
from datasets import DATASETS, SAMPLING_RATE, TEST_NUM_CROP, dataset_spec, load_class_names, read_test_views
from datasets.decoding import check_truncated
from engine_for_finetuning import predict_views
from llama import LLaMAConfig, layer_spec_arg
from models import create_model, model_spec
from video_transforms import normalize_clips

DEFAULTS = dict(model=None, data_set="SSV2", sampling_rate=SAMPLING_RATE, num_frames=16, input_size=224,
                short_side_size=224, test_num_segment=None, test_num_crop=TEST_NUM_CROP, tubelet_size=2)
LLAMA_FLAGS = ("llama_layer", "llama_dtype")  # default to the checkpoint's args for the models with an LLM block


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
    p.add_argument("--data_set", default=None, choices=list(DATASETS),
                   help="the test views' protocol (default: checkpoint args, else SSV2)")
    for name in ("sampling_rate", "num_frames", "input_size", "short_side_size", "test_num_crop", "tubelet_size"):
        p.add_argument(f"--{name}", type=int, default=None, help=f"default: checkpoint args, else {DEFAULTS[name]}")
    p.add_argument("--test_num_segment", type=int, default=None,
                   help="default: checkpoint args, else the dataset's (2 for SSV2, 5 for the others)")
    p.add_argument("--llama_layer", type=layer_spec_arg, default=None, help="default: checkpoint args")
    p.add_argument("--llama_dtype", default=None, choices=["float32", "bfloat16", "float16"])
    p.add_argument("--llama_path", default=None,
                   help="LLM folder the checkpoint was trained with: its block is checked against the checkpoint's "
                        "record. Not needed: the frozen weights and their shape come from the checkpoint")
    p.add_argument("--allow_arg_mismatch", action="store_true",
                   help="predict even though --num_frames/--input_size/--model differ from the checkpoint's args")
    p.add_argument("--decoder", default="auto", choices=["auto", "decord", "pyav"])
    p.add_argument("--decode_threads", type=int, default=1)
    return p


def _weights(args: argparse.Namespace, ckpt: dict) -> dict:
    """The state dict to load: the EMA weights on request (checkpoint.ema_state), else 'model'/'module' or a bare
    state dict."""
    if args.use_ema:
        return checkpoint.ema_state(ckpt, path=args.resume)
    return checkpoint.model_state(ckpt, checkpoint.MODEL_KEYS, path=args.resume, allow_bare=True)


def resolve_args(args: argparse.Namespace, ckpt: dict) -> argparse.Namespace:
    """Fill flags left out from the checkpoint's saved args, then from DEFAULTS (test_num_segment: the dataset's);
    nb_classes from head.weight."""
    saved = checkpoint.saved_args(ckpt)
    for name, default in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, saved.get(name, default))
    try:
        spec = dataset_spec(args.data_set)
    except ValueError as e:  # a checkpoint's saved data_set this code does not know
        raise PredictError(f"checkpoint {args.resume}: {e}; pass --data_set") from None
    if args.test_num_segment is None:
        args.test_num_segment = spec.test_num_segment
    if args.model is None:
        raise PredictError(f"checkpoint {args.resume} does not record its model name: pass --model")
    try:
        has_llama = model_spec(args.model).has_llama
    except ValueError as e:
        raise PredictError(f"--model {args.model}: {e}") from None
    for name in LLAMA_FLAGS:
        if getattr(args, name) is None and has_llama:
            setattr(args, name, saved.get(name))
    if args.nb_classes is None:
        head = _weights(args, ckpt).get("head.weight")
        if head is None:
            raise PredictError(f"checkpoint {args.resume} has no head.weight to infer the classes from: "
                               f"pass --nb_classes")
        args.nb_classes = head.shape[0]
    return args


def load_model(args: argparse.Namespace, ckpt: dict) -> torch.nn.Module:
    """Build args.model and load the checkpoint strictly; a mismatch names the tensors (or the LLM blocks) and the
    likely cause. Without --llama_path, the LLM block takes the shape the checkpoint records."""
    recorded = ckpt.get("llm")
    kwargs = dict(num_classes=args.nb_classes, all_frames=args.num_frames, img_size=args.input_size,
                  tubelet_size=args.tubelet_size, llama_path=args.llama_path, llama_layer=args.llama_layer,
                  llama_dtype=args.llama_dtype)
    if recorded and model_spec(args.model).has_llama:  # the block the checkpoint says it holds
        if args.llama_path is None:
            kwargs["llama_config"] = LLaMAConfig.from_description(recorded)
        if args.llama_path is None or args.llama_layer is None:
            kwargs["llama_layer"] = recorded["layers"]
    try:
        with warnings.catch_warnings():  # the random-LLM warning does not apply: the strict load below replaces it
            warnings.filterwarnings("ignore", message="no llama_path given")
            model = create_model(args.model, **kwargs)
    except ValueError as e:  # unknown name or an impossible configuration
        raise PredictError(f"--model {args.model}: {e}") from None
    details = (f"(num_frames {args.num_frames}, input_size {args.input_size}, tubelet_size {args.tubelet_size}, "
               f"nb_classes {args.nb_classes})")
    try:
        checkpoint.check_llm_identity(recorded, model, args.resume)
        checkpoint.load_strict(model, _weights(args, ckpt), args.resume, args.model, details,
                               checkpoint.saved_args(ckpt).get("model"))
    except RuntimeError as e:
        raise PredictError(str(e)) from None
    return model.to(args.device).eval()


def decode_views(path: str, args: argparse.Namespace) -> torch.Tensor:
    """The test views of one video (uint8 V x T x H x W x C); PredictError naming the file when it cannot be read."""
    if not os.path.isfile(path):
        raise PredictError(f"video {path}: no such file")
    try:
        return read_test_views(path, args)[0]
    except Exception as e:  # any decoder failure: name the file and pass on the decoder's reason
        raise PredictError(f"video {path}: cannot be decoded ({type(e).__name__}: {e})") from None


@torch.inference_mode()
def predict_video(model: torch.nn.Module, path: str, args: argparse.Namespace) -> torch.Tensor:
    """Mean of the view softmaxes of one video (nb_classes,), float32 on the CPU."""
    _, probs = predict_views(model, normalize_clips(decode_views(path, args).to(args.device))[None])
    return probs[0].cpu()


def truncation_warning(path: str, args: argparse.Namespace) -> str | None:
    """'N frames decode, its header promises P' for a cut video (printed as a warning), else None; a video that
    cannot be decoded at all is left to decode_views to report."""
    try:
        cut = check_truncated(path, args.decoder)
    except Exception:
        return None
    if cut:
        print(f"WARNING: video {path} is truncated: {cut}; its views come from the frames it has",
              file=sys.stderr, flush=True)
    return cut


def top5(probs: torch.Tensor, class_names: list[str] | None) -> list[dict]:
    values, ids = probs.topk(min(5, probs.numel()))
    return [{"class_id": int(c), "name": class_names[c] if class_names else None, "prob": float(v)}
            for v, c in zip(values, ids)]


def setup(args: argparse.Namespace) -> tuple[argparse.Namespace, torch.nn.Module, list[str] | None]:
    """Check the inputs, read the checkpoint, fill flags from it, build and load the model: (args, model, names)."""
    if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        raise PredictError(f"--json {args.json}: its folder does not exist (checked before any work)")
    if len(args.videos) == 1 and not os.path.isfile(args.videos[0]):
        raise PredictError(f"video {args.videos[0]}: no such file")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise PredictError("--device cuda: no CUDA device is visible; use --device cpu")
    if not os.path.isfile(args.resume):
        raise PredictError(f"checkpoint {args.resume}: no such file")
    try:
        ckpt = checkpoint.safe_load(args.resume)
        args = resolve_args(args, ckpt)
    except RuntimeError as e:  # unreadable, or no weights under the expected entries
        raise PredictError(str(e)) from None
    try:
        class_names = load_class_names(args.labels) if args.labels else None
    except (OSError, ValueError) as e:
        raise PredictError(f"--labels {args.labels}: {e}") from None
    if class_names is not None and len(class_names) != args.nb_classes:
        raise PredictError(f"--labels {args.labels} names {len(class_names)} classes; the checkpoint's head has "
                           f"{args.nb_classes}")
    model = load_model(args, ckpt)
    try:  # after the strict load, whose report names the tensors of another model
        checkpoint.check_eval_args(args, ckpt, args.resume)
    except RuntimeError as e:
        raise PredictError(str(e)) from None
    return args, model, class_names


def main(argv: list[str] | None = None) -> list[dict]:
    args, model, class_names = setup(get_args_parser().parse_args(argv))
    results, failed = [], []
    for path in args.videos:
        try:
            ranked = top5(predict_video(model, path, args), class_names)
        except PredictError as e:  # a bad video is reported and skipped; the others still get predictions
            failed.append(str(e))
            print(f"SKIPPED {e}", file=sys.stderr, flush=True)
            continue
        cut = truncation_warning(path, args)
        results.append({"video": path, "top5": ranked, "truncated": cut})
        print(path + (f" (truncated: {cut})" if cut else ""))
        for i, r in enumerate(ranked, 1):
            label = f"{r['name']} ({r['class_id']})" if r["name"] is not None else f"class {r['class_id']}"
            print(f"  {i}. {r['prob']:.4f}  {label}")
    if args.json and results:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        print(f"predictions for {len(results)} videos written to {args.json}")
    if failed:
        raise PredictError(failed[0] if len(args.videos) == 1 else f"{len(failed)} of {len(args.videos)} videos "
                           f"could not be predicted (the others were): {'; '.join(failed)}")
    return results


if __name__ == "__main__":
    try:
        main()
    except PredictError as e:
        sys.exit(f"predict.py: {e}")
