"""Kinetics-400 end to end on appearance data: training learns (well above chance), validation, the 5 x 3 test and
resuming on both augmentation paths; the dataset flags' defaults, list names and refusals."""
import json
import os
import shutil

import numpy as np
import pytest
import torch

import checkpoint
import run_class_finetuning as run

from runs import base_argv, per_video, train

# The smallest settings that learn the 8 appearance classes reliably in a few CPU seconds: no mixup, RandAugment,
# erasing or smoothing (the flip and the random resized crop stay), 6 epochs of 8 steps.
KINETICS_ARGV = ("--data_set", "Kinetics-400", "--epochs", "6", "--lr", "0.2", "--layer_decay", "1", "--drop_path",
                 "0", "--mixup", "0", "--cutmix", "0", "--aa", "none", "--reprob", "0", "--smoothing", "0",
                 "--test_num_segment", "5", "--test_num_crop", "3", "--save_ckpt_freq", "1")
CHANCE = 100 / 8


@pytest.fixture(scope="module", params=["workers", "device"])
def kinetics_run(request, kinetics_data_dir, tmp_path_factory):
    """An uninterrupted 6-epoch run on the Kinetics-style data with --augment_on workers or device."""
    out = tmp_path_factory.mktemp(f"kinetics_{request.param}")
    argv = base_argv(kinetics_data_dir, out, *KINETICS_ARGV, "--augment_on", request.param)
    return argv, out, train(argv)


def test_trains_validates_and_tests_well_above_chance(kinetics_run):
    """Validation: one view of each of the 16 videos per epoch; test: 5 chunks x 3 crops per video; the appearance
    classes are learnt on either augmentation path (3 seeds by hand: test top-1 43.75-56.25%, chance 12.5%)."""
    argv, out, summary = kinetics_run
    lines = [json.loads(x) for x in open(out / "log.txt")]
    assert [r["epoch"] for r in lines] == list(range(6)) and all(r["val_videos"] == 16 for r in lines)
    assert (summary["videos"], summary["views_per_video"]) == (16, 15)
    assert summary["top1"] >= 2.5 * CHANCE and lines[-1]["val_acc1"] >= 2.5 * CHANCE, (summary, lines[-1])
    views = np.load(out / "test_per_view.npz")
    assert sorted(map(tuple, views["view_ids"][views["video_ids"] == views["video_ids"][0]].tolist())) == \
        [(k, j) for k in range(5) for j in range(3)]


def test_resume_from_a_checkpoint_equals_the_uninterrupted_run(kinetics_run, tmp_path):
    """A rerun from checkpoint-4 trains epoch 5 as the uninterrupted run did: same weights, same multi-view test."""
    argv, out, _ = kinetics_run
    shutil.copy(out / "checkpoint-4.pth", tmp_path / "checkpoint-4.pth")
    train([*argv, "--output_dir", str(tmp_path)])
    a, b = (checkpoint.safe_load(str(d / "checkpoint-5.pth"))["model"] for d in (out, tmp_path))
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)
    np.testing.assert_allclose(per_video(tmp_path)["probs"], per_video(out)["probs"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("data_set", ["UCF101", "HMDB51"])
def test_official_splits_read_their_lists(kinetics_data_dir, tmp_path, data_set):
    """--data_split N: train_N.csv for training, val_N.csv for validation and for the test (no test list)."""
    lines = open(os.path.join(kinetics_data_dir, "train.csv")).read().splitlines()
    for n, (train_lines, val_lines) in {1: (lines[:4], lines[4:6]), 2: (lines[6:9], lines[9:10])}.items():
        for name, chosen in ((f"train_{n}.csv", train_lines), (f"val_{n}.csv", val_lines)):
            (tmp_path / name).write_text("".join(f"{os.path.join(kinetics_data_dir, x)}\n" for x in chosen))
    for n, sizes in ((1, (4, 2, 2)), (2, (3, 1, 1))):
        args = run.parse_args(base_argv(str(tmp_path), tmp_path / "out", "--data_set", data_set, "--data_split",
                                        str(n)))
        loaders = run.build_loaders(args, eval_only=False)
        assert tuple(len(loaders[k].dataset) for k in ("train", "val", "test")) == sizes
        assert [os.path.basename(loaders[k].dataset.csv_path) for k in ("train", "val", "test")] == \
            [f"train_{n}.csv", f"val_{n}.csv", f"val_{n}.csv"]
        train_set = loaders["train"].dataset
        assert type(train_set).__name__ == "KineticsDataset" and train_set.name == data_set


def test_head_far_wider_than_the_lists_is_warned_at_startup(kinetics_data_dir, tmp_path, capsys):
    """Kinetics-400 lists of 8 classes without --nb_classes: a 400-way head, said before training starts, naming
    both numbers; a label outside the head stays an error naming file:line."""
    argv = base_argv(kinetics_data_dir, tmp_path, "--data_set", "Kinetics-400")
    del argv[argv.index("--nb_classes"):argv.index("--nb_classes") + 2]
    args = run.parse_args(argv)
    assert args.nb_classes == 400
    run.build_loaders(args, eval_only=False)
    err = capsys.readouterr().err
    assert "warning: " in err and "uses 8 distinct labels (largest 7)" in err and "nb_classes=400" in err, err
    run.build_loaders(run.parse_args(base_argv(kinetics_data_dir, tmp_path, "--data_set", "Kinetics-400")), False)
    assert "warning" not in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"test.csv:\d+: label [4-7] outside \[0, 4\) \(nb_classes\)"):
        run.build_loaders(run.parse_args(base_argv(kinetics_data_dir, tmp_path, "--data_set", "Kinetics-400",
                                                   "--nb_classes", "4")), False)


def test_predict_uses_the_checkpoints_dataset_protocol(kinetics_run, kinetics_data_dir):
    """predict.py on a Kinetics-400 checkpoint, no data flags given: the saved data_set, sampling_rate and 5 x 3 views
    make the probabilities the run's multi-view test gave the same videos."""
    import predict
    argv, out, _ = kinetics_run
    tested = per_video(out)
    paths = [os.path.join(kinetics_data_dir, line.rsplit(",", 1)[0])
             for line in open(os.path.join(kinetics_data_dir, "test.csv")).read().splitlines()[:2]]
    results = predict.main([*paths, "--resume", str(out / "checkpoint-5.pth"), "--device", "cpu"])
    for path, result in zip(paths, results):
        probs = tested["probs"][list(tested["video_ids"]).index(os.path.splitext(os.path.basename(path))[0])]
        top = [(r["class_id"], r["prob"]) for r in result["top5"]]
        assert [c for c, _ in top] == np.argsort(-probs)[:5].tolist()
        np.testing.assert_allclose([p for _, p in top], np.sort(probs)[::-1][:5], rtol=0, atol=1e-5)


def test_default_labels_files_are_the_ones_the_preparation_tools_write():
    from datasets import DATASETS, prepare_kinetics, prepare_ssv2, prepare_ucf_hmdb
    written = {"SSV2": prepare_ssv2.LABELS, "Kinetics-400": prepare_kinetics.LABELS, **prepare_ucf_hmdb.LABELS}
    assert {name: spec.labels_file for name, spec in DATASETS.items()} == written
