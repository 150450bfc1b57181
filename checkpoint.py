"""Every checkpoint read and write: safe loading, the weights inside a file, strict and --finetune loading, atomic
saving, and finding, resuming and evaluating a run's checkpoints.

Every load uses ``weights_only=True`` (with argparse.Namespace allowed, which the model-zoo files store under
'args'), so a downloaded file cannot run code. Every checkpoint written here records the sha256 of its bytes in its
zip comment, and every load checks it (save_checkpoint, verify_content_hash): a flipped byte is an unreadable file,
which auto-resume skips like a truncated one. The files read:
- this project's training checkpoints: {'model', 'optimizer', 'scaler', 'model_ema', 'epoch', 'max_accuracy', 'args',
  'rng_states', 'llm' (which LLM block the model holds, or None)} plus any extra entries the caller adds
  (``training_state(..., **extra)``), among them 'best_epoch' and, in a checkpoint written partway through an
  epoch, 'train_progress' {'epoch', 'step', ...} ('epoch' is then the last completed epoch);
- model-zoo fine-tuned files: {'model', 'optimizer', 'epoch', 'scaler', 'args': argparse.Namespace};
- VideoMAE self-supervised files (``--finetune``): 'model' holding encoder.* / decoder.* keys;
- bare state dicts, where a caller accepts them (``model_state(..., allow_bare=True)``).
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import math
import os
import re
import shutil
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

import distributed
import utils

MODEL_KEYS = "model|module"  # where VideoMAE's files keep their weights (--model_key)
DROP_PREFIXES = ("decoder.", "encoder_to_decoder.", "mask_token")
LLM_PREFIXES = ("llama", "llama_dim_mapper1", "llama_dim_mapper2")  # the LLM block of the ViT-LLaMA models
EPOCH_CHECKPOINT = re.compile(r"checkpoint-(\d+)\.pth")
BEST_CHECKPOINT = "checkpoint-best.pth"
LAST_CHECKPOINT = "checkpoint-last.pth"  # every epoch, and partway through one when the run is stopped
PROGRESS = "train_progress"  # the extra entry of a mid-epoch checkpoint: {'epoch', 'step', ...}

# ---------------------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------------------


def safe_load(path: str, mmap: bool = False, what: str = "checkpoint", verify: bool = True) -> dict:
    """torch.load on CPU with weights_only=True and argparse.Namespace allowlisted; RuntimeError naming the file.

    The only torch.load of the project; ``what`` names the file in errors (e.g. "LLM weights"). With ``verify``, a
    file that records its content hash (save_checkpoint) must match it (verify_content_hash)."""
    if not os.path.isfile(path):
        raise RuntimeError(f"cannot read {what} {path}: no such file")
    if verify:
        verify_content_hash(path, what)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # truncated/corrupt archive, or a pickle that would need to run code
        raise RuntimeError(f"cannot read {what} {path} (truncated, not a torch file, or holding objects other "
                           f"than tensors/containers/argparse.Namespace): {type(e).__name__}: {e}") from e


def model_state(ckpt: Mapping, keys: str | Sequence[str] = MODEL_KEYS, *, path: str = "checkpoint",
                allow_bare: bool = False) -> dict[str, torch.Tensor]:
    """The weights in a loaded checkpoint: the first of ``keys`` ("a|b" or a sequence) whose entry is a dict.

    With ``allow_bare``, a file that is itself a state dict (every value a tensor) is accepted too. Otherwise a
    RuntimeError names the file, the entries asked for and the entries found.
    """
    names = keys.split("|") if isinstance(keys, str) else list(keys)
    if not isinstance(ckpt, Mapping):
        raise RuntimeError(f"{path} holds a {type(ckpt).__name__}, not a dict of weights")
    for key in names:
        if isinstance(ckpt.get(key), Mapping):
            return ckpt[key]
    if allow_bare and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return dict(ckpt)
    found = sorted(map(str, ckpt))
    raise RuntimeError(f"{path} holds no weights under {' or '.join(map(repr, names))}"
                       f"{' (nor is it a bare state dict)' if allow_bare else ''}; its entries: "
                       f"{found[:10]}{' ...' if len(found) > 10 else ''}")


def ema_state(ckpt: Mapping, *, path: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The EMA weights of a training checkpoint as a full state dict: 'model' overlaid with 'model_ema' (which holds
    the trainable weights only; older files hold the whole model, which overlays just the same)."""
    return {**model_state(ckpt, MODEL_KEYS, path=path), **model_state(ckpt, "model_ema", path=path)}


def saved_args(ckpt: Mapping) -> dict:
    """The run arguments stored in a checkpoint ('args': an argparse.Namespace in zoo files, a dict in ours), or {}."""
    args = ckpt.get("args") if isinstance(ckpt, Mapping) else None
    if isinstance(args, argparse.Namespace):
        return vars(args)
    return dict(args) if isinstance(args, Mapping) else {}


def _listed(title: str, keys: list[str], limit: int = 8) -> str:
    return f"  {len(keys)} {title}: {', '.join(keys[:limit])}{' ...' if len(keys) > limit else ''}"


