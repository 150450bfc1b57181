"""Something-Something-v2 frame sampling and the train / validation / test datasets.

Lists: datasets.lists (VideoMAE's `<path> <label>` or comma-separated `<path>,<label>`, no header). Relative paths
resolve against `data_root` (default: the list's folder).

Frame sampling (T = num_frames segments over a video of n frames):
  train  TSN: segment length n // T, one random frame in each; n < T spreads the n frames evenly (int(i * n / T)),
         where VideoMAE's code collapsed short videos to frame 0.
  val    one deterministic view: segment midpoints int(tick / 2 + tick * i), tick = n / T; short side to
         short_side_size (OpenCV-style bilinear), centre crop of input_size.
  test   K x J views: temporal view k takes int(tick * k / K + tick * i) (K=2: segment starts and midpoints, the
         published code), spatial view j slides an input_size window along the long side after the short side is
         resized to short_side_size. The video is decoded once for all views.
"""
import contextlib
import functools
import json
import multiprocessing as mp
import random
import sys
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

import utils
from datasets.decoding import VideoDecodeError, read_frames, resolve_decoder
from datasets.lists import read_video_list, video_ids
from video_transforms import AugmentConfig, TrainTransform, center_crop, resize_short_side, sliding_crops, to_tchw

MODES = ("train", "validation", "test")
AUGMENT_ON = ("workers", "device")


def load_class_names(labels_json: str) -> list[str]:
    """A labels json {class name: "id"} (the official SSv2 one, or one the preparation tools write) -> names indexed
    by class id."""
    with open(labels_json) as f:
        mapping = json.load(f)
    ids = {}
    for name, idx in mapping.items():
        try:
            ids[int(idx)] = name
        except (TypeError, ValueError):
            raise ValueError(f"{labels_json}: class {name!r} has id {idx!r}, expected an integer string") from None
    if sorted(ids) != list(range(len(mapping))):
        raise ValueError(f"{labels_json}: class ids must be 0..{len(mapping) - 1} without gaps or repeats")
    return [ids[i] for i in range(len(ids))]


