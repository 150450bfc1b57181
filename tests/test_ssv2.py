"""SSv2 lists, frame sampling, views, decoding and the bad-video policy."""
import argparse
import json
import os
import random

import av
import cv2
import numpy as np
import pytest
import torch
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

import datasets
import datasets.decoding as decoding
import datasets.ssv2 as ssv2
from datasets import (build_dataset, load_class_names, multiple_samples_collate, pack_videos_collate,
                      read_test_views)
from datasets.decoding import VideoDecodeError, read_frames
from datasets.ssv2 import SSv2Dataset, read_video_list, eval_indices, train_indices, val_indices
from video_transforms import AugmentConfig, normalize_clips, resize_short_side, sliding_crops, to_tchw

MEAN = np.array(IMAGENET_DEFAULT_MEAN, dtype=np.float32)
STD = np.array(IMAGENET_DEFAULT_STD, dtype=np.float32)


def _args(data_path, **kw):
    base = dict(data_path=data_path, nb_classes=8, num_frames=8, input_size=32, short_side_size=40, num_sample=1,
                test_num_segment=2, test_num_crop=3, decoder="auto")
    base.update(kw)
    return argparse.Namespace(**base)


def _pyav_frames(path):
    with av.open(path) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def _normalise_ref(frames_thwc):
    """Independent reference: (x/255 - mean)/std, T x H x W x C -> C x T x H x W."""
    return torch.from_numpy(((frames_thwc.astype(np.float32) / 255 - MEAN) / STD).transpose(3, 0, 1, 2))


# ---- class names -----------------------------------------------------------------------------------------------------

def test_load_class_names(tmp_path, synthetic_dir):
    names = load_class_names(os.path.join(synthetic_dir, "something-something-v2-labels.json"))
    assert names[0] == "Moving something from left to right" and len(names) == 8
    bad = tmp_path / "labels.json"
    bad.write_text(json.dumps({"a": "0", "b": "2"}))
    with pytest.raises(ValueError, match="without gaps"):
        load_class_names(str(bad))


# ---- frame indices ---------------------------------------------------------------------------------------------------

def test_train_indices_tsn_one_per_segment():
    for n in (16, 45, 47, 100):
        seg = n // 16
        for _ in range(20):
            idx = train_indices(n, 16)
            assert all(i * seg <= f < (i + 1) * seg for i, f in enumerate(idx)), (n, idx)
    assert train_indices(16, 16) == list(range(16))


def test_train_indices_short_video_spreads_frames():
    idx = train_indices(10, 16)
    assert len(idx) == 16 and idx == sorted(idx) and set(idx) == set(range(10))
    assert train_indices(1, 16) == [0] * 16


def test_test_and_val_indices_match_published_formula():
    for n in (16, 33, 45, 47, 120):
        tick = n / 16
        assert eval_indices(n, 16, 0, 2) == [int(tick * x) for x in range(16)]
        assert eval_indices(n, 16, 1, 2) == [int(tick / 2.0 + tick * x) for x in range(16)]
        assert val_indices(n, 16) == eval_indices(n, 16, 1, 2)
    assert eval_indices(30, 10, 2, 3) == [int(3 * x + 2) for x in range(10)]
    assert max(eval_indices(5, 16, 1, 2)) <= 4


# ---- decoding --------------------------------------------------------------------------------------------------------

def test_decord_and_pyav_give_identical_frames(synthetic_dir):
    path = read_video_list(os.path.join(synthetic_dir, "val.csv"))[0][0]
    idx = [0, 3, 3, 7, 15]
    a, ia = read_frames(path, lambda n: idx, decoder="decord")
    b, ib = read_frames(path, lambda n: idx, decoder="pyav")
    assert ia == ib == idx and a.shape == (5, 48, 64, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)  # exact: both use FFmpeg's YUV->RGB on these mp4s
    np.testing.assert_array_equal(a, _pyav_frames(path)[idx])


def test_decord_and_pyav_agree_on_vp9_webm(official_dir):
    folder = os.path.join(official_dir, "20bn-something-something-v2")
    path = os.path.join(folder, sorted(os.listdir(folder))[0])
    a, ia = read_frames(path, lambda n: list(range(n)), decoder="decord")
    b, ib = read_frames(path, lambda n: list(range(n)), decoder="pyav")
    assert ia == ib == list(range(12)) and np.array_equal(a, b)


def test_wrong_container_frame_count_is_resampled(monkeypatch):
    class Fake:  # a decord-like reader whose container count (20) overshoots the 12 frames that decode
        num_frames, count_is_exact = 20, False

        def get_frames(self, indices):
            if max(indices) >= 12:
                raise IndexError("frame out of range")
            return np.stack([np.full((2, 2, 3), i, np.uint8) for i in indices])

        def exact_count(self):
            self.num_frames = 12
            return 12

    monkeypatch.setattr(decoding, "open_video", lambda *a, **k: Fake())
    frames, idx = read_frames("x.webm", lambda n: val_indices(n, 8))
    assert idx == val_indices(12, 8) and frames[:, 0, 0, 0].tolist() == idx


