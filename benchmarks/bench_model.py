"""Throughput, memory and FLOP efficiency of one model: train steps (forward + backward + AdamW) and eval forwards.

    python benchmarks/bench_model.py --model vit_llama_small_patch16_224 --device cpu --steps 3 --warmup 1

FLOPs are counted with torch.utils.flop_counter.FlopCounterMode over one step (matmuls, convolutions and attention;
elementwise work is not counted) and divided by the measured step time; the ratio is to this device's matmul peak
measured in the same run (fp32 GEMM on CPU, bf16 GEMM on CUDA).
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time
import warnings

# Idle OpenMP threads sleep instead of spinning: on shared cores spinning threads starve the busy ones (the train
# step ran 54 s with spinning vs 32 s passive on 2 shared cores). Must be set before torch starts OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from checkpoint import describe_llm  # noqa: E402
from llama import layer_spec_arg  # noqa: E402
from models import create_model  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        name = ""
    return f"{name or platform.processor() or 'CPU'} ({torch.get_num_threads()} threads)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, steps: int, warmup: int = 0, best: bool = False) -> tuple[float, float]:
    """(wall, process CPU) seconds per call of fn: the mean over steps, or the best call when best=True."""
    for _ in range(warmup):
        fn()
    walls, cpus = [], []
    for _ in range(steps):
        sync(device)
        w, c = time.perf_counter(), time.process_time()
        fn()
        sync(device)
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    pick = min if best else (lambda v: sum(v) / len(v))
    return pick(walls), pick(cpus)


def matmul_peak(device: torch.device, n: int, repeats: int = 5) -> tuple[float, float, str]:
    """Best FLOP/s of an n x n x n matmul (fp32 on CPU, bf16 on CUDA), per wall second and per CPU second."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    wall, cpu = timed(lambda: a @ b, device, repeats, warmup=1, best=True)
    return 2 * n ** 3 / wall, 2 * n ** 3 / cpu, f"{str(dtype).replace('torch.', '')} {n}^3 GEMM"


