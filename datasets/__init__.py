"""Data for video classification: lists, decoding, frame sampling per protocol, views and augmentation.

`build_dataset(is_train, test_mode, args)` reads VideoMAE's argument names; missing optional attributes get the
published defaults. DATASETS says, per --data_set, its protocol and the defaults that differ between datasets.
"""
import os
from dataclasses import dataclass

import torch

from datasets.kinetics import KineticsDataset, chunk_indices
from datasets.samplers import ShardSampler, TrainSampler
from datasets.ssv2 import (SSv2Dataset, load_class_names, multiple_samples_collate, pack_videos_collate,
                           read_indexed_views, read_video_list, read_views, train_indices, eval_indices, val_indices)
from video_transforms import AugmentConfig

__all__ = ["DATASETS", "TEST_NUM_SEGMENT", "TEST_NUM_CROP", "SAMPLING_RATE", "DatasetSpec", "build_dataset",
           "dataset_spec", "list_paths", "read_test_views", "load_class_names", "multiple_samples_collate",
           "pack_videos_collate", "SSv2Dataset", "KineticsDataset", "ShardSampler", "TrainSampler", "read_video_list",
           "train_indices", "eval_indices", "val_indices"]

TEST_NUM_CROP = 3  # spatial test views in every published recipe
SAMPLING_RATE = 4  # the Kinetics protocol's frame stride (VideoMAE's --sampling_rate default)


@dataclass(frozen=True)
class DatasetSpec:
    """What differs between the datasets: the sampling protocol ('tsn': SSv2's segments; 'kinetics': dense clips at
    a stride), the head's classes, the temporal test views of the published recipe, the labels json the preparation
    tools write, and whether the lists come in official splits (train_N.csv / val_N.csv)."""
    protocol: str
    nb_classes: int
    test_num_segment: int
    labels_file: str
    splits: bool = False


DATASETS = {
    "SSV2": DatasetSpec("tsn", 174, 2, "something-something-v2-labels.json"),
    "Kinetics-400": DatasetSpec("kinetics", 400, 5, "kinetics400-labels.json"),
    "UCF101": DatasetSpec("kinetics", 101, 5, "ucf101-labels.json", splits=True),
    "HMDB51": DatasetSpec("kinetics", 51, 5, "hmdb51-labels.json", splits=True),
}
TEST_NUM_SEGMENT = DATASETS["SSV2"].test_num_segment  # the default dataset's


def dataset_spec(data_set: str) -> DatasetSpec:
    """DATASETS[data_set], or a ValueError naming the known ones."""
    if data_set not in DATASETS:
        raise ValueError(f"data_set {data_set!r} is not supported (one of {', '.join(DATASETS)})")
    return DATASETS[data_set]


def list_paths(data_path: str, data_set: str = "SSV2", data_split: int = 1) -> dict[str, str]:
    """The lists of each mode under data_path: train.csv / val.csv / test.csv, or for a dataset with official
    splits train_N.csv / val_N.csv with the test on val_N.csv (UCF101 and HMDB51 have no separate test list)."""
    if dataset_spec(data_set).splits:
        train, val = f"train_{data_split}.csv", f"val_{data_split}.csv"
        names = {"train": train, "validation": val, "test": val}
    else:
        names = {"train": "train.csv", "validation": "val.csv", "test": "test.csv"}
    return {mode: os.path.join(data_path, name) for mode, name in names.items()}


def _common(args) -> dict:
    return dict(num_frames=getattr(args, "num_frames", 16), short_side_size=getattr(args, "short_side_size", 224),
                decoder=getattr(args, "decoder", "auto"),
                decode_threads=getattr(args, "decode_threads", 1))


def _test_num_segment(args, spec: DatasetSpec) -> int:
    value = getattr(args, "test_num_segment", None)
    return spec.test_num_segment if value is None else value


def build_dataset(is_train: bool, test_mode: bool, args, augment: AugmentConfig | None = None
                  ) -> tuple[SSv2Dataset, int]:
    """The list of the mode (is_train: training, test_mode: test, else validation; list_paths) from args.data_path
    -> (dataset, nb_classes): SSv2Dataset for SSV2, KineticsDataset at args.sampling_rate for the others.
    augment: the run's recipe (default: AugmentConfig.from_args(args))."""
    data_set = getattr(args, "data_set", "SSV2")
    spec = dataset_spec(data_set)
    mode = "train" if is_train else ("test" if test_mode else "validation")
    csv = list_paths(args.data_path, data_set, getattr(args, "data_split", 1))[mode]
    nb_classes = getattr(args, "nb_classes", None) or spec.nb_classes
    kwargs = dict(
        data_root=getattr(args, "data_root", None), nb_classes=nb_classes, name=data_set,
        augment=augment or AugmentConfig.from_args(args), test_num_segment=_test_num_segment(args, spec),
        test_num_crop=getattr(args, "test_num_crop", TEST_NUM_CROP), max_bad_videos=getattr(args, "max_bad_videos", 10),
        augment_on=getattr(args, "augment_on", "workers"), **_common(args))
    if spec.protocol == "kinetics":
        return KineticsDataset(csv, mode, sampling_rate=getattr(args, "sampling_rate", SAMPLING_RATE),
                               **kwargs), nb_classes
    return SSv2Dataset(csv, mode, **kwargs), nb_classes


def read_test_views(path: str, args) -> tuple[torch.Tensor, torch.Tensor]:
    """The test pipeline of args.data_set for one video file (predict.py, analyze_tokens.py): (views V x T x H x W x
    C uint8, view_ids V x 2); normalise with video_transforms.normalize_clips."""
    spec = dataset_spec(getattr(args, "data_set", "SSV2"))
    c, K = _common(args), _test_num_segment(args, spec)
    input_size, J = AugmentConfig.from_args(args).input_size, getattr(args, "test_num_crop", TEST_NUM_CROP)
    if spec.protocol == "kinetics":
        rate = getattr(args, "sampling_rate", SAMPLING_RATE)
        return read_indexed_views(path, lambda n: chunk_indices(n, c["num_frames"], rate, K), input_size,
                                  c["short_side_size"], J, c["decoder"], c["decode_threads"])
    return read_views(path, c["num_frames"], input_size, c["short_side_size"], K, J, c["decoder"],
                      c["decode_threads"])
