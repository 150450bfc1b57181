"""prepare_ucf_hmdb on miniature official UCF101 and HMDB51 downloads (.avi videos, the official split files):
the three splits' lists, 0-based labels, each video converted once, a missing video, resume, bad split files."""
import json
import os
import sys

import av
import numpy as np
import pytest

from datasets import prepare_ucf_hmdb
from datasets.decoding import open_video

UCF_CLASSES = ["ApplyEyeMakeup", "HandstandPushups", "YoYo"]  # classInd.txt order (1-based there)
HMDB_CLASSES = ["cartwheel", "brush_hair"]  # ids follow the sorted names


def write_avi(path, height=32, width=44, frames=5):
    """A small MPEG-4 Part 2 .avi, like the official UCF101/HMDB51 videos."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with av.open(str(path), "w", format="avi") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.height, stream.width, stream.pix_fmt = height, width, "yuv420p"
        for t in range(frames):
            image = np.full((height, width, 3), 40 * t, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def ucf_video(cls, group):
    """UCF101's names, with its case quirk: HandstandPushups' files say HandStandPushups."""
    return f"v_{cls.replace('HandstandPushups', 'HandStandPushups')}_g{group:02d}_c01"


def make_ucf(root):
    splits, videos = root / "ucfTrainTestlist", root / "UCF-101"
    splits.mkdir()
    (splits / "classInd.txt").write_text("".join(f"{i + 1} {c}\r\n" for i, c in enumerate(UCF_CLASSES)))
    for n in (1, 2, 3):  # split n tests on group n, trains on the others
        (splits / f"trainlist0{n}.txt").write_text("".join(
            f"{c}/{ucf_video(c, g)}.avi {i + 1}\r\n" for i, c in enumerate(UCF_CLASSES) for g in (1, 2, 3) if g != n))
        (splits / f"testlist0{n}.txt").write_text("".join(f"{c}/{ucf_video(c, n)}.avi\r\n" for c in UCF_CLASSES))
    for c in UCF_CLASSES:
        for g in (1, 2, 3):
            if (c, g) != ("YoYo", 3):  # never extracted
                write_avi(videos / c / f"{ucf_video(c, g)}.avi")
    return str(splits), str(videos)


def test_ucf101_three_splits_missing_video_and_resume(tmp_path, monkeypatch, capsys):
    splits, videos = make_ucf(tmp_path)
    dst = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["prepare", "--dataset", "UCF101", "--splits", splits, "--videos", videos,
                                      "--dst", str(dst), "--workers", "2"])
    assert prepare_ucf_hmdb.main() == 1
    out, err = capsys.readouterr()
    assert "train_1: 6 listed, 5 converted, 0 skipped (already done), 1 missing, 0 failed, 5 in train_1.csv" in out
    assert "val_1: 3 listed, 3 converted, 0 skipped (already done), 0 missing, 0 failed, 3 in val_1.csv" in out
    # each video is converted once, in the first list that names it: group 3 in train_1
    assert "val_3: 3 listed, 0 converted, 2 skipped (already done), 1 missing, 0 failed, 2 in val_3.csv" in out
    missing = os.path.join(videos, "YoYo", f"{ucf_video('YoYo', 3)}.avi")
    assert f"FAILED train_1 YoYo/{ucf_video('YoYo', 3)}: FileNotFoundError: missing source video '{missing}'" in err
    for n in (1, 2, 3):
        for kind, groups in (("train", [g for g in (1, 2, 3) if g != n]), ("val", [n])):
            expect = [f"videos/{c}/{ucf_video(c, g)}.mp4 {i}" for i, c in enumerate(UCF_CLASSES) for g in groups
                      if (c, g) != ("YoYo", 3)]
            assert (dst / f"{kind}_{n}.csv").read_text().splitlines() == expect
    assert json.load(open(dst / "ucf101-labels.json")) == {c: str(i) for i, c in enumerate(UCF_CLASSES)}
    reader = open_video(str(dst / "videos" / "YoYo" / f"{ucf_video('YoYo', 1)}.mp4"), "pyav")
    assert reader.num_frames == 5 and reader.get_frames([0])[0].shape == (32, 44, 3)
    assert open(dst / "videos" / "YoYo" / f"{ucf_video('YoYo', 1)}.mp4", "rb").read(12)[4:8] == b"ftyp"

    write_avi(os.path.join(videos, "YoYo", f"{ucf_video('YoYo', 3)}.avi"))
    summary = prepare_ucf_hmdb.prepare("UCF101", splits, videos, str(dst), workers=2)  # resume: only the new one
    assert sum(summary[f"{k}_{n}"]["converted"] for k in ("train", "val") for n in (1, 2, 3)) == 1
    assert not summary["failed"] and not (dst / "failed.txt").exists()
    assert summary["val_3"] == {"listed": 3, "converted": 0, "skipped": 3, "missing": 0, "failed": 0, "in_csv": 3}


def test_ucf101_label_that_contradicts_its_folder(tmp_path):
    splits, videos = make_ucf(tmp_path)
    path = os.path.join(splits, "trainlist02.txt")
    lines = open(path).read().splitlines()
    lines[1] = lines[1].replace(" 1", " 3")
    open(path, "w").write("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"trainlist02.txt:2: label 3 but the folder 'ApplyEyeMakeup' is class 1 in "
                                         r"classInd.txt"):
        prepare_ucf_hmdb.read_ucf101(splits)


def make_hmdb(root, short_side=None):
    splits, videos = root / "testTrainMulti_7030_splits", root / "hmdb51_org"
    splits.mkdir()
    for c in HMDB_CLASSES:
        names = [f"{c}_video_{k}" for k in range(3)]
        for n in (1, 2, 3):  # video k: train, test, unused, rotated per split; lines end in a space like the originals
            (splits / f"{c}_test_split{n}.txt").write_text(
                "".join(f"{v}.avi {(k + n) % 3} \n" for k, v in enumerate(names)))
        for v in names:
            write_avi(videos / c / f"{v}.avi", height=30, width=46)
    return str(splits), str(videos)


def test_hmdb51_splits_flags_and_sorted_classes(tmp_path):
    splits, videos = make_hmdb(tmp_path)
    dst = tmp_path / "out"
    summary = prepare_ucf_hmdb.prepare("HMDB51", splits, videos, str(dst), short_side=20, workers=2)
    assert not summary["failed"]
    ids = {c: i for i, c in enumerate(sorted(HMDB_CLASSES))}
    for n in (1, 2, 3):
        for kind, flag in (("train", 1), ("val", 2)):
            expect = [f"videos/{c}/{c}_video_{k}.mp4 {ids[c]}" for c in sorted(HMDB_CLASSES) for k in range(3)
                      if (k + n) % 3 == flag]
            assert (dst / f"{kind}_{n}.csv").read_text().splitlines() == expect
    assert json.load(open(dst / "hmdb51-labels.json")) == {"brush_hair": "0", "cartwheel": "1"}
    h, w = open_video(str(dst / "videos" / "cartwheel" / "cartwheel_video_0.mp4"), "pyav").get_frames([0])[0].shape[:2]
    assert (h, w) == (20, 30)  # 30 x 46 with the short side at 20: 30.67 rounded to even


def test_hmdb51_bad_flag_and_missing_split_file(tmp_path, monkeypatch, capsys):
    splits, videos = make_hmdb(tmp_path)
    path = os.path.join(splits, "brush_hair_test_split2.txt")
    open(path, "a").write("extra.avi 3\n")
    with pytest.raises(ValueError, match=r"brush_hair_test_split2.txt:4: 'extra.avi 3', expected "
                                         r"'<video>.avi <0\|1\|2>'"):
        prepare_ucf_hmdb.read_hmdb51(splits)
    os.remove(path)
    monkeypatch.setattr(sys, "argv", ["prepare", "--dataset", "HMDB51", "--splits", splits, "--videos", videos,
                                      "--dst", str(tmp_path / "out")])
    assert prepare_ucf_hmdb.main() == 2
    assert capsys.readouterr().err == f"prepare_ucf_hmdb: missing the split file {path}\n"
