"""Clip transforms: same randomness on every frame, no flip, normalisation, OpenCV-equal resizing, crop geometry."""
import argparse
import random

import cv2
import numpy as np
import pytest
import torch
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from video_transforms import (AugmentConfig, ClipRandAugment, TrainTransform, center_crop, normalize,
                              random_resized_crop_box, resize_bilinear, resize_short_side, short_side_size_hw,
                              sliding_crops, to_tchw)


def _seed(s):
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def _frame(rng, h=40, w=56):
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_rand_augment_identical_frames_stay_identical():
    rng = np.random.default_rng(0)
    ra = ClipRandAugment(AugmentConfig(input_size=32))
    changed = 0
    for s in range(30):
        clip = np.repeat(_frame(rng)[None], 6, axis=0)
        _seed(s)
        out = ra(clip)
        assert all(np.array_equal(out[0], out[t]) for t in range(6)), s
        changed += not np.array_equal(out[0], clip[0])
    assert changed >= 25  # RandAugment really does something


def test_rand_augment_applies_the_first_frames_ops_to_every_frame():
    rng = np.random.default_rng(1)
    ra = ClipRandAugment(AugmentConfig(input_size=32))
    for s in range(10):
        a, b = _frame(rng), _frame(rng)
        _seed(s)
        both = ra(np.stack([a, b]))
        _seed(s)
        only_b = ra(b[None])
        np.testing.assert_array_equal(both[1], only_b[0])


def test_rand_augment_equals_timm_on_a_single_frame():
    from PIL import Image

    rng = np.random.default_rng(6)
    ra = ClipRandAugment(AugmentConfig(input_size=32))
    for s in range(10):
        frame = _frame(rng)
        _seed(s)
        ours = ra(np.stack([frame, frame]))
        _seed(s)
        np.testing.assert_array_equal(ours[1], np.asarray(ra.augment(Image.fromarray(frame))))


def test_rand_augment_differs_between_clips():
    rng = np.random.default_rng(2)
    clip = np.repeat(_frame(rng)[None], 2, axis=0)
    ra = ClipRandAugment(AugmentConfig(input_size=32))
    _seed(0)
    outs = [ra(clip)[0] for _ in range(8)]
    assert len({o.tobytes() for o in outs}) >= 6


def test_no_flip_in_the_recipe():
    assert not any("flip" in op.name.lower() for op in ClipRandAugment().augment.ops)
    # Brightness increases to the right; the crop keeps the orientation (aa off: Invert would reverse intensities).
    ramp = np.broadcast_to(np.linspace(0, 255, 64, dtype=np.float32)[None, :, None], (48, 64, 3)).astype(np.uint8)
    clip = np.repeat(ramp[None], 4, axis=0)
    t = TrainTransform(AugmentConfig(None, input_size=32, reprob=0))
    for s in range(30):
        _seed(s)
        out = t(clip)
        assert out[:, :, :, -4:].mean() > out[:, :, :, :4].mean(), s


def test_recipe_from_args_keeps_defaults_for_missing_flags_and_flips_all_but_ssv2():
    config = AugmentConfig.from_args(argparse.Namespace(aa="none", input_size=32, reprob=0.5))
    assert config == AugmentConfig(auto_augment="none", input_size=32, reprob=0.5) and not config.rand_augment
    assert AugmentConfig.from_args(argparse.Namespace(data_set="Kinetics-400")).flip
    assert not AugmentConfig.from_args(argparse.Namespace(data_set="SSV2")).flip


def test_train_transform_shapes_and_normalisation():
    colour = np.array([10, 128, 250], dtype=np.uint8)
    clip = np.broadcast_to(colour, (5, 30, 40, 3)).copy()
    out = TrainTransform(AugmentConfig(None, input_size=24, reprob=0))(clip)
    assert out.shape == (3, 5, 24, 24) and out.dtype == torch.float32
    expected = (colour / 255 - np.array(IMAGENET_DEFAULT_MEAN)) / np.array(IMAGENET_DEFAULT_STD)
    torch.testing.assert_close(out.mean(dim=(1, 2, 3)), torch.tensor(expected, dtype=torch.float32))
    assert (out.std(dim=(1, 2, 3)) < 1e-5).all()


def test_full_recipe_same_output_on_every_frame_of_a_static_clip():
    rng = np.random.default_rng(3)
    clip = np.repeat(_frame(rng, 48, 64)[None], 4, axis=0)
    t = TrainTransform(AugmentConfig(input_size=32, reprob=0))
    for s in range(10):
        _seed(s)
        out = t(clip)
        assert all(torch.equal(out[:, 0], out[:, i]) for i in range(4))


