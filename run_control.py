"""Whether a run goes on: stop signals (preemption, scancel, a time limit, Ctrl-C), the output folder's lock and the
leftovers of a killed run, the health and divergence checks of an epoch, and the exit status of a stopped run."""
from __future__ import annotations

import atexit
import contextlib
import datetime
import errno
import glob
import json
import math
import multiprocessing
import os
import re
import signal
import socket
import sys
import threading
import time
import uuid
from typing import Sequence

import torch
import torch.distributed as dist

import utils
from distributed import is_dist, is_main_process

EXIT_PREEMPTED = 75  # exit status after a stop signal: the state is saved, rerunning the command continues it
EXIT_DIVERGED = 65  # exit status of a diverged run (non-finite loss or gradient): rerunning it diverges again


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
    check (between epochs). A rank that does not answer for ``timeout_min`` minutes fails the waiting ones.
    """

    def __init__(self, signals: Sequence[signal.Signals] = (), timeout_min: float | None = None):
        self.signals = list(dict.fromkeys([signal.SIGTERM, *signals, signal.SIGINT]))
        self.received: str | None = None  # the first signal this process got
        self._previous: dict = {}
        timeout = datetime.timedelta(minutes=timeout_min) if timeout_min else None  # None: gloo's default
        self._group = dist.new_group(backend="gloo", timeout=timeout) if is_dist() else None
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


_END_WORKERS_REGISTERED = False


def end_workers_at_exit() -> None:
    """Make sure the process can exit while DataLoader workers are alive (register once, in the main process).

    Python ends daemonic children at exit with SIGTERM and waits for them, but the workers ignore SIGTERM
    (ignore_stop_signals), so an error raised through a loader (a bad video) would leave the run hanging at exit.
    The handler runs before multiprocessing's own: it puts SIGCHLD back to its default (torch's loader handler would
    replace the worker's error with "worker killed by signal") and SIGKILLs and reaps the live workers."""
    global _END_WORKERS_REGISTERED
    if not _END_WORKERS_REGISTERED:
        atexit.register(_kill_daemonic_children)
        _END_WORKERS_REGISTERED = True


def _kill_daemonic_children() -> None:
    """end_workers_at_exit's handler."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for child in multiprocessing.active_children():
        if child.daemon:
            child.kill()
            child.join()


TEMP_FILE = re.compile(r".+\.tmp\.\d+")  # utils.atomic_write's temporary files: <name>.tmp.<pid>


def remove_stale_temp_files(folder: str) -> list[str]:
    """Delete utils.atomic_write's leftovers (<name>.tmp.<pid>, left by a killed run) in ``folder``; call while holding
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


class RunLock:
    """``folder/run.lock`` while a run uses the folder: {host, pid, started, slurm_job_id, command, token, beat,
    heartbeat_s}. A thread of the owner rewrites it every ``heartbeat_s`` seconds with ``beat`` one higher (write a
    temporary file, then rename it over the lock: a reader sees a whole lock, never a half-written one).

    A second run into a folder with a live lock stops with a message naming the owner. A lock is stale, and taken
    over with a warning, only when its owner is gone: on this host, its process has exited; on another host, its
    ``beat`` did not change for a little over one of its heartbeat periods (watched from here; no clock is compared,
    so a suspended owner or clock skew between hosts never decides). A requeue of a SLURM job (same job id) is
    judged the same way. A lock that cannot be read is never taken. The lock is created with its content in place
    (a temporary file hard-linked to the lock name). Rank 0 holds it; every rank gets the same verdict. An empty
    folder name: no lock.
    """

    NAME = "run.lock"

    def __init__(self, folder: str, heartbeat_s: float = 30.0):
        self.folder, self.heartbeat_s = folder, heartbeat_s
        self.path = os.path.join(folder, self.NAME) if folder else None
        self.owner = {"host": socket.gethostname(), "pid": os.getpid(),
                      "started": datetime.datetime.now().isoformat(timespec="seconds"),
                      "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "command": " ".join(sys.argv),
                      "token": uuid.uuid4().hex, "beat": 0, "heartbeat_s": heartbeat_s}
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
        if self._is_mine():
            os.remove(self.path)

    def _read(self) -> tuple[bytes | None, dict | None]:
        """(raw bytes, the owner's fields) of the lock; (None, None) when there is no lock, (raw, None) when it is
        not a lock this code wrote."""
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return None, None
        try:
            info = json.loads(raw)
        except ValueError:
            return raw, None
        return raw, info if isinstance(info, dict) and isinstance(info.get("host"), str) and \
            isinstance(info.get("pid"), int) else None

    def _is_mine(self) -> bool:
        info = self._read()[1]
        return info is not None and info.get("token") == self.owner["token"]

    def _create(self, content: dict) -> None:
        """Write ``content`` to a temporary file, then hard-link it to the lock name (FileExistsError when a lock
        exists): the lock never exists without its content. (The heartbeat rewrites it with utils.atomic_write.)"""
        tmp = f"{self.path}.{self.owner['token']}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(content, f)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                raise
            except OSError as e:  # a file system without hard links: exclusive create, then write
                if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                with open(self.path, "x", encoding="utf-8") as f:
                    json.dump(content, f)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)

    def stale_reason(self, info: dict, raw: bytes) -> str | None:
        """Why the lock ``info`` (read as ``raw``) has no owner any more; None when its owner is alive. On another
        host this watches the lock for a little over one of the owner's heartbeat periods."""
        requeue = (f" (an earlier start of SLURM job {info['slurm_job_id']}, requeued)"
                   if info.get("slurm_job_id") and info["slurm_job_id"] == self.owner["slurm_job_id"] else "")
        if info["host"] == self.owner["host"]:
            try:
                os.kill(info["pid"], 0)
            except ProcessLookupError:
                return f"its process {info['pid']} on this host has exited{requeue}"
            except (PermissionError, OverflowError, ValueError):
                pass  # another user's live process (or an impossible pid): not ours to take
            return None
        period = info.get("heartbeat_s")
        period = min(max(float(period), 0.05), 600.0) if isinstance(period, (int, float)) else self.heartbeat_s
        wait = max(1.5 * period, period + 1.0)
        print(f"{self.path} is held by {info['host']} pid {info['pid']}: watching its heartbeat for {wait:.1f} s",
              flush=True)
        time.sleep(wait)
        if self._read()[0] != raw:
            return None
        return f"its heartbeat (every {period:g} s from {info['host']}) did not advance in {wait:.1f} s{requeue}"

    def _acquire(self) -> str | None:
        for _ in range(3):
            try:
                self._create(self.owner)
            except FileExistsError:
                raw, info = self._read()
                if raw is None:
                    continue  # removed meanwhile: try again
                if info is None:
                    return (f"--output_dir {self.folder!r} holds a lock {self.path!r} that cannot be read (not a "
                            f"run.lock of this code, or corrupt), so whether a run uses the folder is unknown. If no "
                            f"run uses it, delete the lock file and rerun")
                reason = self.stale_reason(info, raw)
                if reason is None:
                    return (f"--output_dir {self.folder!r} is in use by {info['host']} pid {info['pid']} (started "
                            f"{info.get('started')}, command: {info.get('command')}): its lock {self.path!r} is "
                            f"live. Use another --output_dir, or wait for that run to end; if no run uses the "
                            f"folder, delete the lock file")
                if self._read()[0] != raw:
                    continue  # taken or refreshed meanwhile: judge again
                print(f"WARNING: taking over the stale lock {self.path!r} ({reason}): {info}", flush=True)
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self.path)
                continue
            self._thread = threading.Thread(target=self._heartbeat, name="run-lock-heartbeat", daemon=True)
            self._thread.start()
            return None
        return f"cannot take the lock {self.path!r}: other runs are taking it at the same time"

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            if not self._is_mine():
                print(f"WARNING: the lock {self.path!r} is no longer this run's (another run took it over): "
                      f"stopping its heartbeat", file=sys.stderr, flush=True)
                return
            self.owner["beat"] += 1
            with contextlib.suppress(OSError):
                utils.atomic_write_bytes(self.path, json.dumps(self.owner).encode())


