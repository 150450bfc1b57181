"""One command from the official UCF101 or HMDB51 download to VideoMAE-style lists for the three official splits and
H.264 videos.

  python datasets/prepare_ucf_hmdb.py --dataset UCF101 --splits ucfTrainTestlist --videos UCF-101 --dst OUT_DIR
  python datasets/prepare_ucf_hmdb.py --dataset HMDB51 --splits testTrainMulti_7030_splits --videos hmdb51_org \
      --dst OUT_DIR
      [--short_side 0] [--workers N] [--ffmpeg PATH]

Input:
  UCF101  classInd.txt (`<1-based id> <class>`), trainlist0N.txt (`<class>/<video>.avi <1-based id>`) and
          testlist0N.txt (`<class>/<video>.avi`, the class from the folder part); the .avi videos from UCF101.rar,
          in per-class folders (UCF-101/<class>/) or flat
  HMDB51  testTrainMulti_7030_splits/<class>_test_split<N>.txt with lines `<video>.avi <0|1|2>` (1 = train,
          2 = test, 0 = unused); the .avi videos from the per-class .rar files, extracted to <class>/ folders (or flat)

Output (OUT_DIR): videos/<class>/<video>.mp4, train_N.csv and val_N.csv for N = 1, 2, 3 (val = the official test
list, as VideoMAE evaluates) with lines `videos/<class>/<video>.mp4 <label>` (0-based; paths relative to OUT_DIR),
and ucf101-labels.json or hmdb51-labels.json ({class name: "id"}; UCF101 in classInd.txt's order, HMDB51 in the
sorted order of its class names). Each video is converted once, whatever the number of lists it is in; the short
side is kept unless --short_side is given.

Resumable, and failures are listed in OUT_DIR/failed.txt with exit status 1 (see datasets/convert.py).
"""
import argparse
import os
import re
import sys

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets import DATASETS
from datasets.convert import (Item, add_conversion_args, find_video, index_videos, prepare_videos, report,
                              run_prepare, scale_short_side, write_labels_json)

SPLITS = (1, 2, 3)
LABELS = {name: DATASETS[name].labels_file for name in ("UCF101", "HMDB51")}
HMDB_FILE = re.compile(r"^(.+)_test_split([123])\.txt$")


def _lines(path: str) -> list[tuple[int, list[str]]]:
    """(line number, fields) of the non-empty lines of a split file; FileNotFoundError naming it when absent."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"missing the split file {path}")
    with open(path) as f:
        return [(n, line.split()) for n, line in enumerate(f, 1) if line.strip()]


def read_ucf101(splits_dir: str) -> tuple[list[str], dict[str, list[tuple[str, str, int]]]]:
    """UCF101's class names (0-based, classInd order) and per list (train_N / val_N) (class, video stem, label)."""
    path = os.path.join(splits_dir, "classInd.txt")
    classes = {}
    for n, fields in _lines(path):
        if len(fields) != 2 or not fields[0].isdigit():
            raise ValueError(f"{path}:{n}: {' '.join(fields)!r}, expected '<1-based id> <class>'")
        classes[int(fields[0]) - 1] = fields[1]
    if sorted(classes) != list(range(len(classes))):
        raise ValueError(f"{path}: class ids must be 1..{len(classes)} without gaps or repeats")
    names = [classes[i] for i in range(len(classes))]
    ids = {name: i for i, name in enumerate(names)}
    lists = {}
    for split in SPLITS:
        for kind, file in (("train", f"trainlist0{split}.txt"), ("val", f"testlist0{split}.txt")):
            path = os.path.join(splits_dir, file)
            rows = []
            for n, fields in _lines(path):
                cls, _, video = fields[0].rpartition("/")
                if cls not in ids or len(fields) > 2:
                    raise ValueError(f"{path}:{n}: {' '.join(fields)!r}, expected '<class of classInd.txt>/<video>"
                                     f"{' <1-based id>' if kind == 'train' else ''}'")
                if len(fields) == 2 and fields[1] != str(ids[cls] + 1):
                    raise ValueError(f"{path}:{n}: label {fields[1]} but the folder {cls!r} is class "
                                     f"{ids[cls] + 1} in classInd.txt")
                rows.append((cls, os.path.splitext(video)[0], ids[cls]))
            lists[f"{kind}_{split}"] = rows
    return names, lists


