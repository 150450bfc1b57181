"""The device augmentation path (device_augment.ClipSampler / DeviceAugment) against timm's PIL path.

Parameters: the sampler draws exactly what timm draws from the same generator states, and follows timm's
distributions over 10,000 independent draws. Pixels: every colour op equals timm's PIL op within one grey level
(measured: exactly); geometric ops are within a mean of GEOMETRIC_MEAN_TOL grey levels (grid_sample's bicubic kernel
uses a = -0.75, PIL's a = -0.5); the whole recipe matches the worker path given the same parameters.
"""
import math
import random
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats
from timm.data.auto_augment import NAME_TO_OP, rand_augment_transform
from timm.data.random_erasing import RandomErasing
from timm.data.transforms import RandomResizedCropAndInterpolation

import checkpoint
from datasets.synthetic import render_video
from device_augment import GEOMETRIC_OPS, ClipSampler, DeviceAugment
from benchmarks.count_kernels import DeviceOpRecorder, ssv2_like_batch
from video_transforms import DEFAULT_AA as AA, AugmentConfig, TrainTransform

FILL = (124, 116, 104)  # round(255 * ImageNet mean), as the worker path passes timm
GEOMETRIC_MEAN_TOL = 0.75  # grey levels; measured 0.45-0.50 on rendered frames (max 8-16 at sharp edges)


@pytest.fixture(scope="module")
def frames():
    """4 rendered synthetic frames, 120 x 160 (textured background, a moving polygon, distractors)."""
    return render_video(3, 7, 120, 160, 4)


def _timm_draws(seed: int, height: int, width: int, size: int, reprob: float, config: str = AA) -> tuple:
    """What the worker path draws for one clip: timm's RandAugment ops (recorded instead of applied), timm's
    RandomResizedCrop box, timm's RandomErasing box, all from the global generators seeded with `seed`."""
    ra = rand_augment_transform(config, dict(translate_const=int(size * 0.45), img_mean=FILL))
    applied = []
    for op in ra.ops:
        op.aug_fn = lambda img, *args, _name=op.name, **kw: (applied.append((_name, args[0] if args else None)), img)[1]
    random.seed(seed)
    np.random.seed(seed)
    img = Image.new("RGB", (width, height))
    ra(img)
    crop = RandomResizedCropAndInterpolation.get_params(img, (0.08, 1.0), (3 / 4, 4 / 3))
    clip = torch.ones(3, size, size)
    RandomErasing(reprob, mode="const", device="cpu")(clip)
    erased = (clip == 0).all(0).nonzero()
    erase = [] if len(erased) == 0 else [(int(erased[:, 0].min()), int(erased[:, 1].min()),
                                          int(erased[:, 0].max() - erased[:, 0].min() + 1),
                                          int(erased[:, 1].max() - erased[:, 1].min() + 1))]
    return applied, tuple(crop), erase


def _ours(sampler: ClipSampler, seed: int, height: int, width: int):
    sampler.rng.seed(seed)
    sampler.np_rng.seed(seed)
    return sampler.sample(height, width)


def test_sampler_draws_exactly_what_timm_draws():
    sampler = ClipSampler(AugmentConfig(AA, input_size=48, reprob=0.5))
    kinds = set()
    for seed in range(300):
        h, w = (120, 160) if seed % 2 else (240, 427)
        ops, crop, erase = _timm_draws(seed, h, w, 48, 0.5)
        p = _ours(sampler, seed, h, w)
        assert [n for n, _ in p.ops] == [n for n, _ in ops], seed
        for (name, a), (_, b) in zip(p.ops, ops):
            assert (a is None and b is None) or a == pytest.approx(b, abs=1e-12), (seed, name)
        assert p.crop == crop and p.erase == erase, seed
        kinds |= {n for n, _ in ops}
    assert len(kinds) == 15  # every op of the increasing set was drawn and compared


