"""Clip-level transforms: every random choice is drawn once per clip and applied to all of its frames.

Frames come from the decoder as uint8 T x H x W x 3 numpy arrays; clips leave as float32 C x T x H x W, normalised
with the ImageNet mean/std. The train recipe follows VideoMAE's SSv2 fine-tuning, in the same order:
RandAugment on the full decoded frames (PIL, timm semantics) -> RandomResizedCrop (one box, bilinear) -> normalise ->
random erasing (one box). No horizontal flip: SSv2 labels say left and right.

Why RandAugment runs on the full frames and not on the (smaller) crop: its geometric ops rotate/shear/translate about
the frame centre with a fill colour, and AutoContrast/Equalize/Contrast use whole-frame statistics, so cropping first
would change the augmentation distribution that the published numbers were trained with. The price, measured by
benchmarks/bench_data.py: on 320x240 frames RandAugment costs several times the decoding of a clip, almost all of it
in PIL's bicubic Rotate/Shear/Translate (--train_interpolation bilinear makes those ~5x cheaper, a recipe change left
to the user). Everything after RandAugment runs on whole clips with torch's uint8 kernels.
"""
import math
import random
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from timm.data.auto_augment import rand_augment_transform
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.data.random_erasing import RandomErasing

DEFAULT_AA = "rand-m7-n4-mstd0.5-inc1"  # VideoMAE's fine-tuning RandAugment policy (--aa)


@dataclass(frozen=True)
class AugmentConfig:
    """The training augmentation recipe, built once from the args and handed to the dataset and to both paths
    (workers: TrainTransform; device: DeviceAugment), so the two cannot disagree.

    flip: a random horizontal flip (p 0.5, one decision per clip, after the crop), as the published code does for
    every dataset except SSv2, whose labels say left and right.
    """
    auto_augment: str | None = DEFAULT_AA
    interpolation: str = "bicubic"
    reprob: float = 0.25
    remode: str = "pixel"
    recount: int = 1
    num_sample: int = 2
    input_size: int = 224
    flip: bool = False
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)

    @property
    def rand_augment(self) -> bool:
        """Whether RandAugment is on ('' and 'none' turn it off)."""
        return bool(self.auto_augment) and self.auto_augment.lower() != "none"

    @classmethod
    def from_args(cls, args) -> "AugmentConfig":
        """The recipe of a run: --aa, --train_interpolation, --reprob/--remode/--recount, --num_sample, --input_size;
        flip for every --data_set but SSV2."""
        return cls(auto_augment=args.aa, interpolation=args.train_interpolation, reprob=args.reprob,
                   remode=args.remode, recount=args.recount, num_sample=args.num_sample, input_size=args.input_size,
                   flip=getattr(args, "data_set", "SSV2") != "SSV2")


_PIL_INTERP = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


class ClipRandAugment:
    """timm RandAugment with the same ops and magnitudes on every frame of a clip.

    timm draws the op choice from numpy's global RNG and each op's apply-probability and magnitude noise from python's
    `random`. Both states are snapshot before the first frame and restored before every other frame, so all frames
    replay the first frame's draws; afterwards the RNGs have advanced once, so the next clip gets new ops.
    """

    def __init__(self, config_str: str = "rand-m7-n4-mstd0.5-inc1", input_size: int = 224,
                 interpolation: str = "bicubic"):
        if interpolation not in _PIL_INTERP:
            raise ValueError(f"train_interpolation must be one of {sorted(_PIL_INTERP)}, got {interpolation!r}")
        hparams = dict(translate_const=int(input_size * 0.45),
                       img_mean=tuple(round(255 * m) for m in IMAGENET_DEFAULT_MEAN),
                       interpolation=_PIL_INTERP[interpolation])
        self.config_str = config_str
        self.augment = rand_augment_transform(config_str, hparams)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """uint8 T x H x W x 3 -> uint8 T x H x W x 3."""
        py_state, np_state = random.getstate(), np.random.get_state()
        out = np.empty_like(frames)
        for t, frame in enumerate(frames):
            if t > 0:
                random.setstate(py_state)
                np.random.set_state(np_state)
            out[t] = self.augment(Image.fromarray(frame))  # one copy out of PIL (np.asarray + np.stack: two, slower)
        return out


