"""utils: RNG capture, seeded streams, JSON logs and atomic files."""
import os
import random

import numpy as np
import torch

import checkpoint
import utils


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
