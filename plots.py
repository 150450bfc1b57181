"""Training curves from one or more runs' log.txt: train/val loss, lr, val top-1/top-5 and clips/s per epoch.

    python plots.py OUTPUT_DIR [OUTPUT_DIR ...] [--out PNG] [--labels NAME ...]
        [--reference LOG ...] [--reference_label NAME ...]   (published logs overlaid, thin dotted lines)
    python plots.py --sweep OUTPUT_DIR [OUTPUT_DIR ...] [--out sweep.png] [--labels NAME ...]   (test top-1/top-5)

log.txt holds one JSON object per line (the engine writes one per epoch). Lines without an "epoch" key (VideoMAE's
closing {"Final top-1": ...} line) are skipped, missing keys leave gaps, and a repeated epoch (a run resumed from an
earlier checkpoint) keeps its last entry. A published training log (VideoMAE's log.txt as linked from its model
zoo: train_lr, train_loss, val_loss, val_acc1, val_acc5 per epoch) is read the same way and overlaid with
``--reference``.
"""
import argparse
import json
import os

PANELS = (  # (title, [(key, line style, legend suffix)], y label)
    ("loss", [("train_loss", "-", "train"), ("val_loss", "--", "val")], "loss"),
    ("learning rate", [("train_lr", "-", "")], "lr"),
    ("validation accuracy", [("val_acc1", "-", "top-1"), ("val_acc5", "--", "top-5")], "%"),
    ("training throughput", [("train_clips_per_s", "-", "")], "clips/s"),
)


def read_log(path: str) -> list[dict]:
    """Epoch records of one log.txt sorted by epoch; the last record wins for a repeated epoch."""
    by_epoch = {}
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not a JSON line ({e.msg}): {line.strip()[:80]!r}") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
            if "epoch" in record:
                by_epoch[record["epoch"]] = record
    return [by_epoch[e] for e in sorted(by_epoch)]


def _log_path(run: str) -> str:
    path = os.path.join(run, "log.txt") if os.path.isdir(run) else run
    if not os.path.exists(run):
        raise FileNotFoundError(f"{run}: no such folder or file (expected a run's output_dir or its log.txt)")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: not found (has the run finished an epoch?)")
    return path


def _run_names(run_dirs: list[str]) -> list[str]:
    names = [os.path.basename(os.path.normpath(r if os.path.isdir(r) else os.path.dirname(r) or ".")) for r in run_dirs]
    return names if len(set(names)) == len(names) else [os.path.normpath(r) for r in run_dirs]


def _reference_names(logs: list[str]) -> list[str]:
    """A published log's legend name: its file name without extension (videomae_vitb_ssv2.txt -> videomae_vitb_ssv2),
    or its folder's name for a file called log.txt (or a folder)."""
    names = [os.path.splitext(os.path.basename(p))[0] if os.path.isfile(p) and os.path.basename(p) != "log.txt"
             else _run_names([p])[0] for p in logs]
    return names if len(set(names)) == len(names) else [os.path.normpath(p) for p in logs]


# How a reference's lines differ from a run's: dotted / dash-dotted for the run's solid / dashed, thinner, no marker.
REFERENCE_STYLE = {"-": ":", "--": "-."}


