"""What the preparation tools share: re-encoding source videos to H.264 mp4 with ffmpeg, in parallel, resumable,
with every missing or broken video counted, printed and written to failed.txt instead of vanishing.

A tool (prepare_ssv2, prepare_kinetics, prepare_ucf_hmdb) reads its official annotations into `Item`s, one per
(list, video), and calls `prepare_videos`, which converts each distinct output once and writes one `<list>.csv` per
list with the lines `<output path relative to dst> <label>` (VideoMAE's list form), holding only the videos that
exist. `report` prints the summary and gives the exit status.

Resumable: an existing non-empty output is skipped; outputs are encoded to <name>.part and renamed when complete, so a
finished name is always a whole video (leftover .part files are overwritten). A truncated source is a failure
although ffmpeg exits 0 on it: ffmpeg says it "ended prematurely", or the output has fewer frames than the source's
header promises.
"""
import argparse
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from datasets.decoding import promised_frames, truncation

STATUSES = ("converted", "skipped", "missing", "failed")


@dataclass(frozen=True)
class Item:
    """One video of one list: `key` is its id in the annotations, `src` its source file (None when not found),
    `rel` its output path relative to the output folder."""
    list_name: str
    key: str
    src: str | None
    rel: str
    label: int


def find_ffmpeg(path: str | None = None) -> str:
    """--ffmpeg, else imageio-ffmpeg's bundled binary, else the system's ffmpeg."""
    if path:
        return path
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        exe = shutil.which("ffmpeg")
        if exe is None:
            raise FileNotFoundError("no ffmpeg found: pip install imageio-ffmpeg, install ffmpeg, or pass --ffmpeg")
        return exe


def scale_to_height(height: int) -> str:
    """ffmpeg filter: `height` px high, even width, aspect kept."""
    return f"scale=-2:{height}"


def scale_short_side(short_side: int) -> str:
    """ffmpeg filter: the shorter side becomes `short_side` px, the other even, aspect kept; 0 keeps the size
    (rounded down to even sides, as yuv420p needs)."""
    if short_side <= 0:
        return "scale=trunc(iw/2)*2:trunc(ih/2)*2"
    return f"scale='if(gt(iw,ih),-2,{short_side})':'if(gt(iw,ih),{short_side},-2)'"


def present_frames(path: str) -> int:
    """Frames really there: the mp4 index's count, else a count of the demuxed packets."""
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        return stream.frames or sum(1 for packet in container.demux(stream) if packet.size)


def convert(src: str | None, dst: str, ffmpeg: str, video_filter: str) -> str:
    """Re-encodes one video to H.264 mp4 via dst.part; returns 'converted' or 'skipped' (dst already there),
    raises FileNotFoundError for a missing source and RuntimeError for a broken or truncated one."""
    if os.path.isfile(dst) and os.path.getsize(dst) > 0:
        return "skipped"
    if src is None:
        raise FileNotFoundError("no source video of that name under the video folder")
    if not os.path.isfile(src):
        raise FileNotFoundError(f"missing source video {src!r}")
    tmp = dst + ".part"
    cmd = [ffmpeg, "-nostdin", "-y", "-v", "warning", "-i", src, "-an", "-vf", video_filter, "-c:v", "libx264",
           "-pix_fmt", "yuv420p", "-f", "mp4", tmp]
    result = subprocess.run(cmd, capture_output=True, text=True)
    err = result.stderr.strip().splitlines()
    problem = None
    if result.returncode != 0 or not os.path.isfile(tmp) or os.path.getsize(tmp) == 0:
        problem = f"ffmpeg failed on {src!r} (exit {result.returncode}): {err[-1] if err else 'no output'}"
    elif any("ended prematurely" in line for line in err):
        problem = f"{src!r} is truncated (ffmpeg: {next(x for x in err if 'ended prematurely' in x).strip()})"
    else:
        promised = promised_frames(src)
        cut = truncation(present_frames(tmp), promised) if promised is not None else None
        if cut:
            problem = f"{src!r} is truncated: {cut}"
    if problem:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise RuntimeError(problem)
    os.replace(tmp, dst)
    return "converted"


