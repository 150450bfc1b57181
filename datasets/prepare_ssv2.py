"""One command from the official Something-Something-v2 download to VideoMAE-style lists and H.264 videos.

  python datasets/prepare_ssv2.py --src OFFICIAL_DIR --dst OUT_DIR [--workers N] [--ffmpeg PATH]

Input (OFFICIAL_DIR): something-something-v2-labels.json ({template without brackets: "id"}),
something-something-v2-train.json and -validation.json (lists of {"id", "label", "template", "placeholders"}; an
item's class is its template with '[' and ']' removed) and the videos <id>.webm, either in OFFICIAL_DIR or in
OFFICIAL_DIR/20bn-something-something-v2/ (where the official archives extract).

Output (OUT_DIR): videos/<id>.mp4 (H.264, yuv420p, 240 px high, even width, aspect kept), train.csv, val.csv,
test.csv (= val, as VideoMAE evaluates) with lines `videos/<id>.mp4 <label>` (paths relative to OUT_DIR, which is
the dataset's default data_root), and a copy of the labels json.

Resumable: an existing videos/<id>.mp4 is skipped (outputs are encoded to <id>.mp4.part and renamed when complete,
so a finished name is always a whole video; leftover .part files are overwritten). Failures (missing source video,
ffmpeg error, a truncated source: ffmpeg's "ended prematurely" or fewer frames than its header promises) never
vanish: every one is printed with its reason and written to OUT_DIR/failed.txt, the CSVs list only the videos that
exist, the summary gives listed/converted/skipped/failed per split, and the exit status is 1.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

LABELS = "something-something-v2-labels.json"
SPLITS = (("train", "something-something-v2-train.json"), ("val", "something-something-v2-validation.json"))


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


def _load_json(path: str):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"missing {os.path.basename(path)}: expected it at {path} (official SSv2 download)")
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None


def read_annotations(src: str) -> tuple[dict[str, int], dict[str, list[tuple[str, int]]]]:
    """Labels and per-split (video id, label) lists from the official jsons; errors name the file, item and problem."""
    labels_path = os.path.join(src, LABELS)
    labels = {name: int(idx) for name, idx in _load_json(labels_path).items()}
    seen: dict[str, str] = {}
    splits = {}
    for split, name in SPLITS:
        path = os.path.join(src, name)
        items = []
        for i, item in enumerate(_load_json(path)):
            if not isinstance(item, dict) or "id" not in item or "template" not in item:
                raise ValueError(f"{path}: item {i} is {item!r}, expected an object with 'id' and 'template'")
            vid, cls = str(item["id"]), item["template"].replace("[", "").replace("]", "")
            if cls not in labels:
                raise ValueError(f"{path}: item {i} (id {vid}) has template {item['template']!r}, whose class "
                                 f"{cls!r} is not in {labels_path}")
            if vid in seen:
                raise ValueError(f"{path}: item {i}: duplicate video id {vid} (already listed in {seen[vid]})")
            seen[vid] = name
            items.append((vid, labels[cls]))
        splits[split] = items
    return labels, splits


def promised_frames(path: str) -> int | None:
    """Frames the container's header promises (duration x frame rate); None when it states no duration."""
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        if container.duration and stream.average_rate:
            return round(container.duration / av.time_base * stream.average_rate)
    return None


def present_frames(path: str) -> int:
    """Frames really there: the mp4 index's count, else a count of the demuxed packets."""
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        return stream.frames or sum(1 for packet in container.demux(stream) if packet.size)


def convert(src: str, dst: str, ffmpeg: str, height: int = 240) -> str:
    """Re-encodes one video to H.264 mp4 via dst.part; returns 'converted' or 'skipped', raises on failure.

    A truncated source is a failure although ffmpeg exits 0 on it: when ffmpeg says the file "ended prematurely",
    or when the output has fewer frames than the source's header promises (one frame of rounding allowed)."""
    if os.path.isfile(dst) and os.path.getsize(dst) > 0:
        return "skipped"
    if not os.path.isfile(src):
        raise FileNotFoundError(f"missing source video {src!r}")
    tmp = dst + ".part"
    cmd = [ffmpeg, "-nostdin", "-y", "-v", "warning", "-i", src, "-an", "-vf", f"scale=-2:{height}", "-c:v",
           "libx264", "-pix_fmt", "yuv420p", "-f", "mp4", tmp]
    result = subprocess.run(cmd, capture_output=True, text=True)
    err = result.stderr.strip().splitlines()
    problem = None
    if result.returncode != 0 or not os.path.isfile(tmp) or os.path.getsize(tmp) == 0:
        problem = f"ffmpeg failed on {src!r} (exit {result.returncode}): {err[-1] if err else 'no output'}"
    elif any("ended prematurely" in line for line in err):
        problem = f"{src!r} is truncated (ffmpeg: {next(x for x in err if 'ended prematurely' in x).strip()})"
    else:
        promised = promised_frames(src)
        written = present_frames(tmp) if promised is not None else None
        if written is not None and written < promised - 1:
            problem = f"{src!r} is truncated: {written} frames decode, its header promises {promised}"
    if problem:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise RuntimeError(problem)
    os.replace(tmp, dst)
    return "converted"


