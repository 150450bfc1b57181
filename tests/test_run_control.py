"""run_control: stop signals, stale temporary files, the run folder's lock, health checks and the stop exits."""
import contextlib
import datetime
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

import run_control

from runs import ROOT


@pytest.mark.parametrize("text, sig", [("USR1", "SIGUSR1"), ("sigusr2", "SIGUSR2"), ("HUP", "SIGHUP"),
                                       ("15", "SIGTERM")])
def test_parse_signal(text, sig):
    assert run_control.parse_signal(text).name == sig


def test_parse_signal_refuses_unknown_names():
    with pytest.raises(ValueError, match="unknown signal 'USR9'"):
        run_control.parse_signal("USR9")


def test_stop_signal_requests_a_stop_and_a_second_ctrl_c_aborts():
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)}
    with run_control.StopSignal([signal.SIGUSR2]) as stop:
        assert not stop.requested()
        os.kill(os.getpid(), signal.SIGUSR2)
        assert stop.requested() and stop.received == "SIGUSR2"
        os.kill(os.getpid(), signal.SIGTERM)  # a later signal changes nothing
        assert stop.received == "SIGUSR2"
    with run_control.StopSignal() as stop:
        os.kill(os.getpid(), signal.SIGINT)  # first Ctrl-C: stop cleanly
        assert stop.requested() and stop.requested(now=True) and stop.received == "SIGINT"
        with pytest.raises(KeyboardInterrupt, match="second Ctrl-C"):
            os.kill(os.getpid(), signal.SIGINT)
    assert {s: signal.getsignal(s) for s in before} == before  # handlers given back


def test_remove_stale_temp_files(tmp_path):
    for name in ("checkpoint-3.pth.tmp.12345", "log.txt.tmp.7", "checkpoint-3.pth", "notes.tmp.txt", "x.tmp.1a"):
        (tmp_path / name).write_bytes(b"x" * 10)
    removed = run_control.remove_stale_temp_files(str(tmp_path))
    assert sorted(os.path.basename(p) for p in removed) == ["checkpoint-3.pth.tmp.12345", "log.txt.tmp.7"]
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-3.pth", "notes.tmp.txt", "x.tmp.1a"]


def _write_lock(folder, **fields):
    info = {"host": "elsewhere", "pid": 1, "started": "then", "slurm_job_id": None, "command": "train", "token": "t",
            "beat": 0, "heartbeat_s": 0.1, **fields}
    (folder / "run.lock").write_text(json.dumps(info))
    return info


