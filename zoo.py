"""Evaluate every model-zoo checkpoint in a folder and write the table: published against measured.

A checkpoint named ``ssv2_*.pth`` or ``k400_*.pth`` is identified from its contents (the dataset and model from its
saved args, else the dataset from its name and the model from its keys and shapes), tested with its dataset's
published protocol by ``run_class_finetuning.py --eval``, and compared with the published top-1/top-5 of that model.
Writes ``zoo_results.md`` and ``zoo_results.csv``. Run through ``scripts/eval_zoo.sh``; flags after ``--`` go to
``run_class_finetuning.py`` (they come last, so they override the protocol's). torch and the models are imported
only once there is something to evaluate.
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass

# The dataset a file name's prefix stands for.
PREFIXES = {"ssv2_": "SSV2", "k400_": "Kinetics-400"}
# Each dataset's published multi-view test (16 frames at 224 px), as run_class_finetuning.py flags.
PROTOCOLS = {
    "SSV2": ["--num_frames", "16", "--input_size", "224", "--short_side_size", "224", "--test_num_segment", "2",
             "--test_num_crop", "3"],
    "Kinetics-400": ["--num_frames", "16", "--input_size", "224", "--short_side_size", "224", "--test_num_segment",
                     "5", "--test_num_crop", "3"],
}
# Published top-1/top-5 (%) by dataset and model. SSV2: LM4VisualEncoding's video_understanding model zoo (the
# checkpoints it links, 2 clips x 3 crops). Kinetics-400: VideoMAE's MODEL_ZOO.md, 1600-epoch pre-training, 5 clips x
# 3 crops.
PUBLISHED: dict[str, dict[str, tuple[float, float]]] = {
    "SSV2": {"vit_small_patch16_224": (64.71, 89.15), "vit_llama_small_patch16_224": (65.88, 89.93),
             "vit_base_patch16_224": (64.97, 89.50), "vit_llama_base_patch16_224": (66.03, 90.25)},
    "Kinetics-400": {"vit_small_patch16_224": (79.0, 93.8), "vit_base_patch16_224": (81.5, 95.1)},
}
COLUMNS = ("checkpoint", "model", "dataset", "published_top1", "published_top5", "measured_top1", "measured_top5",
           "diff_top1", "diff_top5", "videos", "views", "seconds")


@dataclass(frozen=True)
class ZooCheckpoint:
    """A checkpoint file and what it holds: the registered model, the dataset it was fine-tuned on, its classes."""
    path: str
    model: str
    dataset: str
    num_classes: int


def find_checkpoints(folder: str) -> list[str]:
    """The model-zoo files in ``folder`` (names starting with a dataset prefix, ``.pth``), sorted."""
    return sorted(p for p in glob.glob(os.path.join(folder, "*.pth")) if os.path.basename(p).startswith(
        tuple(PREFIXES)))


def model_from_keys(state: dict, path: str) -> str:
    """The registered model whose state dict has exactly these keys and shapes (a ViT-LLaMA file holds llama.* and
    mapper tensors, and its widths and depth tell the size apart)."""
    import torch

    from models import create_model, list_models, model_spec
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    has_llm = any(k.startswith("llama.") for k in shapes)
    for name in list_models():
        if model_spec(name).has_llama != has_llm:
            continue
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the stand-in LLM block's "random weights" warning
            model = create_model(name, num_classes=shapes["head.weight"][0])
        if {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes:
            return name
    raise ValueError(f"{path}: its {len(shapes)} tensors (patch_embed.proj.weight "
                     f"{shapes.get('patch_embed.proj.weight')}, LLM block: {'yes' if has_llm else 'no'}) fit no "
                     f"registered model's keys and shapes")


def identify(path: str) -> ZooCheckpoint:
    """What a zoo file holds, read from the file: the saved args' model and data_set when they name a registered
    model and a known protocol, else the model from the keys and the dataset from the file name's prefix."""
    import checkpoint
    from models import list_models
    ckpt = checkpoint.safe_load(path, mmap=True)
    state = checkpoint.model_state(ckpt, path=path)
    if "head.weight" not in state:
        raise ValueError(f"{path}: no head.weight: not a fine-tuned classifier (a pre-training checkpoint?)")
    saved = checkpoint.saved_args(ckpt)
    model = saved.get("model")
    if model not in list_models():
        model = model_from_keys(state, path)
    dataset = saved.get("data_set")
    if dataset not in PROTOCOLS:
        name = os.path.basename(path)
        dataset = next((d for p, d in PREFIXES.items() if name.startswith(p)), None)
        if dataset is None:
            raise ValueError(f"{path}: no data_set in its args and its name starts with none of {list(PREFIXES)}")
    return ZooCheckpoint(path, model, dataset, int(state["head.weight"].shape[0]))


def eval_argv(ck: ZooCheckpoint, output_dir: str, data_path: str, device: str, extra: list[str]) -> list[str]:
    """run_class_finetuning.py flags testing ``ck`` with its dataset's published protocol (``extra`` last)."""
    return ["--model", ck.model, "--eval", "--resume", ck.path, "--data_set", ck.dataset, "--nb_classes",
            str(ck.num_classes), "--data_path", data_path, "--output_dir", output_dir, "--device", device,
            "--dist_eval", *PROTOCOLS[ck.dataset], *extra]


def evaluate(argv: list[str], nproc: int) -> float:
    """Run the test (in this process, or under torchrun with ``nproc`` > 1 processes); the seconds it took."""
    start = time.time()
    if nproc > 1:
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "run_class_finetuning.py")
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), script, *argv],
                       check=True)
    else:
        import run_class_finetuning as run
        run.main(run.parse_args(argv))
    return time.time() - start