def test_sampler_follows_timms_distributions_over_10000_draws():
    """Independent streams (ours seeded 1, timm's global generators seeded 2): op choice, magnitudes, crop box."""
    n = 10_000
    ra = rand_augment_transform(AA, dict(translate_const=100, img_mean=FILL))
    timm_ops, timm_boxes = [], []
    for op in ra.ops:
        op.aug_fn = lambda img, *args, _name=op.name, **kw: (timm_ops.append((_name, args[0] if args else 0.0)), img)[1]
    random.seed(2)
    np.random.seed(2)
    img = Image.new("RGB", (320, 240))
    for _ in range(n):
        ra(img)
        timm_boxes.append(RandomResizedCropAndInterpolation.get_params(img, (0.08, 1.0), (3 / 4, 4 / 3)))
    sampler = ClipSampler(AugmentConfig(AA, input_size=224, reprob=0), seed=1)
    ours = [sampler.sample(240, 320) for _ in range(n)]
    our_ops = [(name, a if a is not None else 0.0) for p in ours for name, a in p.ops]
    names = [op.name for op in ra.ops]
    counts = np.array([[sum(o[0] == k for o in our_ops) for k in names], [sum(o[0] == k for o in timm_ops) for k in names]])
    assert counts.sum(1).min() > 0.45 * 4 * n  # apply-probability 0.5 per layer, 4 layers
    assert stats.chi2_contingency(counts).pvalue > 1e-3  # op choice and apply-probability
    assert stats.chisquare(counts.sum(0), np.full(len(names), counts.sum() / len(names))).pvalue > 1e-3  # uniform
    for name in ("Rotate", "ColorIncreasing", "TranslateXRel", "SolarizeIncreasing", "PosterizeIncreasing"):
        a = [v for k, v in our_ops if k == name]
        b = [v for k, v in timm_ops if k == name]
        assert stats.ks_2samp(a, b).pvalue > 1e-3, name  # magnitude noise, clamping, sign and level rule
    for f in (lambda b: b[2] * b[3] / (240 * 320), lambda b: math.log(b[3] / b[2]), lambda b: b[0], lambda b: b[1]):
        assert stats.ks_2samp([f(p.crop) for p in ours], [f(b) for b in timm_boxes]).pvalue > 1e-3


def _pil_op(name: str, arg, frame: np.ndarray) -> np.ndarray:
    img, fn = Image.fromarray(frame), NAME_TO_OP[name]
    if arg is None:
        return np.asarray(fn(img))
    if name in GEOMETRIC_OPS:
        return np.asarray(fn(img, arg, fillcolor=FILL, resample=Image.BICUBIC))
    return np.asarray(fn(img, int(arg) if name.startswith(("Posterize", "Solarize")) else arg))


def _device_op(name: str, arg, frames: np.ndarray, pad: int) -> np.ndarray:
    """One op on a clip padded by `pad` pixels at the bottom and right (as in a batch of wider videos)."""
    t, h, w, _ = frames.shape
    x = torch.zeros(1, t, 3, h + pad, w + pad, dtype=torch.uint8)
    x[0, :, :, :h, :w] = torch.from_numpy(frames).permute(0, 3, 1, 2)
    y = DeviceAugment("cpu").rand_augment(x, np.array([[h, w]]), [[(name, arg)]])
    return y[0, :, :, :h, :w].permute(0, 2, 3, 1).numpy()


COLOUR_CASES = [("AutoContrast", None), ("Equalize", None), ("Invert", None), ("PosterizeIncreasing", 2.0),
                ("PosterizeIncreasing", 1.0), ("SolarizeIncreasing", 100.0), ("SolarizeAdd", 77.0),
                ("ColorIncreasing", 0.3), ("ColorIncreasing", 1.7), ("ContrastIncreasing", 0.4),
                ("ContrastIncreasing", 1.8), ("BrightnessIncreasing", 0.5), ("BrightnessIncreasing", 1.6),
                ("SharpnessIncreasing", 0.2), ("SharpnessIncreasing", 1.9)]
GEOMETRIC_CASES = [("Rotate", 17.3), ("Rotate", -25.0), ("ShearX", 0.21), ("ShearY", -0.13),
                   ("TranslateXRel", 0.3), ("TranslateXRel", -0.137), ("TranslateYRel", -0.2), ("TranslateYRel", 0.071)]


