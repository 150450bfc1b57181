"""prepare_kinetics on a miniature official Kinetics-400 download: annotation CSVs plus downloaded clips, flat or in
per-class folders, with a missing and a corrupt clip; resume; bad annotations."""
import csv
import os
import sys

import numpy as np
import pytest

from datasets import prepare_kinetics
from datasets.decoding import open_video
from datasets.ssv2 import load_class_names
from datasets.synthetic import write_video

CLASSES = ["zumba", "abseiling", "passing American football (in game)"]
# (split, youtube_id, start, end, class, height, width); None size: the clip was never downloaded
ROWS = [("train", "aBc-_12dEf0", 14, 24, "zumba", 32, 48),
        ("train", "x_y_z012345", 0, 10, "abseiling", 48, 32),  # portrait: its width becomes the short side
        ("train", "gone0000000", 3, 13, "abseiling", None, None),
        ("train", "QQQQQQQQQQQ", 120, 130, "passing American football (in game)", 32, 48),
        ("val", "vvvvvvvvvv1", 5, 15, "zumba", 32, 48),
        ("val", "broken00000", 1, 11, "abseiling", 32, 48),  # written as junk bytes below
        ("val", "vvvvvvvvvv2", 7, 17, "passing American football (in game)", 32, 48)]
SHORT = 24


def make_download(root, per_class: bool) -> tuple[str, str]:
    """train.csv / validate.csv in root/ann, clips in root/clips (flat, or <split>/<class>/ like the downloaders)."""
    ann, clips = root / "ann", root / "clips"
    ann.mkdir()
    for split, name in (("train", "train.csv"), ("val", "validate.csv")):
        with open(ann / name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
            w.writerows([cls, yid, start, end, s] for s, yid, start, end, cls, _, _ in ROWS if s == split)
    for split, yid, start, end, cls, h, w in ROWS:
        if h is None:
            continue
        folder = clips / split / cls if per_class else clips
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{yid}_{start:06d}_{end:06d}.mp4"
        if yid.startswith("broken"):
            path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 512)
        else:
            write_video(str(path), np.tile(np.linspace(0, 255, w, dtype=np.uint8)[None, None, :, None], (6, h, 1, 3)))
    return str(ann), str(clips)


@pytest.mark.parametrize("per_class", [False, True])
def test_lists_labels_missing_and_corrupt_clips_and_resume(tmp_path, monkeypatch, capsys, per_class):
    ann, clips = make_download(tmp_path, per_class)
    dst = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["prepare_kinetics", "--annotations", ann, "--videos", clips, "--dst", str(dst),
                                      "--short_side", str(SHORT), "--workers", "2"])
    assert prepare_kinetics.main() == 0  # Kinetics always misses clips: listed, not fatal
    out, err = capsys.readouterr()
    assert "train: 4 listed, 3 converted, 0 skipped (already done), 1 missing, 0 failed, 3 in train.csv" in out
    assert "val: 3 listed, 2 converted, 0 skipped (already done), 0 missing, 1 failed, 2 in val.csv" in out
    assert ("FAILED train gone0000000_000003_000013: FileNotFoundError: no source video of that name under the video "
            "folder") in err
    assert "FAILED val broken00000_000001_000011: RuntimeError: ffmpeg failed on" in err

    names = sorted(CLASSES)
    assert load_class_names(str(dst / "kinetics400-labels.json")) == names
    for split in ("train", "val"):
        expect = [f"videos/{yid}_{s:06d}_{e:06d}.mp4 {names.index(cls)}" for sp, yid, s, e, cls, h, _ in ROWS
                  if sp == split and h is not None and not yid.startswith("broken")]
        assert (dst / f"{split}.csv").read_text().splitlines() == expect
    assert (dst / "test.csv").read_text() == (dst / "val.csv").read_text()
    failed = (dst / "failed.txt").read_text().splitlines()
    assert [line.split(" ")[:2] for line in failed] == [["train", "gone0000000_000003_000013"],
                                                         ["val", "broken00000_000001_000011"]]
    for line in (dst / "train.csv").read_text().splitlines():
        rel = line.split(" ")[0]
        h, w = open_video(str(dst / rel), "pyav").get_frames([0])[0].shape[:2]
        assert (h, w) == ((36, SHORT) if rel.startswith("videos/x_y_z") else (SHORT, 36))

    summary = prepare_kinetics.prepare(ann, clips, str(dst), SHORT, workers=2)  # a rerun converts nothing again
    assert summary["train"] == {"listed": 4, "converted": 0, "skipped": 3, "missing": 1, "failed": 0, "in_csv": 3}
    assert summary["val"] == {"listed": 3, "converted": 0, "skipped": 2, "missing": 0, "failed": 1, "in_csv": 2}


def test_bad_annotations_name_file_and_line(tmp_path, monkeypatch, capsys):
    ann, clips = make_download(tmp_path, per_class=False)
    train = os.path.join(ann, "train.csv")
    with open(train, "a") as f:
        f.write("zumba,aBc-_12dEf0,14,24,train\n")
    with pytest.raises(ValueError, match=r"train.csv:6: clip aBc-_12dEf0_000014_000024 already listed on line 2"):
        prepare_kinetics.read_annotation_csv(train)
    with open(train, "w") as f:
        f.write("label,youtube_id,time_start,time_end,split\nzumba,abc,x,24,train\n")
    with pytest.raises(ValueError, match=r"train.csv:2: time_start 'x' / time_end '24', expected seconds"):
        prepare_kinetics.read_annotation_csv(train)
    with open(train, "w") as f:
        f.write("label,id,start,end\n")
    with pytest.raises(ValueError, match=r"train.csv:1: header .* lacks \['youtube_id', 'time_start', 'time_end'\]"):
        prepare_kinetics.read_annotation_csv(train)
    os.remove(os.path.join(ann, "validate.csv"))
    monkeypatch.setattr(sys, "argv", ["prepare_kinetics", "--annotations", ann, "--videos", clips,
                                      "--dst", str(tmp_path / "out")])
    os.remove(train)
    assert prepare_kinetics.main() == 2
    assert capsys.readouterr().err.startswith(f"prepare_kinetics: missing the Kinetics annotation file {train} ")


def test_a_clip_twice_under_the_folder_is_an_error(tmp_path):
    ann, clips = make_download(tmp_path, per_class=False)
    os.makedirs(os.path.join(clips, "copy"))
    name = "vvvvvvvvvv1_000005_000015"
    os.link(os.path.join(clips, f"{name}.mp4"), os.path.join(clips, "copy", f"{name}.mkv"))
    with pytest.raises(ValueError, match=rf"video '{name}' is ambiguous: .*clips/{name}.mp4, .*copy/{name}.mkv; "
                                         rf"keep one"):
        prepare_kinetics.prepare(ann, clips, str(tmp_path / "out"), SHORT, workers=1)
