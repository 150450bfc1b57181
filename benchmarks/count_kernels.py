"""What the device augmentation asks of a GPU, counted without one: kernels, host<->device traffic and peak memory.

    python benchmarks/count_kernels.py [--batches 20] [--videos 6] [--num_sample 2] [--frames 16] [--height 240]

Runs DeviceAugment on the `meta` device (shapes only, no data) under DeviceOpRecorder, a dispatch mode that sees
every aten op: it counts the ops that launch a device kernel (views and bare allocations launch none), records every
host->device copy and every op that reads a device value back to the host (each one a synchronisation on CUDA), and
follows the device storages alive after each op, whose maximum is the peak memory. Batches are SSv2-like: videos of
--height rows and widths drawn from SSv2's 320-427, the recipe's defaults (RandAugment --aa's default,
erasing 0.25). Prints the mean, 95th percentile and maximum over --batches batches.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections import Counter

import numpy as np
import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from device_augment import DeviceAugment  # noqa: E402
from video_transforms import AugmentConfig  # noqa: E402

aten = torch.ops.aten
# Ops whose result the host needs: on CUDA each one waits for the device to finish its queue.
READBACK_OPS = {aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default,
                aten.is_nonzero.default, aten.equal.default, aten._unique2.default, aten.unique_dim.default,
                aten.unique_consecutive.default}
ALLOCATIONS = {aten.empty.memory_format, aten.empty_strided.default, aten.empty_like.default}
COPIES = {aten._to_copy.default, aten.copy_.default}


def _tensors(tree) -> list[torch.Tensor]:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


class DeviceOpRecorder(TorchDispatchMode):
    """Records what a region of code does on `device`: `kernels` (Counter op name -> launches), `uploads`
    [(op, shape, dtype, non_blocking)] of host->device copies, `readbacks` [op name] (device values read on the host,
    boolean-mask indexing and device->host copies included), `peak_bytes` (device storages alive at once, beyond
    those alive on entry). torch.tensor/torch.as_tensor with a device run below the dispatcher, so they are
    recorded as uploads by name while the recorder is active."""

    def __init__(self, device: str | torch.device = "meta"):
        super().__init__()
        self.device = torch.device(device)
        self.kernels: Counter = Counter()
        self.uploads: list[tuple] = []
        self.readbacks: list[str] = []
        self.peak_bytes = 0
        self._live: dict[int, tuple[StorageWeakRef, int]] = {}
        self._patched: dict[str, object] = {}

    def _on_device(self, t: torch.Tensor) -> bool:
        return t.device.type == self.device.type

    def _track(self, outputs: list[torch.Tensor]) -> None:
        for key in [k for k, (ref, _) in self._live.items() if ref.expired()]:
            del self._live[key]
        for t in outputs:
            if self._on_device(t):
                storage = t.untyped_storage()
                if storage._cdata not in self._live:
                    self._live[storage._cdata] = StorageWeakRef(storage), storage.nbytes()
        self.peak_bytes = max(self.peak_bytes, sum(n for _, n in self._live.values()))

    def _classify(self, func, args, kwargs, outputs: list[torch.Tensor]) -> None:
        inputs = _tensors((args, kwargs))
        name = str(func)
        if func in READBACK_OPS:
            if any(self._on_device(t) for t in inputs):
                self.readbacks.append(name)
            return
        if func in (aten.index.Tensor, aten.index_put.default, aten.index_put_.default) and any(
                t.dtype == torch.bool for t in _tensors(args[1])):
            self.readbacks.append(name + " (boolean mask)")
        if func in COPIES:
            src = args[1] if func is aten.copy_.default else args[0]
            dst = args[0] if func is aten.copy_.default else outputs[0]
            positional = args[2] if func is aten.copy_.default and len(args) > 2 else False
            non_blocking = kwargs.get("non_blocking", positional)
            if not self._on_device(src) and self._on_device(dst):
                self.uploads.append((name, tuple(src.shape), src.dtype, bool(non_blocking)))
                return
            if self._on_device(src) and not self._on_device(dst):
                self.readbacks.append(name + " (device->host copy)")
                return
        if func.is_view or func in ALLOCATIONS:
            return
        if any(self._on_device(t) for t in outputs + inputs):
            self.kernels[name] += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        outputs = _tensors(out)
        self._classify(func, args, kwargs, outputs)
        self._track(outputs)
        return out

    def _record_constructor(self, name: str):
        real = self._patched[name]

        def constructor(data, *args, device=None, **kwargs):
            if device is not None and self._on_device(torch.empty(0, device=device)):
                self.uploads.append((f"torch.{name}", np.shape(data), kwargs.get("dtype"), False))
            return real(data, *args, device=device, **kwargs)
        return constructor

    def __enter__(self):
        for name in ("tensor", "as_tensor"):
            self._patched[name] = getattr(torch, name)
            setattr(torch, name, self._record_constructor(name))
        return super().__enter__()

    def __exit__(self, *exc):
        for name, real in self._patched.items():
            setattr(torch, name, real)
        return super().__exit__(*exc)

    @property
    def kernel_count(self) -> int:
        return sum(self.kernels.values())


def ssv2_like_batch(rng: np.random.Generator, videos: int, frames: int, height: int) -> tuple:
    """A packed batch as pack_videos_collate makes it (zeros: only shapes matter on meta), widths 320-427."""
    widths = rng.integers(320, 428, videos)
    packed = torch.zeros((videos, frames, height, int(widths.max()), 3), dtype=torch.uint8)
    sizes = torch.tensor([[height, int(w)] for w in widths], dtype=torch.int64)
    return packed, sizes, torch.arange(videos)


def count(augment: DeviceAugment, batches: list[tuple]) -> list[DeviceOpRecorder]:
    """One recorder per batch, each around one call of `augment`."""
    out = []
    for batch in batches:
        with DeviceOpRecorder(augment.device) as rec:
            augment(batch)
        out.append(rec)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--videos", type=int, default=6)
    p.add_argument("--num_sample", type=int, default=2)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    rng = np.random.default_rng(a.seed)
    augment = DeviceAugment("meta", AugmentConfig(num_sample=a.num_sample), seed=a.seed)
    recs = count(augment, [ssv2_like_batch(rng, a.videos, a.frames, a.height) for _ in range(a.batches)])
    kernels = np.array([r.kernel_count for r in recs])
    peak = np.array([r.peak_bytes for r in recs]) / 2**20
    uploads = np.array([len(r.uploads) for r in recs])
    print(f"DeviceAugment on meta, {a.batches} batches of {a.videos} videos x {a.num_sample} clips, "
          f"{a.frames} x {a.height} x 320-427")
    print(f"  device kernels per batch   mean {kernels.mean():6.1f}  p95 {np.percentile(kernels, 95):6.1f}  "
          f"max {kernels.max()}")
    print(f"  peak device memory (MiB)   mean {peak.mean():6.1f}  p95 {np.percentile(peak, 95):6.1f}  "
          f"max {peak.max():.1f}")
    print(f"  host->device copies        mean {uploads.mean():6.1f}  (blocking: "
          f"{sum(not u[3] for r in recs for u in r.uploads)}); device values read back: "
          f"{sum(len(r.readbacks) for r in recs)}")
    common = sum((r.kernels for r in recs), Counter()).most_common(8)
    print("  most launched: " + ", ".join(f"{k.replace('aten.', '')} {v / len(recs):.1f}" for k, v in common))


if __name__ == "__main__":
    main()
