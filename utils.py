"""Training utilities: distributed setup, seeding and RNG state, stop signals, schedules, logging, atomic file
writes and the run folder's lock.

Nothing here knows a model's internals or a checkpoint's layout (checkpoint.py owns those).
"""
from __future__ import annotations

import builtins
import contextlib
import datetime
import glob
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, BinaryIO, Callable, Iterator, Mapping, Sequence

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
# Stop signals (preemption, scancel, time limit, Ctrl-C)
# ---------------------------------------------------------------------------------------------------------------------


def parse_signal(name: str) -> signal.Signals:
    """'USR1', 'SIGUSR1' or '10' -> signal.SIGUSR1; ValueError naming the accepted forms otherwise."""
    text = name.strip().upper()
    try:
        return signal.Signals(int(text)) if text.isdigit() else signal.Signals[text if text.startswith("SIG")
                                                                               else "SIG" + text]
    except (KeyError, ValueError):
        raise ValueError(f"unknown signal {name!r}: give a name such as USR1, SIGUSR2, HUP, or a number") from None


class StopSignal:
    """Turns SIGTERM, the extra ``signals`` (e.g. SIGUSR1 sent before a time limit) and a first SIGINT into a request
    to stop after the current optimizer step; a second SIGINT aborts at once (KeyboardInterrupt). Use as a context
    manager in the main thread: the previous handlers come back on exit.

    requested() is what the training loop asks after every step. In a distributed run every rank must call it the
    same number of times, and all get the same answer: each call all-reduces this rank's flag on a CPU (gloo) group
    without waiting for it and returns the previous call's result, so a signal that reached any rank stops all of
    them at the same step, one step later, with no host-device synchronisation. requested(now=True) is a blocking
    check (between epochs).
    """

    def __init__(self, signals: Sequence[signal.Signals] = ()):
        self.signals = list(dict.fromkeys([signal.SIGTERM, *signals, signal.SIGINT]))
        self.received: str | None = None  # the first signal this process got
        self._previous: dict = {}
        self._group = dist.new_group(backend="gloo") if is_dist() else None
        self._pending: tuple | None = None  # (work, buffer) of the last all-reduce

    def __enter__(self) -> "StopSignal":
        for s in self.signals:
            self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        if self._pending is not None and exc[0] is None:
            self._pending[0].wait()
        self._pending = None

    def _handle(self, signum: int, frame) -> None:  # no printing here: the signal may interrupt a print
        if signum == signal.SIGINT and self.received == "SIGINT":
            raise KeyboardInterrupt("second Ctrl-C: aborting without saving")
        if self.received is None:
            self.received = signal.Signals(signum).name

    def _reduce(self, async_op: bool):
        buf = torch.tensor([1.0 if self.received else 0.0])
        return dist.all_reduce(buf, op=dist.ReduceOp.MAX, group=self._group, async_op=async_op), buf

    def requested(self, now: bool = False) -> bool:
        """Whether a stop signal reached this process (single process) or any rank (distributed; see the class)."""
        if self._group is None:
            return self.received is not None
        stop = False
        if self._pending is not None:
            work, buf = self._pending
            work.wait()
            stop = bool(buf.item())
            self._pending = None
        if now:
            _, buf = self._reduce(async_op=False)
            return stop or bool(buf.item())
        self._pending = self._reduce(async_op=True)
        return stop


def ignore_stop_signals(signals: Sequence[int], worker_id: int | None = None) -> None:
    """DataLoader worker_init_fn: workers ignore the stop signals, which a scheduler sends to every process of the
    job, so that only the main process acts on them (a worker killed by SIGTERM would crash the loader)."""
    for s in signals:
        signal.signal(s, signal.SIG_IGN)


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


TEMP_FILE = re.compile(r".+\.tmp\.\d+")  # atomic_write's temporary files: <name>.tmp.<pid>


