"""Shared tiny data for the data tests: generated once per session (a few seconds on 2 cores)."""
import os
import shutil

import numpy as np
import pytest

import engine_for_finetuning as engine

from datasets.synthetic import make_kinetics_dataset, make_official_layout, make_synthetic_dataset
from runs import DEVICE_ARGV, STRAIGHT_ARGV, base_argv, train


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> str:
    """16 train + 8 val synthetic mp4s, 48 x 64 px, 16 frames."""
    return make_synthetic_dataset(str(tmp_path_factory.mktemp("synthetic")), num_train=16, num_val=8, height=48,
                                  num_frames=16, seed=1, workers=2)


@pytest.fixture(scope="session")
def official_dir(tmp_path_factory) -> str:
    """The official SSv2 layout in miniature: 6 train + 4 validation VP9 webm videos, 32 x 42 px, plus the jsons."""
    return make_official_layout(str(tmp_path_factory.mktemp("official")), num_train=6, num_val=4, height=32,
                                num_frames=12, seed=2, workers=2)


@pytest.fixture(scope="session")
def official_current_dir(tmp_path_factory) -> str:
    """The current official SSv2 download in miniature: labels/*.json + test-answers.csv, 4 train + 2 validation +
    2 test VP9 webm videos, 32 x 42 px."""
    return make_official_layout(str(tmp_path_factory.mktemp("official_current")), num_train=4, num_val=2, height=32,
                                num_frames=12, seed=3, workers=2, layout="current", num_test=2)


@pytest.fixture(scope="session")
def kinetics_data_dir(tmp_path_factory) -> str:
    """Kinetics-style appearance data (classes that survive a flip): 32 train + 16 val (= test) mp4s of 40-80 frames,
    32 x 42 px, comma lists; long enough for clips at stride 4 and five different test chunks of 8 frames."""
    return make_kinetics_dataset(str(tmp_path_factory.mktemp("kinetics_data")), num_train=32, num_val=16, height=32,
                                 num_frames=(40, 80), seed=0, workers=2)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    from datasets.synthetic import make_synthetic_dataset
    return make_synthetic_dataset(str(tmp_path_factory.mktemp("syn")), num_train=16, num_val=7, height=32,
                                  num_frames=8, workers=2)


@pytest.fixture(scope="session")
def straight(data_dir, tmp_path_factory):
    """2 epochs, a checkpoint every epoch, EMA, clip_grad, workers (seeded per epoch), default augmentation+mixup."""
    out = tmp_path_factory.mktemp("straight")
    summary = train(base_argv(data_dir, out, *STRAIGHT_ARGV))
    shutil.copy(os.path.join(out, "test_per_video.npz"), os.path.join(out, "final_per_video.npz"))
    return str(out), summary


@pytest.fixture(scope="session")
def straight_device(data_dir, tmp_path_factory):
    """2 epochs with --augment_on device (workers decode; RandAugment, crop, erasing and mixup on the device)."""
    out = tmp_path_factory.mktemp("straight_device")
    return str(out), train(base_argv(data_dir, out, *DEVICE_ARGV))


@pytest.fixture
def recorded(monkeypatch):
    """main() with the engine's compute replaced by recorders (flags that act inside the training loop; --compile
    acts in a real run: test_compile_two_steps_equal_eager)."""
    calls = {"train": [], "validate": [], "test": []}

    def fake_train(model, loader, training, device, epoch, **kw):
        calls["train"].append({**vars(training), **kw, "epoch": epoch, "model": model})
        return engine.EpochResult({"loss": 1.0, "lr": 0.1, "clips_per_s": 1.0}, meter={})

    def fake_validate(model, loader, device, amp_dtype=None, reduce=False):
        calls["validate"].append(dict(amp_dtype=amp_dtype, reduce=reduce))
        return {"acc1": 10.0 * len(calls["validate"]), "acc5": 50.0, "loss": 1.0, "videos": 7}

    def fake_test(model, loader, device, **kw):
        calls["test"].append(kw)
        ids, labels, probs = np.array(["v0", "v1"]), np.array([0, 1]), np.eye(8, dtype=np.float32)[:2]
        return {"top1": 100.0, "top5": 100.0, "videos": 2, "views_per_video": 1,
                "per_view": {"video_ids": ids, "view_ids": np.zeros((2, 2), np.int64), "labels": labels,
                             "probs": probs},
                "per_video": {"video_ids": ids, "labels": labels, "probs": probs, "views": np.array([1, 1])}}
    monkeypatch.setattr(engine, "train_one_epoch", fake_train)
    monkeypatch.setattr(engine, "validate", fake_validate)
    monkeypatch.setattr(engine, "final_test", fake_test)
    return calls