def peak_rss_mb() -> float:
    """Process resident-set high-water mark (ru_maxrss, KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vit_llama_small_patch16_224")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=list(DTYPES), help="autocast dtype (float32: no autocast)")
    p.add_argument("--llama_dtype", default=None, choices=list(DTYPES), help="frozen LLM weights (default float32)")
    p.add_argument("--llama_path", default=None, help="LLM folder (Meta or Hugging Face) to read the layers from")
    p.add_argument("--llama_layer", default=None, type=layer_spec_arg, help="e.g. 15, 14,15 or 12:16")
    p.add_argument("--batch_size", type=int, default=1)
    p.add_argument("--num_frames", type=int, default=16)
    p.add_argument("--input_size", type=int, default=224)
    p.add_argument("--num_classes", type=int, default=174)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--use_checkpoint", action="store_true")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads (default: all cores)")
    p.add_argument("--gemm_size", type=int, default=4096)
    p.add_argument("--skip_eval", action="store_true")
    p.add_argument("--profile", type=int, default=0, metavar="K", help="print the K costliest ops of one train step")
    args = p.parse_args()

    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    peak_before, cpu_peak_before, peak_what = matmul_peak(device, args.gemm_size)
    rss_start = peak_rss_mb()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random-LLM warning: weights do not matter for speed
        model = create_model(args.model, num_classes=args.num_classes, all_frames=args.num_frames,
                             img_size=args.input_size, use_checkpoint=args.use_checkpoint, llama_path=args.llama_path,
                             llama_layer=args.llama_layer, llama_dtype=args.llama_dtype).to(device)
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05)
    x = torch.randn(args.batch_size, 3, args.num_frames, args.input_size, args.input_size, device=device)
    y = torch.randint(0, args.num_classes, (args.batch_size,), device=device)
    amp = args.dtype != "float32"

    def train_step() -> None:
        with torch.autocast(device.type, dtype=DTYPES[args.dtype], enabled=amp):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def eval_step() -> None:
        with torch.no_grad(), torch.autocast(device.type, dtype=DTYPES[args.dtype], enabled=amp):
            model(x)

    model.train()
    with FlopCounterMode(display=False) as fc:
        train_step()  # also the first warm-up step (optimizer state allocated here)
    train_flops = fc.get_total_flops()
    rss_model = peak_rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    static_mb = (torch.cuda.memory_allocated(device) if device.type == "cuda" else  # weights, grads, AdamW state
                 sum(q.numel() * q.element_size() for q in model.parameters())
                 + 3 * sum(q.numel() * q.element_size() for q in params)) / 2 ** 20
    train_s, train_cpu = timed(train_step, device, args.steps, max(args.warmup - 1, 0))
    train_mem = (torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda"
                 else peak_rss_mb() - rss_start)

    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=acts) as prof:
            train_step()
            sync(device)
        sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=sort, row_limit=args.profile))

    rows = [("train (fwd+bwd+AdamW)", train_flops, train_s, train_cpu, train_mem)]
    if not args.skip_eval:
        model.eval()
        with FlopCounterMode(display=False) as fc:
            eval_step()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        eval_s, eval_cpu = timed(eval_step, device, args.steps, args.warmup)
        eval_mem = torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else float("nan")
        rows.append(("eval (fwd)", fc.get_total_flops(), eval_s, eval_cpu, eval_mem))

    # The peak is measured before and after the model runs and the higher one is used (the cores may be shared).
    peak_after, cpu_peak_after, _ = matmul_peak(device, args.gemm_size)
    peak, cpu_peak = max(peak_before, peak_after), max(cpu_peak_before, cpu_peak_after)
    n_tok = (args.num_frames // model.patch_embed.tubelet_size) * (args.input_size // 16) ** 2
    llm = getattr(model, "llm_identity", None)
    heads = sum(b.attn.num_heads for b in model.blocks)
    heads += llm["num_attention_heads"] * len(llm["layers"]) if llm else 0
    materialised = args.batch_size * heads * n_tok ** 2 * 4 * 2 / 2 ** 20  # scores + softmax kept for backward
    total = sum(q.numel() for q in model.parameters())
    print(f"\nmodel {args.model}: {total / 1e6:.1f}M parameters ({sum(q.numel() for q in params) / 1e6:.1f}M "
          f"trainable), input {args.batch_size}x3x{args.num_frames}x{args.input_size}x{args.input_size} "
          f"({n_tok} tokens), dtype {args.dtype}, llama_dtype {args.llama_dtype or 'float32'}, "
          f"use_checkpoint {args.use_checkpoint}")
    if llm:
        print(f"LLM block: {describe_llm(llm)}")
    print(f"device: {device_name(device)}; load average {os.getloadavg()[0]:.2f} (1 min); "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}" if device.type == "cpu"
          else f"device: {device_name(device)}")
    print(f"matmul peak ({peak_what}, best of 5): {peak_before / 1e9:.1f} GFLOP/s before, "
          f"{peak_after / 1e9:.1f} after; ratios below use {peak / 1e9:.1f}"
          + (f"; per CPU-second {cpu_peak / 1e9:.1f} GFLOP/s" if device.type == "cpu" else ""))
    mem_what = ("CUDA max_memory_allocated" if device.type == "cuda"
                else "CPU: growth of the process peak RSS (ru_maxrss) from before model build to after the train "
                     "steps (model + optimizer + activations)")
    print(f"memory column: {mem_what}; model built + first step peak RSS {rss_model:.0f} MiB")
    print(f"train step: peak {train_mem:.0f} MiB - {static_mb:.0f} MiB of weights, grads and AdamW state = "
          f"~{train_mem - static_mb:.0f} MiB of activations and workspace; materialised fp32 attention "
          f"scores+probabilities of all {heads} heads would need {materialised:.0f} MiB on their own")
    if device.type == "cpu":
        print("% of peak (CPU time): the same ratio with process CPU seconds in place of wall seconds on both sides, "
              "which discounts time the process waited for a core shared with other work")
    print("\n| phase | s/step | clips/s | GFLOP/step | GFLOP/s | % of matmul peak | % of peak (CPU time) | peak mem MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for name, flops, sec, cpu, mem in rows:
        cpu_ratio = f"{100 * flops / cpu / cpu_peak:.1f}" if device.type == "cpu" else "-"
        print(f"| {name} | {sec:.3f} | {args.batch_size / sec:.3f} | {flops / 1e9:.1f} | {flops / sec / 1e9:.1f} | "
              f"{100 * flops / sec / peak:.1f} | {cpu_ratio} | {mem:.0f} |")


if __name__ == "__main__":
    main()