def load_strict(model: nn.Module, state: Mapping[str, torch.Tensor], path: str, model_name: str, details: str = "",
                saved_model: str | None = None) -> None:
    """model.load_state_dict(state, strict=True) after checking that every key and shape fits.

    A misfit raises RuntimeError "checkpoint PATH does not fit --model MODEL_NAME DETAILS:" followed by the head
    sizes when they differ, the model name the checkpoint was saved from (``saved_model``) when it differs, and the
    shape mismatches, missing and unexpected keys.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in state and state[k].shape != own[k].shape]
    if not (missing or unexpected or mismatched):
        model.load_state_dict(state, strict=True)
        return
    lines = [f"checkpoint {path} does not fit --model {model_name}{' ' + details if details else ''}:"]
    if "head.weight" in state and "head.weight" in own and state["head.weight"].shape[0] != own["head.weight"].shape[0]:
        lines.append(f"  it holds a {state['head.weight'].shape[0]}-class head; the model has "
                     f"{own['head.weight'].shape[0]} classes (--nb_classes)")
    if saved_model and saved_model != model_name:
        lines.append(f"  its saved args say --model {saved_model}")
    for title, keys in (("shape mismatches", mismatched), ("missing keys", missing), ("unexpected keys", unexpected)):
        if keys:
            lines.append(_listed(title, keys))
    raise RuntimeError("\n".join(lines))


def load_model_file(model: nn.Module, ckpt: Mapping, path: str, model_name: str, details: str = "",
                    keys: str | Sequence[str] = MODEL_KEYS, allow_bare: bool = False) -> None:
    """Strictly load the weights of a loaded checkpoint, found by model_state(keys, allow_bare), into ``model``
    (see load_strict), after checking its recorded LLM block against the model's (check_llm_identity)."""
    check_llm_identity(ckpt.get("llm"), model, path)
    load_strict(model, model_state(ckpt, keys, path=path, allow_bare=allow_bare), path, model_name, details,
                saved_args(ckpt).get("model"))


# ---------------------------------------------------------------------------------------------------------------------
# Which LLM block a checkpoint holds (models with one expose it as ``model.llm_identity``, see llama.block_identity)
# ---------------------------------------------------------------------------------------------------------------------

_LLM_SHAPE = ("model_type", "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim",
              "intermediate_size", "qkv_bias", "rms_norm_eps")


class LLMMismatchError(RuntimeError):
    """A checkpoint's LLM block is not the one the model was built with."""


def describe_llm(ident: Mapping) -> str:
    """One line: family, shape, layers and where the weights came from."""
    heads, kv = ident["num_attention_heads"], ident["num_key_value_heads"]
    shape = (f"hidden {ident['hidden_size']}, {heads} heads" + (f" / {kv} KV" if kv != heads else "")
             + f", FFN {ident['intermediate_size']}" + (", q/k/v biases" if ident["qkv_bias"] else "")
             + f", eps {ident['rms_norm_eps']:g}")
    if ident.get("sha256"):
        weights = f"from {ident['source']} (sha256 {', '.join(ident['sha256'])})"
    elif ident.get("source") == "random":
        weights = "random weights"
    else:
        weights = f"weights of unrecorded origin ({ident.get('source')})"
    return f"{ident['model_type']} ({shape}) layers {ident['layers']}, {weights}"


def check_llm_identity(recorded: Mapping | None, model: nn.Module, path: str) -> None:
    """Refuse (LLMMismatchError naming both) a checkpoint whose recorded LLM block ('llm') differs from the model's.

    Shapes must always agree. When the model's block was read from a folder, the checkpoint's layers and weight
    hashes must equal it (a checkpoint with a random block is refused too: its weights would replace the folder's).
    When the model's block is random (no folder given), the checkpoint's weights will fill it: the model takes the
    checkpoint's identity. A checkpoint without a record (model zoo, older files) loads, with a warning when the
    model's block came from a folder. A model without an LLM block is left to the strict load.
    """
    own = getattr(model, "llm_identity", None)
    if own is None:
        return
    if recorded is None or (recorded.get("sha256") is None and recorded.get("source") != "random"
                            and own["sha256"] is not None):
        if own["sha256"] is None:  # nothing to check: the checkpoint's weights fill the block
            model.llm_identity = {**own, "source": f"{path} (unrecorded)"}
        else:
            warnings.warn(f"checkpoint {path} records no LLM identity (a model-zoo or older file): its frozen LLM "
                          f"weights replace the model's {describe_llm(own)} unchecked", stacklevel=2)
        return
    same_shape = all(recorded.get(k) == own[k] for k in _LLM_SHAPE) and len(recorded["layers"]) == len(own["layers"])
    same_weights = own["sha256"] is None or (recorded["layers"], recorded["sha256"]) == (own["layers"], own["sha256"])
    if not (same_shape and same_weights):
        raise LLMMismatchError(
            f"checkpoint {path} holds another LLM block than the model built:\n"
            f"  checkpoint: {describe_llm(recorded)}\n  model:      {describe_llm(own)}\n"
            f"Build the model with the checkpoint's LLM (the --llama_path and --llama_layer it was trained with), or "
            f"give no --llama_path to take the frozen weights from the checkpoint.")
    if own["sha256"] is None:
        model.llm_identity = dict(recorded)


