"""Fine-tune and evaluate video ViTs (VideoMAE recipe, optionally with a frozen LLM block) on SSv2, Kinetics-400,
UCF101 or HMDB51.

Flags keep VideoMAE's names and defaults (SSv2 ones where they differ; the dataset's own with --data_set). Launch
with torchrun, srun, or plainly.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from functools import partial

import torch
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

import checkpoint
import distributed
import engine_for_finetuning as engine
import llama
import optim_factory
import reports
import run_control
import utils
from datasets import DATASETS, SAMPLING_RATE, TEST_NUM_CROP, load_class_names
from datasets.lists import few_classes_warning, labels_used
from device_augment import DeviceAugment
from models import model_spec
from video_transforms import DEFAULT_AA, AugmentConfig


# VideoMAE flags that cannot act here: each is accepted at its default only. flag -> (default, type, why);
# type bool: a switch that must stay off.
COMPAT_FLAGS = {
    "num_segments": (1, int, "VideoMAE's SSv2 setting: one clip of --num_frames segments"),
    "color_jitter": (0.4, float, "unused for video in VideoMAE too; colour augmentation comes from --aa"),
    "crop_pct": (None, float, "image-only; use --short_side_size / --input_size"),
    "resplit": (False, bool, "image-only; random erasing applies to every clip"),
    "enable_deepspeed": (False, bool, "this code uses native mixed precision, --amp bf16|fp16, and "
                                      "DistributedDataParallel"),
    "use_cls": (False, bool, "the model has no CLS token (neither has VideoMAE's fine-tuning ViT, where the flag "
                             "pools the first patch token); the tokens are always mean-pooled"),
}

# VideoMAE's switches for what is on by default here: flag -> what it stands for.
ON_BY_DEFAULT = {
    "pin_mem": "batches in pinned memory on CUDA; --no_pin_mem turns it off",
    "auto_resume": "resume the newest checkpoint in --output_dir; --no_auto_resume turns it off",
    "save_ckpt": "write checkpoints to --output_dir; --no_save_ckpt turns it off",
    "use_mean_pooling": "the model has no CLS token and always mean-pools its tokens",
}

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}  # --amp -> autocast dtype


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        "Video ViT (+LLM block) fine-tuning and evaluation on SSv2, Kinetics-400, UCF101 and HMDB51",
        epilog=f"exit status: 0 done; {run_control.EXIT_PREEMPTED} stopped by a signal with its state saved (rerun "
               f"the command to continue); {run_control.EXIT_DIVERGED} diverged (a non-finite loss or gradient: the "
               f"state is kept as checkpoint-N.bad.pth, never resumed; the message names the last good checkpoint); "
               f"1 any other error")
    a = p.add_argument
    a("--batch_size", default=64, type=int, help="videos per GPU per micro-step")
    a("--epochs", default=30, type=int)
    a("--update_freq", default=1, type=int, help="gradient accumulation micro-steps per optimizer step")
    a("--save_ckpt_freq", default=100, type=int)
    a("--keep_last", default=None, type=int, metavar="N",
      help="keep only the N newest numbered checkpoint-<epoch>.pth (default: all of them). checkpoint-last.pth and "
           "checkpoint-best.pth are always kept; each name that holds another epoch is a full-size file, so the "
           "folder holds at most N + 2 of them, plus one while a save is written")
    # model
    a("--model", default="vit_base_patch16_224", type=str)
    a("--tubelet_size", default=2, type=int)
    a("--input_size", default=224, type=int)
    a("--fc_drop_rate", default=0.0, type=float)
    a("--drop", default=0.0, type=float)
    a("--attn_drop_rate", default=0.0, type=float)
    a("--drop_path", default=0.1, type=float)
    a("--disable_eval_during_finetuning", action="store_true")
    a("--model_ema", action="store_true")
    a("--model_ema_decay", default=0.9999, type=float)
    a("--model_ema_force_cpu", action="store_true")
    a("--llama_path", default=None, help="LLM folder: Meta (params.json + consolidated.00.pth) or Hugging Face "
      "(config.json + weights) of LLaMA-1/2/3, Mistral or Qwen2")
    a("--llama_layer", default=None, type=llama.layer_spec_arg,
      help="LLM layer(s) stacked in order: 15, -1, 14,15 or 12:16 (default: the model's, 15 for the 7B models)")
    a("--llama_dtype", default=None, choices=["float32", "bfloat16", "float16"], help="default float32")
    # optimizer and schedule
    a("--opt", default="adamw", type=str)
    a("--opt_eps", default=1e-8, type=float)
    a("--opt_betas", default=None, type=float, nargs="+")
    a("--clip_grad", default=None, type=float)
    a("--momentum", default=0.9, type=float)
    a("--weight_decay", default=0.05, type=float)
    a("--weight_decay_end", default=None, type=float)
    a("--lr", default=1e-3, type=float, help="for 256 videos per step; scaled by the real batch")
    a("--layer_decay", default=0.75, type=float)
    a("--warmup_lr", default=1e-6, type=float)
    a("--min_lr", default=1e-6, type=float)
    a("--warmup_epochs", default=5, type=int)
    a("--warmup_steps", default=-1, type=int, help="overrides --warmup_epochs when > 0")
    # augmentation
    a("--num_sample", default=2, type=int, help="augmented clips per video (repeated augmentation)")
    a("--augment_on", default=None, choices=["workers", "device"],
      help="where training clips are augmented: 'device' (workers only decode; RandAugment, crop, normalise and "
           "erase run batched on the training device) or 'workers' (the published PIL path). Default: device on "
           "CUDA, workers on CPU")
    a("--aa", default=DEFAULT_AA, type=str, help="RandAugment policy; '' or 'none' turns it off")
    a("--smoothing", default=0.1, type=float)
    a("--train_interpolation", default="bicubic", type=str)
    a("--short_side_size", default=224, type=int)
    a("--test_num_segment", default=None, type=int,
      help="temporal views per test video (default per --data_set: 2 for SSV2, 5 for the others)")
    a("--test_num_crop", default=TEST_NUM_CROP, type=int, help="spatial views per temporal view")
    a("--reprob", default=0.25, type=float)
    a("--remode", default="pixel", type=str)
    a("--recount", default=1, type=int)
    a("--mixup", default=0.8, type=float)
    a("--cutmix", default=1.0, type=float)
    a("--cutmix_minmax", default=None, type=float, nargs="+")
    a("--mixup_prob", default=1.0, type=float)
    a("--mixup_switch_prob", default=0.5, type=float)
    a("--mixup_mode", default="batch", type=str, choices=["batch", "pair", "elem"])
    # fine-tuning weights
    a("--finetune", default="", help="initial weights (VideoMAE self-supervised or any compatible checkpoint)")
    a("--model_key", default="model|module", type=str)
    a("--model_prefix", default="", type=str)
    a("--init_scale", default=0.001, type=float)
    a("--use_checkpoint", action="store_true", help="activation checkpointing")
    # data
    a("--data_set", default="SSV2", choices=list(DATASETS),
      help="SSV2 samples one frame per segment (TSN); the others take dense clips at --sampling_rate and flip")
    a("--data_path", default="data/ssv2", type=str,
      help="folder with train.csv, val.csv, test.csv (UCF101/HMDB51: train_N.csv, val_N.csv of --data_split N)")
    a("--eval_data_path", default=None, type=str, help="folder with the validation and test lists if not --data_path")
    a("--data_root", default=None, help="prefix for relative video paths (default: the CSV's folder)")
    a("--data_split", default=1, type=int, help="official split 1-3 of UCF101/HMDB51 (its test is val_N.csv)")
    a("--nb_classes", default=None, type=int, help="default per --data_set: " + ", ".join(
        f"{name} {spec.nb_classes}" for name, spec in DATASETS.items()))
    a("--num_frames", default=16, type=int)
    a("--sampling_rate", default=SAMPLING_RATE, type=int,
      help="stride between a clip's frames for Kinetics-400, UCF101 and HMDB51")
    a("--decoder", default="auto", choices=["auto", "decord", "pyav"])
    a("--decode_threads", default=1, type=int)
    a("--max_bad_videos", default=10, type=int, help="unreadable training videos tolerated per epoch")
    a("--labels", default=None, help="labels json (default: the one the preparation tool writes in the data "
      "folder, e.g. something-something-v2-labels.json or kinetics400-labels.json, when present)")
    # run
    a("--output_dir", default="", help="checkpoints, logs and test results; empty: save nothing")
    a("--log_dir", default=None, help="TensorBoard folder (default: output_dir)")
    a("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a("--amp", default=None, choices=["bf16", "fp16", "none"], help="default bf16 on CUDA, none on CPU")
    a("--compile", action="store_true", help="torch.compile the model")
    a("--print_freq", default=20, type=int)
    a("--seed", default=0, type=int)
    a("--resume", default="", help="checkpoint to resume (or, with --eval, to evaluate)")
    a("--no_auto_resume", action="store_false", dest="auto_resume",
      help="start from scratch (or --finetune) even when --output_dir holds checkpoints")
    a("--no_save_ckpt", action="store_false", dest="save_ckpt", help="write no checkpoint")
    a("--start_epoch", default=0, type=int)
    a("--eval", action="store_true", help="multi-view test of --resume (or the newest checkpoint) and exit")
    a("--allow_arg_mismatch", action="store_true",
      help="evaluate a checkpoint even though --num_frames/--input_size/--model differ from its saved args; "
           "fine-tune a plain ViT from a checkpoint that holds an LLM block (the block is left out)")
    a("--exit_signal", default="USR1",
      help="signal that, like SIGTERM and a first Ctrl-C, makes the run finish its optimizer step, save "
           f"checkpoint-last.pth and exit with status {run_control.EXIT_PREEMPTED} (SLURM: #SBATCH --signal=USR1@120)")
    a("--dist_eval", action="store_true", help="shard validation and test over the processes")
    a("--num_workers", default=10, type=int)
    a("--no_pin_mem", action="store_false", dest="pin_mem", help="DataLoader batches in pageable memory")
    # distributed
    a("--world_size", default=1, type=int, help="processes, for a manual launch with --dist_url tcp://")
    a("--local_rank", "--local-rank", default=-1, type=int)
    a("--dist_on_itp", action="store_true", help="read ranks from OpenMPI's environment")
    a("--dist_url", default="env://")
    a("--dist_timeout", default=10.0, type=float,
      help="minutes a process waits for the others in a collective before the job fails (a frozen or lost rank)")
    compat = p.add_argument_group("VideoMAE compatibility", "accepted so that VideoMAE command lines parse: its "
                                  "switches for what is on by default here change nothing; the other flags take only "
                                  "their default, anything else is an error")
    for flag, what in ON_BY_DEFAULT.items():
        compat.add_argument(f"--{flag}", action="store_true", default=True, help=f"on by default: {what}")
    for flag, (default, kind, why) in COMPAT_FLAGS.items():
        if kind is bool:
            compat.add_argument(f"--{flag}", action="store_true", help=f"not supported: {why}")
        else:
            compat.add_argument(f"--{flag}", default=default, type=kind,
                                help=f"not supported: {why}" if default is None else f"only {default}: {why}")
    return p


# Bounds of numeric flags: (flags, test, what they accept); None (not given) is always accepted.
VALUE_BOUNDS = [
    (("batch_size", "epochs", "update_freq", "save_ckpt_freq", "num_sample", "test_num_segment", "test_num_crop",
      "num_frames", "tubelet_size", "input_size", "short_side_size", "nb_classes", "print_freq", "decode_threads",
      "recount", "sampling_rate"), lambda v: v >= 1, "an integer >= 1"),
    (("num_workers", "max_bad_videos", "warmup_epochs", "start_epoch", "keep_last"), lambda v: v >= 0,
     "an integer >= 0"),
    (("warmup_steps",), lambda v: v >= -1, "an integer >= 0, or -1 for --warmup_epochs"),
    (("reprob", "mixup_prob", "mixup_switch_prob", "smoothing", "drop", "attn_drop_rate", "drop_path",
      "fc_drop_rate", "model_ema_decay", "layer_decay"), lambda v: 0 <= v <= 1, "a probability/fraction in [0, 1]"),
    (("lr", "min_lr", "warmup_lr", "weight_decay", "weight_decay_end", "mixup", "cutmix", "init_scale"),
     lambda v: v >= 0, "a number >= 0"),
    (("opt_eps", "clip_grad"), lambda v: v > 0, "a number > 0 (leave --clip_grad out to clip nothing)"),
    (("dist_timeout",), lambda v: v > 0, "a number > 0 (minutes)"),
]

# Path flags: flag -> (must be a folder, what it is). Empty or None: not given.
PATH_FLAGS = {"data_path": (True, "the folder of train.csv/val.csv/test.csv"),
              "eval_data_path": (True, "the folder of val.csv/test.csv"),
              "data_root": (True, "the folder relative video paths start from"),
              "finetune": (False, "the weights to fine-tune from"), "resume": (False, "the checkpoint to resume"),
              "labels": (False, "the labels json"), "llama_path": (True, "the LLM folder")}


def _bad_values(args: argparse.Namespace) -> list[str]:
    """One line per numeric flag out of its bounds, per impossible combination and per missing path."""
    bad = [f"--{flag} {getattr(args, flag)}: takes {what}" for flags, ok, what in VALUE_BOUNDS for flag in flags
           if getattr(args, flag) is not None and not ok(getattr(args, flag))]
    if args.tubelet_size >= 1 and args.num_frames % args.tubelet_size:
        bad.append(f"--num_frames {args.num_frames}: takes a multiple of --tubelet_size {args.tubelet_size}")
    patch = re.search(r"patch(\d+)", args.model)
    if patch and args.input_size % int(patch.group(1)):
        bad.append(f"--input_size {args.input_size}: takes a multiple of {args.model}'s patch size "
                   f"{patch.group(1)}")
    if args.short_side_size < args.input_size:
        bad.append(f"--short_side_size {args.short_side_size}: takes a size >= --input_size {args.input_size} "
                   f"(frames are resized to it, then cropped to --input_size)")
    if args.cutmix_minmax is not None and len(args.cutmix_minmax) == 2 and \
            not 0 < args.cutmix_minmax[0] <= args.cutmix_minmax[1] <= 1:
        bad.append(f"--cutmix_minmax {' '.join(map(str, args.cutmix_minmax))}: takes MIN MAX with 0 < MIN <= MAX <= 1")
    try:
        model_spec(args.model)
    except ValueError as e:
        bad.append(f"--model: {e}")
    for flag, (folder, what) in PATH_FLAGS.items():
        path = getattr(args, flag)
        if flag == "data_path" and args.eval and args.eval_data_path:
            continue  # --eval reads only --eval_data_path
        if path and not (os.path.isdir(path) if folder else os.path.isfile(path)):
            bad.append(f"--{flag} {path}: takes {what}, but no such {'folder' if folder else 'file'}")
    if args.output_dir and os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
        bad.append(f"--output_dir {args.output_dir}: takes a folder, but it is a file")
    mixing = args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None
    if mixing and not args.eval and (args.batch_size * args.num_sample) % 2:
        bad.append(f"--batch_size {args.batch_size} x --num_sample {args.num_sample}: mixup/cutmix takes an even "
                   f"number of clips per batch (or pass --mixup 0 --cutmix 0)")
    if args.eval and args.finetune and not args.resume:
        bad.append(f"--eval with --finetune {args.finetune}: --finetune loads weights to train from (a head of "
                   f"another size is dropped), so the model would not be the checkpoint's. To evaluate a "
                   f"checkpoint, pass it as --resume {args.finetune}")
    return bad


def check_args(args: argparse.Namespace) -> argparse.Namespace:
    """Reject, before any work, flags that cannot act here (with what to use instead), values no run can take
    (VALUE_BOUNDS, sizes that do not divide, missing paths); fill derived defaults."""
    bad = [f"--{flag} is not supported ({why})" if default in (None, False) else
           f"--{flag} {getattr(args, flag)}: only {default} is supported ({why})"
           for flag, (default, kind, why) in COMPAT_FLAGS.items() if getattr(args, flag) != default]
    if args.opt_betas is not None and len(args.opt_betas) != 2:
        bad.append("--opt_betas takes two numbers")
    if args.cutmix_minmax is not None and len(args.cutmix_minmax) != 2:
        bad.append("--cutmix_minmax takes two numbers")
    if args.weight_decay == 0 and args.weight_decay_end:
        bad.append(f"--weight_decay_end {args.weight_decay_end} with --weight_decay 0 decays nothing (the schedule "
                   f"updates only the groups built with weight decay): start from a --weight_decay above 0")
    bad += dataset_problems(args)
    try:
        run_control.parse_signal(args.exit_signal)
    except ValueError as e:
        bad.append(f"--exit_signal: {e}")
    bad += _bad_values(args)
    if bad:
        raise SystemExit("error: " + "; ".join(bad))
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA device is available; pass --device cpu")
    if args.amp is None:
        args.amp = "bf16" if args.device.startswith("cuda") else "none"
    if args.augment_on is None:
        args.augment_on = "device" if args.device.startswith("cuda") else "workers"
    if args.log_dir is None and args.output_dir:
        args.log_dir = args.output_dir
    fill_dataset_defaults(args)
    return args


def dataset_problems(args: argparse.Namespace) -> list[str]:
    """What is wrong with the dataset flags together: a stride for SSV2 (TSN segments), a split where there are none
    (a stride below 1 is one of the VALUE_BOUNDS)."""
    bad = []
    if args.data_set == "SSV2" and args.sampling_rate != SAMPLING_RATE:
        bad.append(f"--sampling_rate {args.sampling_rate} does nothing for --data_set SSV2, which takes one frame in "
                   f"each of --num_frames segments; the stride is for Kinetics-400, UCF101 and HMDB51")
    if DATASETS[args.data_set].splits:
        if args.data_split not in (1, 2, 3):
            bad.append(f"--data_split {args.data_split}: {args.data_set} has the official splits 1, 2 and 3")
    elif args.data_split != 1:
        bad.append(f"--data_split {args.data_split}: --data_set {args.data_set} has one split (train.csv, val.csv, "
                   f"test.csv); splits are for UCF101 and HMDB51")
    return bad


def fill_dataset_defaults(args: argparse.Namespace) -> None:
    """--nb_classes, --test_num_segment and --labels left out take the dataset's values (datasets.DATASETS)."""
    spec = DATASETS[args.data_set]
    if args.nb_classes is None:
        args.nb_classes = spec.nb_classes
    if args.test_num_segment is None:
        args.test_num_segment = spec.test_num_segment
    if args.labels is None:
        default = os.path.join(args.eval_data_path or args.data_path, spec.labels_file)
        args.labels = default if os.path.isfile(default) else None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return check_args(get_args_parser().parse_args(argv))