def result_row(ck: ZooCheckpoint, summary: dict, views: str, seconds: float,
               published: dict[str, dict[str, tuple[float, float]]]) -> dict:
    """One table row: the published numbers (None when there are none for this model), the measured ones and the
    differences (measured - published), in percent."""
    pub = published.get(ck.dataset, {}).get(ck.model)
    top1, top5 = float(summary["top1"]), float(summary["top5"])
    row = {"checkpoint": os.path.basename(ck.path), "model": ck.model, "dataset": ck.dataset,
           "published_top1": None, "published_top5": None, "measured_top1": top1, "measured_top5": top5,
           "diff_top1": None, "diff_top5": None, "videos": int(summary["videos"]), "views": views,
           "seconds": round(seconds, 1)}
    if pub is not None:
        row.update(published_top1=pub[0], published_top5=pub[1], diff_top1=top1 - pub[0], diff_top5=top5 - pub[1])
    return row


def write_tables(rows: list[dict], output_dir: str) -> tuple[str, str]:
    """zoo_results.csv (one row per checkpoint, empty cells where nothing was published) and zoo_results.md."""
    os.makedirs(output_dir, exist_ok=True)
    csv_path, md_path = (os.path.join(output_dir, f"zoo_results.{ext}") for ext in ("csv", "md"))
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    head = ["checkpoint", "model", "dataset", "published top-1", "published top-5", "measured top-1",
            "measured top-5", "diff top-1", "diff top-5", "videos", "views", "time"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["checkpoint"], r["model"], r["dataset"]]
        cells += ["-" if r[k] is None else f"{r[k]:.2f}" for k in ("published_top1", "published_top5",
                                                                    "measured_top1", "measured_top5")]
        cells += ["-" if r[k] is None else f"{r[k]:+.2f}" for k in ("diff_top1", "diff_top5")]
        cells += [str(r["videos"]), r["views"], time.strftime("%H:%M:%S", time.gmtime(r["seconds"]))]
        lines.append("| " + " | ".join(cells) + " |")
    with open(md_path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return md_path, csv_path


def read_published(path: str) -> dict[str, dict[str, tuple[float, float]]]:
    """Published numbers from a JSON file {dataset: {model: [top1, top5]}}; anything else stops naming the file."""
    try:
        with open(path) as f:
            table = json.load(f)
        return {d: {m: (float(top1), float(top5)) for m, (top1, top5) in models.items()} for d, models in table.items()}
    except (OSError, json.JSONDecodeError, AttributeError, TypeError, ValueError) as e:
        raise SystemExit(f"{path}: expected JSON {{dataset: {{model: [top1, top5]}}}} ({type(e).__name__}: {e})") \
            from None


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoints", default="checkpoints", help="folder holding ssv2_*.pth / k400_*.pth")
    p.add_argument("--output_dir", default="output/zoo",
                   help="one test run per checkpoint in <output_dir>/<name>/, and the zoo_results.md/.csv tables")
    p.add_argument("--ssv2_data_path", default="data/ssv2", help="SSv2 lists (test.csv) for the ssv2_* files")
    p.add_argument("--k400_data_path", default="data/k400", help="Kinetics-400 lists (test.csv) for the k400_* files")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when there is a GPU)")
    p.add_argument("--nproc", type=int, default=1, help="processes per test (torchrun when more than 1: one per GPU)")
    p.add_argument("--published", default=None,
                   help='JSON {"SSV2": {"model": [top1, top5]}, ...} added to (or replacing) the published numbers')
    return p


def main(argv: list[str] | None = None) -> list[dict]:
    """Evaluate every zoo checkpoint found, write the tables and return their rows."""
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    args, extra = get_args_parser().parse_args(argv[:split]), argv[split + 1:]
    paths = find_checkpoints(args.checkpoints)
    if not paths:
        raise SystemExit(f"no model-zoo checkpoint ({', '.join(p + '*.pth' for p in PREFIXES)}) in "
                         f"{args.checkpoints}: put them there as checkpoints/instructions.md says")
    published = {d: dict(models) for d, models in PUBLISHED.items()}
    if args.published:
        for dataset, models in read_published(args.published).items():
            published.setdefault(dataset, {}).update(models)
    import run_class_finetuning as run
    device = args.device or ("cuda" if run.torch.cuda.is_available() else "cpu")
    data_paths = {"SSV2": args.ssv2_data_path, "Kinetics-400": args.k400_data_path}
    rows = []
    for path in paths:
        ck = identify(path)
        out = os.path.join(args.output_dir, os.path.splitext(os.path.basename(path))[0])
        run_argv = eval_argv(ck, out, data_paths[ck.dataset], device, extra)
        print(f"{os.path.basename(path)}: {ck.model} on {ck.dataset}", flush=True)
        seconds = evaluate(run_argv, args.nproc)
        with open(os.path.join(out, "test_summary.json")) as f:
            summary = json.load(f)
        run_args = run.get_args_parser().parse_args(run_argv)
        views = f"{run_args.test_num_segment}x{run_args.test_num_crop}"
        rows.append(result_row(ck, summary, views, seconds, published))
    md, csv_path = write_tables(rows, args.output_dir)
    with open(md) as f:
        print(f.read(), f"written: {md}, {csv_path}", sep="", flush=True)
    return rows


if __name__ == "__main__":
    main()
