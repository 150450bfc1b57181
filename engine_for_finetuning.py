"""Training epoch, single-view validation and the multi-view test with its exact cross-rank merge.

Host-device syncs happen only at the logging interval and at the end of an epoch: per-iteration numbers are
accumulated in device tensors.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import time
from functools import partial
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import utils
from video_transforms import normalize_clips


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP and torch.compile wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def autocast(device: torch.device, amp_dtype: torch.dtype | None):
    """Autocast context for amp_dtype (None: full precision)."""
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


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


def train_one_epoch(model: nn.Module, criterion: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer,
                    device: torch.device, epoch: int, *, lr_schedule: np.ndarray, wd_schedule: np.ndarray,
                    start_step: int, steps_per_epoch: int, update_freq: int = 1,
                    prepare_batch: Callable[[Any], tuple[torch.Tensor, torch.Tensor]] | None = None,
                    scaler: torch.amp.GradScaler | None = None, amp_dtype: torch.dtype | None = None,
                    clip_grad: float | None = None, model_ema=None, mixup_fn: Callable | None = None,
                    log_writer: utils.TensorboardLogger | None = None, print_freq: int = 20) -> dict:
    """One epoch of steps_per_epoch optimizer steps, each accumulating update_freq micro-batches.

    lr and weight decay are set per optimizer step from the per-iteration schedules (lr * group lr_scale; weight
    decay only on groups that have it). DDP gradients are all-reduced only on the last micro-batch of a step.
    prepare_batch turns a loader batch into (clips, labels) on the device: to_device for worker-augmented batches,
    video_transforms.DeviceAugment for decoded videos.
    Returns epoch means: loss, lr (largest group lr), min_lr, wd, grad_norm, clips_per_s, bad_videos, time.
    """
    model.train(True)
    is_ddp = isinstance(model, nn.parallel.DistributedDataParallel)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    world = utils.get_world_size()
    zero = lambda: torch.zeros((), device=device)  # noqa: E731
    loss_sum, grad_sum, win_loss, nonfinite = zero(), zero(), zero(), zero()
    n_micro = n_steps = win_micro = clips_seen = 0
    data_time = step_time = 0.0
    total_micro = steps_per_epoch * update_freq
    prepare_batch = prepare_batch or partial(to_device, device=device)
    optimizer.zero_grad(set_to_none=True)
    t_epoch = t_last = time.time()
    for i, batch in enumerate(loader):
        if i >= total_micro:
            break
        t_data = time.time()
        data_time += t_data - t_last
        clips, labels = prepare_batch(batch)
        step = i // update_freq
        it = start_step + step
        last_micro = (i + 1) % update_freq == 0
        if i % update_freq == 0:
            for g in optimizer.param_groups:
                g["lr"] = float(lr_schedule[it]) * g.get("lr_scale", 1.0)
                if g["weight_decay"] > 0:
                    g["weight_decay"] = float(wd_schedule[it])
        targets = labels
        if mixup_fn is not None:
            clips, targets = apply_mixup(mixup_fn, clips, labels)
        sync_ctx = model.no_sync() if (is_ddp and not last_micro) else contextlib.nullcontext()
        with sync_ctx:
            with autocast(device, amp_dtype):
                logits = model(clips)
            loss = criterion(logits.float(), targets)
            (scaler.scale(loss / update_freq) if scaler is not None else loss / update_freq).backward()
        loss = loss.detach()
        loss_sum += loss
        win_loss += loss
        nonfinite += (~torch.isfinite(loss)).float()
        n_micro += 1
        win_micro += 1
        clips_seen += clips.shape[0]
        if last_micro:
            if scaler is not None:
                scaler.unscale_(optimizer)
            if clip_grad:
                grad_norm = nn.utils.clip_grad_norm_(params, clip_grad)
            else:
                grad_norm = nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            grad_sum += grad_norm.to(device)
            n_steps += 1
            if model_ema is not None:
                model_ema.update(unwrap(model), step=it)
        t_now = time.time()
        step_time += t_now - t_data
        t_last = t_now
        if (i + 1) % print_freq == 0 or i + 1 == total_micro:
            if nonfinite.item() > 0:  # checked here, not per iteration, to avoid a host sync every step
                raise FloatingPointError(f"non-finite loss in epoch {epoch} before iteration {i + 1}; stopping")
            elapsed = t_now - t_epoch
            eta = elapsed / (i + 1) * (total_micro - i - 1)
            lr = max(g["lr"] for g in optimizer.param_groups)
            avg = (win_loss / win_micro).item()
            gn = (grad_sum / max(n_steps, 1)).item()
            print(f"Epoch [{epoch}] [{i + 1}/{total_micro}] eta {datetime.timedelta(seconds=int(eta))} "
                  f"loss {avg:.4f} lr {lr:.3e} grad_norm {gn:.3f} "
                  f"data {data_time / (i + 1):.3f}s step {step_time / (i + 1):.3f}s "
                  f"clips/s {clips_seen * world / elapsed:.1f}", flush=True)
            if log_writer is not None:
                log_writer.log({"loss": avg, "lr": lr, "grad_norm": gn,
                                "scale": scaler.get_scale() if scaler is not None else None},
                               step=start_step * update_freq + i + 1, head="train")
            win_loss.zero_()
            win_micro = 0
    if n_micro == 0:
        raise RuntimeError("the training loader produced no batch")
    elapsed = time.time() - t_epoch
    stats = torch.stack([loss_sum / n_micro, grad_sum / max(n_steps, 1)])
    utils.all_reduce_sum(stats)
    stats = (stats / world).tolist()
    bad = _bad_videos(getattr(loader, "dataset", None), device)
    return {"loss": stats[0], "lr": max(g["lr"] for g in optimizer.param_groups),
            "min_lr": min(g["lr"] for g in optimizer.param_groups),
            "wd": max(g["weight_decay"] for g in optimizer.param_groups), "grad_norm": stats[1],
            "clips_per_s": clips_seen * world / elapsed, "bad_videos": bad, "time": elapsed}


def _bad_videos(dataset, device: torch.device) -> int:
    """Undecodable training videos replaced this epoch, summed over ranks; resets the counters."""
    if dataset is None or not hasattr(dataset, "bad_video_count"):
        return 0
    n = torch.tensor(float(dataset.bad_video_count()), device=device)
    dataset.reset_bad_video_count()
    return int(utils.all_reduce_sum(n).item())


@torch.no_grad()
def validate(model: nn.Module, loader: Iterable, device: torch.device, amp_dtype: torch.dtype | None = None,
             reduce: bool = False) -> dict:
    """Single-view validation: top-1/top-5 (percent) and cross-entropy over every sample exactly once.

    reduce=True sums the counts over ranks (each rank holding a disjoint shard, see ShardSampler).
    """
    model.eval()
    sums = torch.zeros(4, device=device, dtype=torch.float64)  # correct1, correct5, loss_sum, count
    for batch in loader:
        clips = normalize_clips(batch[0].to(device, non_blocking=True))
        labels = batch[1].to(device, non_blocking=True)
        with autocast(device, amp_dtype):
            logits = model(clips)
        logits = logits.float()
        c1, c5 = _correct_topk(logits, labels)
        sums[:3] += torch.stack([c1, c5, F.cross_entropy(logits, labels, reduction="sum")]).double()
        sums[3] += len(labels)  # a Python number: no host-to-device tensor copy per batch
    if reduce:
        utils.all_reduce_sum(sums)
    c1, c5, loss, n = sums.tolist()
    if n == 0:
        raise RuntimeError("validation loader produced no sample")
    return {"acc1": 100.0 * c1 / n, "acc5": 100.0 * c5 / n, "loss": loss / n, "videos": int(n)}


def _correct_topk(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    k = min(5, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    hit = top.eq(labels[:, None])
    return hit[:, 0].sum().float(), hit.any(dim=1).sum().float()


class ShardSampler(torch.utils.data.Sampler):
    """Indices rank, rank + world, ... of a dataset: disjoint shards, no padding, every sample exactly once."""

    def __init__(self, dataset, num_replicas: int = 1, rank: int = 0):
        self.n, self.num_replicas, self.rank = len(dataset), num_replicas, rank

    def __iter__(self):
        return iter(range(self.rank, self.n, self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.num_replicas))


@torch.no_grad()
def multi_view_predict(model: nn.Module, loader: Iterable, device: torch.device,
                       amp_dtype: torch.dtype | None = None, gather: bool = False,
                       print_freq: int = 20) -> dict | None:
    """Softmax of every test view. Returns (on rank 0; None elsewhere when gather) a dict of numpy arrays
    video_ids (n,), view_ids (n, 2), labels (n,), probs (n, C), gathered from all ranks when gather is True.
    """
    model.eval()
    vids, view_ids, labels, probs = [], [], [], []
    t0 = time.time()
    for i, (views, label, video_id, vid_views) in enumerate(loader):
        b, v = views.shape[:2]
        with autocast(device, amp_dtype):
            logits = model(normalize_clips(views.flatten(0, 1).to(device, non_blocking=True)))
        probs.append(logits.float().softmax(dim=1).cpu())
        view_ids.append(vid_views.reshape(b * v, 2))
        labels.append(torch.as_tensor(label).repeat_interleave(v))
        vids.extend(str(x) for x in video_id for _ in range(v))
        if (i + 1) % print_freq == 0:
            print(f"Test [{i + 1}/{len(loader)}] {time.time() - t0:.1f}s", flush=True)
    local = {"video_ids": np.array(vids, dtype=str),
             "view_ids": torch.cat(view_ids).long().numpy() if view_ids else np.zeros((0, 2), np.int64),
             "labels": torch.cat(labels).long().numpy() if labels else np.zeros(0, np.int64),
             "probs": torch.cat(probs).numpy().astype(np.float32) if probs else None}
    if not (gather and utils.is_dist()):
        return local
    parts = [None] * utils.get_world_size() if utils.is_main_process() else None
    dist.gather_object(local, parts, dst=0)
    if not utils.is_main_process():
        return None
    parts = [p for p in parts if len(p["video_ids"])]
    return {k: np.concatenate([p[k] for p in parts]) for k in local}


def merge_views(per_view: dict) -> tuple[dict, dict]:
    """De-duplicate views by (video_id, temporal, spatial), sort them, average each video's view softmaxes.

    Returns (per_view, per_video): per_view sorted by (video_id, view ids) with duplicates (sampler padding)
    removed; per_video with video_ids (m,) sorted, labels (m,), probs (m, C) and views (m,) counts.
    """
    vids, vv = per_view["video_ids"], per_view["view_ids"]
    order = np.lexsort((vv[:, 1], vv[:, 0], vids))
    keys = [(vids[j], int(vv[j, 0]), int(vv[j, 1])) for j in order]
    keep = [j for n, j in enumerate(order) if n == 0 or keys[n] != keys[n - 1]]
    pv = {k: v[keep] for k, v in per_view.items()}
    uniq, start, counts = np.unique(pv["video_ids"], return_index=True, return_counts=True)
    probs = np.add.reduceat(pv["probs"].astype(np.float64), start, axis=0) / counts[:, None]
    labels = pv["labels"][start]
    for s, c, lab in zip(start, counts, labels):
        if np.any(pv["labels"][s:s + c] != lab):
            raise RuntimeError(f"video {pv['video_ids'][s]} has views with different labels")
    return pv, {"video_ids": uniq, "labels": labels, "probs": probs.astype(np.float32), "views": counts}


def topk_percent(probs: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Top-1 and top-5 accuracy in percent (top-k capped at the number of classes)."""
    k = min(5, probs.shape[1])
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    hit = top == labels[:, None]
    return 100.0 * hit[:, 0].mean(), 100.0 * hit.any(axis=1).mean()