def read_hmdb51(splits_dir: str) -> tuple[list[str], dict[str, list[tuple[str, str, int]]]]:
    """HMDB51's class names (sorted) and per list (train_N / val_N) (class, video stem, label) from the
    testTrainMulti_7030_splits files (1 = train, 2 = test, 0 = unused)."""
    if not os.path.isdir(splits_dir):
        raise FileNotFoundError(f"missing the split folder {splits_dir} (testTrainMulti_7030_splits)")
    files = {}
    for name in os.listdir(splits_dir):
        match = HMDB_FILE.match(name)
        if match:
            files[(match.group(1), int(match.group(2)))] = os.path.join(splits_dir, name)
    names = sorted({cls for cls, _ in files})
    if not names:
        raise FileNotFoundError(f"no <class>_test_split<N>.txt files in {splits_dir}")
    lists: dict[str, list[tuple[str, str, int]]] = {f"{kind}_{s}": [] for s in SPLITS for kind in ("train", "val")}
    for label, cls in enumerate(names):
        for split in SPLITS:
            path = files.get((cls, split), os.path.join(splits_dir, f"{cls}_test_split{split}.txt"))
            for n, fields in _lines(path):
                if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
                    raise ValueError(f"{path}:{n}: {' '.join(fields)!r}, expected '<video>.avi <0|1|2>'")
                if fields[1] != "0":
                    kind = "train" if fields[1] == "1" else "val"
                    lists[f"{kind}_{split}"].append((cls, os.path.splitext(fields[0])[0], label))
    return names, lists


def prepare(dataset: str, splits_dir: str, videos: str, dst: str, short_side: int = 0, workers: int = 4,
            ffmpeg: str | None = None) -> dict:
    """Converts the videos of the three splits and writes the lists and labels json; returns the summary of
    datasets.convert.prepare_videos."""
    if dataset not in LABELS:
        raise ValueError(f"dataset {dataset!r}: expected one of {', '.join(LABELS)}")
    names, lists = (read_ucf101 if dataset == "UCF101" else read_hmdb51)(splits_dir)
    index = index_videos(videos)
    items = [Item(name, f"{cls}/{stem}", find_video(index, stem, os.path.join(videos, cls, f"{stem}.avi")),
                  f"videos/{cls}/{stem}.mp4", label)
             for name, rows in lists.items() for cls, stem, label in rows]
    os.makedirs(dst, exist_ok=True)
    summary = prepare_videos(items, list(lists), dst, scale_short_side(short_side), workers, ffmpeg,
                             desc=f"{dataset} -> mp4")
    write_labels_json(os.path.join(dst, LABELS[dataset]), names)
    return summary


def main() -> int:
    p = argparse.ArgumentParser(description="Prepare UCF101 or HMDB51 (three official splits) from the download.")
    p.add_argument("--dataset", required=True, choices=sorted(LABELS))
    p.add_argument("--splits", required=True, help="UCF101: ucfTrainTestlist/; HMDB51: testTrainMulti_7030_splits/")
    p.add_argument("--videos", required=True, help="the extracted .avi videos, in per-class folders or flat")
    p.add_argument("--dst", required=True, help="output folder: videos/, train_N.csv, val_N.csv, labels json")
    add_conversion_args(p, short_side=0)
    a = p.parse_args()
    summary = run_prepare("prepare_ucf_hmdb", prepare, a.dataset, a.splits, a.videos, a.dst, a.short_side,
                          a.workers, a.ffmpeg)
    if summary is None:
        return 2
    return report(summary, a.dst, [f"{kind}_{s}" for s in SPLITS for kind in ("train", "val")])


if __name__ == "__main__":
    sys.exit(main())
