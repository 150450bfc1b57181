"""Per-process data throughput on 240 px mp4s: decode only, the train pipeline, the test pipeline.

  python benchmarks/bench_data.py [--augment_on workers|device] [--videos 24] [--height 240] [--frames 48]
                                  [--decoder auto] [--threads 1]

Generates synthetic H.264 videos at SSv2's size (240 px high, ~4 s at 12 fps) once, then measures one process with
one torch thread (what each DataLoader worker gets):
  decode        frames of one train clip (TSN, 16 frames), decoded only
  train         one train item: decode once + 2 independently augmented 16 x 224 x 224 clips (RandAugment, crop,
                normalise, erase); reported as clips/s (2 per item), plus one clip's augmentation with and without
                RandAugment (same seeds, so the same ops, in both)
  test          one test item: decode once + all 2 x 3 views (resize, crop, normalise); reported as videos/s
and the share of each pipeline's time spent outside decoding. With --augment_on device the train item is the decoded
video only (uint8, plus its share of pack_videos_collate over a batch of --batch_size videos), reported as a ratio
to the decode, and the device module (device_augment.DeviceAugment) is timed on this CPU per clip, with one
thread and with all of them.
"""
import argparse
import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from datasets.decoding import read_frames  # noqa: E402
from datasets.ssv2 import (SSv2Dataset, eval_indices, pack_videos_collate, read_video_list,  # noqa: E402
                           train_indices)
from datasets.synthetic import make_synthetic_dataset  # noqa: E402
from device_augment import DeviceAugment  # noqa: E402
from video_transforms import AugmentConfig, TrainTransform  # noqa: E402


def _rate(fn, n: int, repeats: int) -> float:
    """Seconds per call of fn(i), best of `repeats` passes over n items (less sensitive to other load)."""
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for i in range(n):
            fn(i)
        best = min(best, (time.perf_counter() - t) / n)
    return best


def _interleaved(fns, n: int, repeats: int) -> list[float]:
    """Seconds per call of each fn(i): the pipelines run in turn on each item, each item's time is its best over
    `repeats` passes, so that the ratios between pipelines do not drift with other load on the machine."""
    best = np.full((len(fns), n), np.inf)
    for _ in range(repeats):
        for i in range(n):
            for k, fn in enumerate(fns):
                t = time.perf_counter()
                fn(i)
                best[k, i] = min(best[k, i], time.perf_counter() - t)
    return best.mean(1).tolist()


def _seed(i: int) -> None:
    random.seed(i)
    np.random.seed(i)
    torch.manual_seed(i)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="/tmp/bench_data_videos")
    p.add_argument("--videos", type=int, default=24)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--frames", type=int, default=48, help="frames per generated video (SSv2 averages ~45)")
    p.add_argument("--decoder", default="auto", choices=["auto", "decord", "pyav"])
    p.add_argument("--threads", type=int, default=1, help="decoder threads")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--train_interpolation", default="bicubic", help="RandAugment's resampling (VideoMAE: bicubic)")
    p.add_argument("--augment_on", default="workers", choices=["workers", "device"])
    p.add_argument("--batch_size", type=int, default=6, help="videos per batch for the collate and the device module")
    p.add_argument("--json", default=None, help="also write the figures here")
    a = p.parse_args()
    torch.set_num_threads(1)

    if not os.path.exists(os.path.join(a.out, "val.csv")):
        make_synthetic_dataset(a.out, num_train=0, num_val=a.videos, height=a.height, num_frames=a.frames)
    csv = os.path.join(a.out, "val.csv")
    paths = [p for p, _ in read_video_list(csv)][:a.videos]
    n = len(paths)
    recipe = AugmentConfig(interpolation=a.train_interpolation, num_sample=2, input_size=224)
    common = dict(num_frames=16, augment=recipe, short_side_size=224, decoder=a.decoder, decode_threads=a.threads)
    train = SSv2Dataset(csv, "train", augment_on=a.augment_on, **common)
    test = SSv2Dataset(csv, "test", test_num_segment=2, test_num_crop=3, **common)
    train[0], test[0]  # warm up (imports, first decoder open)

    t_decode, t_decode_test, t_train, t_test = _interleaved([
        lambda i: (_seed(i), read_frames(paths[i], lambda m: train_indices(m, 16), a.decoder, a.threads)),
        lambda i: read_frames(paths[i], lambda m: eval_indices(m, 16, 0, 2) + eval_indices(m, 16, 1, 2), a.decoder,
                              a.threads),
        lambda i: (_seed(i), train[i]),
        lambda i: test[i]], n, a.repeats)
    if a.augment_on == "device":
        device_figures(a, train, t_decode, t_train, t_decode_test, t_test)
        return
    frames = [read_frames(p, lambda m: train_indices(m, 16), a.decoder, a.threads)[0] for p in paths]
    aug = TrainTransform(recipe)
    # Seeded per clip (and per train item above), so that RandAugment draws the same ops in every pass and in both
    # timings, and their difference is the rest.
    t_ra = _rate(lambda i: (_seed(i), aug.rand_augment(frames[i])), n, a.repeats)
    t_aug = _rate(lambda i: (_seed(i), aug(frames[i])), n, a.repeats)
    no_ra = TrainTransform(AugmentConfig(None, input_size=224))
    t_rest = _rate(lambda i: (_seed(i), no_ra(frames[i])), n, a.repeats)

    h, w = frames[0].shape[1:3]
    figures = {
        "video": f"{w}x{h}, {a.frames} frames, H.264 mp4", "decoder": train.decoder, "decode_threads": a.threads,
        "train_interpolation": a.train_interpolation,
        "decode_clips_per_s": 1 / t_decode,
        "train_clips_per_s": 2 / t_train, "train_items_per_s": 1 / t_train,
        "train_share_outside_decoding": 1 - t_decode / t_train,
        "train_augment_ms_per_clip": 1e3 * t_aug, "train_randaugment_ms_per_clip": 1e3 * t_ra,
        "train_augment_without_randaugment_ms_per_clip": 1e3 * t_rest,
        "test_videos_per_s": 1 / t_test, "test_views_per_s": 6 / t_test,
        "test_share_outside_decoding": 1 - t_decode_test / t_test,
        "loadavg_1min": os.getloadavg()[0],
    }
    print(f"{figures['video']}, decoder {figures['decoder']} ({a.threads} thread), 1 torch thread, {n} videos, "
          f"RandAugment resampling {a.train_interpolation}")
    print(f"decode only (16-frame train clip): {figures['decode_clips_per_s']:7.1f} clips/s "
          f"({1e3 * t_decode:.1f} ms)")
    print(f"train (num_sample 2, 16x224x224): {figures['train_clips_per_s']:7.1f} clips/s "
          f"({1e3 * t_train:.1f} ms/item; {100 * figures['train_share_outside_decoding']:.0f}% outside decoding; "
          f"augment {1e3 * t_aug:.1f} ms/clip of which RandAugment {1e3 * t_ra:.1f} ms)")
    print(f"train augmentation without RandAugment (crop, resize, normalise, erase): {1e3 * t_rest:.1f} ms/clip")
    print(f"test (2x3 views, 16x224x224):     {figures['test_videos_per_s']:7.1f} videos/s "
          f"({1e3 * t_test:.1f} ms/video, decode {1e3 * t_decode_test:.1f} ms; "
          f"{100 * figures['test_share_outside_decoding']:.0f}% outside decoding)")
    print(f"1-min load average during the run: {figures['loadavg_1min']:.2f} on {os.cpu_count()} cores")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(figures, f, indent=1)