def test_missing_and_empty_files_raise_with_path(tmp_path):
    with pytest.raises(VideoDecodeError, match="not found: .*nope.mp4"):
        read_frames(str(tmp_path / "nope.mp4"), lambda n: [0])
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(VideoDecodeError, match="empty"):
        read_frames(str(tmp_path / "empty.mp4"), lambda n: [0])
    (tmp_path / "junk.mp4").write_bytes(b"not a video" * 200)
    for decoder in ("decord", "pyav"):
        with pytest.raises(VideoDecodeError, match=f"{decoder} cannot open .*junk.mp4"):
            read_frames(str(tmp_path / "junk.mp4"), lambda n: [0], decoder=decoder)


# ---- datasets ---------------------------------------------------------------------------------------------------------

def test_validation_item_matches_independent_opencv_pipeline(synthetic_dir):
    ds, nb = build_dataset(False, False, _args(synthetic_dir))
    clip, label = ds[0]
    path, ref_label = read_video_list(os.path.join(synthetic_dir, "val.csv"))[0]
    assert nb == 8 and label == ref_label
    frames = _pyav_frames(path)[val_indices(16, 8)]
    # 48 x 64 -> short side 40, long side int(40 * 64 / 48) = 53; centre crop 32 at round(4), round(10.5)
    resized = np.stack([cv2.resize(f, (53, 40), interpolation=cv2.INTER_LINEAR) for f in frames])
    ref = _normalise_ref(resized[:, 4:36, 10:42])
    assert clip.shape == (8, 32, 32, 3) and clip.dtype == torch.uint8  # normalised on the device
    assert (normalize_clips(clip) - ref).abs().max() <= 1.01 / 255 / STD.min()  # OpenCV's fixed-point weights


def test_test_item_views_ids_and_pixels(synthetic_dir):
    ds, _ = build_dataset(False, True, _args(synthetic_dir))
    views, label, vid, view_ids = ds[1]
    assert views.shape == (6, 8, 32, 32, 3) and views.dtype == torch.uint8 and view_ids.dtype == torch.int64
    assert view_ids.tolist() == [[k, j] for k in range(2) for j in range(3)]
    path = read_video_list(os.path.join(synthetic_dir, "test.csv"))[1][0]
    all_frames = _pyav_frames(path)
    for v, (k, j) in enumerate(view_ids.tolist()):
        frames = all_frames[eval_indices(16, 8, k, 2)]
        resized = np.stack([cv2.resize(f, (53, 40), interpolation=cv2.INTER_LINEAR) for f in frames])
        start = int(j * (53 - 32) / 2)  # 0, 10, 21
        ref = _normalise_ref(resized[:, 4:36, start:start + 32])
        assert (normalize_clips(views[v]) - ref).abs().max() <= 1.01 / 255 / STD.min(), (k, j)
    views2, ids2 = read_test_views(path, _args(synthetic_dir))
    assert torch.equal(views2, views) and torch.equal(ids2, view_ids)


def test_any_k_and_j(synthetic_dir):
    views, ids = read_test_views(read_video_list(os.path.join(synthetic_dir, "val.csv"))[0][0],
                                 _args(synthetic_dir, test_num_segment=3, test_num_crop=1))
    assert views.shape == (3, 8, 32, 32, 3) and ids.tolist() == [[0, 0], [1, 0], [2, 0]]


def test_each_video_is_decoded_once(synthetic_dir, monkeypatch):
    calls = []
    real = ssv2.read_frames

    def counting(path, *a, **k):
        calls.append(path)
        return real(path, *a, **k)

    monkeypatch.setattr(ssv2, "read_frames", counting)
    train, _ = build_dataset(True, False, _args(synthetic_dir, num_sample=3))
    clips, label = train[2]
    assert clips.shape == (3, 3, 8, 32, 32) and len(calls) == 1
    assert not torch.equal(clips[0], clips[1])  # independently augmented
    test, _ = build_dataset(False, True, _args(synthetic_dir))
    test[0]
    assert len(calls) == 2
    device_train, _ = build_dataset(True, False, _args(synthetic_dir, num_sample=3, augment_on="device"))
    frames, label = device_train[2]  # the num_sample clips are drawn on the device from this one decode
    assert frames.shape == (8, 48, 64, 3) and frames.dtype == torch.uint8 and len(calls) == 3


