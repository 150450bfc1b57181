"""prepare_ssv2 end to end on a miniature official download (VP9 webm + jsons), resume, failures; datasets.verify."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from datasets import convert, prepare_ssv2, verify
from datasets.decoding import open_video
from datasets.ssv2 import read_video_list

HEIGHT = 48  # the tests upscale 32 px sources to 48 px to stay fast; the default is 240


@pytest.fixture
def src(official_dir, tmp_path):
    """A private copy of the official folder, so tests may delete or corrupt files."""
    return shutil.copytree(official_dir, tmp_path / "src")


def _expected(src, split_file, labels_file="something-something-v2-labels.json"):
    labels = json.load(open(os.path.join(src, labels_file)))
    items = json.load(open(os.path.join(src, split_file)))
    return [(f"videos/{it['id']}.mp4", int(labels[it["template"].replace("[", "").replace("]", "")])) for it in items]


def _csv(dst, name):
    return [tuple(line.split(" ")) for line in open(os.path.join(dst, name)).read().splitlines()]


def test_end_to_end_and_resume(src, tmp_path):
    assert open(os.path.join(src, "20bn-something-something-v2", os.listdir(
        os.path.join(src, "20bn-something-something-v2"))[0]), "rb").read(4) == b"\x1a\x45\xdf\xa3"  # webm (EBML)
    dst = str(tmp_path / "out")
    summary = prepare_ssv2.prepare(str(src), dst, workers=2, height=HEIGHT)
    assert summary["train"] == {"listed": 6, "converted": 6, "skipped": 0, "missing": 0, "failed": 0, "in_csv": 6}
    assert summary["val"]["converted"] == 4 and not summary["failed"]
    for name, split_file in (("train.csv", "something-something-v2-train.json"),
                             ("val.csv", "something-something-v2-validation.json")):
        assert [(p, int(l)) for p, l in _csv(dst, name)] == _expected(src, split_file)
    assert _csv(dst, "test.csv") == _csv(dst, "val.csv")
    assert open(os.path.join(dst, "something-something-v2-labels.json")).read() == \
        open(os.path.join(src, "something-something-v2-labels.json")).read()
    for path, _ in read_video_list(os.path.join(dst, "train.csv")):
        reader = open_video(path, "decord")
        frame = reader.get_frames([0])[0]
        assert frame.shape[0] == HEIGHT and frame.shape[1] % 2 == 0 and abs(frame.shape[1] - 42 * HEIGHT / 32) <= 2
        assert reader.num_frames == 12
        assert open(path, "rb").read(12)[4:8] == b"ftyp"

    # An interrupted run: one video never finished (only a half-written .part is left), the others are done.
    victim = os.path.join(dst, "videos", _expected(src, "something-something-v2-train.json")[0][0].split("/")[1])
    os.remove(victim)
    with open(victim + ".part", "wb") as f:
        f.write(b"half a video")
    done = os.path.join(dst, "videos", os.listdir(os.path.join(dst, "videos"))[-1])
    mtime = os.path.getmtime(done)
    summary = prepare_ssv2.prepare(str(src), dst, workers=2, height=HEIGHT)
    assert summary["train"]["converted"] + summary["val"]["converted"] == 1
    assert summary["train"]["skipped"] + summary["val"]["skipped"] == 9
    assert os.path.getmtime(done) == mtime and not os.path.exists(victim + ".part")
    assert open_video(victim, "pyav").num_frames == 12


def test_failed_video_is_listed_and_exit_status_is_nonzero(src, tmp_path, monkeypatch, capsys):
    vid = json.load(open(os.path.join(src, "something-something-v2-validation.json")))[1]["id"]
    os.remove(os.path.join(src, "20bn-something-something-v2", f"{vid}.webm"))
    dst = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["prepare", "--src", str(src), "--dst", str(dst), "--workers", "2", "--height",
                                      str(HEIGHT)])
    assert prepare_ssv2.main() == 1
    out, err = capsys.readouterr()
    assert "val: 4 listed, 3 converted, 0 skipped (already done), 1 missing, 0 failed, 3 in val.csv" in out
    assert f"FAILED val {vid}: FileNotFoundError: missing source video" in err
    assert f"val {vid} FileNotFoundError" in (dst / "failed.txt").read_text()
    assert f"videos/{vid}.mp4" not in (dst / "val.csv").read_text()


def _rewrite(path, edit):
    data = json.load(open(path))
    json.dump(edit(data), open(path, "w"))


def test_annotation_errors_name_the_problem(src):
    train_json = os.path.join(src, "something-something-v2-train.json")
    _rewrite(train_json, lambda d: d + [d[0]])
    with pytest.raises(ValueError, match=rf"train.json: item 6: duplicate video id {json.load(open(train_json))[0]['id']}"):
        prepare_ssv2.read_annotations(str(src))
    _rewrite(train_json, lambda d: d[:6] + [dict(d[0], id="999", template="Juggling [something]")])
    with pytest.raises(ValueError, match=r"item 6 \(id 999\) has template 'Juggling \[something\]'.*not in"):
        prepare_ssv2.read_annotations(str(src))
    os.remove(os.path.join(src, "something-something-v2-labels.json"))
    with pytest.raises(FileNotFoundError, match=r"missing the SSv2 labels file: looked for labels/labels.json "
                                                r"\(current download\) or something-something-v2-labels.json"):
        prepare_ssv2.read_annotations(str(src))


def test_verify_lists_every_bad_video(synthetic_dir, tmp_path, monkeypatch, capsys):
    good = read_video_list(os.path.join(synthetic_dir, "val.csv"))[:2]
    (tmp_path / "junk.mp4").write_bytes(b"\x00" * 4096)
    csv = tmp_path / "list.csv"
    csv.write_text("".join(f"{p} {l}\n" for p, l in good) + f"{tmp_path}/missing.mp4 1\n{tmp_path}/junk.mp4 2\n")
    monkeypatch.setattr(sys, "argv", ["verify", str(csv), "--workers", "2"])
    assert verify.main() == 1
    out = capsys.readouterr().out
    assert "BAD " + str(tmp_path / "missing.mp4") in out and "BAD " + str(tmp_path / "junk.mp4") in out
    assert "2/4 videos OK, 2 bad" in out
    assert verify.verify(str(csv), min_frames=17)[0] == (good[0][0], "only 16 frames (< 17)")
    good_csv = os.path.join(synthetic_dir, "val.csv")
    monkeypatch.setattr(sys, "argv", ["verify", good_csv, "--data_root", synthetic_dir])
    assert verify.main() == 0


@pytest.mark.parametrize("hide_warning", [False, True])
def test_truncated_source_is_a_failure_not_converted(src, tmp_path, monkeypatch, hide_warning):
    """A cut webm: ffmpeg exits 0 and writes the frames it read. Its "File ended prematurely" warning, or (with the
    warning hidden) the frame count below the header's duration x rate, makes it a failure."""
    vid = json.load(open(os.path.join(src, "something-something-v2-train.json")))[2]["id"]
    webm = os.path.join(src, "20bn-something-something-v2", f"{vid}.webm")
    data = open(webm, "rb").read()
    open(webm, "wb").write(data[: len(data) * 6 // 10])
    if hide_warning:
        real = subprocess.run
        monkeypatch.setattr(convert.subprocess, "run", lambda *a, **k: (lambda r: subprocess.CompletedProcess(
            r.args, r.returncode, r.stdout, r.stderr.replace("ended prematurely", "")))(real(*a, **k)))
    summary = prepare_ssv2.prepare(str(src), str(tmp_path / "out"), workers=2, height=HEIGHT)
    assert summary["train"] == {"listed": 6, "converted": 5, "skipped": 0, "missing": 0, "failed": 1, "in_csv": 5}
    (split, failed, reason), = summary["failed"]
    assert failed == vid and ("frames decode, its header promises 12" if hide_warning else "File ended prematurely") \
        in reason
    assert not os.path.exists(tmp_path / "out" / "videos" / f"{vid}.mp4")


def test_current_download_layout_with_the_labelled_test_split(official_current_dir, tmp_path):
    """labels/*.json and 20bn-something-something-v2/: the same lists as the 20BN names give; --with_test adds
    test_official.csv labelled from test-answers.csv, and test.csv stays the validation list."""
    src = official_current_dir
    dst = str(tmp_path / "out")
    summary = prepare_ssv2.prepare(src, dst, workers=2, height=HEIGHT, with_test=True)
    assert summary["train"]["converted"] == 4 and summary["val"]["converted"] == 2 and not summary["failed"]
    assert summary["test_official"] == {"listed": 2, "converted": 2, "skipped": 0, "missing": 0, "failed": 0,
                                        "in_csv": 2}
    for name, split_file in (("train.csv", "labels/train.json"), ("val.csv", "labels/validation.json")):
        assert [(p, int(l)) for p, l in _csv(dst, name)] == _expected(src, split_file, "labels/labels.json")
    assert _csv(dst, "test.csv") == _csv(dst, "val.csv")
    labels = json.load(open(os.path.join(src, "labels", "labels.json")))
    answers = [line.split(";") for line in open(os.path.join(src, "labels", "test-answers.csv")).read().splitlines()]
    assert [(p, int(l)) for p, l in _csv(dst, "test_official.csv")] == \
        [(f"videos/{vid}.mp4", int(labels[cls])) for vid, cls in answers]
    assert json.load(open(os.path.join(dst, "something-something-v2-labels.json"))) == labels
    assert open_video(os.path.join(dst, _csv(dst, "test_official.csv")[0][0]), "pyav").num_frames == 12


def test_an_empty_official_list_gives_an_empty_csv(official_current_dir, tmp_path, capsys):
    """An official list with no video (test.json [] with --with_test): its csv is written empty (no stale one left)
    and the summary counts it as 0, as the other lists."""
    src = str(tmp_path / "src")
    shutil.copytree(official_current_dir, src)
    _rewrite(os.path.join(src, "labels", "test.json"), lambda items: [])
    open(os.path.join(src, "labels", "test-answers.csv"), "w").close()
    dst = str(tmp_path / "out")
    os.makedirs(dst)
    open(os.path.join(dst, "test_official.csv"), "w").write("videos/stale.mp4 0\n")
    summary = prepare_ssv2.prepare(src, dst, workers=2, height=HEIGHT, with_test=True)
    assert summary["test_official"] == dict.fromkeys(("listed", "converted", "skipped", "missing", "failed",
                                                      "in_csv"), 0)
    assert _csv(dst, "test_official.csv") == [] and len(_csv(dst, "train.csv")) == 4
    assert convert.report(summary, dst, ["train", "val", "test_official"]) == 0
    assert "test_official: 0 listed" in capsys.readouterr().out


def test_missing_annotation_file_is_one_line_naming_both_names(official_current_dir, tmp_path, monkeypatch, capsys):
    src = shutil.copytree(official_current_dir, tmp_path / "src")
    os.remove(src / "labels" / "validation.json")
    monkeypatch.setattr(sys, "argv", ["prepare", "--src", str(src), "--dst", str(tmp_path / "out")])
    assert prepare_ssv2.main() == 2
    err = capsys.readouterr().err
    assert err == (f"prepare_ssv2: missing the SSv2 val file: looked for labels/validation.json (current download) "
                   f"or something-something-v2-validation.json (20BN name) in {src}\n")
    (src / "labels" / "test-answers.csv").write_text("300000;Juggling a box\n")
    with pytest.raises(ValueError, match=r"test-answers.csv:1: '300000;Juggling a box', expected '<id>;<class name"):
        prepare_ssv2.read_test_answers(str(src), {"Moving something up": 2})