@pytest.mark.parametrize("name,arg", COLOUR_CASES)
def test_colour_op_equals_pil_within_one_grey_level(frames, name, arg):
    ref = np.stack([_pil_op(name, arg, f) for f in frames]).astype(int)
    for pad in (0, 9):  # statistics (autocontrast, equalize, contrast) and sharpness borders ignore the padding
        diff = np.abs(_device_op(name, arg, frames, pad).astype(int) - ref)
        assert diff.max() <= 1 and diff.mean() <= 0.01, (name, pad, diff.mean())  # measured: 0 everywhere


@pytest.mark.parametrize("name,arg", GEOMETRIC_CASES)
def test_geometric_op_equals_pil_within_documented_tolerance(frames, name, arg):
    ref = np.stack([_pil_op(name, arg, f) for f in frames]).astype(int)
    for pad in (0, 9):  # edges replicate the clip's own last row/column, fill follows its own size
        diff = np.abs(_device_op(name, arg, frames, pad).astype(int) - ref)
        assert diff.mean() <= GEOMETRIC_MEAN_TOL and (diff <= 1).mean() >= 0.95, (name, pad, diff.mean())
    padded = np.abs(_device_op(name, arg, frames, 9).astype(int) - _device_op(name, arg, frames, 0))
    assert padded.max() <= 1 and padded.mean() <= 1e-3  # the padding never leaks in (grid rounding only)
    fill_ref = (ref == FILL).all(-1)  # where PIL filled, we fill (up to the one-pixel boundary ring)
    fill_ours = (_device_op(name, arg, frames, 0).astype(int) == FILL).all(-1)
    assert (fill_ref != fill_ours).mean() <= 0.01


def _batch(videos, labels=None):
    from datasets import pack_videos_collate
    labels = labels or list(range(len(videos)))
    return pack_videos_collate([(torch.from_numpy(v), y) for v, y in zip(videos, labels)])


def test_whole_recipe_matches_the_worker_path_given_the_same_draws(frames):
    """TrainTransform (PIL RandAugment, uint8 crop-resize, normalise) vs DeviceAugment, same generator states."""
    config = AugmentConfig(AA, input_size=48, reprob=0, num_sample=1)
    worker, device = TrainTransform(config), DeviceAugment("cpu", config)
    level = 1 / (255 * 0.225)  # one grey level in normalised units (largest std)
    means = []
    for seed in range(12):
        random.seed(seed)
        np.random.seed(seed)
        ref = worker(frames)
        device.sampler.rng.seed(seed)
        device.sampler.np_rng.seed(seed)
        ops = _ours(ClipSampler(config), seed, 120, 160).ops
        clips, labels = device(_batch([frames], [5]))
        assert clips.shape == (1, 3, 4, 48, 48) and labels.tolist() == [5]
        diff = (clips[0] - ref).abs()
        means.append(diff.mean().item() / level)
        if not any(n in GEOMETRIC_OPS for n, _ in ops):  # colour ops exact; uint8 vs float resize <= 1 level
            assert diff.max().item() <= 1.01 * level, (seed, ops)
    assert max(means) <= 1.5 and np.mean(means) <= 0.75, means


def test_same_ops_on_every_frame_and_independent_clips():
    rng = np.random.default_rng(0)
    still = np.repeat(rng.integers(0, 256, (1, 40, 56, 3), dtype=np.uint8), 4, axis=0)
    config = AugmentConfig(AA, input_size=32, reprob=1, num_sample=3)
    clips, labels = DeviceAugment("cpu", config, seed=3)(_batch([still], [7]))
    assert clips.shape == (3, 3, 4, 32, 32) and labels.tolist() == [7, 7, 7]
    for c in clips:  # RandAugment, crop and the erasing box identical on every frame (noise is per pixel)
        erased = (c[:, 0] != c[:, 1]).any(0)
        assert torch.equal(c[:, 1:][..., ~erased], c[:, :1].expand(-1, 3, -1, -1)[..., ~erased])
    assert not torch.equal(clips[0], clips[1]) and not torch.equal(clips[1], clips[2])


