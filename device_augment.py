"""The batched training augmentation on the device (--augment_on device): workers only decode; the training device
augments whole batches of padded uint8 videos.

ClipSampler draws each clip's parameters with timm's rules and draw order (RandAugment op choice, apply-probability,
magnitude noise and level->argument rules; RandomResizedCrop box; the flip; RandomErasing boxes) from its own
generators, so given the same generator states it draws exactly what the worker path (video_transforms.TrainTransform)
draws. DeviceAugment applies them with batched tensor ops on uint8 clips: per RandAugment layer, one table lookup for
the clips with a point-wise colour op, one blend each for Color and Sharpness (integer arithmetic where PIL's is), one
grid_sample with per-clip affine grids and fill for the geometric ops; then the crop + resize (+ flip) of every clip as
a bilinear grid_sample, normalisation and erasing. No Python loop over frames, no host-device synchronisation
(benchmarks/count_kernels.py counts what it asks of a device).
"""
import math
import random
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from timm.data.auto_augment import rand_augment_transform
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from video_transforms import FILL, AugmentConfig, random_resized_crop_box, scale_shift

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
                     f"'rand-inc1' op sets ({', '.join(DEVICE_OPS)})")


class ClipParams(NamedTuple):
    """One clip's augmentation: applied RandAugment ops in order [(name, argument)], crop box (top, left, h, w) on the
    decoded frame, whether the cropped clip is mirrored left-right, and erasing boxes (top, left, h, w) on the output
    clip."""
    ops: list[tuple[str, float | None]]
    crop: tuple[int, int, int, int]
    flip: bool
    erase: list[tuple[int, int, int, int]]


class ClipSampler:
    """Draws ClipParams with timm's rules from its own generators (numpy RandomState for the op choice as timm's
    np.random.choice and for the flip, random.Random for everything else, in the worker path's draw order)."""

    def __init__(self, config: AugmentConfig = AugmentConfig(), seed: int = 0):
        self.config = config
        self.rand_augment = None
        if config.rand_augment:
            ra = rand_augment_transform(config.auto_augment, dict(translate_const=int(config.input_size * 0.45)))
            for op in ra.ops:
                level_to_arg(op.name, 0.0, False)  # refuses ops without a device implementation, by name
            self.rand_augment = ra
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
        rng, size, recount = self.rng, self.config.input_size, self.config.recount
        if rng.random() > self.config.reprob:
            return []
        count = 1 if recount <= 1 else rng.randint(1, recount)
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
        cfg = self.config
        ops = self._rand_augment_ops() if self.rand_augment is not None else []
        crop = random_resized_crop_box(height, width, cfg.scale, cfg.ratio, self.rng)
        flip = cfg.flip and self.np_rng.uniform() < 0.5
        return ClipParams(ops, crop, flip, self._erase_boxes() if cfg.reprob > 0 else [])

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


# RandAugment ops by how they run on the device. Point-wise ops become per-clip 256-entry tables built on the host;
# AutoContrast/Equalize (per-frame, per-channel histograms) and Contrast (per-frame luma mean) tables are built on the
# device; Color and Sharpness blend with a per-pixel degenerate image; geometric ops resample.
POINT_OPS = ("Invert", "Posterize", "PosterizeIncreasing", "PosterizeOriginal", "Solarize", "SolarizeIncreasing",
             "SolarizeAdd", "Brightness", "BrightnessIncreasing")
HISTOGRAM_OPS = ("AutoContrast", "Equalize")
CONTRAST_OPS = ("Contrast", "ContrastIncreasing")
TABLE_OPS = POINT_OPS + HISTOGRAM_OPS + CONTRAST_OPS
COLOR_OPS = ("Color", "ColorIncreasing")
SHARPNESS_OPS = ("Sharpness", "SharpnessIncreasing")
DEVICE_OPS = TABLE_OPS + COLOR_OPS + SHARPNESS_OPS + GEOMETRIC_OPS
_WORK_BYTES = 160 * 2**20  # float32 working set of one chunk of clips (bounds the module's peak memory)


