"""utils: launcher environments, schedules, RNG capture, atomic checkpoints and damaged-checkpoint handling."""
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


def test_cosine_scheduler_warmup_steps_and_edges():
    s = utils.cosine_scheduler(1.0, 0.0, epochs=2, niter_per_ep=5, warmup_epochs=1, warmup_steps=2)
    np.testing.assert_allclose(s[:2], [0.0, 0.5])
    assert s[2] == pytest.approx(1.0) and len(s) == 10 and s[-1] > 0 and np.all(np.diff(s[2:]) < 0)
    flat = utils.cosine_scheduler(0.05, 0.05, 3, 4)
    np.testing.assert_allclose(flat, 0.05)
    assert len(utils.cosine_scheduler(1.0, 0.1, 1, 3, warmup_epochs=5)) == 3  # warmup longer than the run


def test_rng_state_round_trip_through_weights_only_file(tmp_path):
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    state = utils.capture_rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random())
    path = str(tmp_path / "rng.pth")
    utils.save_checkpoint(path, {"model": {}, "rng": state})
    loaded = checkpoint.safe_load(path)["rng"]
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    utils.restore_rng_state(loaded)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_seed_worker_follows_torch_seed():
    torch.manual_seed(1234)
    utils.seed_worker(0)
    x = np.random.rand()
    torch.manual_seed(1234)
    utils.seed_worker(0)
    assert np.random.rand() == x


def test_atomic_save_keeps_previous_file_when_interrupted(tmp_path, monkeypatch):
    path = str(tmp_path / "checkpoint-0.pth")
    utils.save_checkpoint(path, {"model": {"w": torch.ones(2)}})
    real_save = torch.save

    def dying_save(obj, f, *a, **k):
        f.write(b"partial garbage")
        raise KeyboardInterrupt("killed mid-save")
    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        utils.save_checkpoint(path, {"model": {"w": torch.zeros(2)}})
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.equal(checkpoint.safe_load(path)["model"]["w"], torch.ones(2))
    assert os.listdir(tmp_path) == ["checkpoint-0.pth"]  # no temporary file left behind


def test_find_resume_skips_damaged_newest(tmp_path):
    for e in (1, 2, 10):
        utils.save_checkpoint(str(tmp_path / f"checkpoint-{e}.pth"), {"model": {"e": torch.tensor(e)}})
    (tmp_path / "checkpoint-best.pth").write_bytes(b"ignored by auto-resume")
    data = (tmp_path / "checkpoint-10.pth").read_bytes()
    (tmp_path / "checkpoint-10.pth").write_bytes(data[: len(data) // 2])  # truncated
    assert [e for e, _ in utils.list_epoch_checkpoints(str(tmp_path))] == [10, 2, 1]
    with pytest.warns(UserWarning, match="checkpoint-10.pth"):
        path, ckpt = utils.find_resume_checkpoint(str(tmp_path), checkpoint.safe_load)
    assert path.endswith("checkpoint-2.pth") and int(ckpt["model"]["e"]) == 2
    assert utils.find_resume_checkpoint(str(tmp_path / "empty"), checkpoint.safe_load) == (None, None)


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
