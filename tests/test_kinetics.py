"""The Kinetics protocol: clip indices per mode, the test views against VideoMAE's formulas, items and decoding."""
import random
import shutil

import cv2
import numpy as np
import pytest
import torch

import datasets.ssv2 as ssv2
from datasets.kinetics import KineticsDataset, chunk_indices, train_indices, val_indices
from datasets.synthetic import make_kinetics_dataset
from test_ssv2 import STD, _normalise_ref as _normalise, _pyav_frames as _frames
from video_transforms import AugmentConfig, normalize_clips

AUG = AugmentConfig(input_size=32)  # the tiny clips' recipe


@pytest.fixture(scope="module")
def kinetics_dir(tmp_path_factory) -> str:
    """6 train + 3 val appearance videos, 48 x 64 px; the val videos are 150-170 frames, the train ones 20-45 (some
    shorter than a 32-frame span)."""
    out = str(tmp_path_factory.mktemp("kinetics"))
    make_kinetics_dataset(out, num_train=0, num_val=3, height=48, num_frames=(150, 170), seed=4, workers=1)
    val = open(f"{out}/val.csv").read()
    make_kinetics_dataset(out, num_train=6, num_val=0, height=48, num_frames=(20, 45), seed=5, workers=1)
    for split in ("val.csv", "test.csv"):
        open(f"{out}/{split}", "w").write(val)
    return out


def _published_resize(frames, size):
    """VideoMAE's Resize(size, 'bilinear') on numpy frames: cv2 INTER_LINEAR, long side int(size * long / short)."""
    h, w = frames.shape[1:3]
    if (w <= h and w == size) or (h <= w and h == size):
        return frames
    oh, ow = (int(size * h / w), size) if w < h else (size, int(size * w / h))
    return np.stack([cv2.resize(f, (ow, oh), interpolation=cv2.INTER_LINEAR) for f in frames])


def _published_test_view(all_frames, chunk_nb, split_nb, clip_len, rate, short_side_size, num_segment, num_crop):
    """VideoMAE's VideoClsDataset test view, its formulas applied literally to the fully decoded video."""
    all_index = [x for x in range(0, len(all_frames), rate)]
    while len(all_index) < clip_len:
        all_index.append(all_index[-1])
    buffer = _published_resize(all_frames[all_index], short_side_size)
    spatial_step = 1.0 * (max(buffer.shape[1], buffer.shape[2]) - short_side_size) / (num_crop - 1)
    temporal_step = max(1.0 * (buffer.shape[0] - clip_len) / (num_segment - 1), 0)
    temporal_start, spatial_start = int(chunk_nb * temporal_step), int(split_nb * spatial_step)
    if buffer.shape[1] >= buffer.shape[2]:
        buffer = buffer[temporal_start:temporal_start + clip_len, spatial_start:spatial_start + short_side_size]
    else:
        buffer = buffer[temporal_start:temporal_start + clip_len, :, spatial_start:spatial_start + short_side_size]
    return _normalise(buffer)


def test_test_views_equal_the_published_loader(kinetics_dir):
    """5 chunks x 3 crops of 150+ frame videos: every view equals VideoMAE's, and the chunks differ."""
    ds = KineticsDataset(f"{kinetics_dir}/test.csv", "test", num_frames=8, sampling_rate=4, augment=AUG,
                         short_side_size=32, test_num_segment=5, test_num_crop=3)
    for index in range(len(ds)):
        views, label, vid, view_ids = ds[index]
        path, ref_label = ds.samples[index]
        all_frames = _frames(path)
        assert len(all_frames) >= 150 and label == ref_label and vid == path.rsplit("/", 1)[1][:-4]
        assert views.shape == (15, 8, 32, 32, 3) and views.dtype == torch.uint8
        assert view_ids.tolist() == [[k, j] for k in range(5) for j in range(3)]
        for v, (k, j) in enumerate(view_ids.tolist()):
            ref = _published_test_view(all_frames, k, j, 8, 4, 32, 5, 3)
            assert (normalize_clips(views[v]) - ref).abs().mean() < 0.01, (index, k, j)
        assert len({views[3 * k].numpy().tobytes() for k in range(5)}) == 5  # the chunks are different frames
        assert len({views[j].numpy().tobytes() for j in range(3)}) == 3  # and the crops different windows