def build_model(args) -> torch.nn.Module:
    from models import create_model
    model = create_model(
        args.model, num_classes=args.nb_classes, all_frames=args.num_frames, img_size=args.input_size,
        tubelet_size=args.tubelet_size, drop_rate=args.drop, attn_drop_rate=args.attn_drop_rate,
        drop_path_rate=args.drop_path, fc_drop_rate=args.fc_drop_rate, init_scale=args.init_scale,
        use_checkpoint=args.use_checkpoint, llama_path=args.llama_path, llama_layer=args.llama_layer,
        llama_dtype=args.llama_dtype)
    if args.finetune:
        checkpoint.load_finetune_weights(model, args.finetune, args.model_key, args.model_prefix,
                                         args.allow_arg_mismatch)
    return model


def build_loaders(args, eval_only: bool) -> dict:
    """Datasets and loaders. Train: TrainSampler (shuffled per epoch over any world size, per-item seeds, resumable
    mid-epoch); val/test: disjoint shards when dist_eval. Workers ignore the stop signals (the main process acts)."""
    from datasets import ShardSampler, TrainSampler, build_dataset, multiple_samples_collate, pack_videos_collate
    world, rank = distributed.get_world_size(), distributed.get_rank()
    eval_args = argparse.Namespace(**{**vars(args), "data_path": args.eval_data_path or args.data_path})
    shard = dict(num_replicas=world, rank=rank) if args.dist_eval else dict(num_replicas=1, rank=0)
    pin = args.pin_mem and torch.device(args.device).type == "cuda"  # pinning needs an accelerator
    common = dict(num_workers=args.num_workers, pin_memory=pin,
                  worker_init_fn=partial(run_control.ignore_stop_signals, run_control.stop_signals(args.exit_signal)))
    out = {}
    test_set, _ = build_dataset(is_train=False, test_mode=True, args=eval_args)
    out["test"] = torch.utils.data.DataLoader(test_set, batch_size=args.batch_size, generator=torch.Generator(),
                                              sampler=ShardSampler(test_set, **shard), **common)
    if eval_only:
        return out
    train_set, _ = build_dataset(is_train=True, test_mode=False, args=args)
    warning = few_classes_warning(train_set.csv_path, labels_used(train_set.samples), args.nb_classes)
    if warning and rank == 0:
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    out["generator"] = torch.Generator()
    out["train"] = torch.utils.data.DataLoader(
        train_set, batch_size=args.batch_size, drop_last=True,
        collate_fn=pack_videos_collate if args.augment_on == "device" else multiple_samples_collate,
        sampler=TrainSampler(train_set, world, rank, seed=args.seed),
        generator=out["generator"], **common)
    if not args.disable_eval_during_finetuning:
        val_set, _ = build_dataset(is_train=False, test_mode=False, args=eval_args)
        out["val"] = torch.utils.data.DataLoader(val_set, batch_size=int(1.5 * args.batch_size),
                                                 sampler=ShardSampler(val_set, **shard),
                                                 generator=torch.Generator(), **common)
    return out