def random_resized_crop_box(height: int, width: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                            rng: random.Random | None = None) -> tuple[int, int, int, int]:
    """Inception-style box (top, left, h, w): area fraction in `scale`, log-uniform aspect in `ratio`, 10 tries,
    then a centre crop clamped to `ratio` (the rule and draw order of timm's/torchvision's RandomResizedCrop
    get_params). `rng`: a random.Random (default: python's global generator, as in the workers)."""
    rng = rng or random
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def resize_bilinear(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """T x C x H x W -> T x C x size, bilinear with half-pixel centres and no antialiasing (OpenCV INTER_LINEAR).

    uint8 in -> uint8 out (equal to OpenCV's cv2.resize up to +-1: both round fixed-point weights); float in -> float.
    """
    if tuple(frames.shape[-2:]) == tuple(size):
        return frames
    if frames.dtype == torch.uint8:  # torch's uint8 kernel (channels-last input): ~10x faster than via float
        return F.interpolate(frames.contiguous(memory_format=torch.channels_last), size=size, mode="bilinear",
                             align_corners=False, antialias=False)
    return F.interpolate(frames.contiguous(), size=size, mode="bilinear", align_corners=False, antialias=False)


def short_side_size_hw(height: int, width: int, short_side: int) -> tuple[int, int]:
    """Output (h, w) with the short side at `short_side` and the long side at int(short_side * long / short)."""
    if width <= height:
        return int(short_side * height / width), short_side
    return short_side, int(short_side * width / height)


def resize_short_side(frames: torch.Tensor, short_side: int) -> torch.Tensor:
    """T x C x H x W: short side to `short_side`, long side truncated as VideoMAE's test resize does."""
    return resize_bilinear(frames, short_side_size_hw(*frames.shape[-2:], short_side))


_MEAN_STD: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _scale_shift(mean, std) -> tuple[torch.Tensor, torch.Tensor]:
    """(1 / (255 std), -mean / std) as 3 x 1 x 1 x 1 float32, built once per (mean, std)."""
    key = (tuple(mean), tuple(std))
    if key not in _MEAN_STD:
        s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1, 1)
        _MEAN_STD[key] = 1 / (255 * s), -torch.tensor(mean, dtype=torch.float32).view(3, 1, 1, 1) / s
    return _MEAN_STD[key]


def normalize(frames: torch.Tensor, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """T x C x H x W uint8 (or float in [0, 255]) -> float32 C x T x H x W, (x/255 - mean) / std.

    One converting copy into `out` (allocated when None; e.g. a slice of a preallocated batch, so that the clip is
    written once, in its final layout), then two in-place passes.
    """
    scale, shift = _scale_shift(mean, std)
    if out is None:
        out = torch.empty(frames.shape[1], frames.shape[0], *frames.shape[2:], dtype=torch.float32)
    return out.copy_(frames.permute(1, 0, 2, 3)).mul_(scale).add_(shift)


_DEVICE_MEAN_STD: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def normalize_clips(clips: torch.Tensor, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD) -> torch.Tensor:
    """uint8 ... x T x H x W x C clips as the workers deliver evaluation views (on any device) -> float32
    ... x C x T x H x W, (x/255 - mean) / std: one converting copy into the model's layout, then two in-place passes
    (the arithmetic of `normalize`, so the same numbers wherever it runs)."""
    key = (tuple(mean), tuple(std), clips.device)
    if key not in _DEVICE_MEAN_STD:
        _DEVICE_MEAN_STD[key] = tuple(t.to(clips.device) for t in _scale_shift(mean, std))
    scale, shift = _DEVICE_MEAN_STD[key]
    *lead, t, h, w, c = clips.shape
    out = torch.empty((*lead, c, t, h, w), device=clips.device)
    return out.copy_(clips.movedim(-1, -4)).mul_(scale).add_(shift)


def to_tchw(frames: np.ndarray) -> torch.Tensor:
    """uint8 T x H x W x C numpy -> uint8 T x C x H x W tensor (no copy of the pixel data until needed)."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)


def sliding_crops(frames: torch.Tensor, crop: int, num_crops: int) -> list[torch.Tensor]:
    """`num_crops` crop x crop windows sliding along the long side in equal steps, start = int(j * (L - crop) / (J-1));
    centred on the short side. J = 1 gives the centre crop."""
    h, w = frames.shape[-2:]
    if min(h, w) < crop:
        raise ValueError(f"frames {h}x{w} are smaller than the crop size {crop}")
    long_is_w = w >= h
    L, S = (w, h) if long_is_w else (h, w)
    short_start = int(round((S - crop) / 2))
    out = []
    for j in range(num_crops):
        start = int(j * (L - crop) / (num_crops - 1)) if num_crops > 1 else int(round((L - crop) / 2))
        if long_is_w:
            out.append(frames[..., short_start:short_start + crop, start:start + crop])
        else:
            out.append(frames[..., start:start + crop, short_start:short_start + crop])
    return out


def center_crop(frames: torch.Tensor, crop: int) -> torch.Tensor:
    """T x C x H x W centre crop, offsets round((H - crop) / 2) as VideoMAE's CenterCrop (the one-window slide)."""
    return sliding_crops(frames, crop, 1)[0]


class TrainTransform:
    """The SSv2 train recipe for one clip: uint8 T x H x W x 3 numpy -> float32 C x T x size x size."""

    def __init__(self, input_size: int = 224, auto_augment: str | None = "rand-m7-n4-mstd0.5-inc1",
                 interpolation: str = "bicubic", scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), reprob: float = 0.25,
                 remode: str = "pixel", recount: int = 1):
        self.input_size = input_size
        use_aa = bool(auto_augment) and auto_augment.lower() != "none"
        self.rand_augment = ClipRandAugment(auto_augment, input_size, interpolation) if use_aa else None
        self.scale, self.ratio = scale, ratio
        # Applied to the clip viewed as (T*C) x H x W: one box for all frames, per-pixel noise ('pixel' mode).
        self.erase = RandomErasing(reprob, mode=remode, max_count=recount, device="cpu") if reprob > 0 else None

    def __call__(self, frames: np.ndarray, out: torch.Tensor | None = None) -> torch.Tensor:
        """`out`, when given, is a contiguous float32 C x T x size x size tensor (e.g. one sample of a
        num_sample x C x T x H x W item) that receives the clip; it is returned."""
        if self.rand_augment is not None:
            frames = self.rand_augment(frames)
        clip = to_tchw(frames)
        top, left, h, w = random_resized_crop_box(*clip.shape[-2:], self.scale, self.ratio)
        # Crop + bilinear resize before normalising (VideoMAE normalises first; the two commute up to the uint8
        # kernel's rounding to whole levels, <= 0.5/255), so only input_size pixels are normalised, and the uint8
        # resize kernel is ~10x faster than the float one.
        clip = resize_bilinear(clip[..., top:top + h, left:left + w], (self.input_size, self.input_size))
        clip = normalize(clip, out=out)  # C x T x H x W
        if self.erase is not None:
            c, t, hh, ww = clip.shape
            self.erase(clip.view(c * t, hh, ww))  # in place
        return clip


