"""Scan a video list before a long run: every unreadable or too-short video is reported, exit status 1 if any.

  python -m datasets.verify CSV [--data_root DIR] [--workers N] [--min_frames N] [--decoder auto|decord|pyav]

Each video is fully decoded (sequentially), so unreadable files are caught, and a video that decodes fewer frames
than its container's header promises (a cut download or copy) is reported as truncated.
--min_frames defaults to 1: shorter videos are still usable (their frames are spread over the clip), so pass e.g.
--min_frames 16 to list the videos that cannot fill a 16-frame clip with distinct frames.
"""
import argparse
import sys
from concurrent.futures import ThreadPoolExecutor

from datasets.decoding import count_frames, promised_frames, truncation
from datasets.ssv2 import read_video_list


def check(path: str, min_frames: int = 1, decoder: str = "auto") -> str | None:
    """None if the video decodes whole (as many frames as its header promises) with >= min_frames frames, else
    the reason."""
    try:
        n = count_frames(path, decoder)
        cut = truncation(n, promised_frames(path))
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    if cut:
        return f"truncated: {cut}"
    return None if n >= min_frames else f"only {n} frames (< {min_frames})"


def verify(csv: str, data_root: str | None = None, workers: int = 4, min_frames: int = 1,
           decoder: str = "auto") -> list[tuple[str, str]]:
    """[(path, reason)] for every bad video of the list, in list order."""
    from tqdm import tqdm

    paths = [p for p, _ in read_video_list(csv, data_root)]
    with ThreadPoolExecutor(max(1, workers)) as pool:  # decoders release the GIL
        reasons = list(tqdm(pool.map(lambda p: check(p, min_frames, decoder), paths), total=len(paths),
                            desc="verify", unit="video", file=sys.stderr))
    return [(p, r) for p, r in zip(paths, reasons) if r is not None]


def main() -> int:
    p = argparse.ArgumentParser(description="Report unreadable or too-short videos of an SSv2-format list.")
    p.add_argument("csv")
    p.add_argument("--data_root", default=None, help="folder for relative paths (default: the CSV's folder)")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--min_frames", type=int, default=1)
    p.add_argument("--decoder", default="auto", choices=["auto", "decord", "pyav"])
    a = p.parse_args()
    bad = verify(a.csv, a.data_root, a.workers, a.min_frames, a.decoder)
    for path, reason in bad:
        print(f"BAD {path}: {reason}")
    total = len(read_video_list(a.csv, a.data_root))
    print(f"{a.csv}: {total - len(bad)}/{total} videos OK, {len(bad)} bad")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