def test_run_lock_refuses_a_live_owner_and_takes_over_stale_locks(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    here = socket.gethostname()
    _write_lock(tmp_path, host=here, pid=os.getpid())  # a live process on this host
    with pytest.raises(SystemExit, match=rf"in use by {re.escape(here)} pid {os.getpid()} .*command: train"):
        run_control.RunLock(str(tmp_path)).__enter__()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    for fields, reason in ((dict(host=here, pid=int(dead.stdout)), f"its process {int(dead.stdout)} on this host has "
                                                                   f"exited"),
                           (dict(), "its heartbeat (every 0.1 s from elsewhere) did not advance in 1.1 s")):
        _write_lock(tmp_path, **fields)
        with run_control.RunLock(str(tmp_path)) as lock:
            assert f"taking over the stale lock {str(tmp_path / 'run.lock')!r} ({reason})" in capsys.readouterr().out
            assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()
        assert not (tmp_path / "run.lock").exists() and lock.path.endswith("run.lock")


@pytest.mark.parametrize("content", ["", "{", "[1, 2]", '{"pid": 3}'])
def test_an_unreadable_lock_is_not_taken(tmp_path, content):
    (tmp_path / "run.lock").write_text(content)
    with pytest.raises(SystemExit, match=r"holds a lock .*run.lock' that cannot be read .* If no run uses it, delete "
                                         r"the lock file and rerun"):
        run_control.RunLock(str(tmp_path)).__enter__()
    assert (tmp_path / "run.lock").read_text() == content


def test_the_lock_appears_with_its_content_and_the_heartbeat_rewrites_it_whole(tmp_path, monkeypatch):
    """Created by hard-linking a complete file to the lock name; refreshed by renaming a complete file over it: a
    reader never finds the lock empty or half written."""
    lock_path, linked, real_link = tmp_path / "new" / "run.lock", [], os.link

    def link(src, dst):
        assert not os.path.exists(dst)
        linked.append(json.loads(open(src).read()))
        real_link(src, dst)
    monkeypatch.setattr(run_control.os, "link", link)
    reads, stop = [], threading.Event()

    def reader():
        while not stop.is_set():
            if lock_path.exists():
                with contextlib.suppress(FileNotFoundError):
                    reads.append(lock_path.read_text())
    thread = threading.Thread(target=reader)
    thread.start()
    try:
        with run_control.RunLock(str(tmp_path / "new"), heartbeat_s=0.01) as lock:
            time.sleep(0.5)
    finally:
        stop.set()
        thread.join()
    beats = [json.loads(r)["beat"] for r in reads]  # every read is a whole lock
    assert linked == [{**lock.owner, "beat": 0}] and beats == sorted(beats) and beats[-1] >= 5
    assert not lock_path.exists() and os.listdir(tmp_path / "new") == []
    with run_control.RunLock(""):  # no output_dir: nothing to lock
        pass


OWNER = """
import socket, sys, time
sys.path.insert(0, {root!r})
if sys.argv[2]:
    socket.gethostname = lambda: sys.argv[2]
import run_control
with run_control.RunLock(sys.argv[1], heartbeat_s=float(sys.argv[3])):
    print("locked", flush=True)
    time.sleep(120)
"""


@contextlib.contextmanager
def _owner(folder, host: str = "", heartbeat_s: float = 0.1):
    """Another process holding ``folder``'s lock (as if on ``host``, when given), killed on exit."""
    proc = subprocess.Popen([sys.executable, "-c", OWNER.format(root=ROOT), str(folder), host, str(heartbeat_s)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "locked\n"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_a_suspended_owner_on_this_host_keeps_its_lock_even_for_the_same_slurm_job(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    with _owner(tmp_path) as owner:
        os.kill(owner.pid, signal.SIGSTOP)  # suspended: its heartbeat stops
        time.sleep(0.5)
        before = (tmp_path / "run.lock").read_text()
        for job in ("78", "77"):  # another job; the same job (not a requeue while its process lives)
            monkeypatch.setenv("SLURM_JOB_ID", job)
            with pytest.raises(SystemExit, match=rf"in use by .* pid {owner.pid} "):
                run_control.RunLock(str(tmp_path), heartbeat_s=0.1).__enter__()
        assert (tmp_path / "run.lock").read_text() == before
    with run_control.RunLock(str(tmp_path)):  # its process is gone now: a requeue of job 77
        assert (f"its process {owner.pid} on this host has exited (an earlier start of SLURM job 77, requeued)" in
                capsys.readouterr().out)


def test_an_owner_on_another_host_is_judged_by_its_heartbeat(tmp_path, capsys):
    with _owner(tmp_path, host="elsewhere", heartbeat_s=0.2) as owner:
        with pytest.raises(SystemExit, match=rf"in use by elsewhere pid {owner.pid} "):
            run_control.RunLock(str(tmp_path)).__enter__()  # its heartbeat advanced while watched
        assert "watching its heartbeat for 1.2 s" in capsys.readouterr().out
        os.kill(owner.pid, signal.SIGSTOP)  # frozen (or its host is gone)
        with run_control.RunLock(str(tmp_path)) as lock:
            assert "its heartbeat (every 0.2 s from elsewhere) did not advance in 1.2 s" in capsys.readouterr().out
            os.kill(owner.pid, signal.SIGCONT)  # the old owner wakes up: it leaves the new lock alone
            time.sleep(1.0)
            assert json.loads((tmp_path / "run.lock").read_text())["token"] == lock.owner["token"]


def test_stop_signal_collectives_wait_dist_timeout(monkeypatch):
    groups = []
    monkeypatch.setattr(run_control, "is_dist", lambda: True)
    monkeypatch.setattr(run_control.dist, "new_group", lambda **kw: groups.append(kw))
    run_control.StopSignal(timeout_min=2.5)
    assert groups == [{"backend": "gloo", "timeout": datetime.timedelta(minutes=2.5)}]


EXIT_WITH_A_WORKER = """
import multiprocessing, signal, sys, time
sys.path.insert(0, {root!r})
import run_control


def worker():
    run_control.ignore_stop_signals([signal.SIGTERM])
    time.sleep(120)


def a_loader_would_raise(*_):
    raise RuntimeError("SIGCHLD handler ran at exit")


if __name__ == "__main__":
    run_control.end_workers_at_exit()
    child = multiprocessing.Process(target=worker, daemon=True)
    child.start()
    time.sleep(1.0)  # the worker now ignores SIGTERM
    signal.signal(signal.SIGCHLD, a_loader_would_raise)  # as torch's DataLoader does
    print(child.pid, flush=True)
    raise SystemExit("error: a bad video")
"""


def test_the_process_exits_although_a_worker_ignores_sigterm(tmp_path):
    """Python ends daemonic children at exit with SIGTERM and waits for them: a worker that ignores it would hang the
    exit. end_workers_at_exit's handler kills it first, without letting a SIGCHLD handler replace the error."""
    script = tmp_path / "job.py"
    script.write_text(EXIT_WITH_A_WORKER.format(root=ROOT))
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=30)
    assert res.returncode == 1 and res.stderr.strip().splitlines() == ["error: a bad video"], res.stderr
    with pytest.raises(ProcessLookupError):
        os.kill(int(res.stdout), 0)  # the worker is gone too
