"""Video decoding behind one interface: decord (fast random access) or PyAV (portable fallback).

Both readers return uint8 RGB frames T x H x W x 3 for the requested frame indices only. They give identical pixels
on H.264 mp4s (both convert YUV to RGB with FFmpeg's swscale; tests/test_ssv2.py checks equality).
"""
import os
from typing import Sequence

import numpy as np

try:
    import decord
except ImportError:  # no wheel on aarch64 / macOS: PyAV is used instead
    decord = None

DECODERS = ("auto", "decord", "pyav")


class VideoDecodeError(RuntimeError):
    """A video that is missing, empty or cannot be decoded; the message names the file and the decoder's error."""


def resolve_decoder(name: str = "auto") -> str:
    """'auto' -> 'decord' when importable, else 'pyav'; an explicit name is checked."""
    if name not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {name!r}")
    if name == "auto":
        return "decord" if decord is not None else "pyav"
    if name == "decord" and decord is None:
        raise ImportError("decoder 'decord' requested but decord is not installed (use --decoder pyav)")
    return name


class DecordReader:
    """decord.VideoReader; seeks to each keyframe it needs and decodes only up to the requested frames.

    decord's frame count comes from the container and can overshoot the frames that really decode (some webm files);
    when a read fails, the real count is found by decoding sequentially and `num_frames` is corrected, so the caller
    can sample again (see `read_frames`).
    """

    def __init__(self, path: str, num_threads: int = 1):
        self.path = path
        self._vr = decord.VideoReader(path, num_threads=num_threads, ctx=decord.cpu(0))
        self.num_frames = len(self._vr)
        self.count_is_exact = False

    def get_frames(self, indices: Sequence[int]) -> np.ndarray:
        return self._vr.get_batch(list(indices)).asnumpy()

    def exact_count(self) -> int:
        self._vr.seek(0)
        n = 0
        try:
            while True:
                self._vr.next()
                n += 1
        except (StopIteration, decord.DECORDError):
            pass
        self.num_frames, self.count_is_exact = n, True
        self._vr.seek(0)
        return n


class PyAVReader:
    """Decodes the whole stream once (SSv2 clips are ~2-6 s), keeps the YUV frames, converts only the requested ones.

    Decoding sequentially gives an exact frame count (container metadata is often missing for webm) and avoids
    seeking, which is unreliable in some containers.
    """

    def __init__(self, path: str, num_threads: int = 1):
        import av

        self.path = path
        with av.open(path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO" if num_threads > 1 else "SLICE"
            stream.codec_context.thread_count = num_threads
            self._frames = list(container.decode(stream))
        self.num_frames = len(self._frames)
        self.count_is_exact = True

    def get_frames(self, indices: Sequence[int]) -> np.ndarray:
        return np.stack([self._frames[i].to_ndarray(format="rgb24") for i in indices])

    def exact_count(self) -> int:
        return self.num_frames


def open_video(path: str, decoder: str = "auto", num_threads: int = 1) -> "DecordReader | PyAVReader":
    """Opens `path` with the chosen decoder; raises VideoDecodeError naming the file for missing/empty/bad videos."""
    decoder = resolve_decoder(decoder)
    if not os.path.isfile(path):
        raise VideoDecodeError(f"video file not found: {path!r}")
    if os.path.getsize(path) == 0:
        raise VideoDecodeError(f"video file is empty (0 bytes): {path!r}")
    try:
        reader = DecordReader(path, num_threads) if decoder == "decord" else PyAVReader(path, num_threads)
    except Exception as e:
        raise VideoDecodeError(f"{decoder} cannot open {path!r}: {type(e).__name__}: {e}") from e
    if reader.num_frames <= 0:
        raise VideoDecodeError(f"{decoder} found no video frames in {path!r}")
    return reader


def read_frames(path: str, sample_indices, decoder: str = "auto", num_threads: int = 1) -> tuple[np.ndarray, list[int]]:
    """Opens a video once, lets `sample_indices(num_frames) -> list[int]` pick frames, and decodes only those.

    Returns (frames T x H x W x 3 uint8 in the order of the indices, indices). If the container's frame count was
    too high (decord), the count is corrected and the indices are sampled again, so no frame is silently repeated.
    """
    reader = open_video(path, decoder, num_threads)
    indices = [int(i) for i in sample_indices(reader.num_frames)]
    # Decode each distinct frame once, even when views or samples share frames.
    unique = sorted(set(indices))
    try:
        frames = reader.get_frames(unique)
    except Exception as first_error:
        if reader.count_is_exact:
            raise VideoDecodeError(f"cannot decode frames of {path!r}: {type(first_error).__name__}: {first_error}")
        n = reader.exact_count()
        if n <= 0:
            raise VideoDecodeError(f"no decodable frames in {path!r}: {type(first_error).__name__}: {first_error}")
        indices = [int(i) for i in sample_indices(n)]
        unique = sorted(set(indices))
        try:
            frames = reader.get_frames(unique)
        except Exception as e:
            raise VideoDecodeError(f"cannot decode frames of {path!r}: {type(e).__name__}: {e}") from e
    if len(unique) == len(indices) and unique == indices:
        return frames, indices
    pos = {f: i for i, f in enumerate(unique)}
    return frames[[pos[i] for i in indices]], indices


def count_frames(path: str, decoder: str = "auto") -> int:
    """Number of frames that really decode (sequential decode; used by datasets.verify)."""
    return open_video(path, decoder).exact_count()


def promised_frames(path: str) -> int | None:
    """Frames the container's header promises (duration x frame rate); None when it states no duration."""
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        if container.duration and stream.average_rate:
            return round(container.duration / av.time_base * stream.average_rate)
    return None


def truncation(present: int, promised: int | None) -> str | None:
    """'N frames decode, its header promises P' when a video holds fewer frames than its header promises (one frame
    of rounding allowed: duration x rate is not exact), else None. The one truncation rule of the project
    (datasets.verify, predict.py, the preparation tools)."""
    if promised is None or present >= promised - 1:
        return None
    return f"{present} frames decode, its header promises {promised}"


def check_truncated(path: str, decoder: str = "auto") -> str | None:
    """truncation of a video file: its frames decoded sequentially (count_frames) against its header."""
    return truncation(count_frames(path, decoder), promised_frames(path))
