"""The Kinetics protocol (Kinetics-400, UCF101, HMDB51): dense clips of num_frames frames at a fixed stride.

VideoMAE's `VideoClsDataset` formulas, for a video of n frames, T = num_frames and stride s = sampling_rate:
  train  span L = T * s. n > L: the span ends at a random e in [L, n), starts at e - L, and the clip is
         linspace(e - L, e, T) truncated to integers and clipped to [e - L, e - 1] (steps of L / (T - 1), a little
         over s). n <= L: linspace(0, n, n // s) then frame n repeated up to T frames, all clipped to [0, n - 1]:
         the short video played at the stride, padded with its last frame.
  val    one deterministic view: the same span placed at the temporal centre, start (n - L) // 2 (short videos as
         in training); short side resized to short_side_size, centre crop of input_size. VideoMAE's validation
         instead repeats the random training draw, so its validation accuracy varies from run to run.
  test   the frames 0, s, 2s, ... < n, the last one repeated until there are T; with m of them, temporal chunk k of
         K = test_num_segment starts at int(k * step), step = max((m - T) / (K - 1), 0) (K = 1: start 0) and takes T
         consecutive ones. Spatially the short side is resized to short_side_size and test_num_crop input_size
         windows slide along the long side, start int(j * (long - input_size) / (J - 1)). With short_side_size ==
         input_size (VideoMAE's Kinetics recipe) these are VideoMAE's short_side_size crops, pixel for pixel; a
         larger short_side_size still gives the model input_size views. The union of the chunks' frames is decoded
         once per video (VideoMAE decodes the video once per view).

The dataset is SSv2Dataset with this protocol in place of TSN: the same items, collates and augmentation paths.
"""
import random
from typing import Any

import numpy as np

from datasets.ssv2 import SSv2Dataset


def _span_indices(start: int, span: int, num_frames: int) -> list[int]:
    """linspace(start, start + span, num_frames) truncated and clipped to the span's frames."""
    index = np.linspace(start, start + span, num=num_frames)
    return np.clip(index, start, start + span - 1).astype(np.int64).tolist()


def _short_video_indices(n: int, num_frames: int, sampling_rate: int) -> list[int]:
    """A video of n <= num_frames * sampling_rate frames: n // s evenly spread frames, then its last frame."""
    index = np.concatenate((np.linspace(0, n, num=n // sampling_rate),
                            np.full(num_frames - n // sampling_rate, n)))
    return np.clip(index, 0, n - 1).astype(np.int64).tolist()


def train_indices(n: int, num_frames: int, sampling_rate: int, rng: np.random.Generator) -> list[int]:
    """One training clip of a video of n frames from a random position (module docstring), drawn from ``rng``."""
    span = num_frames * sampling_rate
    if n <= span:
        return _short_video_indices(n, num_frames, sampling_rate)
    end = int(rng.integers(span, n))
    return _span_indices(end - span, span, num_frames)


def val_indices(n: int, num_frames: int, sampling_rate: int) -> list[int]:
    """The training span at the temporal centre of the video."""
    span = num_frames * sampling_rate
    if n <= span:
        return _short_video_indices(n, num_frames, sampling_rate)
    return _span_indices((n - span) // 2, span, num_frames)


def chunk_indices(n: int, num_frames: int, sampling_rate: int, num_segment: int) -> list[list[int]]:
    """The frame indices of the num_segment temporal test chunks (module docstring)."""
    frames = list(range(0, n, sampling_rate))
    frames += frames[-1:] * (num_frames - len(frames))
    step = max((len(frames) - num_frames) / (num_segment - 1), 0) if num_segment > 1 else 0
    return [frames[int(k * step):int(k * step) + num_frames] for k in range(num_segment)]


class KineticsDataset(SSv2Dataset):
    """SSv2Dataset's items, collates and bad-video policy with the Kinetics protocol (module docstring).

    ``sampling_rate``: the stride between a clip's frames (VideoMAE's --sampling_rate, 4 in its Kinetics recipe);
    every other argument is SSv2Dataset's (``name`` defaults to Kinetics-400). Training clips come from a numpy
    Generator seeded with the item's seed (TrainSampler), or, without one, with a draw from Python's global
    generator.
    """

    def __init__(self, *args: Any, sampling_rate: int = 4, **kwargs: Any) -> None:
        if sampling_rate < 1:
            raise ValueError(f"sampling_rate must be >= 1, got {sampling_rate}")
        super().__init__(*args, **{"name": "Kinetics-400", **kwargs})
        self.sampling_rate = sampling_rate

    def sample_train(self, n: int, seed: int | None) -> list[int]:
        """One clip from a random position, drawn from a numpy generator seeded with the item's seed."""
        rng = np.random.default_rng(seed if seed is not None else random.getrandbits(64))
        return train_indices(n, self.num_frames, self.sampling_rate, rng)

    def sample_validation(self, n: int) -> list[int]:
        """The centred span."""
        return val_indices(n, self.num_frames, self.sampling_rate)

    def sample_test_views(self, n: int) -> list[list[int]]:
        """The test_num_segment chunks of the frames at the stride."""
        return chunk_indices(n, self.num_frames, self.sampling_rate, self.test_num_segment)
