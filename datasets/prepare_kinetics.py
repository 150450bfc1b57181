"""One command from the official Kinetics-400 annotations and downloaded clips to VideoMAE-style lists and H.264
videos with the short side resized (320 px, as VideoMAE's Kinetics data).

  python datasets/prepare_kinetics.py --annotations ANN_DIR --videos CLIP_DIR --dst OUT_DIR [--short_side 320]
      [--workers N] [--ffmpeg PATH]

Input:
  ANN_DIR   the release's train.csv and validate.csv, header `label,youtube_id,time_start,time_end,split` (the
            release's test.csv is not read: test.csv below is the validation list, as VideoMAE evaluates)
  CLIP_DIR  the clips as the common downloaders name them, `<youtube_id>_<start:06d>_<end:06d>.mp4` (any video
            extension), flat or in per-class folders (searched at any depth)

Output (OUT_DIR): videos/<youtube_id>_<start>_<end>.mp4, train.csv, val.csv and test.csv (= val) with lines
`videos/<clip>.mp4 <label>` (paths relative to OUT_DIR), and kinetics400-labels.json ({class name: "id"}, ids in the
order of the sorted class names, the usual Kinetics order).

Kinetics always misses some clips (deleted from YouTube): missing and undecodable clips are counted, printed and
written to OUT_DIR/failed.txt and left out of the lists; they do not make the exit status nonzero. Resumable (see
datasets/convert.py): a rerun converts only what is not done yet.
"""
import argparse
import csv
import os
import shutil
import sys

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets import DATASETS
from datasets.convert import (Item, add_conversion_args, find_video, index_videos, prepare_videos, report,
                              run_prepare, scale_short_side, write_labels_json)

LABELS = DATASETS["Kinetics-400"].labels_file
ANNOTATIONS = (("train", "train.csv"), ("val", "validate.csv"))
COLUMNS = ("label", "youtube_id", "time_start", "time_end")


def clip_name(youtube_id: str, start: int, end: int) -> str:
    """The downloaders' clip name without extension."""
    return f"{youtube_id}_{start:06d}_{end:06d}"


def read_annotation_csv(path: str) -> list[tuple[str, str]]:
    """(clip name, class name) per row of an official annotation CSV; errors name file:line and what was expected."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"missing the Kinetics annotation file {path} (expected train.csv and validate.csv "
                                f"of the official release, header {','.join(COLUMNS)},split)")
    rows = []
    seen: dict[str, int] = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}:1: header {reader.fieldnames} lacks {missing}, expected "
                             f"{','.join(COLUMNS)},split")
        for row in reader:
            line = reader.line_num
            try:
                name = clip_name(row["youtube_id"], int(float(row["time_start"])), int(float(row["time_end"])))
            except (TypeError, ValueError):
                raise ValueError(f"{path}:{line}: time_start {row['time_start']!r} / time_end {row['time_end']!r}, "
                                 f"expected seconds") from None
            if not row["label"] or not row["youtube_id"]:
                raise ValueError(f"{path}:{line}: empty label or youtube_id in {row}")
            if name in seen:
                raise ValueError(f"{path}:{line}: clip {name} already listed on line {seen[name]}")
            seen[name] = line
            rows.append((name, row["label"]))
    return rows


def prepare(annotations: str, videos: str, dst: str, short_side: int = 320, workers: int = 4,
            ffmpeg: str | None = None) -> dict:
    """Converts the listed clips found under `videos` and writes the lists and labels json; returns the summary of
    datasets.convert.prepare_videos, plus "classes" (the sorted class names)."""
    splits = {split: read_annotation_csv(os.path.join(annotations, name)) for split, name in ANNOTATIONS}
    classes = sorted({cls for rows in splits.values() for _, cls in rows})
    ids = {name: i for i, name in enumerate(classes)}
    index = index_videos(videos)
    items = [Item(split, name, find_video(index, name), f"videos/{name}.mp4", ids[cls])
             for split, rows in splits.items() for name, cls in rows]
    os.makedirs(dst, exist_ok=True)
    summary = prepare_videos(items, list(splits), dst, scale_short_side(short_side), workers, ffmpeg,
                             desc="Kinetics -> mp4")
    shutil.copyfile(os.path.join(dst, "val.csv"), os.path.join(dst, "test.csv"))
    write_labels_json(os.path.join(dst, LABELS), classes)
    summary["classes"] = classes
    return summary


def main() -> int:
    p = argparse.ArgumentParser(description="Prepare Kinetics-400 from the official CSVs and downloaded clips.")
    p.add_argument("--annotations", required=True, help="folder with the release's train.csv and validate.csv")
    p.add_argument("--videos", required=True, help="clips <youtube_id>_<start:06d>_<end:06d>.*, flat or per class")
    p.add_argument("--dst", required=True, help="output folder: videos/, train.csv, val.csv, test.csv, labels json")
    add_conversion_args(p, short_side=320)
    a = p.parse_args()
    summary = run_prepare("prepare_kinetics", prepare, a.annotations, a.videos, a.dst, a.short_side, a.workers,
                          a.ffmpeg)
    if summary is None:
        return 2
    print(f"{len(summary['classes'])} classes -> {os.path.join(a.dst, LABELS)}")
    return report(summary, a.dst, ["train", "val"], fatal=False)


if __name__ == "__main__":
    sys.exit(main())
