"""The batched training augmentation on the device (--augment_on device): workers only decode; the training device
augments whole batches of padded uint8 videos.

ClipSampler draws each clip's parameters with timm's rules and draw order (RandAugment op choice, apply-probability,
magnitude noise and level->argument rules; RandomResizedCrop box; the flip; RandomErasing boxes) from its own
generators, so given the same generator states it draws exactly what the worker path (video_transforms.TrainTransform)
draws. DeviceAugment applies them with batched tensor ops: the clips that share an op at a RandAugment layer are one
slice (clips are sorted by op per layer), colour ops are exact integer arithmetic or per-frame lookup tables,
geometric ops are one grid_sample per group with PIL's affine matrices and fill, and the crop + resize (+ flip) of
every clip is one bilinear grid_sample. No Python loop over frames, no host-device synchronisation.
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
                     f"'rand-inc1' op sets ({', '.join(_DEVICE_OPS)})")


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


class DeviceAugment:
    """The train recipe on the training device, for whole batches.

    Input: the collated batch (frames uint8 B x T x H x W x 3, padded; sizes int64 B x 2 valid (h, w); labels B).
    Output: (clips float32 (B * num_sample) x 3 x T x S x S normalised, labels repeated num_sample times), the
    num_sample clips of a video consecutive, as the worker path's collate orders them. Draws from its own ClipSampler
    (parameters, on the host) and a torch generator on the device (erasing noise); state_dict() holds both.
    """

    def __init__(self, device: torch.device | str, config: AugmentConfig = AugmentConfig(), seed: int = 0,
                 mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD):
        self.device, self.config = torch.device(device), config
        self.sampler = ClipSampler(config, seed)
        # The meta device (shapes only: benchmarks/count_kernels.py) has no generator; its noise draws go without.
        self.noise = torch.Generator(device=self.device) if self.device.type != "meta" else None
        if self.noise is not None:
            self.noise.manual_seed(seed)
        self.fill = torch.tensor(FILL, dtype=torch.float32, device=self.device)
        scale, shift = scale_shift(mean, std, self.device)
        self.scale, self.shift = scale.view(1, 3, 1, 1, 1), shift.view(1, 3, 1, 1, 1)

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
        num_sample = self.config.num_sample
        params = [self.sampler.sample(int(h), int(w)) for h, w in sizes_np for _ in range(num_sample)]
        hw = np.repeat(sizes_np, num_sample, axis=0).astype(np.float64)
        labels = labels.to(self.device, non_blocking=True).repeat_interleave(num_sample)
        x = frames.to(self.device, non_blocking=True).repeat_interleave(num_sample, dim=0)
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
                    x[s:e] = _warp(x[s:e], matrix, size, self.fill, self.config.interpolation)
                else:
                    valid = ((rows.view(1, h, 1) < size[:, 0].view(-1, 1, 1))
                             & (cols.view(1, 1, w) < size[:, 1].view(-1, 1, 1))).view(e - s, 1, 1, h, w)
                    x[s:e] = _DEVICE_OPS[names[k]](x[s:e], arg, size, valid)
        return x, order

    def _crop_normalise_erase(self, x: torch.Tensor, order: np.ndarray, params: list[ClipParams],
                              hw: np.ndarray) -> torch.Tensor:
        """Every clip's crop box resized to S x S in one bilinear grid_sample (F.interpolate's half-pixel rule,
        neighbours clamped to the box as when cropping first; a flipped clip reads its columns right to left),
        normalised, then erased."""
        n, t, c, h, w = x.shape
        size = self.config.input_size
        crops = np.array([params[i].crop for i in order], dtype=np.float64)  # top, left, h, w
        j = (np.arange(size) + 0.5) / size
        sy = crops[:, 0:1] + np.clip(j[None] * crops[:, 2:3] - 0.5, 0, crops[:, 2:3] - 1)
        sx = crops[:, 1:2] + np.clip(j[None] * crops[:, 3:4] - 0.5, 0, crops[:, 3:4] - 1)
        flipped = np.array([params[i].flip for i in order], dtype=bool)
        sx[flipped] = sx[flipped, ::-1]
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
            shape = {"pixel": (len(erased), c, t, size, size),
                     "rand": (len(erased), c, t, 1, 1)}.get(self.config.remode)
            fill = (torch.randn(shape, generator=self.noise, device=self.device) if shape is not None
                    else torch.zeros((), device=self.device))
            out[idx] = torch.where(mask, fill, out[idx])
        return out