def point_table(name: str, arg: float) -> np.ndarray:
    """The 256-entry uint8 table of a point-wise op, in the float32 arithmetic of PIL's ops on integer levels."""
    v = np.arange(256, dtype=np.float32)
    if name == "Invert":
        out = 255 - v
    elif name.startswith("Posterize"):
        out = v if arg >= 8 else np.floor(v / np.float32(2.0 ** (8 - arg))) * np.float32(2.0 ** (8 - arg))
    elif name.startswith("Solarize") and name != "SolarizeAdd":
        out = np.where(v < arg, v, 255 - v)
    elif name == "SolarizeAdd":
        out = np.where(v < 128, np.minimum(v + np.float32(arg), 255), v)
    elif name.startswith("Brightness"):
        out = _blend_np(np.float32(0), v, np.float32(arg))
    else:
        raise ValueError(f"{name!r} is not a point-wise op ({POINT_OPS})")
    return out.astype(np.uint8)


def _blend_np(degenerate, x, factor):
    """_blend on the host (float32 numpy arrays), without the uint8 conversion."""
    return np.floor(np.clip(degenerate + factor * (x - degenerate), 0, 255))


def _blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's Image.blend on uint8 images: truncate(degenerate + factor * (x - degenerate)), clipped to 0..255, in
    float32 (integer inputs of any dtype: the difference is exact); returned as uint8."""
    return (degenerate + factor * (x - degenerate)).clamp_(0, 255).floor_().to(torch.uint8)


_LUMA = (19595, 38470, 7471)  # PIL's ITU-R 601-2 luma weights, scaled by 2^16


def _luma(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """PIL's RGB -> L of uint8 (k, T, 3, H, W) -> int32 (k, T, 1, H, W): (19595 R + 38470 G + 7471 B + 0x8000) >> 16."""
    return (x * weights).sum(2, keepdim=True, dtype=torch.int32).add_(32768).bitwise_right_shift_(16)


def _histograms(x: torch.Tensor, invalid: torch.Tensor, rows: torch.Tensor, one: torch.Tensor) -> torch.Tensor:
    """Per (clip, frame, channel) 256-bin histograms of the valid pixels of uint8 (k, T, 3, H, W) -> (k * T * 3, 256);
    `invalid` (k, 1, 1, H, W) marks the padding (counted in a 257th bin, dropped), `rows` (k * T * 3, 2) int64 the
    first and the padding's bin of each row, `one` a device 1. (scatter_add_ into a fixed size: torch.bincount would
    read the maximum back to the host.)"""
    k, t, c = x.shape[:3]
    rows = rows.view(k, t, c, 1, 1, 2)
    bins = x + rows[..., 0]
    torch.where(invalid, rows[..., 1], bins, out=bins)
    hist = torch.zeros(k * t * c * 257, dtype=torch.int64, device=x.device)
    hist.scatter_add_(0, bins.view(-1), one.expand(bins.numel()))
    return hist.view(k * t * c, 257)[:, :256]


def _autocontrast_tables(hist: torch.Tensor, levels: torch.Tensor, levels_d: torch.Tensor, none: torch.Tensor,
                         beyond: torch.Tensor) -> torch.Tensor:
    """PIL's ImageOps.autocontrast (cutoff 0) per histogram row: the levels stretched from [lo, hi] to [0, 255].
    levels: arange(256) (levels_d in float64); none, beyond: device -1 and 256."""
    present = hist > 0
    lo = torch.where(present, levels, beyond).amin(1, keepdim=True)
    hi = torch.where(present, levels, none).amax(1, keepdim=True)
    scale = 255.0 / (hi - lo).clamp(min=1).double()
    table = torch.trunc(levels * scale - lo * scale).clamp_(0, 255)
    return torch.where(hi > lo, table, levels_d).to(torch.uint8)