# ---------------------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------------------


# The content hash of a checkpoint: the zip archive's comment (which torch.load ignores) holds HASH_TAG and the
# sha256 hex digest of the archive as torch.save wrote it, i.e. with an empty comment.
HASH_TAG = b"sha256:"
_HASH_COMMENT = len(HASH_TAG) + 64
_EOCD = b"PK\x05\x06"  # signature of the zip's end-of-central-directory record (22 bytes + comment, the file's end)


class CheckpointWriteError(RuntimeError):
    """A checkpoint that could not be written (disk full, quota, I/O error); the message names the file, the size
    it needs and the free space. The file's previous version, if any, is untouched."""


class _HashingWriter:
    """What torch.save writes to: passes the bytes on to ``f`` and hashes them; keeps the first OSError (torch may
    wrap it in its own error)."""

    def __init__(self, f):
        self.f, self.sha, self.error = f, hashlib.sha256(), None

    def write(self, data) -> int:
        try:
            n = self.f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise
        self.sha.update(data)
        return n

    def flush(self) -> None:
        self.f.flush()


def write_checkpoint(f, state: dict) -> str:
    """torch.save ``state`` into the seekable binary file ``f`` and record the sha256 of the archive in its zip
    comment; returns the hex digest. Hashing while writing costs one sha256 pass over the bytes, no second read."""
    writer = _HashingWriter(f)
    try:
        torch.save(state, writer)
    except Exception as e:
        if writer.error is not None and writer.error is not e:
            raise writer.error from e
        raise
    digest = writer.sha.hexdigest()
    comment = HASH_TAG + digest.encode()
    f.seek(-2, os.SEEK_END)  # the comment length, 0 as written, ends the archive
    f.write(len(comment).to_bytes(2, "little") + comment)
    return digest