def stop_signals(exit_signal: str) -> list[int]:
    """The signals that stop a run cleanly (StopSignal): SIGTERM, ``exit_signal`` (--exit_signal), SIGINT."""
    return [signal.SIGTERM, parse_signal(exit_signal), signal.SIGINT]


def health_problems(record: dict) -> list[str]:
    """Why an epoch's state must not become a checkpoint: optimizer steps that applied a non-finite gradient (an
    fp16 GradScaler skips those; bf16/fp32 apply them), non-finite training losses, or a non-finite validation
    loss."""
    problems = []
    if record.get("train_nonfinite_steps"):
        problems.append(f"{record['train_nonfinite_steps']} optimizer steps applied a non-finite gradient "
                        f"(grad_norm inf/NaN)")
    if record.get("train_nonfinite_losses"):
        problems.append(f"{record['train_nonfinite_losses']} training losses were not finite")
    problems += [f"{k} {record[k]}" for k in ("val_loss", "val_ema_loss") if k in record
                 and not math.isfinite(record[k])]
    return problems


def stop_diverged(where: str, problems: list[str], kept: str, last_good: str | None, last_good_epoch: int) -> None:
    """Stop a diverged run with EXIT_DIVERGED. ``where``: e.g. "epoch 3 (at step 120 of 500)"; ``kept``: where its
    state was kept (checkpoint-N.bad.pth, never resumed) or why it was not; the message names the last good
    checkpoint and what to change."""
    good = f"{last_good} (after epoch {last_good_epoch})" if last_good else "none (a rerun starts over)"
    print(f"error: {where} diverged: {'; '.join(problems)}. Its state is not saved as a checkpoint to resume "
          f"({kept}). The last good checkpoint is {good}; a rerun resumes it and, the run being deterministic, "
          f"diverges again: lower --lr, set --clip_grad, or train with --amp bf16 or none. Exit status "
          f"{EXIT_DIVERGED}.", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_DIVERGED)


def stop_run(stop: StopSignal, paths: list[str]) -> None:
    """Exit with EXIT_PREEMPTED after a stop signal, saying what was saved."""
    saved = f"saved {', '.join(paths)}" if paths else "nothing saved (no --output_dir, or --no_save_ckpt)"
    print(f"Stopping on {stop.received or 'a signal received by another rank'}: {saved}; exit status "
          f"{EXIT_PREEMPTED}. Rerun the same command to continue.", flush=True)
    raise SystemExit(EXIT_PREEMPTED)


def stop_unsaved(stop: StopSignal, error: str, previous: str | None) -> None:
    """After a stop signal whose checkpoint could not be written (``error``, e.g. a full disk): exit with
    EXIT_PREEMPTED when an intact ``previous`` checkpoint remains (a rerun continues from it, redoing the steps
    since), else (None) stop with the error (exit status 1)."""
    who = stop.received or "a signal received by another rank"
    if previous is None:
        raise SystemExit(f"error: stopping on {who}: {error}; no intact earlier checkpoint to continue from")
    print(f"Stopping on {who}: {error}. The previous checkpoint {previous} is intact: rerunning the same command "
          f"continues from it (redoing the steps since); exit status {EXIT_PREEMPTED}.", flush=True)
    raise SystemExit(EXIT_PREEMPTED)