def test_train_item_and_collate(synthetic_dir):
    ds, _ = build_dataset(True, False, _args(synthetic_dir, num_sample=2))
    batch = [ds[i] for i in range(3)]
    clips, labels = multiple_samples_collate(batch)
    assert clips.shape == (6, 3, 8, 32, 32) and clips.dtype == torch.float32
    assert labels.tolist() == [b[1] for b in batch for _ in range(2)]
    assert torch.equal(clips[2:4], batch[1][0])


def test_pack_videos_collate_pads_and_records_sizes():
    rng = np.random.default_rng(0)
    videos = [torch.from_numpy(rng.integers(0, 256, (4, h, w, 3), dtype=np.uint8)) for h, w in
              [(30, 40), (32, 36), (28, 44)]]
    frames, sizes, labels = pack_videos_collate([(v, i + 5) for i, v in enumerate(videos)])
    assert frames.shape == (3, 4, 32, 44, 3) and frames.dtype == torch.uint8
    assert sizes.tolist() == [[30, 40], [32, 36], [28, 44]] and labels.tolist() == [5, 6, 7]
    for out, v, (h, w) in zip(frames, videos, sizes.tolist()):
        assert torch.equal(out[:, :h, :w], v) and not out[:, h:].any() and not out[:, :, w:].any()


def _bad_list(tmp_path, synthetic_dir, names):
    good = read_video_list(os.path.join(synthetic_dir, "train.csv"))
    (tmp_path / "empty.mp4").write_bytes(b"")
    lines = [f"{good[i][0]} {good[i][1]}" if n == "good" else f"{tmp_path / n} 0" for i, n in enumerate(names)]
    csv = tmp_path / "train.csv"
    csv.write_text("\n".join(lines) + "\n")
    return str(csv)


def test_bad_training_video_is_logged_counted_and_substituted(tmp_path, synthetic_dir, capfd, monkeypatch):
    csv = _bad_list(tmp_path, synthetic_dir, ["missing.mp4", "good", "good"])
    ds = SSv2Dataset(csv, "train", nb_classes=8, num_frames=8, augment=AugmentConfig(input_size=32, num_sample=1),
                     max_bad_videos=5)
    read = []
    real = ssv2.read_frames
    monkeypatch.setattr(ssv2, "read_frames", lambda path, *a, **k: (read.append(path), real(path, *a, **k))[1])
    clips, label = ds[0]
    substitute = read[-1]
    assert substitute in (ds.samples[1][0], ds.samples[2][0]) and label == dict(ds.samples)[substitute]
    assert clips.shape == (1, 3, 8, 32, 32) and ds.bad_video_count() == 1
    assert "missing.mp4" in capfd.readouterr().err
    ds.reset_bad_video_count()
    assert ds.bad_video_count() == 0


def test_too_many_bad_videos_raise(tmp_path, synthetic_dir):
    csv = _bad_list(tmp_path, synthetic_dir, ["missing.mp4", "empty.mp4", "good"])
    ds = SSv2Dataset(csv, "train", nb_classes=8, num_frames=8, augment=AugmentConfig(input_size=32, num_sample=1),
                     max_bad_videos=1)
    with pytest.raises(RuntimeError, match="max_bad_videos=1"):
        for i in range(3):
            ds[0]
            ds[1]


def test_bad_video_count_is_shared_across_workers(tmp_path, synthetic_dir):
    csv = _bad_list(tmp_path, synthetic_dir, ["missing.mp4", "good", "empty.mp4", "good"])
    ds = SSv2Dataset(csv, "train", nb_classes=8, num_frames=8, augment=AugmentConfig(input_size=32, num_sample=1),
                     max_bad_videos=100)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, collate_fn=multiple_samples_collate)
    assert sum(len(b[1]) for b in loader) == 4
    assert ds.bad_video_count() >= 2  # one bad video in each worker, seen by the parent process


def test_evaluation_never_substitutes(tmp_path, synthetic_dir):
    csv = _bad_list(tmp_path, synthetic_dir, ["good", "empty.mp4"])
    for mode in ("validation", "test"):
        ds = SSv2Dataset(csv, mode, nb_classes=8, num_frames=8, augment=AugmentConfig(input_size=32),
                         short_side_size=32)
        ds[0]
        with pytest.raises(VideoDecodeError, match="empty.mp4"):
            ds[1]


def test_evaluation_lists_are_checked_for_missing_files_when_built(tmp_path, synthetic_dir):
    """A missing validation video stops the run at startup, not after a training epoch; training lists tolerate
    it (substitution, max_bad_videos)."""
    csv = _bad_list(tmp_path, synthetic_dir, ["good", "missing.mp4", "gone.mp4"])
    for mode in ("validation", "test"):
        with pytest.raises(FileNotFoundError, match=r"train.csv: 2 of 3 listed videos do not exist .*'.*missing.mp4', "
                                                    r"'.*gone.mp4'"):
            SSv2Dataset(csv, mode, nb_classes=8, num_frames=8, augment=AugmentConfig(input_size=32),
                        short_side_size=32)
    assert len(SSv2Dataset(csv, "train", nb_classes=8, num_frames=8, augment=AugmentConfig(input_size=32))) == 3


