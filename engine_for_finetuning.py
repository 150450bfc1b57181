"""Training epoch, single-view validation and the multi-view test with its exact cross-rank merge.

Per-step numbers are summed in device tensors and read on the host only every print_freq micro-steps and at the end
of an epoch. The one per-step host sync left is GradScaler.step under fp16, which reads its inf/NaN check to decide
whether to skip the step (bf16 and fp32 runs have no per-step sync).
"""
from __future__ import annotations

import contextlib
import datetime
import itertools
import math
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import distributed
import utils
from optim_factory import set_schedules
from video_transforms import normalize_clips


def is_compiled(model: nn.Module) -> bool:
    """Whether torch.compile wraps the model (under DDP or not)."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    return hasattr(model, "_orig_mod")


def autocast(device: torch.device, amp_dtype: torch.dtype | None):
    """Autocast to amp_dtype on device's type; amp_dtype None disables it (full precision)."""
    return torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp_dtype is not None)


def check_device(model: nn.Module, device: torch.device) -> None:
    """Fail clearly (not deep inside a kernel) when the model's parameters are not on the device the batches go to."""
    p = next(model.parameters(), None)
    if p is not None and (p.device.type != device.type or
                          (device.index is not None and p.device.index not in (None, device.index))):
        raise ValueError(f"the model's parameters are on {p.device} but its batches go to {device}: move the model "
                         f"(or put an EMA into it with TrainableEma.applied()) before calling the engine")


