"""Is training fed? The real loader, model and optimizer step: loader alone, model alone and end to end.

    python benchmarks/bench_train.py --steps 20 [any run_class_finetuning.py flag, e.g. --model
        vit_llama_small_patch16_224 --batch_size 6 --num_sample 2 --num_workers 14 --augment_on device --compile]

Without --data_path it writes (once) a synthetic SSv2-format dataset of 240 px videos to --bench_data. It builds the
loaders, model, optimizer and augmentation exactly as run_class_finetuning.py does, then measures, each after
--warmup steps:
  loader alone     clips/s the DataLoader delivers (workers: decode, or decode + PIL augmentation), plus the
                   device augmentation when --augment_on device (timed on the device, separately)
  model alone      clips/s of engine.train_one_epoch on one batch repeated (no data wait; with --augment_on device
                   the augmentation runs each step, as in training, and 'step alone' is the same without it)
  end to end       clips/s of engine.train_one_epoch on the real loader, and the share of its time the training
                   loop waits for the next batch (time blocked in the loader's next())
and the peak memory (CUDA: max allocated; CPU: the process's max resident set).
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import engine_for_finetuning as engine  # noqa: E402
import run_class_finetuning as run  # noqa: E402
import distributed  # noqa: E402
import utils  # noqa: E402
from benchmarks.bench_model import device_name, sync  # noqa: E402


class WaitTimer:
    """Wraps a batch iterable: counts the seconds spent blocked in next() (the loop waiting for data)."""

    def __init__(self, batches):
        self.batches, self.wait = batches, 0.0

    def __iter__(self):
        it = iter(self.batches)
        while True:
            t = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            self.wait += time.perf_counter() - t
            yield batch


def main() -> None:
    parser = run.get_args_parser()
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps timed per measurement")
    parser.add_argument("--warmup", type=int, default=3, help="steps before timing (compilation, worker start)")
    parser.add_argument("--bench_data", default="/tmp/bench_train_videos", help="synthetic 240 px videos")
    parser.add_argument("--json", default=None, help="also write the figures here")
    parser.set_defaults(data_path=None, disable_eval_during_finetuning=True, epochs=1, output_dir="")
    args = parser.parse_args()
    if args.data_path is None:
        from datasets.synthetic import make_synthetic_dataset
        if not os.path.isfile(os.path.join(args.bench_data, "train.csv")):
            make_synthetic_dataset(args.bench_data, num_train=96, num_val=4, height=240, num_frames=48)
            with open(os.path.join(args.bench_data, "train.csv")) as f:  # long epochs: no worker restarts
                lines = f.read()
            with open(os.path.join(args.bench_data, "train.csv"), "w") as f:
                f.write(lines * 50)
        args.data_path, args.nb_classes = args.bench_data, 8
    args = run.check_args(args)
    distributed.init_distributed(args)
    device = run.run_device(args)
    utils.seed_everything(args.seed)
    loader = run.build_loaders(args, eval_only=False)["train"]
    model = run.build_model(args).to(device)
    run_model = torch.compile(model) if args.compile else model
    n = args.warmup + args.steps
    clips_per_step = args.batch_size * args.num_sample * args.update_freq
    t = run.build_training(args, model, max(n, len(loader) // args.update_freq))

    def epoch(batches, steps, prepare_batch=t.prepare_batch):
        return engine.train_one_epoch(run_model, batches, dataclasses.replace(
            t, steps_per_epoch=steps, prepare_batch=prepare_batch, print_freq=10**9), device, 0)

    def timed_epoch(batches, steps, **kw) -> float:
        epoch(batches[:args.warmup * args.update_freq], args.warmup, **kw)
        sync(device)
        t0 = time.perf_counter()
        epoch(batches[:steps * args.update_freq], steps, **kw)
        sync(device)
        return args.steps * clips_per_step / (time.perf_counter() - t0)

    def repeat():  # the loader, restarted as often as needed (a new epoch of the sampler each time)
        for e in itertools.count():
            loader.sampler.set_epoch(e)
            yield from loader

    # loader alone (workers), then the device augmentation alone
    batches = repeat()
    for _ in range(args.warmup * args.update_freq):
        next(batches)
    t0 = time.perf_counter()
    kept = [next(batches) for _ in range(args.steps * args.update_freq)]
    loader_cps = args.steps * clips_per_step / (time.perf_counter() - t0)
    figures = {"device": device_name(device), "model": args.model, "augment_on": args.augment_on,
               "clips_per_step": clips_per_step, "num_workers": args.num_workers, "compile": args.compile,
               "amp": args.amp, "loader_clips_per_s": loader_cps}
    if args.augment_on == "device":
        for b in kept[:2]:
            t.prepare_batch(b)
        sync(device)
        t0 = time.perf_counter()
        for b in kept[:args.steps]:
            t.prepare_batch(b)
        sync(device)
        figures["device_augment_clips_per_s"] = len(kept[:args.steps]) * args.batch_size * args.num_sample / (
            time.perf_counter() - t0)
    # model alone: one batch, repeated (with the device augmentation each step); the step alone: one prepared batch
    figures["model_clips_per_s"] = timed_epoch(kept[:args.update_freq] * n, args.steps)
    if args.augment_on == "device":
        prepared = [t.prepare_batch(b) for b in kept[:args.update_freq]]
        figures["step_alone_clips_per_s"] = timed_epoch(prepared * n, args.steps, prepare_batch=lambda b: b)
    # end to end: the real loader
    del kept
    timer = WaitTimer(itertools.islice(repeat(), n * args.update_freq))
    it = iter(timer)
    epoch(itertools.islice(it, args.warmup * args.update_freq), args.warmup)
    sync(device)
    timer.wait = 0.0
    t0 = time.perf_counter()
    epoch(it, args.steps)
    sync(device)
    elapsed = time.perf_counter() - t0
    figures.update(end_to_end_clips_per_s=args.steps * clips_per_step / elapsed, data_wait_share=timer.wait / elapsed,
                   peak_memory_gib=utils.peak_memory_gib(device), loadavg_1min=os.getloadavg()[0])
    figures["end_to_end_over_model"] = figures["end_to_end_clips_per_s"] / figures["model_clips_per_s"]
    print(f"{figures['device']}, {args.model}, {clips_per_step} clips/step, --augment_on {args.augment_on}, "
          f"{args.num_workers} workers, amp {args.amp}{', compiled' if args.compile else ''}")
    for k in ("loader_clips_per_s", "device_augment_clips_per_s", "step_alone_clips_per_s", "model_clips_per_s",
              "end_to_end_clips_per_s"):
        if k in figures:
            print(f"  {k[:-len('_clips_per_s')].replace('_', ' '):15s} {figures[k]:8.1f} clips/s")
    print(f"  end to end / model alone {100 * figures['end_to_end_over_model']:.0f}%, waiting for data "
          f"{100 * figures['data_wait_share']:.0f}% of the time, peak memory {figures['peak_memory_gib']:.2f} GiB, "
          f"1-min load {figures['loadavg_1min']:.1f} on {os.cpu_count()} cores")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)
    distributed.cleanup_distributed()


if __name__ == "__main__":
    main()
