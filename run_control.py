"""Whether a run goes on: stop signals (preemption, scancel, a time limit, Ctrl-C), the output folder's lock and the
leftovers of a killed run, the health and divergence checks of an epoch, and the exit status of a stopped run."""
from __future__ import annotations

import contextlib
import datetime
import glob
import json
import math
import os
import re
import signal
import socket
import sys
import threading
import time
from typing import Sequence

import torch
import torch.distributed as dist

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