def test_a_clip_does_not_depend_on_the_padding_of_its_batch(frames):
    """8 clips of a small video (about 16 applied ops), alone and padded in a batch with a larger video."""
    small = frames[:, 10:100, 20:150]
    config = AugmentConfig(AA, input_size=48, reprob=0, num_sample=8)
    alone, _ = DeviceAugment("cpu", config, seed=11)(_batch([small]))
    padded, _ = DeviceAugment("cpu", config, seed=11)(_batch([small, frames]))
    level = 1 / (255 * 0.225)
    diff = (alone - padded[:8]).abs()
    assert diff.max() <= 1.01 * level and diff.mean() <= 0.01 * level  # float rounding of the grids only


def _mirror_decisions(plain: torch.Tensor, flipped: torch.Tensor) -> list[bool]:
    """Per clip (dim 0): whether `flipped` is `plain` mirrored left-right; each clip must be one or the other."""
    decisions = []
    for a, b in zip(plain, flipped):
        mirrored = torch.equal(b, a.flip(-1))
        assert mirrored or torch.equal(b, a)
        decisions.append(mirrored)
    return decisions


def test_flip_decisions_are_the_same_on_both_paths(frames):
    """Same generator states: the worker path (global generators) and the device path (its sampler) mirror the same
    clips, each one exactly its unflipped self mirrored; RandAugment on, so the flip's place in the draw order
    counts."""
    plain = AugmentConfig(AA, input_size=48, reprob=0, num_sample=1)
    worker, device = [], []
    for seed in range(16):
        out = {}
        for config in (plain, replace(plain, flip=True)):
            random.seed(seed)
            np.random.seed(seed)
            aug = DeviceAugment("cpu", config)
            aug.sampler.rng.seed(seed)
            aug.sampler.np_rng.seed(seed)
            out[config.flip] = TrainTransform(config)(frames)[None], aug(_batch([frames]))[0]
        worker += _mirror_decisions(out[False][0], out[True][0])
        device += _mirror_decisions(out[False][1], out[True][1])
    assert worker == device and 3 <= sum(worker) <= 13


def test_flip_follows_each_clip_through_a_batch(frames):
    """12 clips of two videos (RandAugment reorders clips by op inside the batch): clip i is mirrored exactly when
    its sampled parameters say so."""
    config = AugmentConfig(AA, input_size=32, reprob=0, num_sample=6, flip=True)
    batch = _batch([frames, np.ascontiguousarray(frames[:, 8:100, 4:140])])
    replay = ClipSampler(config, seed=7)
    expected = [replay.sample(h, w).flip for h, w in ((120, 160), (92, 136)) for _ in range(6)]
    unflipped = DeviceAugment("cpu", config, seed=7)  # the same draws, every flip turned off
    draw = unflipped.sampler.sample
    unflipped.sampler.sample = lambda h, w: draw(h, w)._replace(flip=False)
    got = _mirror_decisions(unflipped(batch)[0], DeviceAugment("cpu", config, seed=7)(batch)[0])
    assert got == expected and 0 < sum(got) < 12


def test_flip_rate_is_one_half_and_off_means_never():
    on = ClipSampler(AugmentConfig(AA, flip=True), seed=0)
    assert abs(np.mean([on.sample(240, 427).flip for _ in range(4000)]) - 0.5) < 0.04  # 5 binomial std
    off = ClipSampler(AugmentConfig(AA), seed=0)
    assert not any(off.sample(240, 427).flip for _ in range(500))


def test_crop_resize_equals_cropping_then_interpolating(frames):
    """Without RandAugment: each clip is its box, bilinearly resized (F.interpolate, half-pixel, no antialias),
    then normalised. Frames smaller than the output, so that boxes are upsampled and their edges clamp."""
    small = np.ascontiguousarray(frames[:, 30:70, 40:92])
    config = AugmentConfig(None, input_size=48, reprob=0, num_sample=4)
    aug, replay = DeviceAugment("cpu", config, seed=4), ClipSampler(config, seed=4)
    clips, _ = aug(_batch([small]))
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1, 1)
    video = torch.from_numpy(small).permute(0, 3, 1, 2).double()
    for c in clips:
        top, left, h, w = replay.sample(40, 52).crop
        ref = torch.nn.functional.interpolate(video[..., top:top + h, left:left + w], size=(48, 48), mode="bilinear",
                                              align_corners=False).permute(1, 0, 2, 3)
        assert (c.double() - (ref / 255 - mean) / std).abs().max() < 1e-4


