"""Clip-level transforms: every random choice is drawn once per clip and applied to all of its frames.

Frames come from the decoder as uint8 T x H x W x 3 numpy arrays; clips leave as float32 C x T x H x W, normalised
with the ImageNet mean/std. The train recipe follows VideoMAE's fine-tuning, in the same order:
RandAugment on the full decoded frames (PIL, timm semantics) -> RandomResizedCrop (one box, bilinear) ->
[horizontal flip, p 0.5, for datasets whose labels allow it] -> normalise -> random erasing (one box).
SSv2 has no flip: its labels say left and right. The batched device path (--augment_on device) is device_augment.py;
both paths take their recipe from one AugmentConfig.

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

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from timm.data.auto_augment import rand_augment_transform
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.data.random_erasing import RandomErasing

DEFAULT_AA = "rand-m7-n4-mstd0.5-inc1"  # VideoMAE's fine-tuning RandAugment policy (--aa)
# --train_interpolation: PIL's filter for the worker path; the key is also the device path's grid_sample mode
INTERPOLATION = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}
ERASE_MODES = ("pixel", "rand", "const")  # --remode: per-pixel noise, one noise colour per box, zeros


@dataclass(frozen=True)
class AugmentConfig:
    """The training augmentation recipe, built once from the args and handed to the dataset and to both paths
    (workers: TrainTransform; device: DeviceAugment), so the two cannot disagree.

    flip: a random horizontal flip (p 0.5, one decision per clip, after the crop and before erasing), as the published
    code does for every dataset except SSv2, whose labels say left and right.
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

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATION:
            raise ValueError(f"train_interpolation must be one of {sorted(INTERPOLATION)}, got {self.interpolation!r}")
        if self.remode not in ERASE_MODES:
            raise ValueError(f"remode must be one of {ERASE_MODES}, got {self.remode!r}")

    @property
    def rand_augment(self) -> bool:
        """Whether RandAugment is on ('' and 'none' turn it off)."""
        return bool(self.auto_augment) and self.auto_augment.lower() != "none"

    @classmethod
    def from_args(cls, args) -> "AugmentConfig":
        """The recipe of a run: --aa, --train_interpolation, --reprob/--remode/--recount, --num_sample, --input_size
        (an attribute missing from `args` keeps its default); flip for every --data_set but SSV2."""
        flags = dict(auto_augment="aa", interpolation="train_interpolation", reprob="reprob", remode="remode",
                     recount="recount", num_sample="num_sample", input_size="input_size")
        given = {field: getattr(args, flag) for field, flag in flags.items() if hasattr(args, flag)}
        return cls(**given, flip=getattr(args, "data_set", "SSV2") != "SSV2")


FILL = tuple(round(255 * m) for m in IMAGENET_DEFAULT_MEAN)  # RandAugment's fill colour (timm's img_mean)


class ClipRandAugment:
    """timm RandAugment with the same ops and magnitudes on every frame of a clip.

    timm draws the op choice from numpy's global RNG and each op's apply-probability and magnitude noise from python's
    `random`. Both states are snapshot before the first frame and restored before every other frame, so all frames
    replay the first frame's draws; afterwards the RNGs have advanced once, so the next clip gets new ops.
    """

    def __init__(self, config: AugmentConfig = AugmentConfig()):
        hparams = dict(translate_const=int(config.input_size * 0.45), img_mean=FILL,
                       interpolation=INTERPOLATION[config.interpolation])
        self.augment = rand_augment_transform(config.auto_augment, hparams)

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


def scale_shift(mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, device: torch.device | str = "cpu"
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(1 / (255 std), -mean / std) as 3 x 1 x 1 x 1 float32 on `device`, built once per (mean, std, device), so
    that normalising never uploads a table during training."""
    key = (tuple(mean), tuple(std), torch.device(device))
    if key not in _MEAN_STD:
        s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1, 1)
        scale, shift = 1 / (255 * s), -torch.tensor(mean, dtype=torch.float32).view(3, 1, 1, 1) / s
        _MEAN_STD[key] = scale.to(device), shift.to(device)
    return _MEAN_STD[key]


def normalize(frames: torch.Tensor, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """T x C x H x W uint8 (or float in [0, 255]) -> float32 C x T x H x W, (x/255 - mean) / std.

    One converting copy into `out` (allocated when None; e.g. a slice of a preallocated batch, so that the clip is
    written once, in its final layout), then two in-place passes.
    """
    scale, shift = scale_shift(mean, std)
    if out is None:
        out = torch.empty(frames.shape[1], frames.shape[0], *frames.shape[2:], dtype=torch.float32)
    return out.copy_(frames.permute(1, 0, 2, 3)).mul_(scale).add_(shift)


def normalize_clips(clips: torch.Tensor, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD) -> torch.Tensor:
    """uint8 ... x T x H x W x C clips as the workers deliver evaluation views (on any device) -> float32
    ... x C x T x H x W, (x/255 - mean) / std: one converting copy into the model's layout, then two in-place passes
    (the arithmetic of `normalize`, so the same numbers wherever it runs)."""
    scale, shift = scale_shift(mean, std, clips.device)
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
    """The train recipe for one clip in a DataLoader worker: uint8 T x H x W x 3 numpy -> float32
    C x T x size x size. Draws from the global generators: numpy (RandAugment's op choice, the flip) and python's
    `random` (everything else), in the order device_augment.ClipSampler replays."""

    def __init__(self, config: AugmentConfig = AugmentConfig()):
        self.config = config
        self.rand_augment = ClipRandAugment(config) if config.rand_augment else None
        # Applied to the clip viewed as (T*C) x H x W: one box for all frames, per-pixel noise ('pixel' mode).
        self.erase = (RandomErasing(config.reprob, mode=config.remode, max_count=config.recount, device="cpu")
                      if config.reprob > 0 else None)

    def __call__(self, frames: np.ndarray, out: torch.Tensor | None = None) -> torch.Tensor:
        """`out`, when given, is a contiguous float32 C x T x size x size tensor (e.g. one sample of a
        num_sample x C x T x H x W item) that receives the clip; it is returned."""
        if self.rand_augment is not None:
            frames = self.rand_augment(frames)
        clip = to_tchw(frames)
        cfg = self.config
        top, left, h, w = random_resized_crop_box(*clip.shape[-2:], cfg.scale, cfg.ratio)
        # Crop + bilinear resize before normalising (VideoMAE normalises first; the two commute up to the uint8
        # kernel's rounding to whole levels, <= 0.5/255), so only input_size pixels are normalised, and the uint8
        # resize kernel is ~10x faster than the float one.
        clip = resize_bilinear(clip[..., top:top + h, left:left + w], (cfg.input_size, cfg.input_size))
        if cfg.flip and np.random.uniform() < 0.5:  # VideoMAE's horizontal_flip draw
            clip = clip.flip(-1)
        clip = normalize(clip, out=out)  # C x T x H x W
        if self.erase is not None:
            c, t, hh, ww = clip.shape
            self.erase(clip.view(c * t, hh, ww))  # in place
        return clip