def set_train_epoch(loaders: dict, args, epoch: int, first_step: int = 0) -> None:
    """Shuffle order (starting after ``first_step`` optimizer steps of a resumed epoch) and the DataLoader's worker
    seeds as functions of (seed, epoch, rank) alone; each item's draws come from its own seed (TrainSampler), so a
    run resumed at any step draws what an uninterrupted one does."""
    loaders["train"].sampler.set_epoch(epoch, first_step * args.batch_size * args.update_freq)
    loaders["generator"].manual_seed(args.seed + 1000 * epoch + distributed.get_rank())


def run_device(args) -> torch.device:
    """This process's device: its local GPU (args.gpu, set by distributed.init_distributed) on CUDA."""
    return torch.device(args.device, args.gpu) if args.device == "cuda" else torch.device(args.device)


def build_training(args, model: torch.nn.Module, steps_per_epoch: int,
                   log_writer: utils.TensorboardLogger | None = None) -> engine.Training:
    """The training loop's per-run constants: optimizer, schedules (lr scaled by the real batch / 256), criterion,
    mixup, scaler, EMA, mixed precision and how a batch reaches the device (with its per-rank augmentation)."""
    scale = args.batch_size * args.update_freq * distributed.get_world_size() / 256
    args.scaled_lr, args.scaled_min_lr = args.lr * scale, args.min_lr * scale
    args.scaled_warmup_lr = args.warmup_lr * scale
    optimizer = optim_factory.create_optimizer(argparse.Namespace(**{**vars(args), "lr": args.scaled_lr}), model)
    lr_schedule = optim_factory.cosine_scheduler(args.scaled_lr, args.scaled_min_lr, args.epochs, steps_per_epoch,
                                                 args.warmup_epochs, args.scaled_warmup_lr, args.warmup_steps)
    wd_end = args.weight_decay if args.weight_decay_end is None else args.weight_decay_end
    wd_schedule = optim_factory.cosine_scheduler(args.weight_decay, wd_end, args.epochs, steps_per_epoch)
    mixup_fn = None
    if args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None:
        from timm.data import Mixup
        mixup_fn = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
                         prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                         label_smoothing=args.smoothing, num_classes=args.nb_classes)
        criterion = SoftTargetCrossEntropy()
    elif args.smoothing > 0:
        criterion = LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    else:
        criterion = torch.nn.CrossEntropyLoss()
    scaler = torch.amp.GradScaler(torch.device(args.device).type, enabled=args.amp == "fp16")
    model_ema = None
    if args.model_ema:  # trainable parameters only; on the CPU with --model_ema_force_cpu
        model_ema = optim_factory.TrainableEma(model, args.model_ema_decay,
                                               device="cpu" if args.model_ema_force_cpu else None)
    device = run_device(args)
    prepare_batch, per_rank = partial(engine.to_device, device=device), {}
    if args.augment_on == "device":  # per-rank parameter streams, independent of the global RNGs
        prepare_batch = per_rank["device_augment"] = DeviceAugment(
            device, AugmentConfig.from_args(args), seed=10_000 + 100 * args.seed + distributed.get_rank())
    return engine.Training(criterion, optimizer, lr_schedule, wd_schedule, steps_per_epoch, args.update_freq, scaler,
                           AMP_DTYPES[args.amp], args.clip_grad, model_ema, mixup_fn, prepare_batch, per_rank,
                           args.print_freq, log_writer)