def prepare_videos(items: list[Item], list_names: list[str], dst: str, video_filter: str, workers: int = 4,
                   ffmpeg: str | None = None, desc: str = "videos -> mp4") -> dict:
    """Converts every distinct output of `items` once, writes dst/<list>.csv for each of `list_names` (empty for a
    list with no item) and dst/failed.txt (removed when nothing failed). Returns {list: {"listed", "converted", "skipped", "missing", "failed", "in_csv"},
    "failed": [(list, key, reason)]}; a video in several lists counts as converted in the first only."""
    from tqdm import tqdm

    ffmpeg = find_ffmpeg(ffmpeg)
    jobs = {}
    for item in items:
        jobs.setdefault(item.rel, item.src)
    for rel in jobs:
        os.makedirs(os.path.dirname(os.path.join(dst, rel)), exist_ok=True)

    def run(job):
        rel, src = job
        try:
            return rel, convert(src, os.path.join(dst, rel), ffmpeg, video_filter), None
        except FileNotFoundError as e:
            return rel, "missing", f"FileNotFoundError: {e}"
        except Exception as e:
            return rel, "failed", f"{type(e).__name__}: {e}"

    results = {}
    with ThreadPoolExecutor(max(1, workers)) as pool:  # the work happens in ffmpeg subprocesses
        for rel, status, err in tqdm(pool.map(run, jobs.items()), total=len(jobs), desc=desc, unit="video"):
            results[rel] = (status, err)

    summary: dict = {name: dict.fromkeys(("listed",) + STATUSES + ("in_csv",), 0) for name in list_names}
    summary["failed"] = []
    lines: dict[str, list[str]] = {}
    counted = set()
    for item in items:
        counts = summary[item.list_name]
        status, err = results[item.rel]
        counts["listed"] += 1
        if status == "converted" and item.rel in counted:
            status = "skipped"
        counted.add(item.rel)
        counts[status] += 1
        if err:
            summary["failed"].append((item.list_name, item.key, err))
        else:
            counts["in_csv"] += 1
            lines.setdefault(item.list_name, []).append(f"{item.rel} {item.label}\n")
    for name in list_names:
        with open(os.path.join(dst, f"{name}.csv"), "w") as f:
            f.writelines(lines.get(name, []))
    failed_path = os.path.join(dst, "failed.txt")
    if summary["failed"]:
        with open(failed_path, "w") as f:
            f.writelines(f"{name} {key} {err}\n" for name, key, err in summary["failed"])
    elif os.path.exists(failed_path):
        os.remove(failed_path)
    return summary


def report(summary: dict, dst: str, list_names: list[str], fatal: bool = True) -> int:
    """Prints the per-list counts and every failure (stderr); returns 1 when something failed and `fatal`, else 0."""
    for name in list_names:
        c = summary[name]
        print(f"{name}: {c['listed']} listed, {c['converted']} converted, {c['skipped']} skipped (already done), "
              f"{c['missing']} missing, {c['failed']} failed, {c['in_csv']} in {name}.csv")
    for name, key, err in summary["failed"]:
        print(f"FAILED {name} {key}: {err}", file=sys.stderr)
    if summary["failed"]:
        videos = len({key for _, key, _ in summary["failed"]})
        print(f"{videos} videos missing or failed (listed in {os.path.join(dst, 'failed.txt')}); the "
              f"lists hold only the videos that exist. Fix and rerun to resume.", file=sys.stderr)
    return 1 if summary["failed"] and fatal else 0


def write_labels_json(path: str, class_names: list[str]) -> None:
    """The labels json in the official SSv2 form {class name: "id"}, which datasets.load_class_names reads."""
    import json

    with open(path, "w") as f:
        json.dump({name: str(i) for i, name in enumerate(class_names)}, f, indent=1)


def index_videos(root: str) -> dict[str, list[str]]:
    """Every file under `root` (any depth: flat or per-class folders) by its name without extension, sorted paths;
    unfinished .part files left out."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"video folder {root} does not exist")
    index: dict[str, list[str]] = {}
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if not name.endswith(".part"):
                index.setdefault(os.path.splitext(name)[0], []).append(os.path.join(folder, name))
    return index


def find_video(index: dict[str, list[str]], stem: str, preferred: str | None = None) -> str | None:
    """The file named `stem` (any extension): `preferred` when it exists, else the only match in `index`; when there
    is none, `preferred` (so that the failure names where it was expected) or None; ValueError naming the candidates
    when several match."""
    if preferred and os.path.isfile(preferred):
        return preferred
    paths = index.get(stem, [])
    if len(paths) > 1:
        raise ValueError(f"video {stem!r} is ambiguous: {', '.join(paths)}; keep one")
    return paths[0] if paths else preferred


def add_conversion_args(p: argparse.ArgumentParser, short_side: int | None = None) -> None:
    """The flags every preparation tool has: --workers and --ffmpeg, and --short_side (with this default) when given."""
    if short_side is not None:
        p.add_argument("--short_side", type=int, default=short_side, help="output short side in px (0 keeps the size)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel ffmpeg processes")
    p.add_argument("--ffmpeg", default=None, help="ffmpeg binary (default: imageio-ffmpeg's, else the system's)")


def run_prepare(tool: str, prepare: Callable[..., dict], *args) -> dict | None:
    """prepare(*args), with a missing or malformed input printed as one line `<tool>: <what>` instead of a
    traceback; None then."""
    try:
        return prepare(*args)
    except (FileNotFoundError, ValueError) as e:
        print(f"{tool}: {e}", file=sys.stderr)
        return None