def _equalize_tables(hist: torch.Tensor, levels: torch.Tensor, none: torch.Tensor) -> torch.Tensor:
    """PIL's ImageOps.equalize per histogram row (its integer step and rounding); none: a device -1."""
    last = torch.where(hist > 0, levels, none).amax(1, keepdim=True)
    step = (hist.sum(1, keepdim=True) - hist.gather(1, last.clamp(min=0))) // 255
    before = hist.cumsum(1) - hist
    table = ((step // 2 + before) // step.clamp(min=1)).clamp_(max=255)
    keep = ((hist > 0).sum(1, keepdim=True) <= 1) | (step == 0)
    return torch.where(keep, levels, table).to(torch.uint8)


def _smooth(x: torch.Tensor) -> torch.Tensor:
    """PIL's ImageFilter.SMOOTH (3x3 [[1,1,1],[1,5,1],[1,1,1]] / 13, rounded) of the interior pixels of int16
    (k, T, 3, H, W) levels, in integers: the same levels on every device (a float convolution would fall under TF32
    on CUDA). Returns (k, T, 3, H - 2, W - 2)."""
    rows = x[..., :, :-2] + x[..., :, 1:-1]
    rows += x[..., :, 2:]
    total = rows[..., :-2, :] + rows[..., 1:-1, :]
    total += rows[..., 2:, :]
    total.add_(x[..., 1:-1, 1:-1], alpha=4)
    return total.add_(6).div_(13, rounding_mode="floor")  # round(total / 13): never a tie


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


class _Uploads:
    """The host-computed numbers of one batch, packed by dtype and uploaded in one pinned, non-blocking copy per
    dtype; get() returns views of the uploaded buffers."""

    def __init__(self):
        self._parts: dict[np.dtype, list[np.ndarray]] = {}
        self._where: dict[str, tuple[np.dtype, int, tuple]] = {}
        self._buffers: dict[np.dtype, torch.Tensor] = {}

    def add(self, key: str, array, dtype) -> None:
        array = np.ascontiguousarray(array, dtype=dtype)
        parts = self._parts.setdefault(array.dtype, [])
        self._where[key] = array.dtype, sum(p.size for p in parts), array.shape
        parts.append(array.ravel())

    def upload(self, device: torch.device) -> None:
        for dtype, parts in self._parts.items():
            host = torch.from_numpy(np.concatenate(parts))
            if device.type == "cuda":
                host = host.pin_memory()
            self._buffers[dtype] = host.to(device, non_blocking=True)

    def get(self, key: str) -> torch.Tensor:
        dtype, start, shape = self._where[key]
        return self._buffers[dtype][start:start + int(np.prod(shape))].view(shape)


def _take(x: torch.Tensor, clips: list[int], index: torch.Tensor, s: int, e: int) -> tuple[torch.Tensor, bool]:
    """Clips clips[s:e] of x (index: the same on the device): (a view when they are consecutive, True), else (a
    gathered copy, False)."""
    first = clips[s]
    if clips[s:e] == list(range(first, first + e - s)):
        return x[first:first + e - s], True
    return x.index_select(0, index[s:e]), False


def _put(x: torch.Tensor, clips: list[int], index: torch.Tensor, s: int, e: int, values: torch.Tensor) -> None:
    """x[clips[s:e]] = values."""
    first = clips[s]
    if clips[s:e] == list(range(first, first + e - s)):
        x[first:first + e - s].copy_(values)
    else:
        x.index_copy_(0, index[s:e], values)


def _chunks(count: int, size: int):
    """(start, end) of consecutive chunks of at most `size` out of `count`."""
    for start in range(0, count, size):
        yield start, min(start + size, count)


class DeviceAugment:
    """The train recipe on the training device, for whole batches.

    Input: the collated batch (frames uint8 B x T x H x W x 3, padded; sizes int64 B x 2 valid (h, w); labels B).
    Output: (clips float32 (B * num_sample) x 3 x T x S x S normalised, labels repeated num_sample times), the
    num_sample clips of a video consecutive, as the worker path's collate orders them. Draws from its own ClipSampler
    (parameters, on the host) and a torch generator on the device (erasing noise); state_dict() holds both.

    The clips stay uint8 between ops, in batch order, their padding a copy of their last valid row and column (what
    PIL's resampling clamps to). Per RandAugment layer: one grid_sample for all clips with a geometric op (per-clip
    grids computed on the host), one table lookup for all clips with a point-wise op (per-clip tables; per frame and
    channel for AutoContrast, Equalize and Contrast), one blend each for Color and Sharpness. Float work goes in
    chunks of clips (_WORK_BYTES), which bounds the peak memory. Per batch, the frames, the labels and one table per
    dtype are uploaded (pinned, non-blocking); device constants are made once; nothing is read back to the host.
    """

    def __init__(self, device: torch.device | str, config: AugmentConfig = AugmentConfig(), seed: int = 0,
                 mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD):
        self.device, self.config = torch.device(device), config
        self.sampler = ClipSampler(config, seed)
        # The meta device (shapes only: benchmarks/count_kernels.py) has no generator; its noise draws go without.
        self.noise = torch.Generator(device=self.device) if self.device.type != "meta" else None
        if self.noise is not None:
            self.noise.manual_seed(seed)
        on = dict(device=self.device)
        self.fill = torch.tensor(FILL, dtype=torch.float32, **on).view(1, 1, 3, 1, 1)
        self.levels = torch.arange(256, **on)
        self.levels_f, self.levels_d = self.levels.float(), self.levels.double()
        self.luma_weights = torch.tensor(_LUMA, dtype=torch.int32, **on).view(1, 1, 3, 1, 1)
        self.one, self.none, self.beyond = (torch.tensor(v, **on) for v in (1, -1, 256))
        scale, shift = scale_shift(mean, std, self.device)
        self.scale, self.shift = scale.view(1, 3, 1, 1, 1), shift.view(1, 3, 1, 1, 1)

    def state_dict(self) -> dict:
        return {"sampler": self.sampler.state_dict(), "noise": self.noise.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.noise.set_state(state["noise"])

    def __call__(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        frames, sizes, labels = batch[0], batch[1], batch[2]
        num_sample = self.config.num_sample
        sizes_np = sizes.numpy()
        params = [self.sampler.sample(int(h), int(w)) for h, w in sizes_np for _ in range(num_sample)]
        hw = np.repeat(sizes_np, num_sample, axis=0).astype(np.int64)
        b, t, h, w, c = frames.shape
        up = _Uploads()
        plan = self._plan_rand_augment(up, hw, [p.ops for p in params], t, h, w)
        self._plan_crop_erase(up, params, h, w)
        if plan:
            rows = np.minimum(np.arange(h)[None], sizes_np[:, :1] - 1)
            cols = np.minimum(np.arange(w)[None], sizes_np[:, 1:] - 1)
            up.add("edges", rows[:, :, None] * w + cols[:, None, :], np.int64)
        labels = labels.to(self.device, non_blocking=True).repeat_interleave(num_sample)
        up.upload(self.device)
        frames = frames.to(self.device, non_blocking=True)
        if plan:  # the padding <- copies of the last valid row/column (see _rand_augment)
            frames = frames.view(b, t, h * w, c).gather(2, up.get("edges").view(b, 1, h * w, 1).expand(
                b, t, h * w, c)).view(b, t, h, w, c)
        x = torch.empty((b, num_sample, t, c, h, w), dtype=torch.uint8, device=self.device)
        x.copy_(frames.permute(0, 1, 4, 2, 3).unsqueeze(1).expand_as(x))
        del frames
        x = x.view(b * num_sample, t, c, h, w)
        self._rand_augment(x, up, plan)
        clips = self._crop_normalise(x, up)
        del x  # its memory serves the erasing
        return self._erase(clips, up), labels

    def rand_augment(self, x: torch.Tensor, hw: np.ndarray, ops: list[list[tuple[str, float | None]]]) -> torch.Tensor:
        """RandAugment of uint8 clips (n, T, 3, H, W) whose valid sizes are hw (n, 2), clip i applying ops[i] in
        order; the padding's content is ignored and comes out as copies of the last valid row and column."""
        n, t, c, h, w = x.shape
        up = _Uploads()
        plan = self._plan_rand_augment(up, hw, ops, t, h, w)
        rows, cols = np.minimum(np.arange(h)[None], hw[:, :1] - 1), np.minimum(np.arange(w)[None], hw[:, 1:] - 1)
        up.add("edges", rows[:, :, None] * w + cols[:, None, :], np.int64)
        up.upload(x.device)
        x = x.reshape(n, t * c, h * w).gather(2, up.get("edges").view(n, 1, h * w).expand(n, t * c, h * w))
        x = x.view(n, t, c, h, w)
        self._rand_augment(x, up, plan)
        return x

    def _chunk(self, x: torch.Tensor, bytes_per_value: int) -> int:
        """How many clips of x go through a stage at once, that stage needing `bytes_per_value` per pixel value."""
        return max(1, _WORK_BYTES // (x[0].numel() * bytes_per_value))

    def _plan_rand_augment(self, up: _Uploads, hw: np.ndarray, ops: list, t: int, h: int, w: int) -> list[dict]:
        """The host's share: per layer, the clips of each kind of op ({kind: [(clip, name, arg)]}) and their
        numbers (clip indices, factors, tables, grids, masks) added to `up`."""
        plan = []
        for layer in range(max((len(o) for o in ops), default=0)):
            groups: dict[str, list] = {}
            for i, clip_ops in enumerate(ops):
                if layer < len(clip_ops):
                    name, arg = clip_ops[layer]
                    groups.setdefault(_KIND[name], []).append((i, name, arg))
            for kind, members in groups.items():
                self._plan_group(up, f"{layer}{kind}", kind, members, hw, t, h, w)
            plan.append(groups)
        return plan

    def _plan_group(self, up: _Uploads, key: str, kind: str, members: list, hw: np.ndarray, t: int, h: int,
                    w: int) -> None:
        clips, names, args = (list(v) for v in zip(*members))
        up.add(f"{key}/clips", clips, np.int64)
        if kind == "geometric":
            sx, sy, inside = _source_positions(names, args, hw[clips], h, w)
            up.add(f"{key}/grid", np.stack([2 * sx / np.float32(w) - 1, 2 * sy / np.float32(h) - 1], -1), np.float32)
            up.add(f"{key}/inside", inside[:, None, None], np.bool_)
            return
        if kind in ("color", "sharpness"):
            up.add(f"{key}/factor", args, np.float32)
            if kind == "sharpness":  # not rows/columns 1 .. size - 2 of the clip: they keep the input
                up.add(f"{key}/border", _padding(hw[clips] - 1, h - 1, w - 1)[:, :, :, 1:, 1:], np.bool_)
            return
        per_frame = 3 * t if any(nm in HISTOGRAM_OPS + CONTRAST_OPS for nm in names) else 1  # table rows per clip
        up.add(f"{key}/tables", [point_table(nm, a) if nm in POINT_OPS else np.arange(256)
                                 for nm, a in zip(names, args)], np.uint8)
        up.add(f"{key}/offsets", np.arange(len(clips) * per_frame) * 256, np.int32)
        for sub, group in (("histogram", HISTOGRAM_OPS), ("contrast", CONTRAST_OPS)):
            pos = [j for j, nm in enumerate(names) if nm in group]
            if not pos:
                continue
            up.add(f"{key}/{sub}/pos", pos, np.int64)
            up.add(f"{key}/{sub}/clips", [clips[j] for j in pos], np.int64)
            up.add(f"{key}/{sub}/invalid", _padding(hw[[clips[j] for j in pos]], h, w), np.bool_)
            if sub == "histogram":
                first = np.arange(len(pos) * per_frame) * 257
                up.add(f"{key}/histogram/rows", np.stack([first, first + 256], 1), np.int64)
                up.add(f"{key}/histogram/equalize", np.repeat([names[j] == "Equalize" for j in pos], per_frame),
                       np.bool_)
            else:
                up.add(f"{key}/contrast/factor", [args[j] for j in pos], np.float32)
                up.add(f"{key}/contrast/count", [hw[clips[j], 0] * hw[clips[j], 1] for j in pos], np.float64)

    def _rand_augment(self, x: torch.Tensor, up: _Uploads, plan: list[dict]) -> None:
        """Applies the plan to x in place. x's padding must be copies of each clip's last valid row and column, and
        every op keeps it so: point-wise ops map a copy as they map its original, Sharpness keeps the border, and
        geometric ops compute the padding at the clamped position; PIL's resampling clamps to the same pixels."""
        for layer, groups in enumerate(plan):
            for kind, members in groups.items():
                clips, names = [i for i, _, _ in members], [nm for _, nm, _ in members]
                getattr(self, f"_{kind}")(x, up, f"{layer}{kind}", clips, names)

    def _geometric(self, x: torch.Tensor, up: _Uploads, key: str, clips: list[int], names: list[str]) -> None:
        """PIL's Image.transform(AFFINE) with fill: one grid_sample per chunk of clips."""
        n, t, c, h, w = x.shape
        index, grid, inside = up.get(f"{key}/clips"), up.get(f"{key}/grid"), up.get(f"{key}/inside")
        for s, e in _chunks(len(clips), self._chunk(x, 10)):
            src = _take(x, clips, index, s, e)[0].reshape(e - s, t * c, h, w).float()
            out = F.grid_sample(src, grid[s:e], mode=self.config.interpolation, padding_mode="border",
                                align_corners=False).view(e - s, t, c, h, w)
            del src
            out = torch.where(inside[s:e], out.round_().clamp_(0, 255), self.fill, out=out)
            _put(x, clips, index, s, e, out.to(torch.uint8))

    def _table(self, x: torch.Tensor, up: _Uploads, key: str, clips: list[int], names: list[str]) -> None:
        """Point-wise ops: one lookup per chunk of clips in per-clip tables, per frame and channel where a clip's
        table comes from its histograms (AutoContrast, Equalize) or its luma mean (Contrast)."""
        n, t, c, h, w = x.shape
        index, tables, offsets = up.get(f"{key}/clips"), up.get(f"{key}/tables"), up.get(f"{key}/offsets")
        kinds = set(names)
        if kinds & set(HISTOGRAM_OPS + CONTRAST_OPS):
            tables = tables.view(-1, 1, 1, 256).expand(-1, t, c, 256).contiguous()
            offsets = offsets.view(-1, t, c, 1, 1)
        else:
            offsets = offsets.view(-1, 1, 1, 1, 1)
        if kinds & set(HISTOGRAM_OPS):
            self._histogram_tables(x, up, key, [i for i, nm in zip(clips, names) if nm in HISTOGRAM_OPS], tables,
                                   kinds & set(HISTOGRAM_OPS))
        if kinds & set(CONTRAST_OPS):
            members = [i for i, nm in zip(clips, names) if nm in CONTRAST_OPS]
            src = _take(x, members, up.get(f"{key}/contrast/clips"), 0, len(members))[0]
            luma = _luma(src, self.luma_weights).masked_fill_(up.get(f"{key}/contrast/invalid"), 0)
            count = up.get(f"{key}/contrast/count").view(-1, 1, 1)
            mean = torch.floor(luma.sum((-2, -1), dtype=torch.int64) / count + 0.5).float()  # PIL: int(mean + 0.5)
            made = _blend(mean.view(-1, t, 1, 1), self.levels_f, up.get(f"{key}/contrast/factor").view(-1, 1, 1, 1))
            tables.index_copy_(0, up.get(f"{key}/contrast/pos"), made.expand(-1, t, c, 256))
        tables = tables.view(-1)
        for s, e in _chunks(len(clips), self._chunk(x, 6)):
            lookup = _take(x, clips, index, s, e)[0] + offsets[s:e]  # int32
            _put(x, clips, index, s, e, tables.index_select(0, lookup.view(-1)).view(e - s, t, c, h, w))

    def _histogram_tables(self, x: torch.Tensor, up: _Uploads, key: str, clips: list[int], tables: torch.Tensor,
                          kinds: set[str]) -> None:
        """AutoContrast/Equalize tables from each frame's and channel's histogram, into their rows of `tables`."""
        t, c = x.shape[1:3]
        index, rows = up.get(f"{key}/histogram/clips"), up.get(f"{key}/histogram/rows")
        invalid, pos, equalize = (up.get(f"{key}/histogram/{k}") for k in ("invalid", "pos", "equalize"))
        for s, e in _chunks(len(clips), self._chunk(x, 9)):
            hist = _histograms(_take(x, clips, index, s, e)[0], invalid[s:e], rows[:(e - s) * t * c],  # own rows
                              self.one)
            if kinds == {"Equalize"}:
                made = _equalize_tables(hist, self.levels, self.none)
            elif kinds == {"AutoContrast"}:
                made = _autocontrast_tables(hist, self.levels, self.levels_d, self.none, self.beyond)
            else:
                made = torch.where(equalize[s * t * c:e * t * c].view(-1, 1), _equalize_tables(
                    hist, self.levels, self.none), _autocontrast_tables(hist, self.levels, self.levels_d, self.none,
                                                                        self.beyond))
            tables.index_copy_(0, pos[s:e], made.view(-1, t, c, 256))

    def _color(self, x: torch.Tensor, up: _Uploads, key: str, clips: list[int], names: list[str]) -> None:
        """PIL's ImageEnhance.Color: blend with the clip's own greyscale."""
        index, factor = up.get(f"{key}/clips"), up.get(f"{key}/factor").view(-1, 1, 1, 1, 1)
        for s, e in _chunks(len(clips), self._chunk(x, 16)):
            src = _take(x, clips, index, s, e)[0]
            _put(x, clips, index, s, e, _blend(_luma(src, self.luma_weights), src, factor[s:e]))

    def _sharpness(self, x: torch.Tensor, up: _Uploads, key: str, clips: list[int], names: list[str]) -> None:
        """PIL's ImageEnhance.Sharpness: blend with the SMOOTH-filtered clip; the border rows and columns keep the
        input (so only the inside of the padded frame is written)."""
        index, factor = up.get(f"{key}/clips"), up.get(f"{key}/factor").view(-1, 1, 1, 1, 1)
        border = up.get(f"{key}/border")
        for s, e in _chunks(len(clips), self._chunk(x, 16)):
            src, view = _take(x, clips, index, s, e)
            levels = src.to(torch.int16)
            inner = levels[..., 1:-1, 1:-1]
            src[..., 1:-1, 1:-1] = _blend(torch.where(border[s:e], inner, _smooth(levels)), inner, factor[s:e])
            if not view:
                _put(x, clips, index, s, e, src)

    def _plan_crop_erase(self, up: _Uploads, params: list[ClipParams], h: int, w: int) -> None:
        """Every clip's crop box resized to S x S (F.interpolate's bilinear half-pixel rule, neighbours clamped to
        the box as when cropping first; a flipped clip reads its columns right to left) as a grid_sample grid, and
        the erasing boxes."""
        n, size = len(params), self.config.input_size
        crops = np.array([p.crop for p in params], dtype=np.float64).reshape(n, 4)  # top, left, h, w
        j = (np.arange(size) + 0.5) / size
        sy = crops[:, 0:1] + np.clip(j[None] * crops[:, 2:3] - 0.5, 0, crops[:, 2:3] - 1)
        sx = crops[:, 1:2] + np.clip(j[None] * crops[:, 3:4] - 0.5, 0, crops[:, 3:4] - 1)
        flipped = np.array([p.flip for p in params], dtype=bool)
        sx[flipped] = sx[flipped, ::-1]
        gy, gx = ((2 * sy + 1) / h - 1).astype(np.float32), ((2 * sx + 1) / w - 1).astype(np.float32)
        up.add("crop", np.stack([np.broadcast_to(gx[:, None, :], (n, size, size)),
                                 np.broadcast_to(gy[:, :, None], (n, size, size))], -1), np.float32)
        erased = [i for i, p in enumerate(params) if p.erase]
        mask = np.zeros((len(erased), 1, 1, size, size), dtype=bool)
        for row, i in enumerate(erased):
            for top, left, bh, bw in params[i].erase:
                mask[row, :, :, top:top + bh, left:left + bw] = True
        up.add("erased", erased, np.int64)
        up.add("erase_mask", mask, np.bool_)

    def _crop_normalise(self, x: torch.Tensor, up: _Uploads) -> torch.Tensor:
        """Crop + resize (one bilinear grid_sample per chunk of clips), normalised into a float32 N x 3 x T x S x S
        batch."""
        n, t, c, h, w = x.shape
        size = self.config.input_size
        grid = up.get("crop")
        out = torch.empty((n, c, t, size, size), device=x.device)
        for s, e in _chunks(n, self._chunk(x, 12)):
            y = F.grid_sample(x[s:e].view(e - s, t * c, h, w).float(), grid[s:e], mode="bilinear",
                              padding_mode="border", align_corners=False)
            torch.mul(y.view(e - s, t, c, size, size).permute(0, 2, 1, 3, 4), self.scale, out=out[s:e])
        return out.add_(self.shift)

    def _erase(self, out: torch.Tensor, up: _Uploads) -> torch.Tensor:
        """timm's RandomErasing boxes, the same on every frame: noise per pixel ('pixel'), per box ('rand') or 0."""
        index, mask = up.get("erased"), up.get("erase_mask")
        m = len(index)
        if m == 0:
            return out
        n, c, t, size, _ = out.shape
        shape = {"pixel": (m, c, t, size, size), "rand": (m, c, t, 1, 1)}.get(self.config.remode)
        fill = (torch.randn(shape, generator=self.noise, device=out.device) if shape is not None
                else torch.zeros((), device=out.device))
        out.index_copy_(0, index, torch.where(mask, fill, out.index_select(0, index)))
        return out


_KIND = {**{nm: "geometric" for nm in GEOMETRIC_OPS}, **{nm: "table" for nm in TABLE_OPS},
         **{nm: "color" for nm in COLOR_OPS}, **{nm: "sharpness" for nm in SHARPNESS_OPS}}


def _padding(hw: np.ndarray, h: int, w: int) -> np.ndarray:
    """(k, 1, 1, h, w) bool: True outside each clip's valid hw."""
    rows, cols = np.arange(h), np.arange(w)
    return ~((rows[None, :, None] < hw[:, 0, None, None]) & (cols[None, None, :] < hw[:, 1, None, None]))[:, None, None]


def _source_positions(names: list[str], args: list[float], hw: np.ndarray, h: int, w: int):
    """For each clip's geometric op: where output pixel centre (x, y) samples the input, (a x + b y + c, d x + e y + f)
    in float32 as (k, h, w) arrays, and whether that lies inside the clip (else: fill). Output pixels in the padding
    take the position of the nearest valid pixel, so that the padding stays a copy of the last valid row/column."""
    m = np.array([pil_affine_matrix(nm, a, int(s[0]), int(s[1])) for nm, a, s in zip(names, args, hw)],
                 dtype=np.float32).T.reshape(6, -1, 1, 1)
    px = (np.minimum(np.arange(w)[None], hw[:, 1:] - 1) + np.float32(0.5)).astype(np.float32)[:, None, :]
    py = (np.minimum(np.arange(h)[None], hw[:, :1] - 1) + np.float32(0.5)).astype(np.float32)[:, :, None]
    sx = m[0] * px + m[1] * py + m[2]
    sy = m[3] * px + m[4] * py + m[5]
    size = hw.astype(np.float32)
    inside = (sx >= 0) & (sx < size[:, 1, None, None]) & (sy >= 0) & (sy < size[:, 0, None, None])
    return sx, sy, inside
