"""reports.py: per-class CSV, confused pairs and confusion matrix against independent counts."""
import csv
import json
import os
import runpy
import sys
from collections import defaultdict

import matplotlib.image as mpimg
import numpy as np
import pytest

import reports

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_per_view(num_videos: int, num_classes: int, views: int, seed: int = 0):
    """Per-view softmax rows in shuffled order, as the engine's test_per_view.npz holds them."""
    rng = np.random.default_rng(seed)
    video_labels = rng.integers(0, num_classes, num_videos)
    video_labels[video_labels == num_classes - 1] = 0  # the last class has no test videos
    ids = np.repeat([f"vid{i:04d}" for i in range(num_videos)], views)
    labels = np.repeat(video_labels, views)
    logits = rng.normal(size=(len(ids), num_classes))
    logits[np.arange(len(ids)), labels] += rng.normal(1.5, 2.0, len(ids))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    perm = rng.permutation(len(ids))
    return ids[perm], labels[perm], probs[perm].astype(np.float32)


def merge_views(ids, labels, probs):
    """Independent merge: mean of each video's view softmaxes, videos sorted by id."""
    rows, label_of = defaultdict(list), {}
    for vid, label, p in zip(ids, labels, probs):
        rows[vid].append(p)
        label_of[vid] = int(label)
    order = sorted(rows)
    return order, np.array([label_of[v] for v in order]), np.stack([np.mean(rows[v], 0) for v in order])


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def check_png(path, min_bytes=5000):
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    assert os.path.getsize(path) > min_bytes
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 300 and image.shape[2] in (3, 4)


def test_per_class_csv_matches_independent_count_from_per_view(tmp_path):
    num_classes = 7
    ids, labels, probs = make_per_view(60, num_classes, views=6)
    video_ids, video_labels, video_probs = merge_views(ids, labels, probs)
    names = [f"moving [something] {c}" for c in range(num_classes)]
    result = reports.write_reports(str(tmp_path), video_ids, video_labels, video_probs, names)

    videos, hit1, hit5 = defaultdict(int), defaultdict(int), defaultdict(int)
    for label, p in zip(video_labels, video_probs):
        ranked = sorted(range(num_classes), key=lambda c: -p[c])
        videos[label] += 1
        hit1[label] += ranked[0] == label
        hit5[label] += label in ranked[:5]

    rows = read_csv(result["per_class_csv"])
    assert [int(r["class_id"]) for r in rows] == list(range(num_classes))
    for r in rows:
        c = int(r["class_id"])
        assert r["name"] == names[c]
        assert int(r["videos"]) == videos[c]
        if videos[c] == 0:
            assert r["top1"] == "" and r["top5"] == ""
        else:
            assert float(r["top1"]) == pytest.approx(100 * hit1[c] / videos[c], abs=0.006)
            assert float(r["top5"]) == pytest.approx(100 * hit5[c] / videos[c], abs=0.006)
    assert videos[num_classes - 1] == 0
    expected_mean = np.mean([100 * hit1[c] / videos[c] for c in videos if videos[c]])
    assert result["mean_class_acc"] == pytest.approx(expected_mean)
    assert sum(int(r["videos"]) for r in rows) == len(video_ids) == 60


def test_confusion_matrix_counts_and_sum():
    rng = np.random.default_rng(1)
    labels, preds = rng.integers(0, 9, 500), rng.integers(0, 9, 500)
    cm = reports.confusion_matrix(labels, preds, 9)
    expected = np.zeros((9, 9), dtype=np.int64)
    for t, p in zip(labels, preds):
        expected[t, p] += 1
    np.testing.assert_array_equal(cm, expected)
    assert cm.sum() == 500 and cm.dtype == np.int64


def test_confused_pairs_are_the_largest_off_diagonal_counts(tmp_path):
    ids, labels, probs = make_per_view(400, 12, views=1, seed=3)
    result = reports.write_reports(str(tmp_path), list(ids), labels, probs)
    preds = probs.argmax(1)
    pairs = defaultdict(int)
    for t, p in zip(labels, preds):
        if t != p:
            pairs[(int(t), int(p))] += 1
    expected = sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[:20]
    rows = read_csv(result["confused_pairs_csv"])
    assert len(rows) == 20
    assert [((int(r["true_id"]), int(r["pred_id"])), int(r["count"])) for r in rows] == expected
    assert all(r["true_name"] == "" for r in rows)  # no class names given
    true_videos = np.bincount(labels, minlength=12)
    r = rows[0]
    assert float(r["percent_of_true"]) == pytest.approx(100 * int(r["count"]) / true_videos[int(r["true_id"])],
                                                        abs=0.006)


def test_confusion_png_is_valid_and_readable_at_174_classes(tmp_path):
    ids, labels, probs = make_per_view(3000, 174, views=1, seed=4)
    result = reports.write_reports(str(tmp_path), list(ids), labels, probs)
    check_png(result["confusion_matrix_png"], min_bytes=20000)
    height, width = mpimg.imread(result["confusion_matrix_png"]).shape[:2]
    assert height >= 174 * 8 and width >= 174 * 8  # several pixels per cell, room for 174 tick labels


