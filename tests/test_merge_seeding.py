"""Per-item augmentation seeds (workers, epochs, reruns) and the merge of test views into videos."""
import os
import shutil

import numpy as np
import pytest
import torch

import engine_for_finetuning as engine
import run_class_finetuning as run

from runs import base_argv


def _epoch_clips(data_dir, tmp_path, epoch, fresh=None):
    """The train loader's clips in one epoch (2 workers; every item is the same video, so only augmentation
    draws differ), the loader built and seeded as run_class_finetuning does. Returns {worker: [clips]}."""
    same = (tmp_path / "same")
    same.mkdir(exist_ok=True)
    first = open(os.path.join(data_dir, "train.csv")).readline().split()[0]
    (same / "train.csv").write_text(f"{os.path.join(data_dir, first)} 0\n" * 4)
    for split in ("val.csv", "test.csv"):
        shutil.copy(os.path.join(data_dir, split), same / split)
    loaders = fresh or run.build_loaders(run.parse_args(base_argv(  # val/test list relative paths: --data_root
        str(same), tmp_path, "--num_workers", "2", "--batch_size", "1", "--num_sample", "1", "--mixup", "0",
        "--cutmix", "0", "--data_root", data_dir)), eval_only=False)
    run.set_train_epoch(loaders, run.parse_args(base_argv(str(same), tmp_path)), epoch)
    clips = {0: [], 1: []}
    for i, (x, _) in enumerate(loaders["train"]):
        clips[i % 2].append(x)  # batches alternate between the two workers
    return clips, loaders


def test_train_workers_and_epochs_draw_their_own_augmentation_and_reruns_equal(data_dir, tmp_path):
    torch.manual_seed(0), np.random.seed(0)
    e0, loaders = _epoch_clips(data_dir, tmp_path, 0)
    e1, _ = _epoch_clips(data_dir, tmp_path, 1, fresh=loaders)  # the next epoch of the same loaders
    torch.manual_seed(1), np.random.seed(1)
    again, _ = _epoch_clips(data_dir, tmp_path, 1)  # a resumed run: new loaders (and processes) for epoch 1
    for a, b in zip(e1[0] + e1[1], again[0] + again[1]):
        assert torch.equal(a, b)
    clips = e0[0] + e0[1] + e1[0] + e1[1]
    assert len(clips) == 8
    for i in range(8):
        for j in range(i):
            assert not torch.equal(clips[i], clips[j]), (i, j)  # across workers, steps and epochs


def test_merge_views_deduplicates_repeated_videos_and_sorts():
    rng = np.random.default_rng(0)
    vids = np.array(["b", "b", "a", "a", "a", "a"])  # video "a" listed twice (e.g. a padding sampler)
    view_ids = np.array([[0, 1], [0, 0], [0, 1], [0, 0], [0, 1], [0, 0]])
    probs = rng.random((6, 3)).astype(np.float32)
    probs[4:] = probs[2:4]
    video_probs = rng.random((3, 3)).astype(np.float32)
    per_video = {"video_ids": np.array(["b", "a", "a"]), "labels": np.array([2, 1, 1]), "probs": video_probs,
                 "views": np.array([2, 2, 2])}
    pv, vid = engine.merge_views({"video_ids": vids, "view_ids": view_ids, "labels": np.array([2, 2, 1, 1, 1, 1]),
                                  "probs": probs}, per_video)
    assert list(pv["video_ids"]) == ["a", "a", "b", "b"]
    assert pv["view_ids"].tolist() == [[0, 0], [0, 1], [0, 0], [0, 1]]
    np.testing.assert_array_equal(pv["probs"], probs[[3, 2, 1, 0]])
    assert list(vid["video_ids"]) == ["a", "b"] and vid["labels"].tolist() == [1, 2]
    np.testing.assert_array_equal(vid["probs"], video_probs[[1, 0]])
    with pytest.raises(RuntimeError, match="video a appears with different labels"):
        engine.merge_views({"video_ids": vids, "view_ids": view_ids, "labels": np.array([2, 2, 0, 0, 0, 0]),
                            "probs": probs}, per_video)
    top1, top5 = engine.topk_percent(np.array([[0.1, 0.9], [0.8, 0.2]]), np.array([1, 1]))
    assert (top1, top5) == (50.0, 100.0)
