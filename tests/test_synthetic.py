"""The synthetic datasets: determinism, reversal pairs, motion directions, files, controls; the appearance variant
and its Kinetics-style lists."""
import json
import os
import sys

import numpy as np
import pytest

from datasets import synthetic
from datasets.decoding import open_video, read_frames
from datasets.lists import read_video_list
from datasets.synthetic import (APPEARANCE_CLASSES, APPEARANCE_COLOURS, CLASS_NAMES, REVERSE_PARTNER, _plan,
                                make_controls, make_kinetics_dataset, render_appearance_video, render_video)


def _object_mask(video):
    return video.max(axis=-1) > 110  # object channels >= 120; background <= 80, distractors <= 95


def _centroids(video):
    m = _object_mask(video)
    ys, xs = np.mgrid[:m.shape[1], :m.shape[2]]
    return np.array([(xs[f].mean(), ys[f].mean()) for f in m]), m.sum(axis=(1, 2))


def test_deterministic_by_seed():
    a, b = render_video(3, 7, 48, 64, 8), render_video(3, 7, 48, 64, 8)
    assert a.shape == (8, 48, 64, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    assert not np.array_equal(a, render_video(3, 8, 48, 64, 8))


@pytest.mark.parametrize("label", range(8))
def test_reversed_video_is_the_partner_class(label):
    assert REVERSE_PARTNER[REVERSE_PARTNER[label]] == label != REVERSE_PARTNER[label]
    assert np.array_equal(render_video(label, 11, 48, 64, 8), render_video(REVERSE_PARTNER[label], 11, 48, 64, 8)[::-1])


def _turn(video):
    """Total rotation (degrees, + = clockwise on screen) of the object, from frame-to-frame shifts of its radial
    profile (largest radius per 10-degree sector around the centroid)."""
    m = _object_mask(video)
    ys, xs = np.mgrid[:m.shape[1], :m.shape[2]]
    profiles = []
    for f in m:
        dx, dy = xs[f] - xs[f].mean(), ys[f] - ys[f].mean()
        sector = ((np.degrees(np.arctan2(dy, dx)) % 360) // 10).astype(int)
        profile = np.zeros(36)
        np.maximum.at(profile, sector, np.hypot(dx, dy))
        profiles.append(profile - profile.mean())
    shifts = [max(range(-17, 18), key=lambda k: float(np.dot(a, np.roll(b, -k))))
              for a, b in zip(profiles, profiles[1:])]
    return 10 * sum(shifts)


@pytest.mark.parametrize("seed", range(3))
def test_every_class_moves_as_its_name_says(seed):
    moves = {}
    for label in range(8):
        video = render_video(label, seed, 64, 86, 10)
        centre, area = _centroids(video)
        moves[label] = dict(dx=centre[-1, 0] - centre[0, 0], dy=centre[-1, 1] - centre[0, 1],
                            grow=area[-1] / area[0], turn=_turn(video))
    still = lambda m: abs(m["dx"]) < 6 and abs(m["dy"]) < 6  # noqa: E731 (a turning polygon's centroid wobbles)
    assert moves[0]["dx"] > 10 and moves[1]["dx"] < -10  # left to right, right to left
    assert moves[2]["dy"] < -8 and moves[3]["dy"] > 8  # up (y shrinks), down
    assert all(abs(moves[k]["dy"]) < 6 and 0.7 < moves[k]["grow"] < 1.4 for k in (0, 1))
    assert all(abs(moves[k]["dx"]) < 6 and 0.7 < moves[k]["grow"] < 1.4 for k in (2, 3))
    assert moves[4]["grow"] > 2 and moves[5]["grow"] < 0.5 and still(moves[4]) and still(moves[5])  # camera closer/away
    assert moves[6]["turn"] > 90 and moves[7]["turn"] < -90  # clockwise, counter-clockwise
    assert still(moves[6]) and still(moves[7])
    assert all(0.7 < moves[k]["grow"] < 1.4 for k in (6, 7))


def test_dataset_files(synthetic_dir):
    labels = json.load(open(os.path.join(synthetic_dir, "something-something-v2-labels.json")))
    assert labels == {name: str(i) for i, name in enumerate(CLASS_NAMES)}
    train = read_video_list(os.path.join(synthetic_dir, "train.csv"))
    val = read_video_list(os.path.join(synthetic_dir, "val.csv"))
    assert len(train) == 16 and len(val) == 8 and sorted({l for _, l in train}) == list(range(8))
    assert open(os.path.join(synthetic_dir, "val.csv")).read() == open(os.path.join(synthetic_dir, "test.csv")).read()
    assert not {p for p, _ in train} & {p for p, _ in val}
    assert open(os.path.join(synthetic_dir, "train.csv")).readline().startswith("videos/100000.mp4 ")
    reader = open_video(val[0][0], "pyav")
    frames = reader.get_frames(range(reader.num_frames))
    assert frames.shape == (16, 48, 64, 3)
    with open(os.path.join(synthetic_dir, "videos", os.path.basename(val[0][0])), "rb") as f:
        assert f.read(12)[4:8] == b"ftyp"  # an mp4
    vid, label, seed = _plan(16, 8, seed=1)["val"][0]  # the conftest dataset's first val video
    assert val[0][0].endswith(f"{vid}.mp4") and val[0][1] == label
    assert np.abs(frames.astype(int) - render_video(label, seed, 48, 64, 16)).mean() < 4  # H.264 crf 18


def test_controls(synthetic_dir):
    out = make_controls(synthetic_dir)
    src = read_video_list(os.path.join(synthetic_dir, "val.csv"))
    rev = read_video_list(os.path.join(out["reversed"], "test.csv"))
    single = read_video_list(os.path.join(out["single_frame"], "val.csv"))
    assert [l for _, l in rev] == [REVERSE_PARTNER[l] for _, l in src] and [l for _, l in single] == [l for _, l in src]
    orig, _ = read_frames(src[0][0], lambda n: range(n))
    back, _ = read_frames(rev[0][0], lambda n: range(n))
    assert np.abs(back.astype(int) - orig[::-1]).mean() < 3  # re-encoded, so equal up to codec noise
    one, _ = read_frames(single[0][0], lambda n: range(n))
    assert np.abs(one.astype(int) - one[:1]).max() <= 8 and len(one) == len(orig)
    assert len(read_video_list(os.path.join(out["reversed"], "train.csv"))) == 16


def test_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["synthetic", "--out", str(tmp_path), "--train", "8", "--val", "8", "--height",
                                      "32", "--frames", "8", "--workers", "1"])
    synthetic.main()
    assert "wrote 8 train + 8 val videos" in capsys.readouterr().out
    assert len(os.listdir(tmp_path / "videos")) == 16 and (tmp_path / "test.csv").exists()


def _appearance(frame):
    """(colour family, shape) of the object in one frame, measured: the nearest family colour of its pixels, and
    'disc' or 'square' from how much of its bounding box it fills (pi / 4 or 1)."""
    mask = frame.max(axis=-1) > 110
    ys, xs = np.nonzero(mask)
    fill = mask.sum() / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1))
    mean = frame[mask].mean(axis=0)
    colour = min(APPEARANCE_COLOURS, key=lambda c: np.abs(mean - APPEARANCE_COLOURS[c]).sum())
    return colour, "disc" if fill < 0.9 else "square"