# ---------------------------------------------------------------------------------------------------------------------
# The device path (--augment_on device): workers only decode; the training device augments whole batches.
#
# ClipSampler draws each clip's parameters with timm's rules and draw order (RandAugment op choice, apply-probability,
# magnitude noise and level->argument rules; RandomResizedCrop box; RandomErasing boxes) from its own generators, so
# given the same generator states it draws exactly what the worker path draws. DeviceAugment applies them to a batch
# of padded uint8 videos with batched tensor ops: the clips that share an op at a RandAugment layer are one slice
# (clips are sorted by op per layer), colour ops are exact integer arithmetic or per-frame lookup tables, geometric
# ops are one grid_sample per group with PIL's affine matrices and fill, and the crop + resize of every clip is one
# bilinear grid_sample. No Python loop over frames, no host-device synchronisation.
# ---------------------------------------------------------------------------------------------------------------------

GEOMETRIC_OPS = ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
_NEGATED = GEOMETRIC_OPS + ("ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing")
_ENHANCE = ("Color", "Contrast", "Brightness", "Sharpness")
_LEVEL_DENOM = 10.0  # timm: magnitudes are on a 0..10 scale


def level_to_arg(name: str, level: float, negate: bool, translate_pct: float = 0.45) -> float | None:
    """timm's level -> argument rule for one RandAugment op (`negate`: the op's random sign, for ops that have one)."""
    frac = level / _LEVEL_DENOM
    sign = -1.0 if negate and name in _NEGATED else 1.0
    if name in ("AutoContrast", "Equalize", "Invert"):
        return None
    if name == "Rotate":
        return sign * frac * 30.0
    if name in ("ShearX", "ShearY"):
        return sign * frac * 0.3
    if name in ("TranslateXRel", "TranslateYRel"):
        return sign * frac * translate_pct
    if name == "Posterize":
        return float(int(frac * 4))
    if name == "PosterizeIncreasing":
        return float(4 - int(frac * 4))
    if name == "PosterizeOriginal":
        return float(int(frac * 4) + 4)
    if name == "Solarize":
        return float(min(256, int(frac * 256)))
    if name == "SolarizeIncreasing":
        return float(256 - min(256, int(frac * 256)))
    if name == "SolarizeAdd":
        return float(min(128, int(frac * 110)))
    if name in _ENHANCE:
        return frac * 1.8 + 0.1
    if name.endswith("Increasing") and name[:-len("Increasing")] in _ENHANCE:
        return max(0.1, 1.0 + sign * frac * 0.9)
    raise ValueError(f"RandAugment op {name!r} has no device implementation; supported: timm's 'rand' and "
                     f"'rand-inc1' op sets ({', '.join(_DEVICE_OPS)})")


