"""run_control: stop signals, stale temporary files, the run folder's lock, health checks and the stop exits."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

import run_control


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
    info = {"host": "elsewhere", "pid": 1, "started": "then", "slurm_job_id": None, "command": "train", **fields}
    (folder / "run.lock").write_text(json.dumps(info))
    return info


def test_run_lock_refuses_a_live_owner_and_takes_over_stale_locks(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    here = socket.gethostname()
    _write_lock(tmp_path, host=here, pid=os.getpid())  # a live process on this host
    with pytest.raises(SystemExit, match=rf"in use by {re.escape(here)} pid {os.getpid()} .*command: train"):
        run_control.RunLock(str(tmp_path)).__enter__()
    _write_lock(tmp_path)  # another host, refreshed just now
    with pytest.raises(SystemExit, match="in use by elsewhere pid 1"):
        run_control.RunLock(str(tmp_path)).__enter__()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = [dict(host=here, pid=int(dead.stdout)), dict(slurm_job_id="77"), dict()]
    for fields, env, age in zip(stale, ({}, {"SLURM_JOB_ID": "77"}, {}), (0, 0, 3600)):
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        _write_lock(tmp_path, **fields)
        os.utime(tmp_path / "run.lock", (os.path.getmtime(tmp_path / "run.lock") - age,) * 2)
        with run_control.RunLock(str(tmp_path)) as lock:
            assert "taking over the stale lock" in capsys.readouterr().out
            assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()
        assert not (tmp_path / "run.lock").exists() and lock.path.endswith("run.lock")


def test_run_lock_heartbeat_and_empty_folder(tmp_path):
    with run_control.RunLock(str(tmp_path / "new"), heartbeat_s=0.05):
        lock = tmp_path / "new" / "run.lock"
        os.utime(lock, (0, 0))
        time.sleep(0.3)
        assert time.time() - os.path.getmtime(lock) < 5  # refreshed by the heartbeat thread
    assert not lock.exists()
    with run_control.RunLock(""):  # no output_dir: nothing to lock
        pass
