"""Training utilities: distributed setup, seeding and RNG state, schedules, logging, atomic file writes.

Nothing here knows a model's internals or a checkpoint's layout (checkpoint.py owns those).
"""
from __future__ import annotations

import builtins
import datetime
import json
import os
import random
import re
import subprocess
from typing import Any, BinaryIO, Callable, Mapping

import numpy as np
import torch
import torch.distributed as dist

# ---------------------------------------------------------------------------------------------------------------------
# Distributed
# ---------------------------------------------------------------------------------------------------------------------


def resolve_dist_env(environ: Mapping[str, str], dist_on_itp: bool = False, world_size: int = 1,
                     local_rank: int = -1) -> dict:
    """Work out (rank, world_size, local_rank, master_addr) from a launcher's environment.

    Order: OpenMPI (--dist_on_itp), torchrun/torch.distributed.launch (RANK, WORLD_SIZE, LOCAL_RANK), SLURM srun
    (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID), a manual launch (--world_size N --local_rank R with a tcp:// url),
    else a single process. Returned master_addr is None when the environment already provides it.
    """
    if dist_on_itp:
        rank, world, local = (int(environ[k]) for k in
                              ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"))
        return dict(rank=rank, world_size=world, local_rank=local, master_addr=None)
    if "RANK" in environ and "WORLD_SIZE" in environ:
        return dict(rank=int(environ["RANK"]), world_size=int(environ["WORLD_SIZE"]),
                    local_rank=int(environ.get("LOCAL_RANK", 0)), master_addr=None)
    if int(environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in environ:
        master = environ.get("MASTER_ADDR") or _slurm_first_host(environ.get("SLURM_JOB_NODELIST", ""))
        return dict(rank=int(environ["SLURM_PROCID"]), world_size=int(environ["SLURM_NTASKS"]),
                    local_rank=int(environ.get("SLURM_LOCALID", 0)), master_addr=master)
    if world_size > 1:
        if local_rank < 0:
            raise ValueError(f"--world_size {world_size} without a launcher needs --local_rank for each process")
        return dict(rank=local_rank, world_size=world_size, local_rank=local_rank, master_addr=None)
    return dict(rank=0, world_size=1, local_rank=0, master_addr=None)


def _slurm_first_host(nodelist: str) -> str:
    """First host name of a SLURM node list (via scontrol when available, else a simple parse)."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                             check=True, timeout=30).stdout.split()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError):
        pass
    m = re.match(r"([^\[,]+)(?:\[(\d+))?", nodelist)
    if not m:
        raise RuntimeError(f"cannot find the master host in SLURM_JOB_NODELIST={nodelist!r}; set MASTER_ADDR")
    return m.group(1) + (m.group(2) or "")


def init_distributed(args) -> None:
    """Initialise torch.distributed from the environment (see resolve_dist_env) and set args.rank/world_size/gpu.

    NCCL on CUDA, gloo on CPU. Non-zero ranks print only with print(..., force=True).
    """
    info = resolve_dist_env(os.environ, getattr(args, "dist_on_itp", False), getattr(args, "world_size", 1),
                            getattr(args, "local_rank", -1))
    args.rank, args.world_size, args.gpu = info["rank"], info["world_size"], info["local_rank"]
    args.distributed = args.world_size > 1
    if not args.distributed:
        return
    if info["master_addr"] is not None:
        os.environ.setdefault("MASTER_ADDR", info["master_addr"])
    os.environ.setdefault("MASTER_PORT", "29500")
    if args.dist_url == "env://":
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    cuda = str(args.device).startswith("cuda")
    if cuda:
        check_local_gpu(args.gpu, args.world_size)
        torch.cuda.set_device(args.gpu)
    backend = "nccl" if cuda else "gloo"
    print(f"| distributed init rank {args.rank}/{args.world_size} (local {args.gpu}, {backend}): {args.dist_url}",
          flush=True)
    dist.init_process_group(backend=backend, init_method=args.dist_url, world_size=args.world_size, rank=args.rank,
                            timeout=datetime.timedelta(minutes=30),
                            device_id=torch.device("cuda", args.gpu) if cuda else None)
    dist.barrier()
    _quiet_non_master(args.rank == 0)


def check_local_gpu(local_rank: int, world_size: int) -> None:
    """Stop with a message (not a CUDA error) when this process's local rank has no GPU of its own."""
    visible = torch.cuda.device_count()
    if local_rank >= visible:
        raise SystemExit(f"error: process with local rank {local_rank} (of {world_size} processes) has no GPU: "
                         f"{visible} visible on this node. Start at most {visible} processes per node "
                         f"(torchrun --nproc_per_node / NPROC), or pass --device cpu")


def _quiet_non_master(is_master: bool) -> None:
    builtin_print = builtins.print

    def print_(*a, **kw):
        if is_master or kw.pop("force", False):
            kw.pop("force", None)
            builtin_print(*a, **kw)
    builtins.print = print_


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_dist():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (no-op in a single process)."""
    if is_dist():
        dist.all_reduce(t)
    return t


def cleanup_distributed() -> None:
    if is_dist():
        dist.barrier()
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------------------------------
# Seeding and RNG state
# ---------------------------------------------------------------------------------------------------------------------


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


def gather_to_main(obj: Any) -> list | None:
    """Every rank's `obj` on rank 0, in rank order (None on the other ranks); [obj] in a single process."""
    if not is_dist():
        return [obj]
    out = [None] * get_world_size() if get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def gather_rng_states() -> list[dict] | None:
    """Every rank's RNG state on rank 0 (None on the other ranks); a one-element list in a single process."""
    return gather_to_main(capture_rng_state())


# ---------------------------------------------------------------------------------------------------------------------
# Schedules
# ---------------------------------------------------------------------------------------------------------------------


def cosine_scheduler(base_value: float, final_value: float, epochs: int, niter_per_ep: int,
                     warmup_epochs: int = 0, start_warmup_value: float = 0.0, warmup_steps: int = -1) -> np.ndarray:
    """One value per iteration: linear warmup from start_warmup_value to base_value, then cosine to final_value.

    As VideoMAE's: the W warmup values include both ends (start + i (base - start) / (W - 1)), the cosine starts
    again at base_value and stops one step short of final_value (step i of N: angle pi i / N). warmup_steps > 0
    overrides warmup_epochs; a run shorter than its warmup ends partway up the ramp.
    """
    total = epochs * niter_per_ep
    warmup = warmup_steps if warmup_steps > 0 else warmup_epochs * niter_per_ep
    warm = np.linspace(start_warmup_value, base_value, warmup)[:total]
    n = total - len(warm)
    cos = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * np.arange(n) / max(n, 1)))
    sched = np.concatenate([warm, cos])
    assert len(sched) == total
    return sched


# ---------------------------------------------------------------------------------------------------------------------
# Logging
# ---------------------------------------------------------------------------------------------------------------------


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
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(to_jsonable(record)) + "\n")


def write_json(path: str, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(to_jsonable(obj), indent=2) + "\n").encode())


# ---------------------------------------------------------------------------------------------------------------------
# Atomic files
# ---------------------------------------------------------------------------------------------------------------------


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