class ClipParams(NamedTuple):
    """One clip's augmentation: applied RandAugment ops in order [(name, argument)], crop box (top, left, h, w) on the
    decoded frame, and erasing boxes (top, left, h, w) on the output clip."""
    ops: list[tuple[str, float | None]]
    crop: tuple[int, int, int, int]
    erase: list[tuple[int, int, int, int]]


class ClipSampler:
    """Draws ClipParams with timm's rules from its own generators (numpy RandomState for the op choice as timm's
    np.random.choice, random.Random for everything else, in the worker path's draw order)."""

    def __init__(self, auto_augment: str | None = "rand-m7-n4-mstd0.5-inc1", input_size: int = 224,
                 scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), reprob: float = 0.25, recount: int = 1, seed: int = 0):
        self.rand_augment = None
        if auto_augment and auto_augment.lower() != "none":
            ra = rand_augment_transform(auto_augment, dict(translate_const=int(input_size * 0.45)))
            for op in ra.ops:
                level_to_arg(op.name, 0.0, False)  # refuses ops without a device implementation, by name
            self.rand_augment = ra
        self.input_size, self.scale, self.ratio = input_size, scale, ratio
        self.reprob, self.recount = reprob, recount
        self.rng, self.np_rng = random.Random(seed), np.random.RandomState(seed % 2**32)

    def _rand_augment_ops(self) -> list[tuple[str, float | None]]:
        ra, rng, out = self.rand_augment, self.rng, []
        chosen = self.np_rng.choice(len(ra.ops), ra.num_layers, replace=ra.choice_weights is None,
                                    p=ra.choice_weights)
        for i in chosen:
            op = ra.ops[i]
            if op.prob < 1.0 and rng.random() > op.prob:
                continue
            m = op.magnitude
            if op.magnitude_std == float("inf"):
                m = rng.uniform(0, m)
            elif op.magnitude_std > 0:
                m = rng.gauss(m, op.magnitude_std)
            m = max(0.0, min(m, op.magnitude_max or _LEVEL_DENOM))
            negate = op.name in _NEGATED and rng.random() > 0.5
            out.append((op.name, level_to_arg(op.name, m, negate, op.hparams.get("translate_pct", 0.45))))
        return out

    def _erase_boxes(self) -> list[tuple[int, int, int, int]]:
        """timm RandomErasing's boxes (min/max area 0.02-1/3, aspect 0.3-3.3, 10 tries per box) on the output."""
        rng, size = self.rng, self.input_size
        if rng.random() > self.reprob:
            return []
        count = 1 if self.recount <= 1 else rng.randint(1, self.recount)
        boxes = []
        for _ in range(count):
            for _ in range(10):
                target = rng.uniform(0.02, 1 / 3) * size * size / count
                aspect = math.exp(rng.uniform(math.log(0.3), math.log(1 / 0.3)))
                h, w = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
                if w < size and h < size:
                    boxes.append((rng.randint(0, size - h), rng.randint(0, size - w), h, w))
                    break
        return boxes

    def sample(self, height: int, width: int) -> ClipParams:
        """Parameters of one clip whose frames are height x width."""
        ops = self._rand_augment_ops() if self.rand_augment is not None else []
        crop = random_resized_crop_box(height, width, self.scale, self.ratio, self.rng)
        return ClipParams(ops, crop, self._erase_boxes() if self.reprob > 0 else [])

    def state_dict(self) -> dict:
        """Generator states as tensors and plain types (loadable with weights_only=True)."""
        st = self.np_rng.get_state(legacy=False)
        return {"python": self.rng.getstate(), "numpy_key": torch.from_numpy(st["state"]["key"].astype(np.int64)),
                "numpy_pos": int(st["state"]["pos"]), "numpy_gauss": [int(st["has_gauss"]), float(st["gauss"])]}

    def load_state_dict(self, state: dict) -> None:
        v, internal, gauss = state["python"]
        self.rng.setstate((v, tuple(internal), gauss))
        has_gauss, cached = state["numpy_gauss"]
        self.np_rng.set_state({"bit_generator": "MT19937", "has_gauss": has_gauss, "gauss": cached,
                               "state": {"key": state["numpy_key"].numpy().astype(np.uint32),
                                         "pos": state["numpy_pos"]}})


