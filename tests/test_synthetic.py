"""The synthetic temporal dataset: determinism, reversal pairs, motion directions, files, controls."""
import json
import os
import sys

import numpy as np
import pytest

from datasets import synthetic
from datasets.decoding import open_video, read_frames
from datasets.ssv2 import read_video_list
from datasets.synthetic import CLASS_NAMES, REVERSE_PARTNER, _plan, make_controls, render_video


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