def test_build_dataset_defaults_and_errors(synthetic_dir):
    args = argparse.Namespace(data_path=synthetic_dir, nb_classes=8)
    ds, nb = build_dataset(True, False, args)
    assert ds.num_frames == 16 and ds.input_size == 224 and ds.num_sample == 2 and len(ds) == 16
    with pytest.raises(ValueError, match="data_set 'Kinetics' is not supported \\(one of SSV2, Kinetics-400, UCF101, "
                                         "HMDB51\\)"):
        build_dataset(True, False, argparse.Namespace(data_path=synthetic_dir, data_set="Kinetics"))
    with pytest.raises(ValueError, match=r"val.csv:\d+: label \d outside \[0, 4\)"):
        build_dataset(False, False, argparse.Namespace(data_path=synthetic_dir, nb_classes=4))
    test_set, _ = build_dataset(False, True, argparse.Namespace(data_path=synthetic_dir, nb_classes=8))
    assert (test_set.test_num_segment, test_set.test_num_crop) == (2, 3)  # the SSv2 recipe's 2 x 3 views


def test_auto_decoder_is_decord_only_when_installed(monkeypatch):
    resolve = datasets.decoding.resolve_decoder
    monkeypatch.setattr(datasets.decoding, "decord", None)
    assert (resolve("auto"), resolve("pyav")) == ("pyav", "pyav")
    with pytest.raises(ImportError, match="decord is not installed .*--decoder pyav"):
        resolve("decord")
    monkeypatch.setattr(datasets.decoding, "decord", object())  # importable
    assert (resolve("auto"), resolve("decord"), resolve("pyav")) == ("decord", "decord", "pyav")
    with pytest.raises(ValueError, match="decoder must be one of .*got 'opencv'"):
        resolve("opencv")


def _reference_views(video, view_indices, input_size, short_side_size, J):
    """The straightforward test pipeline: each temporal view resized and cropped on its own (uint8)."""
    views = []
    for idx in view_indices:
        clip = resize_short_side(to_tchw(video[idx]), short_side_size)  # T x C x H x W
        views += [crop.permute(0, 2, 3, 1) for crop in sliding_crops(clip, input_size, J)]
    return torch.stack(views)


@pytest.mark.parametrize("n,hw,num_frames,short,K,J", [(10, (48, 36), 16, 40, 2, 3), (40, (30, 50), 8, 32, 3, 2),
                                                        (5, (32, 32), 4, 32, 1, 1)])
def test_read_views_equals_a_per_view_reference_exactly(monkeypatch, n, hw, num_frames, short, K, J):
    """Shared resizing of distinct frames (short videos repeat frames) and in-place writing change no pixel."""
    video = np.random.default_rng(n).integers(0, 256, size=(n, *hw, 3), dtype=np.uint8)

    def fake_read(path, sample_indices, *a):
        idx = sample_indices(n)
        return video[idx], idx

    monkeypatch.setattr(ssv2, "read_frames", fake_read)
    views, ids = ssv2.read_views("v.mp4", num_frames, 32, short, K, J)
    ref = _reference_views(video, [eval_indices(n, num_frames, k, K) for k in range(K)], 32, short, J)
    assert views.shape == ref.shape and views.is_contiguous() and torch.equal(views, ref)
    assert ids.tolist() == [[k, j] for k in range(K) for j in range(J)]

def _seed_all(s):
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def test_train_item_equals_independent_transform_calls(synthetic_dir):
    ds, _ = build_dataset(True, False, _args(synthetic_dir, num_sample=3, reprob=0.5))
    path = ds.samples[4][0]
    for s in range(3):
        _seed_all(s)
        clips, _ = ds[4]
        _seed_all(s)
        frames, _ = read_frames(path, lambda n: train_indices(n, 8))
        assert torch.equal(clips, torch.stack([ds.transform(frames) for _ in range(3)]))


@pytest.mark.parametrize("n, world", [(7, 3), (2, 4), (8, 1)])
def test_shard_sampler_gives_every_index_to_exactly_one_rank(n, world):
    """Evaluation shards: disjoint, no padding (a rank may be empty when there are more ranks than videos)."""
    parts = [list(datasets.ShardSampler(range(n), world, r)) for r in range(world)]
    assert sorted(sum(parts, [])) == list(range(n))
    assert [len(p) for p in parts] == [len(datasets.ShardSampler(range(n), world, r)) for r in range(world)]
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    with pytest.raises(ValueError, match=r"rank 3 is not in \[0, 3\)"):
        datasets.ShardSampler(range(n), 3, 3)