def device_figures(a, train: SSv2Dataset, t_decode: float, t_train: float, t_decode_test: float,
                   t_test: float) -> None:
    """--augment_on device: what a worker does per video (decode + its share of the collate) against one decode,
    the test item against its decode, and the device module's cost per clip on this CPU."""
    items = [train[i] for i in range(a.batch_size)]
    t_collate = _rate(lambda i: pack_videos_collate(items), 3, a.repeats) / a.batch_size
    batch = pack_videos_collate(items)
    aug = DeviceAugment("cpu", AugmentConfig(num_sample=2, input_size=224), seed=0)
    clips = 2 * a.batch_size
    device_ms = {}
    for threads in sorted({1, os.cpu_count()}):
        torch.set_num_threads(threads)
        device_ms[threads] = 1e3 * _rate(lambda i: aug(batch), 2, 1) / clips
    torch.set_num_threads(1)
    worker = t_train + t_collate
    h, w = items[0][0].shape[1:3]
    figures = {
        "video": f"{w}x{h}, {a.frames} frames, H.264 mp4", "decoder": train.decoder, "augment_on": "device",
        "decode_ms": 1e3 * t_decode, "train_item_ms": 1e3 * t_train, "collate_ms_per_video": 1e3 * t_collate,
        "worker_ms_per_train_video": 1e3 * worker, "worker_cost_over_decode": worker / t_decode,
        "test_ms_per_video": 1e3 * t_test, "test_decode_ms": 1e3 * t_decode_test,
        "test_cost_over_decode": t_test / t_decode_test,
        **{f"device_module_cpu_ms_per_clip_{k}_threads": v for k, v in device_ms.items()},
        "loadavg_1min": os.getloadavg()[0],
    }
    print(f"{figures['video']}, decoder {figures['decoder']} ({a.threads} thread), 1 torch thread per worker, "
          f"--augment_on device")
    print(f"worker, per training video (num_sample 2 drawn on the device): {1e3 * worker:.1f} ms = item "
          f"{1e3 * t_train:.1f} ms + collate {1e3 * t_collate:.2f} ms; one 16-frame decode {1e3 * t_decode:.1f} ms "
          f"-> {figures['worker_cost_over_decode']:.2f}x the decode")
    print(f"worker, per test video (2x3 uint8 views): {1e3 * t_test:.1f} ms; its decode {1e3 * t_decode_test:.1f} ms "
          f"-> {figures['test_cost_over_decode']:.2f}x the decode")
    print("device module on this CPU (RandAugment + crop + normalise + erase, batch of "
          f"{a.batch_size} videos x 2 clips): " + ", ".join(f"{v:.0f} ms/clip with {k} thread(s)"
                                                            for k, v in device_ms.items()))
    print(f"1-min load average during the run: {figures['loadavg_1min']:.2f} on {os.cpu_count()} cores")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    main()