@pytest.mark.parametrize("n,T,s,K,expected", [
    (160, 8, 4, 5, [[4 * (8 * k + i) for i in range(8)] for k in range(5)]),  # 40 frames at stride 4, step 8
    (20, 8, 4, 3, [[0, 4, 8, 12, 16, 16, 16, 16]] * 3),  # 5 frames at the stride, the last repeated
    (100, 8, 4, 1, [[0, 4, 8, 12, 16, 20, 24, 28]]),  # one chunk: the start
    (45, 4, 2, 4, [[0, 2, 4, 6], [12, 14, 16, 18], [24, 26, 28, 30], [38, 40, 42, 44]]),  # 23 frames, step 19/3
])
def test_chunk_indices(n, T, s, K, expected):
    assert chunk_indices(n, T, s, K) == expected


def test_train_indices_long_video_is_a_span_from_the_generator():
    """n > T * s: linspace over a span of T * s frames ending at a random end in [T * s, n)."""
    T, s, n = 16, 4, 100
    span, starts = T * s, set()
    py, npy = random.getstate(), np.random.get_state()
    for seed in range(300):
        idx = train_indices(n, T, s, np.random.default_rng(seed))
        start = idx[0]
        assert idx == [min(start + i * span // (T - 1), start + span - 1) for i in range(T)], idx
        assert idx == train_indices(n, T, s, np.random.default_rng(seed))  # a function of the generator
        starts.add(start)
    assert starts == set(range(n - span))  # every start 0 .. n - span - 1, none beyond
    assert random.getstate() == py and np.array_equal(np.random.get_state()[1], npy[1])  # globals untouched


@pytest.mark.parametrize("n,expected", [
    (30, [0, 5, 10, 15, 20, 25, 29, 29]),  # 30 // 4 = 7 spread frames, then the last frame
    (32, [0, 4, 9, 13, 18, 22, 27, 31]),  # exactly the span: linspace(0, 32, 8), clipped
    (10, [0, 9, 9, 9, 9, 9, 9, 9]),
    (3, [2] * 8),  # shorter than the stride: the last frame
    (1, [0] * 8),
])
def test_short_videos_are_padded_with_the_last_frame(n, expected):
    rng = np.random.default_rng(0)
    assert train_indices(n, 8, 4, rng) == expected == val_indices(n, 8, 4)


def test_val_indices_are_the_centred_span():
    assert val_indices(100, 8, 4) == [34, 38, 43, 47, 52, 56, 61, 65]  # start (100 - 32) // 2, end 66
    assert val_indices(33, 8, 4) == [0, 4, 9, 13, 18, 22, 27, 31]


def test_train_item_draws_from_the_item_seed(kinetics_dir):
    """Device path (the decoded frames): the clip is the frames at train_indices with a generator seeded by the
    item's seed, the same whichever generator state the process is in; a short video is padded, not replaced."""
    ds = KineticsDataset(f"{kinetics_dir}/train.csv", "train", num_frames=8, sampling_rate=4, augment=AUG,
                         augment_on="device")
    for index in range(len(ds)):
        path = ds.samples[index][0]
        all_frames = _frames(path)
        for seed in (3, 11):
            random.seed(index)
            frames, label = ds[(index, seed)]
            random.seed(index + 1)
            assert torch.equal(frames, ds[(index, seed)][0]) and label == ds.samples[index][1]
            expected = all_frames[train_indices(len(all_frames), 8, 4, np.random.default_rng(seed))]
            assert frames.shape == (8, 48, 64, 3) and np.array_equal(frames.numpy(), expected)
    lengths = [len(_frames(p)) for p, _ in ds.samples]
    assert min(lengths) < 32 < max(lengths) and ds.bad_video_count() == 0


def test_items_keep_the_ssv2_formats(kinetics_dir):
    """Workers: normalised float clips num_sample x C x T x H x W; validation: uint8 T x H x W x C, the centred
    span resized and centre-cropped as VideoMAE's validation transform."""
    train = KineticsDataset(f"{kinetics_dir}/train.csv", "train", num_frames=8, sampling_rate=2,
                            augment=AugmentConfig(input_size=32, num_sample=2))
    clips, _ = train[(0, 1)]
    assert clips.shape == (2, 3, 8, 32, 32) and clips.dtype == torch.float32
    val = KineticsDataset(f"{kinetics_dir}/val.csv", "validation", num_frames=8, sampling_rate=4, augment=AUG,
                          short_side_size=40)
    clip, label = val[1]
    all_frames = _frames(val.samples[1][0])
    resized = _published_resize(all_frames[val_indices(len(all_frames), 8, 4)], 40)  # 40 x 53
    ref = _normalise(resized[:, 4:36, 10:42])  # VideoMAE's CenterCrop: round((40 - 32) / 2), round((53 - 32) / 2)
    assert clip.shape == (8, 32, 32, 3) and clip.dtype == torch.uint8 and label == val.samples[1][1]
    assert (normalize_clips(clip) - ref).abs().max() <= 1.01 / 255 / STD.min()


def test_test_item_decodes_the_union_of_its_chunks_once(kinetics_dir, monkeypatch):
    requested = []
    real = ssv2.read_frames

    def recording(path, sample_indices, *a):
        frames, idx = real(path, lambda n: (requested.append(sample_indices(n)), requested[-1])[1], *a)
        return frames, idx

    monkeypatch.setattr(ssv2, "read_frames", recording)
    ds = KineticsDataset(f"{kinetics_dir}/test.csv", "test", num_frames=8, sampling_rate=4, augment=AUG,
                         short_side_size=32, test_num_segment=5, test_num_crop=3)
    ds[0]
    n = len(_frames(ds.samples[0][0]))
    assert len(requested) == 1  # one decode for the 15 views
    assert set(requested[0]) == {i for chunk in chunk_indices(n, 8, 4, 5) for i in chunk}


def test_sampling_rate_must_be_positive(kinetics_dir):
    with pytest.raises(ValueError, match="sampling_rate must be >= 1, got 0"):
        KineticsDataset(f"{kinetics_dir}/train.csv", "train", sampling_rate=0)


def test_evaluation_lists_name_each_video_once_and_clashing_names_keep_distinct_ids(kinetics_dir, tmp_path):
    path, label = KineticsDataset(f"{kinetics_dir}/val.csv", "validation").samples[0]
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        shutil.copy(path, tmp_path / folder / "clip.mp4")
    (tmp_path / "test.csv").write_text(f"a/clip.mp4,{label}\nb/clip.mp4,{label}\n")
    ds = KineticsDataset(str(tmp_path / "test.csv"), "test", num_frames=8, augment=AUG, short_side_size=32,
                         test_num_segment=2, test_num_crop=1)
    assert [ds[i][2] for i in range(2)] == [str(tmp_path / "a" / "clip"), str(tmp_path / "b" / "clip")]
    (tmp_path / "test.csv").write_text(f"a/clip.mp4,{label}\nb/clip.mp4,{label}\na/clip.mp4,{label}\n")
    with pytest.raises(ValueError, match=r"test.csv:3: '.*a/clip.mp4' is already listed at line 1"):
        KineticsDataset(str(tmp_path / "test.csv"), "test", num_frames=8, augment=AUG, short_side_size=32)
    assert len(KineticsDataset(str(tmp_path / "test.csv"), "train")) == 3  # training may oversample


def test_bad_training_video_is_logged_under_the_dataset_name(kinetics_dir, tmp_path, capsys):
    good = KineticsDataset(f"{kinetics_dir}/train.csv", "train").samples[0]
    (tmp_path / "train.csv").write_text(f"/missing/clip.mp4,0\n{good[0]},{good[1]}\n")
    ds = KineticsDataset(str(tmp_path / "train.csv"), "train", num_frames=8, augment=AUG, augment_on="device",
                         name="UCF101")
    frames, label = ds[(0, 1)]
    assert label == good[1] and ds.bad_video_count() == 1
    assert "[UCF101] bad training video 1/10: " in capsys.readouterr().err
