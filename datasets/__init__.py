"""Data for video classification: SSv2 lists, decoding, frame sampling, views and augmentation.

`build_dataset(is_train, test_mode, args)` reads VideoMAE's argument names; missing optional attributes get the
published defaults.
"""
import os

import torch

from datasets.samplers import ShardSampler, TrainSampler
from datasets.ssv2 import (SSv2Dataset, load_class_names, multiple_samples_collate, pack_videos_collate,
                           read_video_list, read_views, train_indices, eval_indices, val_indices, video_id)
from video_transforms import AugmentConfig

__all__ = ["TEST_NUM_SEGMENT", "TEST_NUM_CROP", "build_dataset", "read_test_views", "load_class_names",
           "multiple_samples_collate", "pack_videos_collate", "SSv2Dataset", "ShardSampler", "TrainSampler",
           "read_video_list", "train_indices", "eval_indices", "val_indices", "video_id"]

LABELS_FILE = "something-something-v2-labels.json"
TEST_NUM_SEGMENT, TEST_NUM_CROP = 2, 3  # the SSv2 recipe's test views: 2 clips x 3 crops


def _common(args) -> dict:
    return dict(num_frames=getattr(args, "num_frames", 16), short_side_size=getattr(args, "short_side_size", 224),
                decoder=getattr(args, "decoder", "auto"),
                decode_threads=getattr(args, "decode_threads", 1))


def build_dataset(is_train: bool, test_mode: bool, args, augment: AugmentConfig | None = None
                  ) -> tuple[SSv2Dataset, int]:
    """train.csv (is_train), test.csv (test_mode) or val.csv from args.data_path -> (dataset, nb_classes).
    augment: the run's recipe (default: AugmentConfig.from_args(args))."""
    data_set = getattr(args, "data_set", "SSV2")
    if data_set != "SSV2":
        raise ValueError(f"data_set {data_set!r} is not supported (only 'SSV2'; other SSv2-format lists work as SSV2)")
    mode = "train" if is_train else ("test" if test_mode else "validation")
    csv = os.path.join(args.data_path, {"train": "train.csv", "test": "test.csv", "validation": "val.csv"}[mode])
    nb_classes = getattr(args, "nb_classes", 174)
    dataset = SSv2Dataset(
        csv, mode, data_root=getattr(args, "data_root", None), nb_classes=nb_classes,
        augment=augment or AugmentConfig.from_args(args),
        test_num_segment=getattr(args, "test_num_segment", TEST_NUM_SEGMENT),
        test_num_crop=getattr(args, "test_num_crop", TEST_NUM_CROP), max_bad_videos=getattr(args, "max_bad_videos", 10),
        augment_on=getattr(args, "augment_on", "workers"), **_common(args))
    return dataset, nb_classes


def read_test_views(path: str, args) -> tuple[torch.Tensor, torch.Tensor]:
    """The test pipeline for one video file (predict.py): (views V x C x T x H x W uint8, view_ids V x 2); normalise
    with video_transforms.normalize_clips."""
    c = _common(args)
    return read_views(path, c["num_frames"], AugmentConfig.from_args(args).input_size, c["short_side_size"],
                      getattr(args, "test_num_segment", TEST_NUM_SEGMENT), getattr(args, "test_num_crop", TEST_NUM_CROP),
                      c["decoder"], c["decode_threads"])
