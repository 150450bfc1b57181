"""Seeding and RNG state, JSON logging (TensorBoard scalars, JSON lines) and atomic file writes.

Nothing here knows a process group, a model or a checkpoint's layout (distributed.py and checkpoint.py own those).
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
from typing import Any, BinaryIO, Callable, Iterator, Mapping

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng_state() -> dict:
    """This process's RNG states, as tensors and plain python types (loadable with weights_only=True)."""
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                       "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Inverse of capture_rng_state."""
    torch.set_rng_state(state["torch"])
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def item_seed(*keys: int) -> int:
    """A well-mixed 64-bit seed from non-negative integers (e.g. run seed, epoch, video index)."""
    words = np.random.SeedSequence([k % 2**63 for k in keys]).generate_state(2, np.uint64)
    return int(words[0] >> np.uint64(1))


@contextlib.contextmanager
def seeded_rngs(seed: int) -> Iterator[None]:
    """Python's, numpy's and torch's (CPU) global generators seeded with ``seed`` inside the block and restored after
    it: code that draws from the global generators (timm's RandAugment, RandomErasing) becomes a function of
    ``seed``, and the caller's streams are left as they were."""
    py, np_state, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)  # the CPU generator only: a device's stream is not touched
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(np_state)
        torch.set_rng_state(cpu)


class TensorboardLogger:
    """Thin SummaryWriter wrapper; created on rank 0 only."""

    def __init__(self, log_dir: str):
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(log_dir=log_dir)

    def log(self, scalars: Mapping[str, float], step: int, head: str) -> None:
        for k, v in scalars.items():
            if v is not None:
                self.writer.add_scalar(f"{head}/{k}", float(v), step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def peak_memory_gib(device: torch.device) -> float:
    """Peak memory so far in GiB: tensors allocated on a CUDA device, else the process's peak resident set (CPU)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def to_jsonable(obj: Any) -> Any:
    """Plain python types for JSON and weights_only checkpoints (tuples -> lists, tensors/arrays -> lists)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


def append_json_line(path: str, record: Mapping) -> None:
    """Append one JSON line and fsync it (it must be on disk before the checkpoint that follows it)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(to_jsonable(record)) + "\n")
        f.flush()
        os.fsync(f.fileno())


def keep_json_lines(path: str, keep: Callable[[dict], bool]) -> int:
    """Rewrite a JSON-lines file (atomically) with the records ``keep`` accepts; a line that does not parse (cut
    by a kill) is dropped too. Returns the number of lines dropped (0: the file is left untouched)."""
    if not os.path.isfile(path):
        return 0
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and keep(record):
            kept.append(line)
    if len(kept) < len(lines):
        atomic_write_bytes(path, "".join(x + "\n" for x in kept).encode())
    return len(lines) - len(kept)


def write_json(path: str, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write_bytes(path, (json.dumps(to_jsonable(obj), indent=2) + "\n").encode())


def atomic_write(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Run write(f) on a temporary file in the same folder, fsync, then rename: readers see the old or the new file."""
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write bytes atomically (see atomic_write)."""
    atomic_write(path, lambda f: f.write(data))


def _fsync_dir(d: str) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def link_or_copy(src: str, dst: str) -> None:
    """Make ``dst`` the same file as ``src`` atomically: a hard link (no extra disk, instant), or a copy where the
    file system has none. A later atomic rewrite of ``src`` leaves ``dst`` as it was."""
    tmp = f"{dst}.tmp.{os.getpid()}"
    try:
        try:
            os.link(src, tmp)
        except OSError:
            with open(src, "rb") as source:
                atomic_write(tmp, lambda f: shutil.copyfileobj(source, f))
        os.replace(tmp, dst)
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)
    _fsync_dir(os.path.dirname(os.path.abspath(dst)))