def prepare(src: str, dst: str, workers: int = 4, ffmpeg: str | None = None, height: int = 240) -> dict:
    """Converts all listed videos and writes the CSVs; returns the summary (see the module docstring)."""
    from tqdm import tqdm

    labels, splits = read_annotations(src)
    video_dir = os.path.join(src, "20bn-something-something-v2")
    if not os.path.isdir(video_dir):
        video_dir = src
    ffmpeg = find_ffmpeg(ffmpeg)
    os.makedirs(os.path.join(dst, "videos"), exist_ok=True)
    jobs = [(split, vid, label) for split, items in splits.items() for vid, label in items]

    def run(job):
        split, vid, label = job
        try:
            return job, convert(os.path.join(video_dir, f"{vid}.webm"), os.path.join(dst, "videos", f"{vid}.mp4"),
                                ffmpeg, height), None
        except Exception as e:
            return job, "failed", f"{type(e).__name__}: {e}"

    results = {}
    with ThreadPoolExecutor(max(1, workers)) as pool:  # the work happens in ffmpeg subprocesses
        for job, status, err in tqdm(pool.map(run, jobs), total=len(jobs), desc="SSv2 -> mp4", unit="video"):
            results[job] = (status, err)

    summary = {"failed": []}
    for split, items in splits.items():
        counts = {"listed": len(items), "converted": 0, "skipped": 0, "failed": 0}
        lines = []
        for vid, label in items:
            status, err = results[(split, vid, label)]
            counts[status] += 1
            if err:
                summary["failed"].append((split, vid, err))
            else:
                lines.append(f"videos/{vid}.mp4 {label}\n")
        counts["in_csv"] = len(lines)
        summary[split] = counts
        with open(os.path.join(dst, f"{split}.csv"), "w") as f:
            f.writelines(lines)
    shutil.copyfile(os.path.join(dst, "val.csv"), os.path.join(dst, "test.csv"))
    shutil.copyfile(os.path.join(src, LABELS), os.path.join(dst, LABELS))
    failed_path = os.path.join(dst, "failed.txt")
    if summary["failed"]:
        with open(failed_path, "w") as f:
            f.writelines(f"{split} {vid} {err}\n" for split, vid, err in summary["failed"])
    elif os.path.exists(failed_path):
        os.remove(failed_path)
    return summary


def main() -> int:
    p = argparse.ArgumentParser(description="Prepare SSv2 from the official download (webm + jsons).")
    p.add_argument("--src", required=True, help="official SSv2 folder (jsons; videos here or in 20bn-something-something-v2/)")
    p.add_argument("--dst", required=True, help="output folder: videos/, train.csv, val.csv, test.csv, labels json")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel ffmpeg processes")
    p.add_argument("--ffmpeg", default=None, help="ffmpeg binary (default: imageio-ffmpeg's, else the system's)")
    p.add_argument("--height", type=int, default=240, help="output height in px (width even, aspect kept)")
    a = p.parse_args()
    summary = prepare(a.src, a.dst, a.workers, a.ffmpeg, a.height)
    for split, _ in SPLITS:
        c = summary[split]
        print(f"{split}: {c['listed']} listed, {c['converted']} converted, {c['skipped']} skipped (already done), "
              f"{c['failed']} failed, {c['in_csv']} in {split}.csv")
    for split, vid, err in summary["failed"]:
        print(f"FAILED {split} {vid}: {err}", file=sys.stderr)
    if summary["failed"]:
        print(f"{len(summary['failed'])} videos failed (listed in {os.path.join(a.dst, 'failed.txt')}); the CSVs "
              f"hold only the videos that exist. Fix and rerun to resume.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
