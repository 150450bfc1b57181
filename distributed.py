"""Process groups: the launcher's environment (torchrun, SLURM, OpenMPI, manual), initialisation and cleanup, this
process's rank, and the few collectives the run needs (barrier, sum, gathers to rank 0)."""
from __future__ import annotations

import builtins
import datetime
import os
import re
import subprocess
from typing import Any, Mapping

import torch
import torch.distributed as dist


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

    NCCL on CUDA, gloo on CPU; a collective that waits longer than args.dist_timeout minutes for another rank
    fails the job. Non-zero ranks print only with print(..., force=True).
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
                            timeout=datetime.timedelta(minutes=args.dist_timeout),
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
    """Whether a process group is initialised (a distributed run)."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's rank (0 in a single process)."""
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    """The number of processes (1 in a single process)."""
    return dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    """Whether this is rank 0, the process that writes files."""
    return get_rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if is_dist():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (no-op in a single process)."""
    if is_dist():
        dist.all_reduce(t)
    return t


def cleanup_distributed(wait: bool = True) -> None:
    """Wait for every rank (``wait``; not after an error, when the others may never come), then destroy the process
    group (no-op in a single process)."""
    if is_dist():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def gather_to_main(obj: Any) -> list | None:
    """Every rank's `obj` on rank 0, in rank order (None on the other ranks); [obj] in a single process."""
    if not is_dist():
        return [obj]
    out = [None] * get_world_size() if get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out
