"""One command from the official Something-Something-v2 download to VideoMAE-style lists and H.264 videos.

  python datasets/prepare_ssv2.py --src OFFICIAL_DIR --dst OUT_DIR [--workers N] [--ffmpeg PATH] [--with_test]

Input (OFFICIAL_DIR), either layout:
  current download   labels/labels.json, labels/train.json, labels/validation.json (and labels/test.json,
                     labels/test-answers.csv), videos in 20bn-something-something-v2/<id>.webm
  20BN names         something-something-v2-labels.json, something-something-v2-train.json, -validation.json,
                     videos in 20bn-something-something-v2/ or beside the jsons
labels.json maps {template without brackets: "id"}; train/validation are lists of {"id", "label", "template",
"placeholders"}, an item's class its template with '[' and ']' removed. A missing file is one line naming both names
it was looked for under and where.

Output (OUT_DIR): videos/<id>.mp4 (H.264, yuv420p, 240 px high, even width, aspect kept), train.csv, val.csv,
test.csv (= val, as VideoMAE evaluates) with lines `videos/<id>.mp4 <label>` (paths relative to OUT_DIR, the
dataset's default data_root), and the labels json as something-something-v2-labels.json. With --with_test (current
layout only) the official test split is converted too and written, labelled from test-answers.csv (`<id>;<class>`
lines), to test_official.csv; test.csv stays the validation list so that numbers compare with published ones.

Resumable, and failures are listed in OUT_DIR/failed.txt with exit status 1 (see datasets/convert.py).
"""
import argparse
import json
import os
import shutil
import sys

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets import DATASETS
from datasets.convert import Item, add_conversion_args, prepare_videos, report, run_prepare, scale_to_height

LABELS = DATASETS["SSV2"].labels_file
# role -> (current download's path, 20BN name), both relative to the download folder
FILES = {"labels": ("labels/labels.json", LABELS),
         "train": ("labels/train.json", "something-something-v2-train.json"),
         "val": ("labels/validation.json", "something-something-v2-validation.json"),
         "test": ("labels/test.json", None),
         "test_answers": ("labels/test-answers.csv", None)}
VIDEO_DIR = "20bn-something-something-v2"


def find_file(src: str, role: str) -> str:
    """The path of an annotation file in either layout; FileNotFoundError naming every name it was looked for under."""
    names = [n for n in FILES[role] if n]
    for name in names:
        if os.path.isfile(os.path.join(src, name)):
            return os.path.join(src, name)
    looked = " or ".join(f"{n} ({'current download' if n == FILES[role][0] else '20BN name'})" for n in names)
    raise FileNotFoundError(f"missing the SSv2 {role} file: looked for {looked} in {src}")


def _load_json(path: str):
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None


def read_test_answers(src: str, labels: dict[str, int]) -> list[tuple[str, int]]:
    """(video id, label) of the official test split: ids from test.json, classes from test-answers.csv."""
    ids = [str(item["id"]) for item in _load_json(find_file(src, "test"))]
    path = find_file(src, "test_answers")
    answers = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            vid, sep, cls = line.rstrip("\n").partition(";")
            if not sep or cls not in labels:
                raise ValueError(f"{path}:{n}: {line.strip()!r}, expected '<id>;<class name of labels.json>'")
            answers[vid] = labels[cls]
    missing = [vid for vid in ids if vid not in answers]
    if missing:
        raise ValueError(f"{path}: no answer for {len(missing)} test.json ids, e.g. {missing[0]}")
    return [(vid, answers[vid]) for vid in ids]


def read_annotations(src: str, with_test: bool = False) -> tuple[dict[str, int], dict[str, list[tuple[str, int]]]]:
    """Labels and per-split (video id, label) lists from the official jsons; errors name the file, item and problem."""
    labels_path = find_file(src, "labels")
    labels = {name: int(idx) for name, idx in _load_json(labels_path).items()}
    seen: dict[str, str] = {}
    splits = {}
    for split in ("train", "val"):
        path = find_file(src, split)
        items = []
        for i, item in enumerate(_load_json(path)):
            if not isinstance(item, dict) or "id" not in item or "template" not in item:
                raise ValueError(f"{path}: item {i} is {item!r}, expected an object with 'id' and 'template'")
            vid, cls = str(item["id"]), item["template"].replace("[", "").replace("]", "")
            if cls not in labels:
                raise ValueError(f"{path}: item {i} (id {vid}) has template {item['template']!r}, whose class "
                                 f"{cls!r} is not in {labels_path}")
            if vid in seen:
                raise ValueError(f"{path}: item {i}: duplicate video id {vid} (already listed in {seen[vid]})")
            seen[vid] = os.path.basename(path)
            items.append((vid, labels[cls]))
        splits[split] = items
    if with_test:
        splits["test_official"] = read_test_answers(src, labels)
    return labels, splits


def prepare(src: str, dst: str, workers: int = 4, ffmpeg: str | None = None, height: int = 240,
            with_test: bool = False) -> dict:
    """Converts all listed videos and writes the lists; returns the summary of datasets.convert.prepare_videos."""
    _, splits = read_annotations(src, with_test)
    video_dir = os.path.join(src, VIDEO_DIR)
    if not os.path.isdir(video_dir):
        video_dir = src
    items = [Item(split, vid, os.path.join(video_dir, f"{vid}.webm"), f"videos/{vid}.mp4", label)
             for split, pairs in splits.items() for vid, label in pairs]
    summary = prepare_videos(items, list(splits), dst, scale_to_height(height), workers, ffmpeg, desc="SSv2 -> mp4")
    shutil.copyfile(os.path.join(dst, "val.csv"), os.path.join(dst, "test.csv"))
    shutil.copyfile(find_file(src, "labels"), os.path.join(dst, LABELS))
    return summary


def main() -> int:
    p = argparse.ArgumentParser(description="Prepare SSv2 from the official download (webm + jsons).")
    p.add_argument("--src", required=True, help="official SSv2 folder (labels/ or the 20BN jsons; videos in "
                                                "20bn-something-something-v2/)")
    p.add_argument("--dst", required=True, help="output folder: videos/, train.csv, val.csv, test.csv, labels json")
    add_conversion_args(p)
    p.add_argument("--height", type=int, default=240, help="output height in px (width even, aspect kept)")
    p.add_argument("--with_test", action="store_true",
                   help="also convert the official test split, labelled from labels/test-answers.csv, to "
                        "test_official.csv (test.csv stays = val.csv)")
    a = p.parse_args()
    summary = run_prepare("prepare_ssv2", prepare, a.src, a.dst, a.workers, a.ffmpeg, a.height, a.with_test)
    if summary is None:
        return 2
    return report(summary, a.dst, ["train", "val"] + (["test_official"] if a.with_test else []))


if __name__ == "__main__":
    sys.exit(main())