def train_indices(n: int, num_segments: int, rng: random.Random | None = None) -> list[int]:
    """TSN: one random frame in each of `num_segments` equal segments; short videos spread their frames evenly."""
    if n < num_segments:
        return [i * n // num_segments for i in range(num_segments)]
    rng = rng or random
    seg = n // num_segments
    return [i * seg + rng.randrange(seg) for i in range(num_segments)]


def eval_indices(n: int, num_segments: int, k: int = 1, num_views: int = 2) -> list[int]:
    """Temporal view k of K: offset k/K inside each of `num_segments` segments of length n / num_segments."""
    tick = n / num_segments
    return [min(int(tick * k / num_views + tick * i), n - 1) for i in range(num_segments)]


def val_indices(n: int, num_segments: int) -> list[int]:
    """Segment midpoints (= test view 1 of 2)."""
    return eval_indices(n, num_segments, 1, 2)


def multiple_samples_collate(batch):
    """Flattens num_sample (worker augmentation): [(clips S x C x T x H x W, label)] -> (B*S x C x T x H x W, labels)."""
    clips = torch.cat([item[0] for item in batch])
    labels = torch.tensor([item[1] for item in batch], dtype=torch.int64).repeat_interleave(
        torch.tensor([item[0].shape[0] for item in batch]))
    return clips, labels


def pack_videos_collate(batch):
    """Decoded videos of different sizes in one batch (device augmentation): [(frames T x H x W x 3 uint8, label)]
    -> (frames B x T x Hmax x Wmax x 3 uint8, zero-padded at the bottom/right; sizes B x 2 int64 valid (h, w);
    labels B)."""
    sizes = torch.tensor([item[0].shape[1:3] for item in batch], dtype=torch.int64)
    t = batch[0][0].shape[0]
    frames = torch.zeros((len(batch), t, *sizes.amax(0).tolist(), 3), dtype=torch.uint8)
    for out, (video, _), (h, w) in zip(frames, batch, sizes.tolist()):
        out[:, :h, :w].copy_(video)
    return frames, sizes, torch.tensor([item[1] for item in batch], dtype=torch.int64)


class SSv2Dataset(Dataset):
    """One dataset for the three modes; see the module docstring for sampling and views.

    train       augment_on 'workers': item (clips num_sample x C x T x H x W float32, normalised, label);
                augment_on 'device': item (frames T x H x W x 3 uint8 as decoded, label), for pack_videos_collate
                and device_augment.DeviceAugment. Bad videos are logged, counted across DataLoader workers and
                replaced by another random video, with a RuntimeError past max_bad_videos.
    validation  item (clip T x H x W x C uint8, label)
    test        item (views V x T x H x W x C uint8, label, video_id, view_ids V x 2 int64 (temporal, spatial))
    Evaluation items are uint8 in the decoder's layout: video_transforms.normalize_clips turns them into normalised
    float ... x C x T x H x W clips on the device.
    Validation/test never substitute: a missing or unreadable video raises with its path and the decoder's error;
    their lists are checked for missing files when the dataset is built.
    augment: the training recipe (its num_sample and flip act in train mode); its input_size is the clip size in
    every mode. name: the dataset's name in log lines.
    """

    def __init__(self, csv_path: str, mode: str = "train", data_root: str | None = None, nb_classes: int | None = None,
                 num_frames: int = 16, short_side_size: int = 224, augment: AugmentConfig = AugmentConfig(),
                 test_num_segment: int = 2, test_num_crop: int = 3, decoder: str = "auto", decode_threads: int = 1,
                 max_bad_videos: int = 10, augment_on: str = "workers", name: str = "SSV2"):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if augment_on not in AUGMENT_ON:
            raise ValueError(f"augment_on must be one of {AUGMENT_ON}, got {augment_on!r}")
        input_size = augment.input_size
        if mode != "train" and short_side_size < input_size:
            raise ValueError(f"short_side_size {short_side_size} must be >= input_size {input_size} for evaluation")
        # Evaluation reads every listed video, once: a missing or repeated one stops the run now, not after an epoch.
        self.samples = read_video_list(csv_path, data_root, nb_classes, check_exists=mode != "train",
                                       unique=mode != "train")
        self.csv_path, self.mode, self.num_frames, self.input_size = csv_path, mode, num_frames, input_size
        self.short_side_size, self.num_sample = short_side_size, augment.num_sample
        self.test_num_segment, self.test_num_crop = test_num_segment, test_num_crop
        self.decoder, self.decode_threads = resolve_decoder(decoder), decode_threads
        self.max_bad_videos = max_bad_videos
        self.augment_on, self.name = augment_on, name
        self.transform = TrainTransform(augment) if mode == "train" and augment_on == "workers" else None
        # Shared memory: forked (and spawned) DataLoader workers inherit it, so the count is global to the run.
        self._bad = mp.Value("i", 0)

    def __len__(self) -> int:
        return len(self.samples)

    def bad_video_count(self) -> int:
        return self._bad.value

    def reset_bad_video_count(self) -> None:
        with self._bad.get_lock():
            self._bad.value = 0

    def _read(self, path: str, sample_indices: Callable[[int], list[int]]) -> tuple[np.ndarray, list[int]]:
        return read_frames(path, sample_indices, self.decoder, self.decode_threads)

    # The sampling protocol: the frames each mode reads from a video of n frames. A dataset with another protocol
    # (datasets.kinetics) overrides these three methods and nothing else.
    def sample_train(self, n: int, seed: int | None) -> list[int]:
        """TSN indices, drawn from the global generators (seeded per item by __getitem__ when ``seed`` is given)."""
        return train_indices(n, self.num_frames)

    def sample_validation(self, n: int) -> list[int]:
        """Segment midpoints."""
        return val_indices(n, self.num_frames)

    def sample_test_views(self, n: int) -> list[list[int]]:
        """The frame indices of each of the test_num_segment temporal views."""
        return [eval_indices(n, self.num_frames, k, self.test_num_segment) for k in range(self.test_num_segment)]

    @functools.cached_property
    def video_ids(self) -> list[str]:
        """The id of each listed video in test items (datasets.lists.video_ids)."""
        return video_ids([p for p, _ in self.samples])

    def __getitem__(self, key: int | tuple[int, int]):
        """``key``: an index, or (index, seed) from TrainSampler: then every random draw of a training item comes
        from ``seed`` (utils.seeded_rngs), whichever process loads it."""
        index, seed = key if isinstance(key, tuple) else (key, None)
        if self.mode == "train":
            with utils.seeded_rngs(seed) if seed is not None else contextlib.nullcontext():
                return self._train_item(index, seed)
        path, label = self.samples[index]
        if self.mode == "validation":
            frames, _ = self._read(path, self.sample_validation)
            clip = resize_short_side(to_tchw(frames), self.short_side_size)
            return center_crop(clip, self.input_size).permute(0, 2, 3, 1).contiguous(), label
        views, view_ids = read_indexed_views(path, self.sample_test_views, self.input_size, self.short_side_size,
                                             self.test_num_crop, self.decoder, self.decode_threads)
        return views, label, self.video_ids[index], view_ids

    def _train_item(self, index: int, seed: int | None):
        tried = index
        while True:
            path, label = self.samples[tried]
            try:
                frames, _ = self._read(path, lambda n: self.sample_train(n, seed))
                break
            except VideoDecodeError as e:
                with self._bad.get_lock():
                    self._bad.value += 1
                    count = self._bad.value
                print(f"[{self.name}] bad training video {count}/{self.max_bad_videos}: {e}", file=sys.stderr,
                      flush=True)
                if count > self.max_bad_videos:
                    raise RuntimeError(f"{count} unreadable training videos this epoch (more than max_bad_videos="
                                       f"{self.max_bad_videos}); last: {e}. Run `python -m datasets.verify` on the "
                                       f"list to find them all.") from e
                if len(self.samples) < 2:
                    raise RuntimeError(f"the only training video is unreadable: {e}") from e
                other = random.randrange(len(self.samples) - 1)  # a different video, uniformly
                tried = other if other < tried else other + 1
        if self.transform is None:  # device augmentation: the decoded frames, no copy
            return torch.from_numpy(frames), label
        size = self.input_size
        clips = torch.empty((self.num_sample, 3, len(frames), size, size))
        for clip in clips:  # each sample written in place, in order (same random draws as one call per sample)
            self.transform(frames, out=clip)
        return clips, label


def read_views(path: str, num_frames: int, input_size: int, short_side_size: int, test_num_segment: int,
               test_num_crop: int, decoder: str = "auto", decode_threads: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """All K x J SSv2 test views of one video from a single decode (read_indexed_views)."""
    K = test_num_segment
    return read_indexed_views(path, lambda n: [eval_indices(n, num_frames, k, K) for k in range(K)], input_size,
                              short_side_size, test_num_crop, decoder, decode_threads)


def read_indexed_views(path: str, view_indices: Callable[[int], list[list[int]]], input_size: int,
                       short_side_size: int, test_num_crop: int, decoder: str = "auto",
                       decode_threads: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """K temporal views (``view_indices(n)``: K lists of T frame indices) x J = test_num_crop crops of one video,
    from a single decode of the union of their frames: (V x T x H x W x C uint8, V x 2 int64), view order
    temporal-major (k, j). No float work and no layout change: video_transforms.normalize_clips makes the
    V x C x T x H x W float clips on the device."""
    J = test_num_crop
    chunks: list[list[int]] = []

    def flat(n: int) -> list[int]:
        chunks[:] = view_indices(n)
        return [i for chunk in chunks for i in chunk]

    frames, indices = read_frames(path, flat, decoder, decode_threads)
    K, num_frames = len(chunks), len(chunks[0])
    # Resize each distinct frame once (uint8, channels-last: the fast kernel); every view is then written once,
    # straight into its place in the V x T x H x W x C output, by an index_select of its frames from a crop view.
    pos: dict[int, int] = {}  # frame index -> its row among the distinct frames, in order of first use
    keep = []
    for i, f in enumerate(indices):
        if f not in pos:
            pos[f] = len(keep)
            keep.append(i)
    distinct = frames if len(keep) == len(indices) else frames[keep]
    resized = resize_short_side(to_tchw(distinct), short_side_size)  # T' x C x H x W, stored T' x H x W x C
    views = torch.empty((K * J, num_frames, input_size, input_size, 3), dtype=torch.uint8)
    for k in range(K):
        rows = torch.tensor([pos[f] for f in indices[k * num_frames:(k + 1) * num_frames]])
        for j, crop in enumerate(sliding_crops(resized, input_size, J)):
            torch.index_select(crop.permute(0, 2, 3, 1), 0, rows, out=views[k * J + j])
    ids = [(k, j) for k in range(K) for j in range(J)]
    return views, torch.tensor(ids, dtype=torch.int64)
