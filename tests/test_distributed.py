"""distributed: launcher environments and a single process's initialisation."""
import pytest
import torch

import distributed


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
    got = distributed.resolve_dist_env(env, **kw)
    assert (got["rank"], got["world_size"], got["local_rank"], got["master_addr"]) == expect


def test_slurm_master_from_nodelist_without_scontrol(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    env = {"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": "gpu[017-018],cpu3"}
    assert distributed.resolve_dist_env(env)["master_addr"] == "gpu017"


def test_manual_world_size_needs_local_rank():
    with pytest.raises(ValueError, match="--local_rank"):
        distributed.resolve_dist_env({}, world_size=2)


def test_single_process_init_needs_no_launcher(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "SLURM_NTASKS", "SLURM_PROCID"):
        monkeypatch.delenv(k, raising=False)
    args = type("A", (), dict(dist_on_itp=False, world_size=1, local_rank=-1, device="cpu", dist_url="env://"))()
    distributed.init_distributed(args)
    assert (args.rank, args.world_size, args.distributed) == (0, 1, False) and not distributed.is_dist()


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
        distributed.init_distributed(args)
    assert not distributed.is_dist()