def draw_curves(run_dirs: list[str], labels: list[str] | None = None, references: list[str] | None = None,
                reference_labels: list[str] | None = None):
    """A 2 x 2 matplotlib Figure with the curves of every run (a folder with log.txt, or a log.txt path): one line
    per (run, key) that has data, labelled "<run name> <suffix>". ``references`` (published logs) share the axes,
    in their own colours and thin dotted lines without markers."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    references = references or []
    for what, names, paths in (("labels", labels, run_dirs), ("reference labels", reference_labels, references)):
        if names is not None and len(names) != len(paths):
            raise ValueError(f"{len(names)} {what} for {len(paths)} {'runs' if what == 'labels' else 'references'}")
    sources = [(name, read_log(_log_path(r)), False) for name, r in zip(labels or _run_names(run_dirs), run_dirs)]
    sources += [(name, read_log(_log_path(r)), True)
                for name, r in zip(reference_labels or _reference_names(references), references)]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), dpi=100)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (title, series, ylabel) in zip(axes.flat, PANELS):
        drawn = 0
        for i, (name, records, reference) in enumerate(sources):
            for key, style, suffix in series:
                points = [(r["epoch"], r[key]) for r in records if r.get(key) is not None]
                if points:
                    xs, ys = zip(*points)
                    look = dict(linestyle=REFERENCE_STYLE[style], linewidth=1.2) if reference else \
                        dict(linestyle=style, marker=".")
                    ax.plot(xs, ys, color=colors[i % len(colors)], label=f"{name} {suffix}".strip(), **look)
                    drawn += 1
        if drawn:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no data in log", ha="center", va="center", transform=ax.transAxes, color="gray")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0, 1].ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    fig.tight_layout()
    return fig


def plot_logs(run_dirs: list[str], out_path: str, labels: list[str] | None = None,
              references: list[str] | None = None, reference_labels: list[str] | None = None) -> str:
    """draw_curves saved as a PNG at out_path (folders created); returns out_path."""
    import matplotlib.pyplot as plt

    fig = draw_curves(run_dirs, labels, references, reference_labels)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    fig.savefig(out_path)
    plt.close(fig)
    return out_path


SWEEP_COLUMNS = ("label", "top1", "top5", "mean_class_acc", "videos", "run", "checkpoint")


def plot_sweep(run_dirs: list[str], out_path: str, labels: list[str] | None = None) -> tuple[str, list[dict]]:
    """Tabulate the multi-view test of several runs (their test_summary.json) into a CSV next to out_path (same name,
    .csv) and draw top-1/top-5 per run as bars; returns (csv path, rows). A run without a summary is an error."""
    import csv

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if labels is not None and len(labels) != len(run_dirs):
        raise ValueError(f"{len(labels)} labels for {len(run_dirs)} runs")
    missing = [r for r in run_dirs if not os.path.isfile(os.path.join(r, "test_summary.json"))]
    if missing:
        raise FileNotFoundError(f"no test_summary.json (run not finished?) in: {', '.join(missing)}")
    rows = []
    for run, label in zip(run_dirs, labels or _run_names(run_dirs)):
        with open(os.path.join(run, "test_summary.json")) as f:
            summary = json.load(f)
        rows.append({**{k: summary.get(k) for k in SWEEP_COLUMNS}, "label": label, "run": run})
    csv_path = os.path.splitext(out_path)[0] + ".csv"
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SWEEP_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(rows) + 2), 4), dpi=100)
    x = range(len(rows))
    for offset, key, name in ((-0.2, "top1", "top-1"), (0.2, "top5", "top-5")):
        bars = ax.bar([i + offset for i in x], [r[key] for r in rows], width=0.4, label=name)
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set_xticks(list(x), [r["label"] for r in rows])
    ax.set_ylabel("multi-view test accuracy (%)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_path)
    plt.close(fig)
    return csv_path, rows


def main() -> None:
    parser = argparse.ArgumentParser(description="Plot training curves from log.txt of one or more runs.")
    parser.add_argument("runs", nargs="+", help="output_dir of a run (holding log.txt), or a log.txt path")
    parser.add_argument("--out", default=None,
                        help="PNG to write (default: OUTPUT_DIR/curves.png for one run, ./curves.png for several)")
    parser.add_argument("--labels", nargs="+", default=None, help="legend names, one per run (default: folder names)")
    parser.add_argument("--reference", nargs="+", default=None, metavar="LOG",
                        help="published training logs (VideoMAE's log.txt format) drawn on the same axes, dotted")
    parser.add_argument("--reference_label", nargs="+", default=None, metavar="NAME",
                        help="legend names, one per --reference (default: the file names)")
    parser.add_argument("--sweep", action="store_true",
                        help="instead of curves: each run's test top-1/top-5 (test_summary.json) as bars in --out "
                             "(default ./sweep.png) and a CSV of the same name")
    args = parser.parse_args()
    if args.sweep and args.reference:
        raise SystemExit("plots.py: --reference overlays training curves; --sweep draws test accuracies")
    if args.sweep:
        try:
            csv_path, _ = plot_sweep(args.runs, args.out or "sweep.png", args.labels)
        except (ValueError, FileNotFoundError) as e:
            raise SystemExit(f"plots.py: {e}")
        print(f"sweep table written to {csv_path}, plot to {args.out or 'sweep.png'}")
        return
    out = args.out
    if out is None:
        run = args.runs[0]
        out = os.path.join(run if os.path.isdir(run) else os.path.dirname(run) or ".", "curves.png") \
            if len(args.runs) == 1 else "curves.png"
    try:
        print(f"curves written to {plot_logs(args.runs, out, args.labels, args.reference, args.reference_label)}")
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"plots.py: {e}")


if __name__ == "__main__":
    main()