@pytest.mark.parametrize("seed", range(3))
def test_appearance_classes_are_measured_the_same_after_a_flip(seed):
    """Every frame, and its mirror image, shows its class; the drift is the same for every class of one seed."""
    paths = []
    for label, name in enumerate(APPEARANCE_CLASSES):
        video = render_appearance_video(label, seed, 32, 42, 120)
        again = render_appearance_video(label, seed, 32, 42, 120)
        assert video.shape == (120, 32, 42, 3) and np.array_equal(video, again)
        for frame in video[::17]:
            assert " ".join(_appearance(frame)) == name == " ".join(_appearance(frame[:, ::-1]))
        paths.append(_centroids(video)[0])
    assert all(np.abs(p - paths[0]).max() < 1 for p in paths)  # motion says nothing about the class
    assert np.abs(paths[0][-1] - paths[0][0]).max() > 2  # but the object does move


def test_kinetics_dataset_files(tmp_path):
    out = make_kinetics_dataset(str(tmp_path), num_train=8, num_val=4, num_frames=(100, 130), seed=2, workers=1)
    train = read_video_list(os.path.join(out, "train.csv"), nb_classes=8)
    val = read_video_list(os.path.join(out, "val.csv"), nb_classes=8, check_exists=True, unique=True)
    assert open(os.path.join(out, "val.csv")).read() == open(os.path.join(out, "test.csv")).read()
    assert len(train) == 8 and len(val) == 4 and sorted(label for _, label in train) == list(range(8))
    for path, label in train + val:
        assert os.path.dirname(path) == os.path.join(out, "videos", APPEARANCE_CLASSES[label])  # 'red disc', ...
        reader = open_video(path, "pyav")
        assert 100 <= reader.num_frames <= 130
        frames = reader.get_frames(range(reader.num_frames))
        assert frames.shape[1:] == (32, 42, 3) and " ".join(_appearance(frames[reader.num_frames // 2])) == \
            APPEARANCE_CLASSES[label]
    assert len({open_video(p, "pyav").num_frames for p, _ in train}) > 1  # lengths drawn per video
    with pytest.raises(ValueError, match=r"num_frames must be .*got \(5, 2\)"):
        make_kinetics_dataset(str(tmp_path), num_frames=(5, 2))


def test_kinetics_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["synthetic", "--out", str(tmp_path), "--kinetics", "--train", "2", "--val",
                                      "1", "--height", "32", "--frames", "12", "--workers", "1"])
    synthetic.main()
    assert "wrote 2 train + 1 val videos (32 px high, 12 frames)" in capsys.readouterr().out
    assert open(tmp_path / "train.csv").read().count(",") == 2