def _luma(x: torch.Tensor) -> torch.Tensor:
    """PIL's RGB -> L on integer-valued float (..., 3, H, W): (19595 R + 38470 G + 7471 B + 0x8000) >> 16 (exact in
    float32: the sum stays below 2^24)."""
    r, g, b = x.unbind(-3)
    return torch.floor((r * 19595 + g * 38470 + b * 7471 + 32768) / 65536)


def _blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's Image.blend on uint8 images: truncate(degenerate + factor * (x - degenerate)), clipped to 0..255."""
    return torch.floor((degenerate + factor * (x - degenerate)).clamp_(0, 255))


def _per_clip(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (x.dim() - 1)))


def _histograms(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per (clip, frame, channel) 256-bin histograms of the valid pixels: (n, T, 3, H, W) -> (n * T * 3, 256).
    (scatter_add_ into a fixed size: torch.bincount would read the maximum back to the host on CUDA.)"""
    n, t, c = x.shape[:3]
    bins = torch.where(valid, x, 256.0).to(torch.int64) + 257 * torch.arange(n * t * c, device=x.device).view(
        n, t, c, 1, 1)
    bins = bins.flatten()
    hist = torch.zeros(n * t * c * 257, dtype=torch.int64, device=x.device).scatter_add_(0, bins, torch.ones_like(bins))
    return hist.view(n * t * c, 257)[:, :256]


def _apply_lut(x: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """x (n, T, 3, H, W) integer-valued float, lut (n * T * 3, 256): per (clip, frame, channel) table lookup."""
    n, t, c, h, w = x.shape
    return lut.to(x.dtype).gather(1, x.reshape(n * t * c, h * w).to(torch.int64)).view(n, t, c, h, w)


def _autocontrast(x, arg, hw, valid):
    hist = _histograms(x, valid)
    levels = torch.arange(256, device=x.device)
    nonzero = hist > 0
    lo = torch.where(nonzero, levels, 256).amin(1, keepdim=True)
    hi = torch.where(nonzero, levels, -1).amax(1, keepdim=True)
    scale = 255.0 / (hi - lo).clamp(min=1).double()
    lut = torch.trunc(levels * scale - lo * scale).clamp(0, 255)
    return _apply_lut(x, torch.where(hi > lo, lut, levels.double()))


def _equalize(x, arg, hw, valid):
    hist = _histograms(x, valid)
    levels = torch.arange(256, device=x.device)
    last = torch.where(hist > 0, levels, -1).amax(1, keepdim=True)
    step = (hist.sum(1, keepdim=True) - hist.gather(1, last.clamp(min=0))) // 255
    before = hist.cumsum(1) - hist
    lut = ((step // 2 + before) // step.clamp(min=1)).clamp(max=255)
    keep = ((hist > 0).sum(1, keepdim=True) <= 1) | (step == 0)
    return _apply_lut(x, torch.where(keep, levels, lut))


def _invert(x, arg, hw, valid):
    return 255 - x


def _posterize(x, arg, hw, valid):
    q = torch.pow(2.0, 8 - _per_clip(arg, x))
    return torch.where(_per_clip(arg, x) >= 8, x, torch.floor(x / q) * q)


def _solarize(x, arg, hw, valid):
    return torch.where(x < _per_clip(arg, x), x, 255 - x)


def _solarize_add(x, arg, hw, valid):
    return torch.where(x < 128, (x + _per_clip(arg, x)).clamp_(max=255), x)


def _color(x, arg, hw, valid):
    return _blend(_luma(x).unsqueeze(2), x, _per_clip(arg, x))


def _contrast(x, arg, hw, valid):
    luma = (_luma(x) * valid.squeeze(2)).to(torch.int32)  # n, T, H, W; exact integer sums below
    count = (hw[:, 0] * hw[:, 1]).double().view(-1, 1)
    mean = torch.floor(luma.sum((-2, -1)) / count + 0.5).to(x.dtype)  # PIL: int(mean + 0.5)
    return _blend(mean.view(*mean.shape, 1, 1, 1), x, _per_clip(arg, x))


def _brightness(x, arg, hw, valid):
    return _blend(torch.zeros((), device=x.device), x, _per_clip(arg, x))


_SMOOTH = torch.tensor([[1.0, 1, 1], [1, 5, 1], [1, 1, 1]]) / 13


def _sharpness(x, arg, hw, valid):
    """PIL: blend with ImageFilter.SMOOTH (3x3, /13, rounded), whose border rows and columns keep the input."""
    n, t, c, h, w = x.shape
    k = _SMOOTH.to(x.device, x.dtype).view(1, 1, 3, 3)
    smooth = F.conv2d(x.reshape(-1, 1, h, w), k, padding=1).view(n, t, c, h, w)
    rows, cols = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    inner = ((rows.view(1, h, 1) >= 1) & (rows.view(1, h, 1) < hw[:, 0].view(-1, 1, 1) - 1)
             & (cols.view(1, 1, w) >= 1) & (cols.view(1, 1, w) < hw[:, 1].view(-1, 1, 1) - 1))
    degenerate = torch.where(inner.view(n, 1, 1, h, w), torch.floor(smooth + 0.5).clamp_(0, 255), x)
    return _blend(degenerate, x, _per_clip(arg, x))


_DEVICE_OPS = {"AutoContrast": _autocontrast, "Equalize": _equalize, "Invert": _invert, "Posterize": _posterize,
               "PosterizeIncreasing": _posterize, "PosterizeOriginal": _posterize, "Solarize": _solarize,
               "SolarizeIncreasing": _solarize, "SolarizeAdd": _solarize_add, "Color": _color,
               "ColorIncreasing": _color, "Contrast": _contrast, "ContrastIncreasing": _contrast,
               "Brightness": _brightness, "BrightnessIncreasing": _brightness, "Sharpness": _sharpness,
               "SharpnessIncreasing": _sharpness, **{name: None for name in GEOMETRIC_OPS}}


def pil_affine_matrix(name: str, arg: float, height: int, width: int) -> tuple[float, ...]:
    """The (a, b, c, d, e, f) that timm's geometric op passes to PIL: output pixel centre (x, y) samples the input at
    (a x + b y + c, d x + e y + f); Rotate is PIL's Image.rotate about the frame centre (w / 2, h / 2)."""
    if name == "ShearX":
        return 1.0, arg, 0.0, 0.0, 1.0, 0.0
    if name == "ShearY":
        return 1.0, 0.0, 0.0, arg, 1.0, 0.0
    if name == "TranslateXRel":
        return 1.0, 0.0, arg * width, 0.0, 1.0, 0.0
    if name == "TranslateYRel":
        return 1.0, 0.0, 0.0, 0.0, 1.0, arg * height
    if name == "Rotate":
        angle = -math.radians(arg % 360.0)
        a, b = round(math.cos(angle), 15), round(math.sin(angle), 15)
        d, e = round(-math.sin(angle), 15), round(math.cos(angle), 15)
        cx, cy = width / 2, height / 2
        return a, b, a * -cx + b * -cy + cx, d, e, d * -cx + e * -cy + cy
    raise ValueError(f"{name!r} is not a geometric op ({GEOMETRIC_OPS})")


def _replicate_edges(x: torch.Tensor, hw: torch.Tensor) -> torch.Tensor:
    """Padding beyond each clip's valid h x w becomes copies of its last valid row/column (PIL clamps neighbours)."""
    n, t, c, h, w = x.shape
    cols = torch.minimum(torch.arange(w, device=x.device).view(1, w), hw[:, 1:2].long() - 1)
    rows = torch.minimum(torch.arange(h, device=x.device).view(1, h), hw[:, 0:1].long() - 1)
    x = x.gather(4, cols.view(n, 1, 1, 1, w).expand(n, t, c, h, w))
    return x.gather(3, rows.view(n, 1, 1, h, 1).expand(n, t, c, h, w))


def _warp(x: torch.Tensor, matrix: torch.Tensor, hw: torch.Tensor, fill: torch.Tensor, mode: str) -> torch.Tensor:
    """PIL's Image.transform(AFFINE) for a group of clips: matrix (n, 6) per clip; output pixels whose source lies
    outside the clip's valid frame get `fill`; neighbours beyond the edge repeat it (PIL's clamping)."""
    n, t, c, h, w = x.shape
    x = _replicate_edges(x, hw)
    px = torch.arange(w, device=x.device, dtype=torch.float32).view(1, 1, w) + 0.5
    py = torch.arange(h, device=x.device, dtype=torch.float32).view(1, h, 1) + 0.5
    m = [matrix[:, i].view(n, 1, 1) for i in range(6)]
    sx, sy = m[0] * px + m[1] * py + m[2], m[3] * px + m[4] * py + m[5]
    inside = (sx >= 0) & (sx < hw[:, 1].view(n, 1, 1)) & (sy >= 0) & (sy < hw[:, 0].view(n, 1, 1))
    grid = torch.stack([2 * sx / w - 1, 2 * sy / h - 1], dim=-1)
    out = F.grid_sample(x.view(n, t * c, h, w), grid, mode=mode, padding_mode="border", align_corners=False)
    out = torch.round(out).clamp_(0, 255).view(n, t, c, h, w)
    return torch.where(inside.view(n, 1, 1, h, w), out, fill.view(1, 1, c, 1, 1))


_GRID_MODE = {"bicubic": "bicubic", "bilinear": "bilinear", "nearest": "nearest"}


class DeviceAugment:
    """The SSv2 train recipe on the training device, for whole batches.

    Input: the collated batch (frames uint8 B x T x H x W x 3, padded; sizes int64 B x 2 valid (h, w); labels B).
    Output: (clips float32 (B * num_sample) x 3 x T x S x S normalised, labels repeated num_sample times), the
    num_sample clips of a video consecutive, as the worker path's collate orders them. Draws from its own ClipSampler
    (parameters, on the host) and a torch generator on the device (erasing noise); state_dict() holds both.
    """

    def __init__(self, device: torch.device | str, input_size: int = 224,
                 auto_augment: str | None = "rand-m7-n4-mstd0.5-inc1", interpolation: str = "bicubic",
                 scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), reprob: float = 0.25, remode: str = "pixel",
                 recount: int = 1, num_sample: int = 1, seed: int = 0,
                 mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD):
        if interpolation not in _GRID_MODE:
            raise ValueError(f"train_interpolation must be one of {sorted(_GRID_MODE)}, got {interpolation!r}")
        if remode not in ("pixel", "rand", "const"):
            raise ValueError(f"remode must be 'pixel', 'rand' or 'const', got {remode!r}")
        self.device = torch.device(device)
        self.sampler = ClipSampler(auto_augment, input_size, scale, ratio, reprob, recount, seed)
        self.input_size, self.mode, self.remode, self.num_sample = input_size, _GRID_MODE[interpolation], remode, num_sample
        self.noise = torch.Generator(device=self.device)
        self.noise.manual_seed(seed)
        self.fill = torch.tensor([round(255 * m) for m in IMAGENET_DEFAULT_MEAN], dtype=torch.float32,
                                 device=self.device)
        scale_, shift = _scale_shift(mean, std)
        self.scale, self.shift = scale_.view(1, 3, 1, 1, 1).to(self.device), shift.view(1, 3, 1, 1, 1).to(self.device)

    def state_dict(self) -> dict:
        return {"sampler": self.sampler.state_dict(), "noise": self.noise.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.noise.set_state(state["noise"])

    def _to_device(self, table: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        t = torch.from_numpy(table).to(dtype)
        if self.device.type == "cuda":
            t = t.pin_memory()
        return t.to(self.device, non_blocking=True)

    def __call__(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        frames, sizes, labels = batch[0], batch[1], batch[2]
        sizes_np = sizes.numpy()
        params = [self.sampler.sample(int(h), int(w)) for h, w in sizes_np for _ in range(self.num_sample)]
        hw = np.repeat(sizes_np, self.num_sample, axis=0).astype(np.float64)
        labels = labels.to(self.device, non_blocking=True).repeat_interleave(self.num_sample)
        x = frames.to(self.device, non_blocking=True).repeat_interleave(self.num_sample, dim=0)
        x = torch.empty(x.shape[:2] + (3,) + x.shape[2:4], device=self.device).copy_(x.permute(0, 1, 4, 2, 3))
        x, order = self._rand_augment(x, params, hw)
        return self._crop_normalise_erase(x, order, params, hw), labels

    def _rand_augment(self, x: torch.Tensor, params: list[ClipParams], hw: np.ndarray):
        """Layer by layer: sort the clips by their op at this layer, apply each op to its slice. Returns the
        augmented clips (rows in `order`: row r holds clip order[r])."""
        n, _, _, h, w = x.shape
        order = np.arange(n)
        names = list(_DEVICE_OPS)
        layers = max((len(p.ops) for p in params), default=0)
        if layers == 0:
            return x, order
        op_id = np.full((layers, n), len(names))
        values = np.zeros((layers, n, 7))  # argument, then the PIL matrix for geometric ops
        for i, p in enumerate(params):
            for layer, (name, arg) in enumerate(p.ops):
                op_id[layer, i] = names.index(name)
                values[layer, i, 0] = arg if arg is not None else 0.0
                if name in GEOMETRIC_OPS:
                    values[layer, i, 1:] = pil_affine_matrix(name, arg, int(hw[i, 0]), int(hw[i, 1]))
        perms, tables = [], []
        for layer in range(layers):
            perm = np.argsort(op_id[layer, order], kind="stable")
            order = order[perm]
            perms.append(perm)
            tables.append(np.concatenate([values[layer, order], hw[order]], axis=1))
        perms_dev = self._to_device(np.stack(perms), torch.int64)
        tables_dev = self._to_device(np.stack(tables), torch.float32)
        rows, cols = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
        order = np.arange(n)
        for layer in range(layers):
            order = order[perms[layer]]
            if not np.array_equal(perms[layer], np.arange(n)):
                x = x.index_select(0, perms_dev[layer])
            ids = op_id[layer, order]
            for k in np.unique(ids):
                if k == len(names):
                    continue
                s, e = np.searchsorted(ids, k), np.searchsorted(ids, k, side="right")
                table = tables_dev[layer, s:e]
                arg, matrix, size = table[:, 0], table[:, 1:7], table[:, 7:9]
                if names[k] in GEOMETRIC_OPS:
                    x[s:e] = _warp(x[s:e], matrix, size, self.fill, self.mode)
                else:
                    valid = ((rows.view(1, h, 1) < size[:, 0].view(-1, 1, 1))
                             & (cols.view(1, 1, w) < size[:, 1].view(-1, 1, 1))).view(e - s, 1, 1, h, w)
                    x[s:e] = _DEVICE_OPS[names[k]](x[s:e], arg, size, valid)
        return x, order

    def _crop_normalise_erase(self, x: torch.Tensor, order: np.ndarray, params: list[ClipParams],
                              hw: np.ndarray) -> torch.Tensor:
        """Every clip's crop box resized to S x S in one bilinear grid_sample (F.interpolate's half-pixel rule,
        neighbours clamped to the box as when cropping first), normalised, then erased."""
        n, t, c, h, w = x.shape
        size = self.input_size
        crops = np.array([params[i].crop for i in order], dtype=np.float64)  # top, left, h, w
        j = (np.arange(size) + 0.5) / size
        sy = crops[:, 0:1] + np.clip(j[None] * crops[:, 2:3] - 0.5, 0, crops[:, 2:3] - 1)
        sx = crops[:, 1:2] + np.clip(j[None] * crops[:, 3:4] - 0.5, 0, crops[:, 3:4] - 1)
        erased = np.array([i for i, p in enumerate(params) if p.erase], dtype=np.int64)
        most = max((len(p.erase) for p in params), default=0)
        boxes = np.zeros((len(erased), most, 4), dtype=np.int64)  # top, left, h, w; empty boxes pad
        for row, i in enumerate(erased):
            boxes[row, :len(params[i].erase)] = params[i].erase
        coords = self._to_device(np.concatenate([(2 * sy + 1) / h - 1, (2 * sx + 1) / w - 1], axis=1), torch.float32)
        index = self._to_device(np.concatenate([np.argsort(order), erased, boxes.ravel()]), torch.int64)
        gy, gx = coords[:, :size], coords[:, size:]
        grid = torch.stack([gx.view(n, 1, size).expand(n, size, size), gy.view(n, size, 1).expand(n, size, size)], -1)
        y = F.grid_sample(x.view(n, t * c, h, w), grid, mode="bilinear", padding_mode="border", align_corners=False)
        y = y.view(n, t, c, size, size).index_select(0, index[:n])  # back to the batch's clip order
        out = torch.empty((n, c, t, size, size), device=y.device)  # N 3 T S S, contiguous
        torch.mul(y.permute(0, 2, 1, 3, 4), self.scale, out=out).add_(self.shift)
        if len(erased):
            idx, b = index[n:n + len(erased)], index[n + len(erased):].view(len(erased), most, 4, 1, 1)
            r = torch.arange(size, device=out.device)
            inside = ((r.view(1, 1, size, 1) >= b[:, :, 0]) & (r.view(1, 1, size, 1) < b[:, :, 0] + b[:, :, 2])
                      & (r.view(1, 1, 1, size) >= b[:, :, 1]) & (r.view(1, 1, 1, size) < b[:, :, 1] + b[:, :, 3]))
            mask = inside.any(1).view(len(erased), 1, 1, size, size)
            shape = {"pixel": (len(erased), c, t, size, size), "rand": (len(erased), c, t, 1, 1)}.get(self.remode)
            fill = (torch.randn(shape, generator=self.noise, device=self.device) if shape is not None
                    else torch.zeros((), device=self.device))
            out[idx] = torch.where(mask, fill, out[idx])
        return out