def wrap_model(args, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The module the loop runs: torch.compile'd with --compile, inside DDP when distributed."""
    run_model = torch.compile(model) if args.compile else model
    if args.distributed:
        run_model = torch.nn.parallel.DistributedDataParallel(
            run_model, device_ids=[args.gpu] if device.type == "cuda" else None, find_unused_parameters=False,
            broadcast_buffers=False)  # the only buffer is the fixed position table: identical on every rank
    return run_model


def run_test(args, run_model: torch.nn.Module, loader, device: torch.device, amp_dtype: torch.dtype | None,
             summary: dict, class_names: list[str] | None) -> dict | None:
    """Multi-view test; rank 0 writes the arrays, reports and test_summary.json to output_dir and gets the summary."""
    result = engine.final_test(run_model, loader, device, amp_dtype=amp_dtype, gather=args.dist_eval)
    if result is None:
        return None
    summary = {**{k: result[k] for k in ("top1", "top5", "videos", "views_per_video")}, **summary}
    if args.output_dir:
        summary = reports.write_test_outputs(args.output_dir, result["per_view"], result["per_video"], summary,
                                             class_names)
    print(json.dumps(utils.to_jsonable({k: v for k, v in summary.items() if not isinstance(v, (list, dict))})),
          flush=True)
    return summary


def validate_all(args, run_model: torch.nn.Module, loader, device: torch.device, training: engine.Training) -> dict:
    """Single-view validation of the model (val_*) and, with --model_ema, of its EMA weights (val_ema_*)."""
    amp_dtype, model_ema = training.amp_dtype, training.model_ema
    record = {f"val_{k}": v for k, v in engine.validate(run_model, loader, device, amp_dtype, args.dist_eval).items()}
    if model_ema is not None:
        with model_ema.applied():  # the EMA weights in the model, wherever the EMA is kept
            ema = engine.validate(run_model, loader, device, amp_dtype, args.dist_eval)
        record.update({f"val_ema_{k}": v for k, v in ema.items()})
    return record


def gather_rank_states(training: engine.Training, meter: dict | None) -> dict[str, list] | None:
    """Every rank's RNG state, per-rank objects' states and epoch meter, in one collective: {name: [rank 0's, rank
    1's, ...]} on rank 0 (which writes the checkpoints), None on the other ranks. Call on every rank."""
    mine = {"rng_states": utils.capture_rng_state(), "meters": meter,
            **{name: obj.state_dict() for name, obj in training.per_rank.items()}}
    ranks = distributed.gather_to_main(mine)
    return None if ranks is None else {name: [r[name] for r in ranks] for name in mine}


def training_checkpoint(args, model: torch.nn.Module, training: engine.Training, ranks: dict[str, list] | None,
                        epoch_done: int, max_acc: float, best_epoch: int | None,
                        progress: tuple[int, int] | None = None) -> dict:
    """checkpoint.training_state with every rank's states (gather_rank_states), the best epoch and, for a state
    partway through epoch E after S optimizer steps (``progress`` (E, S)), the train_progress entry: where to
    continue, the batch layout the steps were taken with and every rank's sums of the epoch so far."""
    ranks = ranks or {}  # ranks other than 0 write nothing
    extra = {name: ranks.get(name) for name in training.per_rank}
    if progress is not None:
        extra[checkpoint.PROGRESS] = {"epoch": progress[0], "step": progress[1], "meters": ranks.get("meters"),
                                      "layout": [args.batch_size, args.update_freq, distributed.get_world_size()]}
    return checkpoint.training_state(args, model, training.optimizer, training.scaler, training.model_ema,
                                     epoch_done, max_acc, ranks.get("rng_states"), best_epoch=best_epoch, **extra)


def log_epoch(args, record: dict, log_writer: utils.TensorboardLogger | None) -> None:
    """An epoch's numbers: a line of output_dir/log.txt (rank 0) and TensorBoard scalars."""
    if distributed.is_main_process() and args.output_dir:
        utils.append_json_line(os.path.join(args.output_dir, "log.txt"), record)
    if log_writer is not None:
        log_writer.log({k[4:]: v for k, v in record.items() if k.startswith("val_")}, step=record["epoch"],
                       head="perf")
        log_writer.log({k[6:]: v for k, v in record.items() if k.startswith("train_")}, step=record["epoch"],
                       head="epoch")
        log_writer.flush()


def train_epochs(args, model: torch.nn.Module, run_model: torch.nn.Module, loaders: dict,
                 training: engine.Training, state: checkpoint.ResumeState, stop: run_control.StopSignal,
                 device: torch.device) -> str | None:
    """The epoch loop from ``state``: train, validate, log, save; returns the last checkpoint (the resumed one when
    nothing was saved). A divergence (at any step, in validation, or found at a stop), a stop signal and a failed
    save each end the run at one place."""
    saving = bool(args.output_dir and args.save_ckpt)
    n_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    max_acc, best_epoch, last_ckpt, last_epoch = state.max_accuracy, state.best_epoch, state.path, state.epoch - 1
    first_step, meter_state = state.step, state.meter_state

    def save(names: list[str], ranks: dict | None, epoch_done: int, progress: tuple[int, int] | None,
             wait: bool = True) -> list[str]:
        """Write ``names`` (training_checkpoint) when the run saves; returns the paths written."""
        if not saving:
            return []
        ckpt = training_checkpoint(args, model, training, ranks, epoch_done, max_acc, best_epoch, progress)
        return checkpoint.save_training_checkpoint(args.output_dir, names, ckpt, wait=wait)

    for epoch in range(state.epoch, args.epochs):
        set_train_epoch(loaders, args, epoch, first_step)
        result = engine.train_one_epoch(run_model, loaders["train"], training, device, epoch, first_step=first_step,
                                        meter_state=meter_state, stop=stop.requested)
        first_step, meter_state = 0, None
        stopped_at = result.stopped_at  # a stop signal or a divergence ended the epoch early
        if stopped_at is None and stop.requested(now=True):  # a signal late in the last step: save, then stop
            stopped_at = training.steps_per_epoch
        ranks = gather_rank_states(training, result.meter) if saving else None  # the epoch's one collective
        steps_done = training.steps_per_epoch if stopped_at is None else stopped_at
        trained = (epoch - 1, (epoch, steps_done))  # (epoch done, progress): this epoch trained, not validated
        record = {"epoch": epoch, **{f"train_{k}": v for k, v in result.stats.items()}}
        if stopped_at is None:
            if "val" in loaders:
                try:
                    record.update(validate_all(args, run_model, loaders["val"], device, training))
                except Exception:  # a rerun resumes the trained epoch (validation first), not the epoch before
                    try:
                        save([checkpoint.LAST_CHECKPOINT], ranks, *trained, wait=False)
                    except checkpoint.CheckpointWriteError as e:  # the validation error is the one raised
                        print(f"WARNING: the trained epoch {epoch} is not saved: {e}", flush=True)
                    raise
                print(f"Epoch {epoch}: val top-1 {record['val_acc1']:.2f}% top-5 {record['val_acc5']:.2f}% "
                      f"(best {max(max_acc, record['val_acc1']):.2f}%)", flush=True)
            if record.get("val_acc1", -math.inf) > max_acc:
                max_acc, best_epoch = record["val_acc1"], epoch
            log_epoch(args, {**record, "n_parameters": n_parameters}, training.log_writer)  # before its checkpoint
        position = (epoch, None) if stopped_at is None else trained
        problems = run_control.health_problems({**record, "train_nonfinite_steps": result.nonfinite_steps,
                                                "train_nonfinite_losses": result.nonfinite_losses})
        if problems:
            where = f"epoch {epoch}" + ("" if stopped_at is None else
                                        f" (at step {steps_done} of {training.steps_per_epoch})")
            kept = "not kept: the run saves no checkpoint (no --output_dir, or --no_save_ckpt)"
            if saving:
                try:
                    kept = f"kept for inspection as {save([f'checkpoint-{epoch}.bad.pth'], ranks, *position)[0]}"
                except checkpoint.CheckpointWriteError as e:
                    kept = f"not kept: {e}"
            run_control.stop_diverged(where, problems, kept, last_ckpt, last_epoch)
        names = [checkpoint.LAST_CHECKPOINT] if stopped_at is not None else checkpoint.epoch_checkpoint_names(
            epoch, args.epochs, args.save_ckpt_freq, best_epoch == epoch)
        try:
            saved = save(names, ranks, *position)  # checkpoint-last.pth; checkpoint-N.pth and -best.pth link to it
        except checkpoint.CheckpointWriteError as e:
            if stopped_at is not None or stop.requested(now=True):
                run_control.stop_unsaved(stop, str(e), last_ckpt if checkpoint.is_readable(last_ckpt) else None)
            raise SystemExit(f"error: {e}") from e
        if saved and stopped_at is None:
            checkpoint.prune_epoch_checkpoints(args.output_dir, args.keep_last)
            last_ckpt = next((p for p in saved if checkpoint.EPOCH_CHECKPOINT.fullmatch(os.path.basename(p))
                              and os.path.exists(p)), saved[0])  # checkpoint-last.pth if --keep_last pruned it
            last_epoch = epoch
        if stopped_at is not None or stop.requested(now=True):
            run_control.stop_run(stop, saved)
    return last_ckpt


def start_log(args, state: checkpoint.ResumeState) -> None:
    """args.json and log.txt without the lines of the epochs this run redoes (rank 0); says when there is nothing
    left to train."""
    if state.epoch >= args.epochs:
        print(f"Nothing to train: {state.path} ends at epoch {state.epoch - 1} and --epochs is {args.epochs}; "
              f"running the multi-view test on it (a new run needs another --output_dir)", flush=True)
    elif distributed.is_main_process() and args.output_dir:
        utils.write_json(os.path.join(args.output_dir, "args.json"), vars(args))
        log_path = os.path.join(args.output_dir, "log.txt")
        dropped = utils.keep_json_lines(log_path, lambda r: r.get("epoch", -1) < state.epoch)
        if dropped:
            print(f"{log_path}: dropped {dropped} lines of epochs this run redoes (from {state.epoch} on) or cut by "
                  f"a kill", flush=True)


def main(args: argparse.Namespace) -> dict | None:
    """Train (or with --eval only test); returns the multi-view test summary on rank 0. Holds output_dir's lock;
    a stop signal ends training after a checkpoint with SystemExit(run_control.EXIT_PREEMPTED). An error (in a
    loader worker too) ends the process at once: no wait for the other ranks, no worker left to wait for."""
    run_control.end_workers_at_exit()
    distributed.init_distributed(args)
    try:
        with run_control.RunLock(args.output_dir), \
                run_control.StopSignal([run_control.parse_signal(args.exit_signal)], args.dist_timeout) as stop:
            result = _main(args, stop)
    except BaseException as e:
        # The run's own exits (SystemExit: a stop signal, divergence, a refused lock) happen on every rank, which
        # wait for each other; after an error on this rank, the others may never come.
        distributed.cleanup_distributed(wait=isinstance(e, SystemExit))
        raise
    distributed.cleanup_distributed()
    return result


def _main(args, stop: run_control.StopSignal) -> dict | None:
    rank, device = distributed.get_rank(), run_device(args)
    utils.seed_everything(args.seed + rank)
    if args.output_dir and rank == 0:
        run_control.remove_stale_temp_files(args.output_dir)  # RunLock made the folder and holds it: no live writer
    print("Command:", " ".join(sys.argv), "\nArgs:", json.dumps(utils.to_jsonable(vars(args))), flush=True)
    loaders = build_loaders(args, eval_only=args.eval)
    model = build_model(args).to(device)
    print(f"Model {args.model}: {sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6:.2f}M "
          f"trainable parameters", flush=True)
    run_model = wrap_model(args, model, device)
    class_names = load_class_names(args.labels) if args.labels else None
    test = partial(run_test, args, run_model, loaders["test"], device, AMP_DTYPES[args.amp], class_names=class_names)
    if args.eval:
        path = checkpoint.load_for_eval(args, model)
        return test(summary={"checkpoint": path, "model": args.model})

    steps_per_epoch = len(loaders["train"]) // args.update_freq
    if steps_per_epoch == 0:
        raise SystemExit(f"error: {len(loaders['train'].dataset)} training videos give no optimizer step of "
                         f"batch_size {args.batch_size} x update_freq {args.update_freq} x "
                         f"{distributed.get_world_size()} processes")
    log_writer = utils.TensorboardLogger(args.log_dir) if rank == 0 and args.log_dir else None
    training = build_training(args, model, steps_per_epoch, log_writer)
    state = checkpoint.resume_training(args, model, training.optimizer, training.scaler, training.model_ema,
                                       steps_per_epoch, per_rank=list(training.per_rank))
    for name, saved in state.per_rank.items():
        training.per_rank[name].load_state_dict(saved)
    print(f"lr {args.scaled_lr:.3e} for {args.batch_size * args.update_freq * distributed.get_world_size()} videos "
          f"per step, {steps_per_epoch} steps per epoch, criterion {type(training.criterion).__name__}", flush=True)
    start_log(args, state)
    t0 = time.time()
    last_ckpt = train_epochs(args, model, run_model, loaders, training, state, stop, device)
    print(f"Training time {time.time() - t0:.0f}s", flush=True)
    result = test(summary={"checkpoint": last_ckpt, "model": args.model, "epochs": args.epochs})
    if log_writer is not None:
        if result is not None:
            log_writer.log({"top1": result["top1"], "top5": result["top5"]}, step=args.epochs, head="test")
        log_writer.close()
    return result


if __name__ == "__main__":
    main(parse_args())