def write_test_outputs(output_dir: str, per_view: dict, per_video: dict, summary: dict,
                       class_names: list[str] | None) -> dict:
    """Write test_per_view.npz, test_per_video.npz, the reports (reports.write_reports) and test_summary.json."""
    os.makedirs(output_dir, exist_ok=True)
    np.savez(os.path.join(output_dir, "test_per_view.npz"), **per_view)
    np.savez(os.path.join(output_dir, "test_per_video.npz"),
             **{k: per_video[k] for k in ("video_ids", "labels", "probs")})
    import reports
    extra = reports.write_reports(output_dir, list(per_video["video_ids"]), per_video["labels"],
                                  per_video["probs"], class_names)
    summary = {**summary, **(extra or {})}
    utils.write_json(os.path.join(output_dir, "test_summary.json"), summary)
    return summary


def final_test(model: nn.Module, loader: Iterable, device: torch.device, *, amp_dtype: torch.dtype | None,
               gather: bool, output_dir: str, summary: dict, class_names: list[str] | None = None) -> dict | None:
    """Multi-view test: predict every view, merge across ranks exactly, write the outputs on rank 0.

    Returns the summary (top1, top5, videos, views_per_video, + summary fields) on rank 0, None elsewhere.
    """
    per_view = multi_view_predict(model, loader, device, amp_dtype, gather)
    if per_view is None:
        return None
    if gather is False and utils.get_rank() != 0:
        return None
    per_view, per_video = merge_views(per_view)
    top1, top5 = topk_percent(per_video["probs"], per_video["labels"])
    views = np.unique(per_video["views"])
    if len(views) > 1:
        print(f"WARNING: videos have different numbers of test views: {views.tolist()}", flush=True)
    result = {"top1": top1, "top5": top5, "videos": int(len(per_video["video_ids"])),
              "views_per_video": int(views.max()), **summary}
    print(f"Multi-view test on {result['videos']} videos x {result['views_per_video']} views: "
          f"top-1 {top1:.2f}% top-5 {top5:.2f}%", flush=True)
    if output_dir:
        result = write_test_outputs(output_dir, per_view, per_video, result, class_names)
    print(json.dumps(utils.to_jsonable({k: v for k, v in result.items() if not isinstance(v, (list, dict))})),
          flush=True)
    return result