def test_random_erasing_uses_one_box_for_all_frames():
    rng = np.random.default_rng(4)
    clip = np.stack([_frame(rng, 48, 64) for _ in range(4)])
    plain = TrainTransform(AugmentConfig(None, input_size=32, reprob=0))
    erase = TrainTransform(AugmentConfig(None, input_size=32, reprob=1))
    for s in range(5):
        _seed(s)
        a = plain(clip)
        _seed(s)
        b = erase(clip)  # same crop box (drawn first), then the erase box
        mask = (a != b).any(dim=0)  # T x H x W
        assert mask.any() and all(torch.equal(mask[0], mask[t]) for t in range(4))
        rows, cols = mask[0].any(1).nonzero().flatten(), mask[0].any(0).nonzero().flatten()
        assert mask[0, rows.min():rows.max() + 1, cols.min():cols.max() + 1].float().mean() > 0.99  # a rectangle


@pytest.mark.parametrize("src,dst", [((240, 427), (224, 398)), ((240, 320), (224, 298)), ((48, 64), (40, 53)),
                                     ((30, 40), (64, 85))])
def test_resize_matches_opencv_inter_linear(src, dst):
    img = np.random.default_rng(5).integers(0, 256, size=(*src, 3), dtype=np.uint8)
    ours = resize_bilinear(to_tchw(img[None]), dst)[0].permute(1, 2, 0).numpy()
    ref = cv2.resize(img, dst[::-1], interpolation=cv2.INTER_LINEAR)
    assert ours.dtype == np.uint8 and ours.shape == ref.shape
    assert np.abs(ours.astype(int) - ref).max() <= 1


def test_short_side_sizes_truncate_the_long_side():
    assert short_side_size_hw(240, 427, 224) == (224, int(224 * 427 / 240))
    assert short_side_size_hw(427, 240, 224) == (int(224 * 427 / 240), 224)
    assert resize_short_side(torch.zeros(2, 3, 48, 64, dtype=torch.uint8), 40).shape == (2, 3, 40, 53)


def test_sliding_crop_offsets():
    h, w = 224, 398
    frames = torch.arange(w).view(1, 1, 1, w).expand(1, 1, h, w)
    starts = [int(c[0, 0, 0, 0]) for c in sliding_crops(frames, 224, 3)]
    assert starts == [0, int((w - 224) / 2), w - 224]
    assert [int(c[0, 0, 0, 0]) for c in sliding_crops(frames, 224, 4)] == [int(j * (w - 224) / 3) for j in range(4)]
    assert int(sliding_crops(frames, 224, 1)[0][0, 0, 0, 0]) == round((w - 224) / 2)
    tall = torch.arange(w).view(1, 1, w, 1).expand(1, 1, w, h)  # portrait: windows slide down
    assert [int(c[0, 0, 0, 0]) for c in sliding_crops(tall, 224, 3)] == starts
    assert center_crop(frames, 224).shape[-2:] == (224, 224)


def test_random_resized_crop_box_ranges():
    random.seed(0)
    for _ in range(300):
        top, left, h, w = random_resized_crop_box(240, 320)
        assert 0 <= top and top + h <= 240 and 0 <= left and left + w <= 320
        assert 0.08 * 240 * 320 * 0.9 <= h * w <= 240 * 320 and 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1


def test_train_transform_writes_into_out_with_the_same_pixels_and_draws():
    rng = np.random.default_rng(7)
    clip = np.stack([_frame(rng, 48, 64) for _ in range(4)])
    t = TrainTransform(AugmentConfig(input_size=32, reprob=0.5))
    for s in range(6):
        _seed(s)
        ref = t(clip)
        after = random.random(), np.random.rand(), torch.rand(1)
        _seed(s)
        buf = torch.full((3, 4, 32, 32), float("nan"))
        out = t(clip, out=buf)
        assert out.data_ptr() == buf.data_ptr() and torch.equal(out, ref)
        assert (random.random(), np.random.rand(), torch.rand(1)) == after  # same random draws consumed


def test_normalize_out_and_layout_match_a_direct_formula():
    frames = torch.from_numpy(np.random.default_rng(8).integers(0, 256, (5, 3, 7, 9), dtype=np.uint8))
    ref = (frames.permute(1, 0, 2, 3).double() / 255 - torch.tensor(IMAGENET_DEFAULT_MEAN).double().view(3, 1, 1, 1)) \
        / torch.tensor(IMAGENET_DEFAULT_STD).double().view(3, 1, 1, 1)
    out = torch.empty(3, 5, 7, 9)
    assert normalize(frames, out=out) is out
    torch.testing.assert_close(out, ref.float())
    assert torch.equal(normalize(frames.contiguous(memory_format=torch.channels_last)), out)