@pytest.mark.parametrize("recount", [1, 3])
def test_erasing_boxes_are_the_sampled_ones_on_every_frame(frames, recount):
    config = AugmentConfig(None, input_size=48, reprob=1, remode="const", recount=recount, num_sample=6)
    aug, replay = DeviceAugment("cpu", config, seed=5), ClipSampler(config, seed=5)
    clips, _ = aug(_batch([frames]))
    counts = set()
    for c in clips:
        boxes = replay.sample(120, 160).erase
        counts.add(len(boxes))
        zero = (c == 0).all(0).all(0)  # const mode: zeros in every channel and frame
        expected = torch.zeros(48, 48, dtype=torch.bool)
        for top, left, h, w in boxes:
            expected[top:top + h, left:left + w] = True
        assert torch.equal(zero, expected)
    assert counts == {1} if recount == 1 else len(counts) > 1


def test_state_dict_round_trip_through_a_checkpoint_gives_the_same_next_batch(frames, tmp_path):
    config = AugmentConfig(AA, input_size=48, reprob=1, num_sample=2)
    aug = DeviceAugment("cpu", config, seed=2)
    aug(_batch([frames]))
    torch.save({"device_augment": aug.state_dict()}, tmp_path / "c.pth")
    expected, _ = aug(_batch([frames]))
    other = DeviceAugment("cpu", config, seed=99)
    other.load_state_dict(checkpoint.safe_load(str(tmp_path / "c.pth"))["device_augment"])
    got, _ = other(_batch([frames]))
    assert torch.equal(got, expected)


def test_unsupported_configurations_are_refused_by_name():
    with pytest.raises(ValueError, match="'Desaturate' has no device implementation"):
        ClipSampler(AugmentConfig("rand-m9-n2-t3a"))
    with pytest.raises(ValueError, match=r"train_interpolation must be one of \['bicubic', 'bilinear', 'nearest'\], "
                                         r"got 'lanczos'"):
        AugmentConfig(interpolation="lanczos")
    with pytest.raises(ValueError, match=r"remode must be one of \('pixel', 'rand', 'const'\), got 'noise'"):
        AugmentConfig(remode="noise")


# ---- on the meta device: what a GPU would be asked to do, without one -----------------------------------------------

def _drawn(config: AugmentConfig, seed: int, sizes: list[tuple[int, int]], batches: int) -> list[list]:
    """The ops DeviceAugment(seed) draws per batch (a replay of its sampler)."""
    replay = ClipSampler(config, seed)
    return [[replay.sample(h, w).ops for h, w in sizes for _ in range(config.num_sample)] for _ in range(batches)]


def test_an_augmented_training_step_never_waits_for_the_device():
    """DeviceAugment and a whole training step (ViT-LLaMA forward, mixup, loss, backward, clipping, AdamW) on the
    meta device, every aten op recorded: the only host->device copies are the batch's frames and labels and the
    augmentation's packed tables (one per dtype), all non-blocking, and nothing reads a device value back. On CUDA
    either would make the host wait for the GPU's queue to drain (tests/test_cuda.py checks the same there under
    torch.cuda.set_sync_debug_mode("error"))."""
    from timm.data import Mixup
    from timm.loss import SoftTargetCrossEntropy

    from models import create_model
    config = AugmentConfig(AA, input_size=32, num_sample=4, reprob=0.5)
    sizes = [(48, 64), (40, 56)]
    kinds = {name for batch in _drawn(config, 0, sizes, 3) for ops in batch for name, _ in ops}
    assert {"SharpnessIncreasing", "Equalize", "AutoContrast", "ContrastIncreasing", "ColorIncreasing"} <= kinds
    torch.manual_seed(0)
    model = create_model("vit_llama_tiny_patch16", num_classes=4, all_frames=4, img_size=32).to("meta")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=4)
    augment = DeviceAugment("meta", config, seed=0)
    frames = torch.zeros(2, 4, 48, 64, 3, dtype=torch.uint8)
    batch = frames, torch.tensor(sizes), torch.tensor([1, 3])
    for step in range(3):
        with DeviceOpRecorder("meta") as rec:
            clips, targets = mixup(*augment(batch))
            loss = SoftTargetCrossEntropy()(model(clips), targets)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        assert rec.readbacks == [], step
        uploads = [(shape, dtype) for _, shape, dtype, _ in rec.uploads]
        assert all(non_blocking for *_, non_blocking in rec.uploads), rec.uploads
        for batch_part in (((2,), torch.int64), ((2, 4, 48, 64, 3), torch.uint8)):  # labels, frames
            uploads.remove(batch_part)
        tables = uploads
        assert all(len(shape) == 1 for shape, _ in tables) and len({d for _, d in tables}) == len(tables), uploads
        assert rec.kernel_count > 100  # the model's kernels were seen too