def test_perfect_predictions(tmp_path):
    labels = np.array([0, 1, 2, 2, 1])
    probs = np.eye(4, dtype=np.float32)[labels] * 0.9 + 0.025
    result = reports.write_reports(str(tmp_path), list("abcde"), labels, probs)
    assert result["mean_class_acc"] == pytest.approx(100.0)
    assert read_csv(result["confused_pairs_csv"]) == []
    rows = read_csv(result["per_class_csv"])
    assert rows[3]["videos"] == "0" and rows[3]["top1"] == ""
    check_png(result["confusion_matrix_png"], min_bytes=2000)


@pytest.mark.parametrize("kwargs, message", [
    (dict(video_ids=["a", "a"]), "duplicate video ids"),
    (dict(labels=np.array([0, 5])), "labels must lie in"),
    (dict(video_ids=["a"]), "expected probs"),
])
def test_bad_inputs_fail_clearly(tmp_path, kwargs, message):
    args = dict(video_ids=["a", "b"], labels=np.array([0, 1]), probs=np.full((2, 3), 1 / 3), class_names=None)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        reports.write_reports(str(tmp_path), **args)


def test_wrong_number_of_class_names_warns_and_keeps_ids(tmp_path, capsys):
    result = reports.write_reports(str(tmp_path), ["a", "b"], np.array([0, 1]), np.full((2, 3), 1 / 3), ["x"])
    assert "1 class names for 3 classes" in capsys.readouterr().out
    assert [r["name"] for r in read_csv(result["per_class_csv"])] == ["", "", ""]


def test_cli_rebuilds_reports_from_test_per_video(tmp_path, monkeypatch, capsys):
    ids, labels, probs = make_per_view(40, 5, views=1, seed=5)
    np.savez(tmp_path / "test_per_video.npz", video_ids=ids, labels=labels, probs=probs)
    (tmp_path / "labels.json").write_text(json.dumps({f"Pushing {c}": str(c) for c in range(5)}))
    monkeypatch.setattr(sys, "argv", ["reports.py", str(tmp_path), "--labels", str(tmp_path / "labels.json")])
    runpy.run_path(os.path.join(os.path.dirname(os.path.dirname(__file__)), "reports.py"), run_name="__main__")
    printed = json.loads(capsys.readouterr().out)
    expected = reports.write_reports(str(tmp_path / "direct"), list(ids), labels, probs,
                                     [f"Pushing {c}" for c in range(5)])
    assert printed["mean_class_acc"] == pytest.approx(expected["mean_class_acc"])
    assert open(printed["per_class_csv"]).read() == open(expected["per_class_csv"]).read()
    assert open(printed["confused_pairs_csv"]).read() == open(expected["confused_pairs_csv"]).read()
    monkeypatch.setattr(sys, "argv", ["reports.py", str(tmp_path / "direct")])
    with pytest.raises(SystemExit, match="test_per_video.npz not found"):
        runpy.run_path(os.path.join(os.path.dirname(os.path.dirname(__file__)), "reports.py"), run_name="__main__")


def test_two_test_videos_with_one_file_name_stay_two_videos_end_to_end(data_dir, tmp_path, recorded, monkeypatch):
    """8 test lines, two of them the same file name in two folders with other labels and other pixels: the run's
    multi-view test counts 8 videos (test_summary.json), each with its own label, its own views and its own
    per-video row; nothing merges them by name."""
    import shutil

    import engine_for_finetuning as engine
    from runs import REAL_FINAL_TEST, base_argv, train
    monkeypatch.setattr(engine, "final_test", REAL_FINAL_TEST)  # the real test after the recorded training
    lines = open(os.path.join(data_dir, "test.csv")).read().split()
    listed = [(os.path.join(data_dir, p), int(l)) for p, l in zip(lines[::2], lines[1::2])]
    for folder, (src, _) in zip("ab", listed[:2]):
        os.makedirs(tmp_path / "eval" / folder)
        shutil.copy(src, tmp_path / "eval" / folder / "same.mp4")
    listed = listed[1:] + [(str(tmp_path / "eval" / folder / "same.mp4"), label) for folder, label in (("a", 3),
                                                                                                       ("b", 6))]
    assert len(listed) == 8
    for name in ("val.csv", "test.csv"):
        (tmp_path / "eval" / name).write_text("".join(f"{p} {l}\n" for p, l in listed))
    out = tmp_path / "out"
    train(base_argv(data_dir, out, "--epochs", "1", "--eval_data_path", str(tmp_path / "eval")))
    summary = json.load(open(out / "test_summary.json"))
    assert (summary["videos"], summary["views_per_video"]) == (8, 4)
    with np.load(out / "test_per_video.npz") as z:
        ids, labels = list(z["video_ids"]), list(z["labels"])
    assert len(set(ids)) == 8 and sorted(labels) == sorted(label for _, label in listed)
    same = {label for vid, label in zip(ids, labels) if os.path.basename(vid) == "same"}
    assert same == {3, 6}
    with np.load(out / "test_per_view.npz") as z:
        assert len(z["video_ids"]) == 8 * 4 and len(set(z["video_ids"])) == 8