def recorded_content_hash(path: str) -> str | None:
    """The sha256 hex digest a checkpoint records (write_checkpoint), or None for a file without one (older
    versions, other tools)."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() < 22 + _HASH_COMMENT:
            return None
        f.seek(-(22 + _HASH_COMMENT), os.SEEK_END)
        tail = f.read()
    if tail[:4] != _EOCD or tail[20:22] != _HASH_COMMENT.to_bytes(2, "little") or tail[22:29] != HASH_TAG:
        return None
    return tail[29:].decode("ascii", "replace")


def verify_content_hash(path: str, what: str = "checkpoint") -> bool:
    """Check a file's bytes against the content hash it records: False when it records none; RuntimeError naming
    the file when they differ (a byte changed on disk or in a copy). Reads the file once (~1 s per GB)."""
    recorded = recorded_content_hash(path)
    if recorded is None:
        return False
    sha, left = hashlib.sha256(), os.path.getsize(path) - _HASH_COMMENT - 2
    with open(path, "rb") as f:
        while left > 0:
            chunk = f.read(min(left, 1 << 23))
            if not chunk:
                break
            sha.update(chunk)
            left -= len(chunk)
    sha.update(b"\x00\x00")
    if sha.hexdigest() != recorded:
        raise RuntimeError(f"cannot read {what} {path}: its content does not match the sha256 recorded when it was "
                           f"written ({recorded[:16]}... vs {sha.hexdigest()[:16]}... now): the file changed on disk "
                           f"or in a copy")
    return True


def _state_bytes(state: Any) -> int:
    """Bytes of the tensors in a (nested) checkpoint state: about its size on disk."""
    seen, total, stack = set(), 0, [state]
    while stack:
        x = stack.pop()
        if isinstance(x, torch.Tensor):
            key = (x.untyped_storage().data_ptr(), x.device)
            if key not in seen:
                seen.add(key)
                total += x.untyped_storage().nbytes()
        elif isinstance(x, Mapping):
            stack.extend(x.values())
        elif isinstance(x, (list, tuple)):
            stack.extend(x)
    return total


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def save_checkpoint(path: str, state: dict) -> str:
    """torch.save ``state`` atomically (temporary file in the same folder, flush + fsync, rename), with its content
    hash (write_checkpoint): a reader sees the old file or the new one, never a partial one. Returns the sha256.
    Any OSError (a full disk) raises CheckpointWriteError naming the file, its size and the free space."""
    try:
        return _atomic_checkpoint_write(path, state)
    except OSError as e:
        folder = os.path.dirname(os.path.abspath(path))
        try:
            free = _gib(shutil.disk_usage(folder).free)
        except OSError:
            free = "unknown"
        raise CheckpointWriteError(
            f"cannot write checkpoint {path}: {e.strerror or e}; it needs about {_gib(_state_bytes(state))} and "
            f"{folder} has {free} free. Free some space (or --keep_last N, or another --output_dir) and rerun") from e


def _atomic_checkpoint_write(path: str, state: dict) -> str:
    digest = []
    utils.atomic_write(path, lambda f: digest.append(write_checkpoint(f, state)))
    return digest[0]


def _ema_state(model_ema) -> dict | None:
    """The averaged trainable weights (optim_factory.TrainableEma): the frozen block is stored once, under 'model'."""
    return model_ema.state_dict() if model_ema is not None else None


def training_state(args, model: nn.Module, optimizer: torch.optim.Optimizer, scaler, model_ema, epoch: int,
                   max_accuracy: float, rng_states: list[dict] | None, **extra: Any) -> dict:
    """Everything a resume needs (``rng_states``: every rank's utils.capture_rng_state, in rank order), plus
    ``extra`` entries (tensors / plain python, e.g. every rank's generator states) that resume_training hands
    back."""
    if "llm" in extra:  # the other standard entries are parameters: python refuses them twice
        raise ValueError("training_state: the extra entry 'llm' would overwrite the standard one")
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None, "epoch": epoch,
            "args": utils.to_jsonable(vars(args)), "model_ema": _ema_state(model_ema),
            "max_accuracy": max_accuracy, "rng_states": rng_states,
            "llm": getattr(model, "llm_identity", None), **extra}


def epoch_checkpoint_names(epoch: int, epochs: int, save_ckpt_freq: int, is_best: bool) -> list[str]:
    """Files to write after ``epoch`` (0-based): checkpoint-last.pth always, checkpoint-N.pth every save_ckpt_freq
    epochs and after the last one, checkpoint-best.pth when the validation top-1 improved. The first is written,
    the others are links to it (save_training_checkpoint)."""
    names = [f"checkpoint-{epoch}.pth"] if (epoch + 1) % save_ckpt_freq == 0 or epoch + 1 == epochs else []
    return [LAST_CHECKPOINT] + names + ([BEST_CHECKPOINT] if is_best else [])


def save_training_checkpoint(output_dir: str, names: Sequence[str], state: dict, wait: bool = True) -> list[str]:
    """On rank 0, atomically write output_dir/names[0], then make each other name a hard link to it (a copy where
    links are not supported), also atomically; with ``wait`` every rank waits for that and a CheckpointWriteError
    (save_checkpoint) reaches every rank. Returns the paths.

    A kill at any point leaves every name either its previous file or the new one, and the first name is complete
    before any other points to it."""
    paths, error = [os.path.join(output_dir, n) for n in names], None
    if distributed.is_main_process() and paths:
        try:
            save_checkpoint(paths[0], state)
            for p in paths[1:]:
                try:
                    utils.link_or_copy(paths[0], p)
                except OSError as e:  # a copy (no hard links) on a full disk
                    raise CheckpointWriteError(f"cannot write checkpoint {p}: {e.strerror or e}") from e
            print(f"Saved {', '.join(paths)}", flush=True)
        except CheckpointWriteError as e:
            error = e
    if wait and distributed.is_dist():  # rank 0's outcome, once it has written: every rank raises alike
        outcome = [str(error) if error else None]
        torch.distributed.broadcast_object_list(outcome, src=0)
        error = error or (CheckpointWriteError(outcome[0]) if outcome[0] else None)
    if error is not None:
        raise error
    return paths


def prune_epoch_checkpoints(output_dir: str, keep: int | None) -> list[str]:
    """Delete all but the ``keep`` newest checkpoint-N.pth of output_dir (rank 0; None keeps all). checkpoint-last.pth
    and checkpoint-best.pth are other names, so the files they hold stay. Returns the deleted paths."""
    if keep is None or not distributed.is_main_process():
        return []
    removed = [path for _, path in list_epoch_checkpoints(output_dir)[keep:]]
    for path in removed:
        os.remove(path)
    if removed:
        print(f"Removed {', '.join(removed)} (--keep_last {keep})", flush=True)
    return removed


# ---------------------------------------------------------------------------------------------------------------------
# Finding, resuming, evaluating
# ---------------------------------------------------------------------------------------------------------------------


def list_epoch_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """(epoch, path) of output_dir/checkpoint-N.pth, newest first."""
    found = []
    for p in glob.glob(os.path.join(glob.escape(output_dir), "checkpoint-*.pth")):
        m = EPOCH_CHECKPOINT.fullmatch(os.path.basename(p))
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found, reverse=True)


def resume_position(ckpt: Mapping) -> tuple[int, int]:
    """(epoch, step) at which training continues from a loaded checkpoint: after its last completed epoch, or at
    the step its train_progress records; (-1, 0) when it holds no integer epoch (a zoo file)."""
    progress = ckpt.get(PROGRESS)
    if isinstance(progress, Mapping):
        return int(progress["epoch"]), int(progress["step"])
    epoch = ckpt.get("epoch")
    return (epoch + 1, 0) if isinstance(epoch, int) else (-1, 0)


def peek(path: str) -> dict:
    """A checkpoint's entries without reading its tensors (memory-mapped); a file too old to be memory-mapped
    (torch's legacy format) is read whole."""
    try:
        return safe_load(path, mmap=True, verify=False)
    except RuntimeError:
        return safe_load(path, verify=False)


def is_readable(path: str | None) -> bool:
    """Whether ``path`` is a checkpoint whose entries read (peek: its tensors are not read)."""
    try:
        return path is not None and isinstance(peek(path), dict)
    except RuntimeError:
        return False


def _skip(path: str, error: Exception) -> None:
    warnings.warn(f"auto-resume: skipping damaged checkpoint {path}: {error}")
    print(f"WARNING: auto-resume skips damaged checkpoint {path}: {error}", flush=True)


def find_resume_checkpoint(output_dir: str) -> tuple[str, dict] | tuple[None, None]:
    """The checkpoint to resume in output_dir: the one furthest on (resume_position) of checkpoint-last.pth,
    checkpoint-N.pth and (a last resort, e.g. a folder of an older version) checkpoint-best.pth that reads and holds
    'model'; on a tie the numbered file, whose name says the most. Damaged files are skipped with a warning; when
    files exist but none reads, a RuntimeError names each with its error (starting over would overwrite them)."""
    rank = {LAST_CHECKPOINT: 1, BEST_CHECKPOINT: 0}
    candidates, errors = [], []
    for name in (LAST_CHECKPOINT, BEST_CHECKPOINT):
        path = os.path.join(output_dir, name)
        if os.path.exists(path):
            try:
                candidates.append((resume_position(peek(path)), rank[name], path))
            except (RuntimeError, KeyError, TypeError, ValueError) as e:
                errors.append((path, e))
                _skip(path, e)
    candidates += [((epoch + 1, 0), 2, path) for epoch, path in list_epoch_checkpoints(output_dir)]
    for _, _, path in sorted(candidates, reverse=True):
        try:
            ckpt = safe_load(path)
            model_state(ckpt, "model", path=path)
            return path, ckpt
        except RuntimeError as e:
            errors.append((path, e))
            _skip(path, e)
    if errors:
        raise RuntimeError(f"auto-resume: none of the {len(errors)} checkpoints in {output_dir!r} can be read:\n"
                           + "\n".join(f"  {p!r}: {e}" for p, e in errors) + "\nPass --resume FILE to resume a "
                           "file of your choice, or --no_auto_resume to start from scratch (overwriting them).")
    return None, None


def checkpoint_to_load(args) -> tuple[str, dict] | tuple[None, None]:
    """--resume exactly (an unreadable file is an error), else with --auto_resume the checkpoint to resume in
    --output_dir (find_resume_checkpoint), else (None, None)."""
    if args.resume:
        return args.resume, safe_load(args.resume)
    if args.auto_resume and args.output_dir:
        return find_resume_checkpoint(args.output_dir)
    return None, None


def check_eval_args(args, ckpt: Mapping, path: str) -> None:
    """Refuse --num_frames / --input_size / --data_set (--sampling_rate for the Kinetics protocol; --model for this
    project's checkpoints) other than the ones the checkpoint was trained with, unless args.allow_arg_mismatch: the
    weights would load (the position table is fixed, not stored) and give wrong predictions silently. Model-zoo files
    (args as argparse.Namespace) are not checked for the model name, which the published code spells its own way: the
    strict key check decides."""
    keys = ["num_frames", "input_size", "data_set"]
    keys += ["sampling_rate"] if getattr(args, "data_set", "SSV2") != "SSV2" else []  # SSv2 samples segments
    keys += ["model"] if isinstance(ckpt.get("args"), Mapping) else []
    changes = changed_args(saved_args(ckpt), vars(args), keys)
    if changes and not getattr(args, "allow_arg_mismatch", False):
        raise RuntimeError(f"checkpoint {path} was trained with other settings: {'; '.join(changes)} (saved -> "
                           f"given). Pass the saved values, or --allow_arg_mismatch to run anyway")


def load_for_eval(args, model: nn.Module) -> str:
    """Load the weights --eval evaluates, strictly (head included): --resume exactly, else the newest loadable
    checkpoint in output_dir (find_resume_checkpoint); refuses a checkpoint trained with other frames/size/model
    (check_eval_args). Returns the path; errors when there is none (never the --finetune weights, whose head may
    have been dropped: run_class_finetuning.check_args refuses --eval with --finetune and no --resume)."""
    path, ckpt = checkpoint_to_load(args)
    if path:
        load_model_file(model, ckpt, path, args.model, keys=args.model_key)
        check_eval_args(args, ckpt, path)
        print(f"Evaluating {path}", flush=True)
        return path
    raise SystemExit(f"error: --eval has nothing to evaluate: pass --resume CKPT, or an --output_dir holding "
                     f"checkpoint-N.pth (got {args.output_dir!r})")


def _restore_ema(model_ema, ckpt: Mapping, model: nn.Module) -> None:
    """The saved average (its trainable entries: older files stored the whole model), or (a file without one) a
    restart of the average from the loaded weights."""
    if model_ema is not None:
        model_ema.load_state_dict(ckpt["model_ema"] if ckpt.get("model_ema") is not None else model.state_dict())


@dataclass
class ResumeState:
    """Where training continues: ``epoch`` from its optimizer step ``step`` (0 unless a mid-epoch checkpoint says
    otherwise), the best val top-1 so far and its epoch, this rank's sums of the epoch's earlier steps
    (``meter_state``, engine meter state), this rank's saved state of each per-rank object by name (e.g. the
    device augmentation's generators) and the checkpoint it comes from (None: a fresh start)."""
    epoch: int
    step: int = 0
    max_accuracy: float = 0.0
    best_epoch: int | None = None
    meter_state: dict | None = None
    per_rank: dict[str, Any] = field(default_factory=dict)
    path: str | None = None


# Arguments that say how a run is launched or where it writes, not what it trains: not reported as changes.
RUN_ONLY_ARGS = {"resume", "auto_resume", "start_epoch", "eval", "output_dir", "log_dir", "rank", "gpu",
                 "distributed", "local_rank", "dist_url", "dist_on_itp", "num_workers", "pin_mem", "print_freq",
                 "exit_signal", "allow_arg_mismatch"}


def changed_args(saved: Mapping, current: Mapping, keys: Sequence[str] | None = None) -> list[str]:
    """'--name saved -> current' for the arguments (``keys``, default all but RUN_ONLY_ARGS) that both hold and
    that differ."""
    keys = keys if keys is not None else [k for k in current if k not in RUN_ONLY_ARGS]
    return [f"--{k} {saved[k]!r} -> {current[k]!r}" for k in keys
            if k in saved and k in current and utils.to_jsonable(saved[k]) != utils.to_jsonable(current[k])]


def best_accuracy(output_dir: str) -> tuple[float, int | None]:
    """(max_accuracy, epoch) recorded in output_dir/checkpoint-best.pth (peek), (0.0, None) when it is missing or
    unreadable."""
    path = os.path.join(output_dir, BEST_CHECKPOINT) if output_dir else ""
    if not os.path.isfile(path):
        return 0.0, None
    try:
        best = peek(path)
        return float(best.get("max_accuracy", 0.0)), best.get("epoch")
    except (RuntimeError, AttributeError, TypeError, ValueError):
        return 0.0, None


def _restore_best(args, path: str, ckpt: Mapping) -> float:
    """The best val top-1 so far: the larger of the resumed file's and checkpoint-best.pth's (a run resumed from
    an older file must not overwrite a better best). Also repairs a kill between writing an epoch's
    checkpoint-last.pth and linking its other names (save_training_checkpoint): when the resumed file is an
    end-of-epoch checkpoint of output_dir, its epoch's checkpoint-N.pth is linked to it if missing, and
    checkpoint-best.pth if it records itself as the best epoch but checkpoint-best.pth holds another."""
    best, best_file_epoch = best_accuracy(args.output_dir)
    own = float(ckpt.get("max_accuracy", 0.0))
    epoch = ckpt.get("epoch")
    in_run = bool(args.output_dir) and os.path.dirname(os.path.abspath(path)) == os.path.abspath(args.output_dir)
    if in_run and distributed.is_main_process() and PROGRESS not in ckpt and isinstance(epoch, int):
        is_best = ckpt.get("best_epoch") == epoch and best_file_epoch != epoch and own > best
        for name in epoch_checkpoint_names(epoch, args.epochs, args.save_ckpt_freq, is_best)[1:]:
            target = os.path.join(args.output_dir, name)
            if name == BEST_CHECKPOINT or not os.path.exists(target):
                utils.link_or_copy(path, target)
                print(f"{target} was not written for epoch {epoch} (a kill while saving): linked it to {path}",
                      flush=True)
    return max(own, best)


# What each entry of a training checkpoint must be (None allowed for all): a file that is not one fails with a line
# naming the entry, instead of a TypeError deep inside a load.
ENTRY_TYPES = {"optimizer": (Mapping, "a dict"), "scaler": (Mapping, "a dict"), "model_ema": (Mapping, "a dict"),
               "max_accuracy": ((int, float), "a number"), "rng_states": ((list, tuple), "a list (one per rank)"),
               PROGRESS: (Mapping, "a dict"), "best_epoch": (int, "an integer")}


def check_entry_types(ckpt: Mapping, path: str) -> None:
    """RuntimeError naming the first entry of a training checkpoint whose type is not ENTRY_TYPES'."""
    for name, (kind, what) in ENTRY_TYPES.items():
        value = ckpt.get(name)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise RuntimeError(f"checkpoint {path}: its {name!r} entry is a {type(value).__name__}, expected {what}")


def resume_step(args, progress: Mapping | None, epoch: int, steps_per_epoch: int) -> tuple[int, dict | None]:
    """(first optimizer step, this rank's meter state) at which ``epoch`` continues after a mid-epoch checkpoint's
    train_progress; (0, None) without one. Another batch layout (batch size, update_freq, processes) cannot continue
    the sample order exactly: the step is then scaled to the videos already seen, with a warning."""
    if not progress or progress["epoch"] != epoch:
        return 0, None
    layout = [args.batch_size, args.update_freq, distributed.get_world_size()]
    step, meters = int(progress["step"]), progress.get("meters") or []
    if list(progress["layout"]) == layout:
        return step, meters[distributed.get_rank()] if len(meters) == layout[2] else None
    scaled = min(step * math.prod(progress["layout"]) // math.prod(layout), steps_per_epoch)
    print(f"WARNING: epoch {epoch} was stopped after {step} steps of batch_size x update_freq x processes = "
          f"{progress['layout']}; with {layout} it continues at step {scaled}, and the rest of the epoch visits the "
          f"videos in another order than an uninterrupted run", flush=True)
    return scaled, None


def _rank_states(ckpt: Mapping, names: Sequence[str], path: str) -> dict[str, Any]:
    """This rank's entry of each per-rank state list ``names`` that the file holds; a missing entry, or one saved
    by another number of processes (which cannot be mapped), starts afresh, with a warning."""
    world, found = distributed.get_world_size(), {}
    for name in names:
        states = ckpt.get(name)
        if states is None:
            print(f"WARNING: {path} holds no {name!r} state; it starts afresh", flush=True)
        elif not isinstance(states, (list, tuple)):
            raise RuntimeError(f"checkpoint {path}: its {name!r} entry is a {type(states).__name__}, expected a list "
                               f"(one state per rank)")
        elif len(states) != world:
            print(f"WARNING: {path} holds {len(states)} per-rank {name!r} states for {world} processes; they start "
                  f"afresh", flush=True)
        else:
            found[name] = states[distributed.get_rank()]
    return found


def resume_training(args, model: nn.Module, optimizer: torch.optim.Optimizer, scaler, model_ema,
                    steps_per_epoch: int, per_rank: Sequence[str] = ()) -> ResumeState:
    """Restore from --resume, else (auto_resume) the checkpoint find_resume_checkpoint picks in output_dir.

    Loads model, optimizer, scaler, EMA and this rank's RNG state, lists the arguments that differ from the saved
    ones, and returns where training continues (ResumeState): the epoch after the last completed one, at the step
    a train_progress entry records (resume_step), the best val top-1 (see _restore_best) and this rank's states
    of the per-rank entries ``per_rank``. A file without an integer epoch (e.g. a zoo file) restores the weights and
    starts at --start_epoch.
    """
    path, ckpt = checkpoint_to_load(args)
    if not path:
        return ResumeState(args.start_epoch)
    check_entry_types(ckpt, path)
    load_model_file(model, ckpt, path, args.model, keys=args.model_key)
    print(f"Resuming from {path}", flush=True)
    changes = changed_args(saved_args(ckpt), vars(args))
    if changes:
        print(f"WARNING: resuming {path} with arguments that differ from the ones it was trained with (the lr "
              f"follows the new videos per step):\n  " + "\n  ".join(changes), flush=True)
    if ckpt.get("optimizer") is not None:
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError) as e:
            raise RuntimeError(f"optimizer state in {path} does not match this run's parameter groups ({e}); "
                               f"start a new run from its weights with --finetune {path} instead") from e
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    _restore_ema(model_ema, ckpt, model)
    state = ResumeState(args.start_epoch, max_accuracy=_restore_best(args, path, ckpt),
                        best_epoch=ckpt.get("best_epoch"), per_rank=_rank_states(ckpt, per_rank, path), path=path)
    epoch = ckpt.get("epoch")
    if not isinstance(epoch, int):
        print(f"WARNING: {path} has no integer epoch ({epoch!r}); starting at epoch {args.start_epoch}", flush=True)
        return state
    states = ckpt.get("rng_states")
    if states and len(states) == distributed.get_world_size():
        utils.restore_rng_state(states[distributed.get_rank()])
    else:
        print("WARNING: no RNG state for this world size in the checkpoint; reseeding", flush=True)
        utils.seed_everything(args.seed + distributed.get_rank() + 1000 * (epoch + 1))
    state.epoch = epoch + 1
    state.step, state.meter_state = resume_step(args, ckpt.get(PROGRESS), state.epoch, steps_per_epoch)
    return state


# ---------------------------------------------------------------------------------------------------------------------
# --finetune: a VideoMAE self-supervised (or any compatible) checkpoint into a fine-tuning model
# ---------------------------------------------------------------------------------------------------------------------


def _strip(key: str, model_prefix: str) -> str:
    if model_prefix and key.startswith(model_prefix):
        key = key[len(model_prefix):]
    for prefix in ("encoder.", "backbone."):
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def _checkpoint_grid(n: int, ckpt: dict, model_grid: tuple[int, int, int]) -> tuple[int, int, int]:
    """(T, H, W) token grid of a checkpoint's pos_embed with n tokens: from its saved args, else the model's T or
    H x W, whichever divides n into a square / whole grid."""
    args = saved_args(ckpt)
    if "num_frames" in args and "input_size" in args:
        t = args["num_frames"] // args.get("tubelet_size", 2)
        s = args["input_size"] // 16
        if t * s * s == n:
            return t, s, s
    tm, hm, wm = model_grid
    s = math.isqrt(n // tm) if n % tm == 0 else 0
    if s * s * tm == n:
        return tm, s, s
    if n % (hm * wm) == 0:
        return n // (hm * wm), hm, wm
    raise ValueError(f"cannot infer the token grid of a pos_embed with {n} tokens (model grid {model_grid})")


def interpolate_pos_embed(pos: torch.Tensor, src: tuple[int, int, int], dst: tuple[int, int, int]) -> torch.Tensor:
    """1 x (T*H*W) x C position table on grid src -> grid dst: bicubic in space, linear in time."""
    (ts, hs, ws), (td, hd, wd) = src, dst
    c = pos.shape[-1]
    x = pos.float().reshape(ts, hs, ws, c).permute(0, 3, 1, 2)  # T C H W
    if (hs, ws) != (hd, wd):
        x = F.interpolate(x, size=(hd, wd), mode="bicubic", align_corners=False)
    x = x.permute(1, 2, 3, 0).reshape(1, c * hd * wd, ts)  # 1 x (C H W) x T
    if ts != td:
        x = F.interpolate(x, size=td, mode="linear", align_corners=False)
    return x.reshape(c, hd, wd, td).permute(3, 1, 2, 0).reshape(1, td * hd * wd, c).to(pos.dtype)


def _summary(keys: list[str]) -> str:
    groups = Counter(k.split(".")[0] for k in keys)
    return ", ".join(f"{g}.* x{n}" if n > 1 else g for g, n in groups.items()) or "none"


def load_finetune_weights(model: nn.Module, path: str, model_key: str = MODEL_KEYS,
                          model_prefix: str = "", allow_arg_mismatch: bool = False) -> dict:
    """Load a VideoMAE self-supervised (or any compatible) checkpoint into ``model`` for fine-tuning.

    Strips ``model_prefix`` then ``encoder.``/``backbone.``; drops the decoder, ``encoder_to_decoder``,
    ``mask_token``, the encoder's ``norm`` when the model mean-pools, a ``head`` of another shape, and a
    ``pos_embed`` the model does not learn (it uses the fixed table); interpolates a learnable ``pos_embed`` to the
    model's grid. Loads with strict=False and returns {"missing", "unexpected", "dropped", "notes"}; the first note
    says whether the checkpoint's head was kept or dropped, with both class counts. LLM keys (read from the LLM
    folder) are not reported as missing. Raises when no tensor matched (wrong file), when tensors other than the
    head have other shapes (wrong model size), and, unless ``allow_arg_mismatch``, when the checkpoint holds an LLM
    block the model has not (its fine-tuned ViT would be used without the block it was trained with).
    """
    ckpt = safe_load(path)
    state = model_state(ckpt, model_key, path=path, allow_bare=True)
    own = model.state_dict()
    learnable_pos = isinstance(getattr(model, "pos_embed", None), nn.Parameter)
    new_state, dropped, notes, saved_classes = {}, [], [], None
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        k = _strip(key, model_prefix)
        if k == "head.weight":
            saved_classes = value.shape[0]
        if k.startswith(DROP_PREFIXES) or (k.startswith("norm.") and k not in own):
            dropped.append(k)
        elif k.startswith("head.") and k in own and own[k].shape != value.shape:
            dropped.append(k)
        elif k == "pos_embed" and not learnable_pos:
            dropped.append(k)
            notes.append("pos_embed: the model uses the fixed sinusoid table; the checkpoint's table is not used")
        elif k == "pos_embed" and value.shape != own[k].shape:
            grid = tuple(model.patch_embed.grid_size)
            src = _checkpoint_grid(value.shape[1], ckpt, grid)
            new_state[k] = interpolate_pos_embed(value, src, grid)
            notes.append(f"pos_embed interpolated from grid {src} to {grid}")
        else:
            new_state[k] = value
    llm = sorted({k.split(".")[0] for k in new_state if k.split(".")[0] in LLM_PREFIXES and k not in own})
    if llm and not allow_arg_mismatch:
        raise RuntimeError(f"{path} holds an LLM block ({', '.join(f'{g}.*' for g in llm)}) that the model has not: "
                           f"its ViT was fine-tuned with that block after it, and would be used without it. Choose "
                           f"the --model with the LLM block, or pass --allow_arg_mismatch to load the ViT weights "
                           f"anyway")
    if saved_classes is not None and "head.weight" in own:
        notes.insert(0, f"head: checkpoint has {saved_classes} classes, model {own['head.weight'].shape[0]}: "
                        f"{'dropped (a new head is trained)' if 'head.weight' in dropped else 'kept'}")
    mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in new_state.items() if k in own and own[k].shape != v.shape]
    if mismatched:
        raise ValueError(f"{path}: {len(mismatched)} tensors do not fit the model (another model size?): "
                         + "; ".join(mismatched[:5]))
    if not any(k in own for k in new_state):
        raise RuntimeError(f"{path}: no tensor matches the model (wrong file?). Checkpoint keys look like "
                           f"{list(state)[:5]}; model keys look like {list(own)[:5]}")
    result = model.load_state_dict(new_state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("llama.")]
    report = {"missing": missing, "unexpected": list(result.unexpected_keys), "dropped": dropped, "notes": notes}
    loaded = sum(k in own for k in new_state)
    print(f"Loaded {loaded}/{len(own)} model tensors from {path}\n"
          f"  dropped: {_summary(dropped)}\n  missing: {missing or 'none'}\n"
          f"  unexpected: {report['unexpected'] or 'none'}" + "".join(f"\n  note: {n}" for n in notes))
    return report