def test_kernels_per_batch_one_grid_sample_per_geometric_layer():
    """6 videos x 2 clips of SSv2's widths (small frames; the count does not depend on their size until the float
    work is chunked): at most ~200 device kernels per batch, with one grid_sample per RandAugment layer that has a
    geometric op, plus one for the crops."""
    config = AugmentConfig(num_sample=2, input_size=32)
    rng = np.random.default_rng(0)
    batches = [ssv2_like_batch(rng, 6, 4, 24) for _ in range(4)]
    augment = DeviceAugment("meta", config, seed=0)
    replay = ClipSampler(config, seed=0)
    counts = []
    for batch in batches:
        ops = [replay.sample(h, w).ops for h, w in batch[1].tolist() for _ in range(2)]
        layers = {layer for clip in ops for layer, (name, _) in enumerate(clip) if name in GEOMETRIC_OPS}
        with DeviceOpRecorder("meta") as rec:
            augment(batch)
        assert rec.kernels["aten.grid_sampler_2d.default"] == len(layers) + 1
        assert rec.readbacks == [] and all(u[3] for u in rec.uploads)
        counts.append(rec.kernel_count)
    assert np.mean(counts) <= 200, counts


def test_chunked_work_equals_the_whole_group(monkeypatch):
    """Every stage that works in chunks of clips (bounded by _WORK_BYTES) gives the same clips with one clip per
    chunk as with the whole group at once: several clips draw each op (the histogram ops too) in one layer."""
    import device_augment
    videos = [render_video(s, 7, 40, w, 4) for s, w in enumerate((56, 48, 52, 60, 50, 44))]
    t = 4
    x = torch.zeros(len(videos), t, 3, 40, 60, dtype=torch.uint8)
    for i, v in enumerate(videos):
        x[i, :, :, :, :v.shape[2]] = torch.from_numpy(v).permute(0, 3, 1, 2)
    hw = np.array([[40, v.shape[2]] for v in videos])
    ops = [[("Equalize", None), ("Rotate", 12.0)], [("AutoContrast", None), ("ShearX", 0.1)],
           [("Equalize", None), ("ContrastIncreasing", 1.4)], [("AutoContrast", None), ("SharpnessIncreasing", 1.6)],
           [("Equalize", None), ("ColorIncreasing", 0.5)], [("AutoContrast", None), ("Rotate", -7.0)]]
    whole = DeviceAugment("cpu").rand_augment(x.clone(), hw, ops)
    monkeypatch.setattr(device_augment, "_WORK_BYTES", 1)  # one clip per chunk
    torch.testing.assert_close(DeviceAugment("cpu").rand_augment(x.clone(), hw, ops), whole, rtol=0, atol=0)
    config = AugmentConfig(input_size=32, num_sample=2, reprob=1, remode="const")
    batch = (x.permute(0, 1, 3, 4, 2).contiguous(), torch.from_numpy(hw), torch.arange(len(videos)))
    chunked = DeviceAugment("cpu", config, seed=3)(batch)[0]
    monkeypatch.setattr(device_augment, "_WORK_BYTES", 160 * 2**20)
    torch.testing.assert_close(chunked, DeviceAugment("cpu", config, seed=3)(batch)[0], rtol=0, atol=0)
