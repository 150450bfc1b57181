"""Outputs of a multi-view test: the raw probabilities, per-class report, most confused pairs and confusion matrix.

`write_test_outputs` is called by run_class_finetuning.py with the engine's merged arrays; `python reports.py
OUTPUT_DIR` rebuilds the reports from a finished run's `test_per_video.npz`. Counts use the top-1 (argmax) of the merged
per-video probabilities.
"""
import argparse
import csv
import json
import os

import numpy as np
import torch

import utils
from engine_for_finetuning import topk_hits

NUM_CONFUSED_PAIRS = 20


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """C x C int64 counts: row = true class, column = predicted class."""
    labels, preds = np.asarray(labels, dtype=np.int64), np.asarray(preds, dtype=np.int64)
    flat = np.bincount(labels * num_classes + preds, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def per_class_accuracy(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(videos, top1 %, top5 %) per class; accuracies are NaN for classes without videos."""
    num_classes = probs.shape[1]
    hit1, hit5 = (h.numpy() for h in topk_hits(torch.from_numpy(probs), torch.from_numpy(labels)))
    videos = np.bincount(labels, minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        top1 = 100.0 * np.bincount(labels[hit1], minlength=num_classes) / videos
        top5 = 100.0 * np.bincount(labels[hit5], minlength=num_classes) / videos
    return videos, top1, top5


def most_confused(cm: np.ndarray, n: int = NUM_CONFUSED_PAIRS) -> list[tuple[int, int, int]]:
    """The n largest off-diagonal (true, predicted, count) entries, count > 0; ties by (true, predicted) id."""
    off = cm.copy()
    np.fill_diagonal(off, 0)
    true_ids, pred_ids = np.nonzero(off)
    counts = off[true_ids, pred_ids]
    order = np.lexsort((pred_ids, true_ids, -counts))[:n]
    return [(int(true_ids[i]), int(pred_ids[i]), int(counts[i])) for i in order]


def plot_confusion_matrix(cm: np.ndarray, out_path: str, order: np.ndarray, title: str) -> str:
    """Counts on a log colour scale (zeros left blank), rows/columns in `order`, class ids on both axes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    num_classes = cm.shape[0]
    sorted_cm = cm[np.ix_(order, order)]
    masked = np.ma.masked_equal(sorted_cm, 0)
    side = float(np.clip(num_classes * 0.11, 6.0, 24.0))
    fontsize = float(np.clip(900.0 / max(num_classes, 1), 4.0, 10.0))
    fig, ax = plt.subplots(figsize=(side + 1.5, side), dpi=100)
    vmax = max(int(sorted_cm.max()), 1)
    image = ax.imshow(masked, cmap="viridis", norm=LogNorm(vmin=1, vmax=max(vmax, 2)), interpolation="nearest")
    ticks = np.arange(num_classes)
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_xticklabels([str(c) for c in order], rotation=90, fontsize=fontsize)
    ax.set_yticklabels([str(c) for c in order], fontsize=fontsize)
    ax.set_xlabel("predicted class id")
    ax.set_ylabel("true class id")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02, label="videos (log scale)")
    fig.tight_layout()
    fig.savefig(out_path)
    plt.close(fig)
    return out_path


def _fmt(value: float) -> str:
    return "" if np.isnan(value) else f"{value:.2f}"


def write_reports(output_dir: str, video_ids: list[str], labels: np.ndarray, probs: np.ndarray,
                  class_names: list[str] | None = None) -> dict:
    """Write per_class.csv, confused_pairs.csv and confusion_matrix.png to output_dir; return mean class accuracy
    (percent, over classes that have test videos) and the three paths."""
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs)
    if probs.ndim != 2 or labels.shape != (probs.shape[0],) or len(video_ids) != probs.shape[0]:
        raise ValueError(f"write_reports: expected probs (n, C), labels (n,) and n video ids; got probs "
                         f"{probs.shape}, labels {labels.shape}, {len(video_ids)} video ids")
    if probs.shape[0] == 0:
        raise ValueError("write_reports: no test videos to report on")
    if len(set(video_ids)) != len(video_ids):
        raise ValueError("write_reports: duplicate video ids; pass the merged per-video predictions (one row per video)")
    num_classes = probs.shape[1]
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"write_reports: labels must lie in [0, {num_classes}); got {labels.min()}..{labels.max()}")
    if class_names is not None and len(class_names) != num_classes:  # names are cosmetic: never lose a test to them
        print(f"WARNING: write_reports: {len(class_names)} class names for {num_classes} classes (wrong labels "
              f"file?); the reports show class ids only", flush=True)
        class_names = None
    name = (lambda c: class_names[c]) if class_names is not None else (lambda c: "")
    os.makedirs(output_dir, exist_ok=True)

    videos, top1, top5 = per_class_accuracy(labels, probs)
    per_class_csv = os.path.join(output_dir, "per_class.csv")
    with open(per_class_csv, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class_id", "name", "videos", "top1", "top5"])
        for c in range(num_classes):
            writer.writerow([c, name(c), int(videos[c]), _fmt(top1[c]), _fmt(top5[c])])

    cm = confusion_matrix(labels, probs.argmax(1), num_classes)
    confused_pairs_csv = os.path.join(output_dir, "confused_pairs.csv")
    with open(confused_pairs_csv, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true_id", "true_name", "pred_id", "pred_name", "count", "percent_of_true"])
        for t, p, count in most_confused(cm):
            writer.writerow([t, name(t), p, name(p), count, f"{100.0 * count / videos[t]:.2f}"])

    # Best classes first, so the diagonal fades towards the bottom right; classes without videos go last.
    order = np.lexsort((np.arange(num_classes), -np.nan_to_num(top1, nan=-1.0)))
    mean_class_acc = float(np.nanmean(top1))
    png = plot_confusion_matrix(
        cm, os.path.join(output_dir, "confusion_matrix.png"), order,
        f"Confusion matrix: {len(labels)} videos, {num_classes} classes\n"
        f"sorted by per-class top-1 (best first); mean class acc {mean_class_acc:.2f}%")
    return {"mean_class_acc": mean_class_acc, "per_class_csv": per_class_csv,
            "confused_pairs_csv": confused_pairs_csv, "confusion_matrix_png": png}


def write_test_outputs(output_dir: str, per_view: dict, per_video: dict, summary: dict,
                       class_names: list[str] | None = None) -> dict:
    """Write test_per_view.npz, test_per_video.npz, the reports (write_reports) and test_summary.json; return the
    summary with mean_class_acc and the report paths added."""
    os.makedirs(output_dir, exist_ok=True)
    np.savez(os.path.join(output_dir, "test_per_view.npz"), **per_view)
    np.savez(os.path.join(output_dir, "test_per_video.npz"),
             **{k: per_video[k] for k in ("video_ids", "labels", "probs")})
    summary = {**summary, **write_reports(output_dir, list(per_video["video_ids"]), per_video["labels"],
                                          per_video["probs"], class_names)}
    utils.write_json(os.path.join(output_dir, "test_summary.json"), summary)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description="Rebuild the per-class reports of a run from test_per_video.npz.")
    parser.add_argument("output_dir", help="run folder holding test_per_video.npz; the reports are written there")
    parser.add_argument("--labels", default=None, help="something-something-v2-labels.json for class names")
    args = parser.parse_args()
    path = os.path.join(args.output_dir, "test_per_video.npz")
    if not os.path.isfile(path):
        raise SystemExit(f"{path} not found: run the multi-view test (end of training or --eval) first")
    data = np.load(path)
    class_names = None
    if args.labels:
        from datasets import load_class_names
        class_names = load_class_names(args.labels)
    result = write_reports(args.output_dir, [str(v) for v in data["video_ids"]], data["labels"], data["probs"],
                           class_names)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
