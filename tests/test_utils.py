"""utils: launcher environments, schedules, RNG capture, JSON logs, stop signals, the run folder's lock."""
import json
import math
import os
import random
import re

import numpy as np
import pytest
import torch

import checkpoint
import utils


@pytest.mark.parametrize("env, kw, expect", [
    ({}, {}, (0, 1, 0, None)),
    ({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}, {}, (3, 8, 1, None)),
    ({"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "MASTER_ADDR": "n7"}, {}, (5, 8, 1, "n7")),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, {}, (0, 1, 0, None)),  # interactive allocation: one process
    ({"RANK": "1", "WORLD_SIZE": "2", "SLURM_PROCID": "0", "SLURM_NTASKS": "4"}, {}, (1, 2, 0, None)),  # torchrun wins
    ({"OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "0"},
     {"dist_on_itp": True}, (2, 4, 0, None)),
    ({}, {"world_size": 2, "local_rank": 1}, (1, 2, 1, None)),
])
def test_resolve_dist_env(env, kw, expect):
    got = utils.resolve_dist_env(env, **kw)
    assert (got["rank"], got["world_size"], got["local_rank"], got["master_addr"]) == expect


def test_slurm_master_from_nodelist_without_scontrol(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    env = {"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": "gpu[017-018],cpu3"}
    assert utils.resolve_dist_env(env)["master_addr"] == "gpu017"


def test_manual_world_size_needs_local_rank():
    with pytest.raises(ValueError, match="--local_rank"):
        utils.resolve_dist_env({}, world_size=2)


def test_single_process_init_needs_no_launcher(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "SLURM_NTASKS", "SLURM_PROCID"):
        monkeypatch.delenv(k, raising=False)
    args = type("A", (), dict(dist_on_itp=False, world_size=1, local_rank=-1, device="cpu", dist_url="env://"))()
    utils.init_distributed(args)
    assert (args.rank, args.world_size, args.distributed) == (0, 1, False) and not utils.is_dist()


def test_more_processes_than_gpus_is_an_error_not_a_crash(monkeypatch):
    """torchrun --nproc_per_node 2 on a one-GPU node: rank 1 stops with a message before touching CUDA."""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: pytest.fail("set_device reached"))
    args = type("A", (), dict(dist_on_itp=False, world_size=1, local_rank=-1, device="cuda", dist_url="env://"))()
    with pytest.raises(SystemExit, match=r"local rank 1 \(of 2 processes\) has no GPU: 1 visible on this node\. "
                                         r"Start at most 1 processes per node"):
        utils.init_distributed(args)
    assert not utils.is_dist()


def published_schedule(base, final, epochs, niter, warmup_iters, start):
    """VideoMAE's utils.cosine_scheduler, restated: a linear ramp over warmup_iters values including both ends, then
    base + cosine over the remaining N iterations with angle pi * i / N."""
    ramp = [start + i * (base - start) / (warmup_iters - 1) if warmup_iters > 1 else start
            for i in range(warmup_iters)]
    n = epochs * niter - warmup_iters
    return np.array(ramp + [final + 0.5 * (base - final) * (1 + math.cos(math.pi * i / n)) for i in range(n)])


@pytest.mark.parametrize("kw, warmup_iters", [(dict(warmup_epochs=1), 5), (dict(warmup_epochs=1, warmup_steps=2), 2),
                                              (dict(warmup_steps=1), 1), (dict(), 0)])
def test_cosine_scheduler_is_the_published_schedule(kw, warmup_iters):
    got = utils.cosine_scheduler(1.0, 0.1, epochs=3, niter_per_ep=5, start_warmup_value=0.2, **kw)
    np.testing.assert_allclose(got, published_schedule(1.0, 0.1, 3, 5, warmup_iters, 0.2), rtol=0, atol=1e-12)
    if warmup_iters > 1:
        assert got[warmup_iters - 1] == got[warmup_iters] == 1.0  # the ramp ends on the peak, the cosine starts there


def test_cosine_scheduler_edges():
    np.testing.assert_allclose(utils.cosine_scheduler(0.05, 0.05, 3, 4), 0.05)
    cut = utils.cosine_scheduler(1.0, 0.1, 1, 3, warmup_epochs=5)  # warmup longer than the run: its first steps
    np.testing.assert_allclose(cut, np.linspace(0.0, 1.0, 15)[:3])


def test_rng_state_round_trip_through_weights_only_file(tmp_path):
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    state = utils.capture_rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random())
    path = str(tmp_path / "rng.pth")
    checkpoint.save_checkpoint(path, {"model": {}, "rng": state})
    loaded = checkpoint.safe_load(path)["rng"]
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    utils.restore_rng_state(loaded)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_to_jsonable_and_json_line(tmp_path):
    obj = {"a": (1, 2), "t": torch.tensor([1.5]), "n": np.float32(2.0), "p": tmp_path, "none": None}
    out = utils.to_jsonable(obj)
    assert out == {"a": [1, 2], "t": [1.5], "n": 2.0, "p": str(tmp_path), "none": None}
    utils.append_json_line(str(tmp_path / "log.txt"), {"epoch": 0})
    utils.append_json_line(str(tmp_path / "log.txt"), {"epoch": 1})
    assert (tmp_path / "log.txt").read_text().splitlines() == ['{"epoch": 0}', '{"epoch": 1}']


# torch APIs this code calls, with the release that introduced them (PyTorch docs / release notes)
TORCH_APIS = {"get_total_norm": (2, 6), "safe_globals": (2, 5)}


def test_requirements_torch_bound_covers_the_apis_the_code_calls():
    """requirements.txt's torch>= is at least the newest release among the APIs found in the sources."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sources = "".join(open(os.path.join(d, f)).read() for d, _, files in os.walk(root) if "/tests" not in d
                      and "/." not in d for f in files if f.endswith(".py"))
    used = [v for api, v in TORCH_APIS.items() if api in sources]
    assert (2, 6) in used  # get_total_norm is called: the table is read against the real code
    bound = re.search(r"^torch>=(\d+)\.(\d+)", open(os.path.join(root, "requirements.txt")).read(), re.M)
    assert bound and (int(bound[1]), int(bound[2])) >= max(used)


def test_item_seeds_and_seeded_rngs_leave_the_callers_streams_alone():
    """Draws inside seeded_rngs(s) are a function of s; the global streams continue as if nothing happened."""
    assert len({utils.item_seed(0, e, i) for e in range(3) for i in range(50)}) == 150
    assert utils.item_seed(0, 1, 2) == utils.item_seed(0, 1, 2) != utils.item_seed(1, 1, 2)

    def draws():
        return random.random(), float(np.random.rand()), float(torch.rand(()))
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    expected = draws()
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    with utils.seeded_rngs(utils.item_seed(0, 1, 2)):
        inside = draws()
    assert draws() == expected
    with utils.seeded_rngs(utils.item_seed(0, 1, 2)):
        assert draws() == inside


@pytest.mark.parametrize("text, sig", [("USR1", "SIGUSR1"), ("sigusr2", "SIGUSR2"), ("HUP", "SIGHUP"),
                                       ("15", "SIGTERM")])
def test_parse_signal(text, sig):
    assert utils.parse_signal(text).name == sig


def test_parse_signal_refuses_unknown_names():
    with pytest.raises(ValueError, match="unknown signal 'USR9'"):
        utils.parse_signal("USR9")


def test_stop_signal_requests_a_stop_and_a_second_ctrl_c_aborts():
    import signal
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)}
    with utils.StopSignal([signal.SIGUSR2]) as stop:
        assert not stop.requested()
        os.kill(os.getpid(), signal.SIGUSR2)
        assert stop.requested() and stop.received == "SIGUSR2"
        os.kill(os.getpid(), signal.SIGTERM)  # a later signal changes nothing
        assert stop.received == "SIGUSR2"
    with utils.StopSignal() as stop:
        os.kill(os.getpid(), signal.SIGINT)  # first Ctrl-C: stop cleanly
        assert stop.requested() and stop.requested(now=True) and stop.received == "SIGINT"
        with pytest.raises(KeyboardInterrupt, match="second Ctrl-C"):
            os.kill(os.getpid(), signal.SIGINT)
    assert {s: signal.getsignal(s) for s in before} == before  # handlers given back


def test_keep_json_lines_drops_later_epochs_and_a_cut_line(tmp_path):
    path = str(tmp_path / "log.txt")
    (tmp_path / "log.txt").write_text('{"epoch": 0}\n{"epoch": 1}\n{"epoch": 2}\n{"epo')
    assert utils.keep_json_lines(path, lambda r: r["epoch"] < 2) == 2
    assert (tmp_path / "log.txt").read_text() == '{"epoch": 0}\n{"epoch": 1}\n'
    assert utils.keep_json_lines(path, lambda r: True) == 0 and utils.keep_json_lines(str(tmp_path / "no"), bool) == 0


def test_link_or_copy_survives_a_rewrite_of_the_source(tmp_path, monkeypatch):
    src, dst = str(tmp_path / "last"), str(tmp_path / "best")
    utils.atomic_write_bytes(src, b"epoch 3")
    utils.link_or_copy(src, dst)
    assert os.path.samefile(src, dst)
    utils.atomic_write_bytes(src, b"epoch 4")  # the next epoch's checkpoint-last.pth
    assert open(dst, "rb").read() == b"epoch 3"
    monkeypatch.setattr(os, "link", lambda *a: (_ for _ in ()).throw(OSError("no hard links here")))
    utils.link_or_copy(src, dst)  # a file system without hard links: a copy
    assert open(dst, "rb").read() == b"epoch 4" and not os.path.samefile(src, dst)
    assert sorted(os.listdir(tmp_path)) == ["best", "last"]


def test_remove_stale_temp_files(tmp_path):
    for name in ("checkpoint-3.pth.tmp.12345", "log.txt.tmp.7", "checkpoint-3.pth", "notes.tmp.txt", "x.tmp.1a"):
        (tmp_path / name).write_bytes(b"x" * 10)
    removed = utils.remove_stale_temp_files(str(tmp_path))
    assert sorted(os.path.basename(p) for p in removed) == ["checkpoint-3.pth.tmp.12345", "log.txt.tmp.7"]
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-3.pth", "notes.tmp.txt", "x.tmp.1a"]


def _write_lock(folder, **fields):
    info = {"host": "elsewhere", "pid": 1, "started": "then", "slurm_job_id": None, "command": "train", **fields}
    (folder / "run.lock").write_text(json.dumps(info))
    return info


def test_run_lock_refuses_a_live_owner_and_takes_over_stale_locks(tmp_path, monkeypatch, capsys):
    import socket
    import subprocess
    import sys
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    here = socket.gethostname()
    _write_lock(tmp_path, host=here, pid=os.getpid())  # a live process on this host
    with pytest.raises(SystemExit, match=rf"in use by {re.escape(here)} pid {os.getpid()} .*command: train"):
        utils.RunLock(str(tmp_path)).__enter__()
    _write_lock(tmp_path)  # another host, refreshed just now
    with pytest.raises(SystemExit, match="in use by elsewhere pid 1"):
        utils.RunLock(str(tmp_path)).__enter__()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = [dict(host=here, pid=int(dead.stdout)), dict(slurm_job_id="77"), dict()]
    for fields, env, age in zip(stale, ({}, {"SLURM_JOB_ID": "77"}, {}), (0, 0, 3600)):
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        _write_lock(tmp_path, **fields)
        os.utime(tmp_path / "run.lock", (os.path.getmtime(tmp_path / "run.lock") - age,) * 2)
        with utils.RunLock(str(tmp_path)) as lock:
            assert "taking over the stale lock" in capsys.readouterr().out
            assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()
        assert not (tmp_path / "run.lock").exists() and lock.path.endswith("run.lock")


def test_run_lock_heartbeat_and_empty_folder(tmp_path):
    import time
    with utils.RunLock(str(tmp_path / "new"), heartbeat_s=0.05):
        lock = tmp_path / "new" / "run.lock"
        os.utime(lock, (0, 0))
        time.sleep(0.3)
        assert time.time() - os.path.getmtime(lock) < 5  # refreshed by the heartbeat thread
    assert not lock.exists()
    with utils.RunLock(""):  # no output_dir: nothing to lock
        pass