def remove_stale_temp_files(folder: str) -> list[str]:
    """Delete atomic_write's leftovers (<name>.tmp.<pid>, left by a killed run) in ``folder``; call while holding
    its RunLock, so no live writer owns them. Returns the removed paths (printed with their sizes)."""
    removed = []
    for path in sorted(glob.glob(os.path.join(glob.escape(folder), "*.tmp.*"))):
        if TEMP_FILE.fullmatch(os.path.basename(path)) and os.path.isfile(path):
            size = os.path.getsize(path)
            os.remove(path)
            removed.append(path)
            print(f"Removed {path!r} ({size / 2**20:.1f} MiB), a temporary file left by an interrupted write",
                  flush=True)
    return removed


# ---------------------------------------------------------------------------------------------------------------------
# The run folder's lock
# ---------------------------------------------------------------------------------------------------------------------


class RunLock:
    """``folder/run.lock`` while a run uses the folder: {host, pid, started, slurm_job_id, command}, refreshed
    (mtime) every ``heartbeat_s`` seconds by a thread.

    A second run into a folder with a live lock stops with a message naming the owner. A lock is stale, and taken
    over with a warning, when its process is gone (same host), when it was left by an earlier start of this SLURM
    job (a requeue keeps the job id), or when it has not been refreshed for ``stale_after_s`` seconds (its owner
    died on another host). Rank 0 holds it; every rank gets the same verdict. An empty folder name: no lock.
    """

    NAME = "run.lock"

    def __init__(self, folder: str, heartbeat_s: float = 60.0, stale_after_s: float = 600.0):
        self.folder, self.heartbeat_s, self.stale_after_s = folder, heartbeat_s, stale_after_s
        self.path = os.path.join(folder, self.NAME) if folder else None
        self.owner = {"host": socket.gethostname(), "pid": os.getpid(),
                      "started": datetime.datetime.now().isoformat(timespec="seconds"),
                      "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "command": " ".join(sys.argv)}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "RunLock":
        error = None
        if self.path and is_main_process():
            os.makedirs(self.folder, exist_ok=True)
            error = self._acquire()
        if is_dist():
            verdict = [error]
            dist.broadcast_object_list(verdict, src=0)
            error = verdict[0]
        if error:
            raise SystemExit(f"error: {error}")
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        if self._read() == self.owner:
            os.remove(self.path)

    def _read(self) -> dict | None:
        try:
            with open(self.path, encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def stale_reason(self, info: dict | None, age_s: float) -> str | None:
        """Why the lock described by ``info`` (None: unreadable), last refreshed ``age_s`` seconds ago, is stale;
        None when its owner may be alive."""
        if info is None:
            return "it is unreadable"
        if info.get("slurm_job_id") and info["slurm_job_id"] == self.owner["slurm_job_id"]:
            return f"it was left by an earlier start of SLURM job {info['slurm_job_id']} (requeued)"
        if age_s > self.stale_after_s:
            return f"it was last refreshed {age_s:.0f} s ago (a live run refreshes it every {self.heartbeat_s:.0f} s)"
        if info.get("host") == self.owner["host"]:
            try:
                os.kill(int(info.get("pid", -1)), 0)
            except ProcessLookupError:
                return f"its process {info.get('pid')} on this host has exited"
            except (PermissionError, ValueError, OverflowError):
                pass
        return None

    def _acquire(self) -> str | None:
        for attempt in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                info = self._read()
                try:
                    age = time.time() - os.path.getmtime(self.path)
                except OSError:
                    continue  # removed meanwhile: try again
                reason = self.stale_reason(info, age)
                if reason is None or attempt:
                    who = (f"{info.get('host')} pid {info.get('pid')} (started {info.get('started')}, command: "
                           f"{info.get('command')})") if info else "another run"
                    return (f"--output_dir {self.folder!r} is in use by {who}: its lock {self.path!r} is live. Use "
                            f"another --output_dir, or wait for that run to end; if no run uses the folder, delete "
                            f"the lock file")
                print(f"WARNING: taking over the stale lock {self.path!r} ({reason}): {info}", flush=True)
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self.path)
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self.owner, f)
            self._thread = threading.Thread(target=self._heartbeat, name="run-lock-heartbeat", daemon=True)
            self._thread.start()
            return None
        return f"cannot create the lock {self.path!r}"

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            with contextlib.suppress(OSError):
                os.utime(self.path)