def apply_mixup(mixup_fn: Callable, clips: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """timm Mixup/CutMix on B x C x T x H x W clips: the box is cut in H x W and is the same for every frame.

    (timm slices dims 2 and 3, i.e. T and H of a 5-D clip; folding C*T into channels makes it cut H x W.)
    """
    b, c, t, h, w = clips.shape
    mixed, targets = mixup_fn(clips.reshape(b, c * t, h, w), labels)
    return mixed.reshape(b, c, t, h, w), targets


def to_device(batch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(clips, labels) of a worker-augmented batch, moved to the device."""
    return batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)


def optimizer_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, params: list[torch.Tensor],
                   clip_grad: float | None = None, model_ema=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Unscale, clip (or only measure) the gradient norm, step, update the loss scale, zero the gradients, update EMA.

    An enabled GradScaler (fp16) skips the step when a gradient holds inf/NaN, which is exactly when the norm is not
    finite; a disabled one (bf16, fp32) always steps. Returns (grad_norm, skipped) as device tensors.
    """
    scaler.unscale_(optimizer)
    if clip_grad:
        grad_norm = nn.utils.clip_grad_norm_(params, clip_grad)
    else:
        grad_norm = nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    if model_ema is not None:
        model_ema.update()
    return grad_norm, ~torch.isfinite(grad_norm) & scaler.is_enabled()


@dataclass
class Training:
    """What every training step of a run uses, assembled once (run_class_finetuning.build_training): the loss, the
    optimizer with its per-step lr/wd schedules, the step layout, mixed precision, clipping, EMA, mixup, how a loader
    batch becomes (clips, labels) on the device, logging, and the objects whose state each rank saves in a
    checkpoint (``per_rank``: name -> object with state_dict/load_state_dict, e.g. the device augmentation)."""
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    lr_schedule: np.ndarray
    wd_schedule: np.ndarray
    steps_per_epoch: int
    update_freq: int = 1
    scaler: torch.amp.GradScaler | None = None  # an enabled GradScaler for fp16; None: a disabled one
    amp_dtype: torch.dtype | None = None
    clip_grad: float | None = None
    model_ema: Any = None
    mixup_fn: Callable | None = None
    prepare_batch: Callable[[Any], tuple[torch.Tensor, torch.Tensor]] | None = None  # None: to_device
    per_rank: dict[str, Any] = field(default_factory=dict)
    print_freq: int = 20
    log_writer: utils.TensorboardLogger | None = None


@dataclass
class EpochResult:
    """One call of train_one_epoch: the epoch's numbers (_Meter.stats; empty when a stop or a divergence ended it
    early), this rank's meter state (continues the epoch's sums after a resume), the optimizer steps of the epoch
    done when it ended early (None: it ran to its end), the optimizer steps that applied a non-finite gradient and
    the non-finite losses (both summed over ranks), and whether a divergence ended it (at a log point, once a
    non-finite loss or gradient was seen: the weights are then no longer trustworthy)."""
    stats: dict
    meter: dict
    stopped_at: int | None = None
    nonfinite_steps: int = 0
    nonfinite_losses: int = 0
    diverged: bool = False


def train_one_epoch(model: nn.Module, loader: Iterable, run: Training, device: torch.device, epoch: int, *,
                    first_step: int = 0, meter_state: dict | None = None,
                    stop: Callable[[], bool] | None = None) -> EpochResult:
    """One epoch of run.steps_per_epoch optimizer steps, each accumulating run.update_freq micro-batches.

    lr and weight decay follow the per-iteration schedules from the epoch's first global step (epoch x
    steps_per_epoch); DDP all-reduces gradients on a step's last micro-batch only. A resumed epoch starts at
    ``first_step`` (the loader yields the remaining batches only) with the sums of its earlier steps
    (``meter_state``). ``stop`` is called after every optimizer step (on every rank); when it says True the epoch
    ends there. A non-finite loss or an applied non-finite gradient ends the epoch at the next log point (every
    print_freq micro-steps and the last one, where the host reads the sums anyway; every rank decides alike).
    """
    check_device(model, device)
    model.train(True)
    optimizer, update_freq = run.optimizer, run.update_freq
    scaler = run.scaler or torch.amp.GradScaler(device.type, enabled=False)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    no_sync = model.no_sync if isinstance(model, nn.parallel.DistributedDataParallel) else contextlib.nullcontext
    prepare_batch = run.prepare_batch or partial(to_device, device=device)
    start_step = epoch * run.steps_per_epoch
    first, total = first_step * update_freq, run.steps_per_epoch * update_freq
    meter = _Meter(device, epoch, total, run.print_freq, run.log_writer, start_step * update_freq, is_compiled(model),
                   meter_state)
    optimizer.zero_grad(set_to_none=True)
    for i, batch in enumerate(itertools.islice(loader, total - first) if total > first else (), start=first):
        meter.data_ready()
        clips, labels = prepare_batch(batch)
        step, last_micro = start_step + i // update_freq, (i + 1) % update_freq == 0
        if i % update_freq == 0:
            set_schedules(optimizer, float(run.lr_schedule[step]), float(run.wd_schedule[step]))
        targets = labels
        if run.mixup_fn is not None:
            clips, targets = apply_mixup(run.mixup_fn, clips, labels)
        with contextlib.nullcontext() if last_micro else no_sync():
            with autocast(device, run.amp_dtype):
                logits = model(clips)
            loss = run.criterion(logits.float(), targets)
            scaler.scale(loss / update_freq).backward()
        grad_norm = skipped = None
        if last_micro:
            grad_norm, skipped = optimizer_step(optimizer, scaler, params, run.clip_grad, run.model_ema)
        meter.update(i, loss.detach(), clips.shape[0], grad_norm, skipped, optimizer, scaler)
        if meter.diverged or (last_micro and stop is not None and stop()):
            return EpochResult({}, meter.state_dict(), (i + 1) // update_freq, *meter.nonfinite_counts(),
                               diverged=meter.diverged)
    if meter.micro + meter.done_micro == 0:
        raise RuntimeError("the training loader produced no batch")
    stats = {**meter.stats(optimizer, scaler), "bad_videos": _bad_videos(getattr(loader, "dataset", None), device)}
    return EpochResult(stats, meter.state_dict(), None, stats["nonfinite_steps"], stats["nonfinite_losses"])


class _Meter:
    """Numbers of one training epoch: summed per step in device tensors, read every print_freq micro-steps (a log
    line and TensorBoard scalars) and at the end (stats, averaged over ranks).

    Sums: loss, non-finite losses, grad norm over finite steps, finite steps, steps skipped by GradScaler.
    Host timers: data wait (from the end of one micro-step to the arrival of the next batch) and wall time.
    ``diverged`` turns True at the log point that finds a non-finite loss or an applied non-finite gradient on any
    rank (the log point's one collective in a distributed run).
    A resumed epoch continues the sums of its earlier part (state_dict / ``state``); rates and timers cover this
    process's part only.
    """

    def __init__(self, device: torch.device, epoch: int, total: int, print_freq: int,
                 log_writer: utils.TensorboardLogger | None, first_iter: int, compiled: bool,
                 state: dict | None = None):
        self.device, self.epoch, self.total, self.print_freq = device, epoch, total, print_freq
        self.log_writer, self.first_iter, self.compiled = log_writer, first_iter, compiled
        self.sums = torch.zeros(5, device=device)
        self.window = torch.zeros(5, device=device)
        self.micro = self.steps = self.clips = self.clips_after_first = 0
        self.win_micro = self.win_steps = self.win_clips = 0
        self.done_micro = self.done_steps = 0  # micro-steps and steps of the epoch's earlier part (resumed)
        if state is not None:  # sums and the open window apart: the same float additions as an uninterrupted epoch
            self.sums += state["sums"].to(device)
            self.window += state["window"].to(device)
            self.done_micro, self.done_steps = int(state["micro"]), int(state["steps"])
            self.win_micro, self.win_steps = int(state["win_micro"]), int(state["win_steps"])
        self.wait = self.win_wait = 0.0
        self.t_start = self.t_window = self.t_last = time.perf_counter()
        self.t_first = self.t_start  # end of the first micro-step: rates leave out worker start-up and compilation
        self.world = distributed.get_world_size()
        self.diverged = False

    def data_ready(self) -> None:
        wait = time.perf_counter() - self.t_last
        self.wait += wait
        self.win_wait += wait

    def update(self, i: int, loss: torch.Tensor, clips: int, grad_norm: torch.Tensor | None,
               skipped: torch.Tensor | None, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
        row = [loss, (~torch.isfinite(loss)).float()]
        if grad_norm is None:
            row += [torch.zeros((), device=self.device)] * 3
        else:
            finite = torch.isfinite(grad_norm).to(self.device)
            grad_norm = torch.where(finite, grad_norm.to(self.device), 0.0)
            row += [grad_norm, finite.float(), skipped.float().to(self.device)]
            self.steps += 1
            self.win_steps += 1
        self.window += torch.stack(row)
        self.micro += 1
        self.win_micro += 1
        self.clips += clips
        self.win_clips += clips
        self.t_last = time.perf_counter()
        if self.micro == 1:  # worker start-up and compilation: left out of the rates when later steps follow
            self.t_first = self.t_last
            if self.compiled:
                print(f"Epoch [{self.epoch}] first step {self.t_last - self.t_start:.1f}s: torch.compile compiles "
                      f"the model on its first steps (later ones reuse the code); clips/s leaves this step out",
                      flush=True)
            if self.print_freq > 1 and self.total - i > 1:
                self.t_window, self.win_clips, self.win_wait = self.t_last, 0, 0.0
        else:
            self.clips_after_first += clips
        if (i + 1) % self.print_freq == 0 or i + 1 == self.total:
            self._log(i, optimizer, scaler)

    def _log(self, i: int, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
        health = distributed.all_reduce_sum(torch.stack([self.window[1], self.win_steps - self.window[3:].sum()]))
        loss, nonfinite, grad_sum, finite, skipped, bad_losses, bad_steps = \
            torch.cat([self.window, health]).tolist()  # the host sync of the logging interval
        if bad_losses > 0 or bad_steps > 0:
            print(f"Epoch [{self.epoch}] [{i + 1}/{self.total}] diverged: {bad_losses:.0f} non-finite losses and "
                  f"{math.ceil(round(bad_steps) / self.world)} optimizer steps with a non-finite gradient since the "
                  f"last log line", flush=True)
            self.diverged = True
        now = time.perf_counter()
        elapsed = now - self.t_window
        rec = {"loss": loss / self.win_micro, "lr": max(g["lr"] for g in optimizer.param_groups),
               "grad_norm": grad_sum / finite if finite else None,
               "clips_per_s": self.win_clips * self.world / elapsed, "data_wait": self.win_wait / elapsed,
               "peak_mem_gib": utils.peak_memory_gib(self.device)}
        eta = (now - self.t_start) / self.micro * (self.total - i - 1)
        gn = f"{rec['grad_norm']:.3f}" if finite else "n/a"
        line = (f"Epoch [{self.epoch}] [{i + 1}/{self.total}] eta {datetime.timedelta(seconds=int(eta))} "
                f"loss {rec['loss']:.4f} lr {rec['lr']:.3e} grad_norm {gn}")
        if scaler.is_enabled():
            rec.update(loss_scale=scaler.get_scale(), skipped_steps=int(skipped))
            line += f" loss_scale {rec['loss_scale']:.0f} skipped {int(skipped)}/{self.win_steps} steps"
        print(f"{line} clips/s {rec['clips_per_s']:.1f} data_wait {100 * rec['data_wait']:.0f}% "
              f"peak_mem {rec['peak_mem_gib']:.2f}GiB", flush=True)
        if self.log_writer is not None:
            self.log_writer.log(rec, step=self.first_iter + i + 1, head="train")
        self.sums += self.window
        self.window.zero_()
        self.win_micro = self.win_steps = self.win_clips = 0
        self.win_wait, self.t_window = 0.0, now

    def state_dict(self) -> dict:
        """The epoch's sums so far (for a mid-epoch checkpoint): this rank's, as CPU tensors and ints."""
        return {"sums": self.sums.cpu(), "window": self.window.cpu(), "micro": self.done_micro + self.micro,
                "steps": self.done_steps + self.steps, "win_micro": self.win_micro, "win_steps": self.win_steps}

    def nonfinite_counts(self) -> tuple[int, int]:
        """(optimizer steps that applied a non-finite gradient norm, non-finite losses) of the epoch so far, summed
        over ranks (see stats); a collective in a distributed run."""
        sums = self.sums + self.window
        counts = distributed.all_reduce_sum(torch.stack([self.done_steps + self.steps - sums[3:].sum(), sums[1]]))
        steps, losses = counts.tolist()  # a step's norm is the same on every rank, unless one rank alone broke it
        return math.ceil(round(steps) / self.world), int(round(losses))

    def stats(self, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> dict:
        """Epoch means over ranks: loss, grad_norm (finite steps), skipped_steps, nonfinite_steps (optimizer steps
        taken with a non-finite gradient norm: not skipped by an fp16 GradScaler, so they reached the weights),
        nonfinite_losses; lr/wd now; this rank's clips/s (times world size), data-wait share and peak memory."""
        sums = distributed.all_reduce_sum(self.sums + self.window)
        loss, nonfinite_losses, grad_sum, finite, skipped = sums.tolist()
        micro, steps = self.done_micro + self.micro, self.done_steps + self.steps
        elapsed = time.perf_counter() - self.t_start
        rate_time = self.t_last - self.t_first if self.micro > 1 else self.t_last - self.t_start
        rate_clips = self.clips_after_first if self.micro > 1 else self.clips
        return {"loss": loss / (micro * self.world), "lr": max(g["lr"] for g in optimizer.param_groups),
                "min_lr": min(g["lr"] for g in optimizer.param_groups),
                "wd": max(g["weight_decay"] for g in optimizer.param_groups),
                "grad_norm": grad_sum / finite if finite else None, "loss_scale": scaler.get_scale(),
                "skipped_steps": int(round(skipped / self.world)),
                "nonfinite_steps": int(round(steps - (finite + skipped) / self.world)),
                "nonfinite_losses": int(round(nonfinite_losses)),
                "clips_per_s": rate_clips * self.world / max(rate_time, 1e-9), "data_wait": self.wait / elapsed,
                "peak_mem_gib": utils.peak_memory_gib(self.device), "time": elapsed}


def _bad_videos(dataset, device: torch.device) -> int:
    """Undecodable training videos replaced this epoch, summed over ranks; resets the counters."""
    if dataset is None or not hasattr(dataset, "bad_video_count"):
        return 0
    n = torch.tensor(float(dataset.bad_video_count()), device=device)
    dataset.reset_bad_video_count()
    return int(distributed.all_reduce_sum(n).item())


@torch.no_grad()
def validate(model: nn.Module, loader: Iterable, device: torch.device, amp_dtype: torch.dtype | None = None,
             reduce: bool = False) -> dict:
    """Single-view validation: top-1/top-5 (percent) and cross-entropy over every sample exactly once.

    reduce=True sums the counts over ranks (each rank holding a disjoint shard, see datasets.ShardSampler).
    """
    check_device(model, device)
    model.eval()
    sums = torch.zeros(4, device=device, dtype=torch.float64)  # correct1, correct5, loss_sum, count
    for batch in loader:
        clips = normalize_clips(batch[0].to(device, non_blocking=True))
        labels = batch[1].to(device, non_blocking=True)
        with autocast(device, amp_dtype):
            logits = model(clips)
        logits = logits.float()
        hit1, hit5 = topk_hits(logits, labels)
        sums[:3] += torch.stack([hit1.sum(), hit5.sum(), F.cross_entropy(logits, labels, reduction="sum")]).double()
        sums[3] += len(labels)  # a Python number: no host-to-device tensor copy per batch
    if reduce:
        distributed.all_reduce_sum(sums)
    c1, c5, loss, n = sums.tolist()
    if n == 0:
        raise RuntimeError("validation loader produced no sample")
    return {"acc1": 100.0 * c1 / n, "acc5": 100.0 * c5 / n, "loss": loss / n, "videos": int(n)}


def topk_hits(scores: torch.Tensor, labels: torch.Tensor, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample (N x classes scores, N labels): whether the label is the top-1 class and whether it is among the
    top k (k capped at the number of classes). Ties rank the lower class id first. The one top-k of the project:
    validation, the multi-view test and the per-class report."""
    top = torch.argsort(scores, dim=1, descending=True, stable=True)[:, :min(k, scores.shape[1])]
    hit = top == labels[:, None]
    return hit[:, 0], hit.any(dim=1)


@torch.no_grad()
def predict_views(model: nn.Module, views: torch.Tensor,
                  amp_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The multi-view prediction (of the test, predict.py and the frame controls): the softmax of each view and
    their mean per video. views B x V x C x T x H x W on the model's device -> (B x V x classes, B x classes)."""
    b, v = views.shape[:2]
    with autocast(views.device, amp_dtype):
        logits = model(views.flatten(0, 1))
    probs = logits.float().softmax(dim=-1).unflatten(0, (b, v))
    return probs, probs.mean(dim=1)


@torch.no_grad()
def multi_view_predict(model: nn.Module, loader: Iterable, device: torch.device,
                       amp_dtype: torch.dtype | None = None, gather: bool = False,
                       print_freq: int = 20) -> tuple[dict, dict] | None:
    """predict_views over a test loader (items: views, label, video id, view ids V x 2).

    Returns numpy arrays (per_view, per_video): per_view video_ids (n*V,), view_ids (n*V, 2), labels, probs
    (n*V, classes); per_video video_ids (n,), labels, probs (n, classes), views (n,). With gather, every rank's
    arrays are concatenated on rank 0 and the other ranks get None.
    """
    check_device(model, device)
    model.eval()
    cols = {k: [] for k in ("video_ids", "view_ids", "view_probs", "labels", "probs", "views")}
    t0 = time.time()
    for i, (views, label, video_id, view_ids) in enumerate(loader):
        views = normalize_clips(views.to(device, non_blocking=True))  # uint8 B x V x T x H x W x C -> float, C first
        view_probs, probs = predict_views(model, views, amp_dtype)
        cols["view_probs"].append(view_probs.flatten(0, 1).cpu())
        cols["probs"].append(probs.cpu())
        cols["view_ids"].append(view_ids.reshape(-1, 2))
        cols["labels"].append(torch.as_tensor(label))
        cols["video_ids"].extend(str(x) for x in video_id)
        cols["views"].append(torch.full((len(label),), views.shape[1]))
        if (i + 1) % print_freq == 0:
            print(f"Test [{i + 1}/{len(loader)}] {time.time() - t0:.1f}s", flush=True)
    local = _view_arrays(cols) if cols["probs"] else None  # None: this rank's shard is empty (more ranks than videos)
    if gather and distributed.is_dist():
        parts = [None] * distributed.get_world_size() if distributed.is_main_process() else None
        dist.gather_object(local, parts, dst=0)
        if not distributed.is_main_process():
            return None
        parts = [p for p in parts if p is not None]
        local = tuple({k: np.concatenate([p[j][k] for p in parts]) for k in parts[0][j]} for j in range(2)) \
            if parts else None
    if local is None:
        raise RuntimeError("the test loader produced no video")
    return local


def _view_arrays(cols: dict) -> tuple[dict, dict]:
    labels, views = torch.cat(cols["labels"]).long().numpy(), torch.cat(cols["views"]).numpy()
    video_ids = np.array(cols["video_ids"], dtype=str)
    return ({"video_ids": np.repeat(video_ids, views), "view_ids": torch.cat(cols["view_ids"]).long().numpy(),
             "labels": np.repeat(labels, views), "probs": torch.cat(cols["view_probs"]).numpy()},
            {"video_ids": video_ids, "labels": labels, "probs": torch.cat(cols["probs"]).numpy(), "views": views})


def merge_views(per_view: dict, per_video: dict) -> tuple[dict, dict]:
    """Sort the (gathered) predictions by video id (views by temporal, spatial index) and drop repeated rows: a
    video listed twice in the test list, or repeated by a padding sampler, counts once."""
    vids, vv = per_view["video_ids"], per_view["view_ids"]
    order = np.lexsort((vv[:, 1], vv[:, 0], vids))
    keys = [(vids[j], int(vv[j, 0]), int(vv[j, 1])) for j in order]
    keep = [j for n, j in enumerate(order) if n == 0 or keys[n] != keys[n - 1]]
    per_view = {k: v[keep] for k, v in per_view.items()}
    _, first = np.unique(per_video["video_ids"], return_index=True)
    per_video = {k: v[first] for k, v in per_video.items()}
    own = per_video["labels"][np.searchsorted(per_video["video_ids"], per_view["video_ids"])]
    if np.any(own != per_view["labels"]):
        bad = per_view["video_ids"][np.argmax(own != per_view["labels"])]
        raise RuntimeError(f"video {bad} appears with different labels")
    return per_view, per_video


def topk_percent(probs: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Top-1 and top-5 accuracy in percent (topk_hits)."""
    hit1, hit5 = topk_hits(torch.from_numpy(probs), torch.from_numpy(labels))
    return 100.0 * hit1.double().mean().item(), 100.0 * hit5.double().mean().item()


def final_test(model: nn.Module, loader: Iterable, device: torch.device, *, amp_dtype: torch.dtype | None,
               gather: bool) -> dict | None:
    """Multi-view test: predict every view, merge across ranks exactly (gather: each rank holds a shard).

    Returns on rank 0 {top1, top5, videos, views_per_video, per_view, per_video} (the arrays of merge_views), None
    on the other ranks. Writing the arrays and reports is the caller's (reports.write_test_outputs).
    """
    out = multi_view_predict(model, loader, device, amp_dtype, gather)
    if out is None or (not gather and distributed.get_rank() != 0):
        return None
    per_view, per_video = merge_views(*out)
    top1, top5 = topk_percent(per_video["probs"], per_video["labels"])
    result = {"top1": top1, "top5": top5, "videos": int(len(per_video["video_ids"])),
              "views_per_video": int(per_video["views"].max()), "per_view": per_view, "per_video": per_video}
    print(f"Multi-view test on {result['videos']} videos x {result['views_per_video']} views: "
          f"top-1 {top1:.2f}% top-5 {top5:.2f}%", flush=True)
    return result
