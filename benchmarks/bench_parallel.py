#!/usr/bin/env python3
"""Lecture 7 benchmarks: collective bandwidth, data parallelism and FSDP on several GPUs of one host (NCCL).

    python benchmarks/bench_parallel.py [--out DIR] [--smoke]

On >= 2 GPUs: all-reduce / all-gather / reduce-scatter bus bandwidth against message size (torch.distributed on NCCL,
compared with NVLink 4's 450 GB/s per direction), training-step time of a ~0.4B-parameter TransformerLM (bf16 autocast)
under our DDP (bucketed, overlapped) vs torch DistributedDataParallel, the naive after-backward all-reduce, our
ShardedOptimizer's memory, and our FSDP vs FSDP2 `fully_shard` (throughput and peak memory per GPU).
`--smoke` (or no GPUs) runs the same code at toy size with gloo on the CPU. Prints markdown tables; with --out writes
results.json, results.md and busbw.png there. NVLink multicast stays off (NCCL_NVLS_ENABLE=0 etc., set by `launch`)."""
import argparse
import json
import os
import sys
from pathlib import Path

os.environ.update({"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"})
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from cs336_nb.core import fmt_bytes  # noqa: E402
from cs336_nb.model import ModelConfig  # noqa: E402
from cs336_nb.parallel import NVLINK4_BANDWIDTH_PER_DIRECTION, bench_all, launch  # noqa: E402

#: ~0.4B parameters (317M in the blocks); ~0.1 s per step of 16 x 1024 tokens per H200
GPU_MODEL = ModelConfig(vocab_size=32000, context_length=1024, d_model=1280, num_layers=16, num_heads=20, d_ff=3456,
                        attn_backend="sdpa")
SMOKE_MODEL = ModelConfig.tiny(num_layers=2, d_model=64, num_heads=2, d_ff=128, vocab_size=257, context_length=64)


def tables(res: dict) -> str:
    n = res["world_size"]
    lines = [f"Machine: {res['device']}; {n} ranks, backend {res['backend']}.", ""]
    lines += ["| message | all-reduce time | algbw | busbw | busbw / NVLink 450 GB/s | all-gather busbw | reduce-scatter busbw |",
              "|---:|---:|---:|---:|---:|---:|---:|"]
    for ar, ag, rs in zip(res["all_reduce"], res["all_gather"], res["reduce_scatter"]):
        lines.append(f"| {fmt_bytes(ar['bytes'])} | {ar['seconds'] * 1e6:.1f} µs | {ar['algbw'] / 1e9:.1f} GB/s | "
                     f"{ar['busbw'] / 1e9:.1f} GB/s | {ar['busbw'] / NVLINK4_BANDWIDTH_PER_DIRECTION:.2f} | "
                     f"{ag['busbw'] / 1e9:.1f} GB/s | {rs['busbw'] / 1e9:.1f} GB/s |")
    dp = {r["mode"]: r for r in res["data_parallel"]}
    ref = dp["torch_ddp"]
    names = dict(torch_ddp="torch DistributedDataParallel", ddp_bucketed="ours: DDP(bucket_size_mb=25)",
                 ddp="ours: DDP per-parameter all-reduce", naive="naive: one all-reduce after backward",
                 zero="ours: DDP(bucketed) + ShardedOptimizer")
    lines += ["", f"Data parallel training step, {dp['torch_ddp']['params'] / 1e6:.0f}M parameters:", "",
              "| method | step | tokens/s | throughput vs torch DDP | peak memory / GPU | memory between steps / GPU | optimizer state / GPU |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for k, r in dp.items():
        lines.append(f"| {names[k]} | {r['step_s'] * 1e3:.1f} ms | {r['tokens_per_s']:,.0f} | {ref['step_s'] / r['step_s']:.3f}x | "
                     f"{fmt_bytes(r['peak_bytes'])} | {fmt_bytes(r.get('between_steps_bytes', 0))} | {fmt_bytes(r['optimizer_state_bytes'])} |")
    fs = {r["mode"]: r for r in res["fsdp"]}
    lines += ["", "Fully sharded (bf16 compute, fp32 master weights and gradient reduction, one unit per block):", "",
              "| method | step | tokens/s | throughput vs FSDP2 | peak memory / GPU | memory between steps / GPU |",
              "|---|---:|---:|---:|---:|---:|"]
    for k, r in fs.items():
        lines.append(f"| {'torch FSDP2 fully_shard' if k == 'fsdp2' else 'ours: FSDP'} | {r['step_s'] * 1e3:.1f} ms | "
                     f"{r['tokens_per_s']:,.0f} | {fs['fsdp2']['step_s'] / r['step_s']:.3f}x | {fmt_bytes(r['peak_bytes'])} | "
                     f"{fmt_bytes(r.get('between_steps_bytes', 0))} |")
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    for op in ("all_reduce", "all_gather", "reduce_scatter"):
        ax.plot([r["bytes"] for r in res[op]], [r["busbw"] / 1e9 for r in res[op]], "o-", label=op)
    if res["backend"] == "nccl":
        ax.axhline(NVLINK4_BANDWIDTH_PER_DIRECTION / 1e9, ls="--", c="gray", label="NVLink 4, one direction")
    ax.set(xscale="log", xlabel="message size (bytes)", ylabel="bus bandwidth (GB/s)", title=res["device"][:60])
    ax.legend(); fig.tight_layout(); fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--smoke", action="store_true", help="toy sizes on the CPU with gloo")
    args = ap.parse_args()
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if args.smoke or n < 2:
        res = launch(bench_all, 2, SMOKE_MODEL, sizes=[2**k for k in range(10, 21, 5)], batch_size=2, seq_len=32,
                     warmup=1, steps=2)[0]
    else:
        res = launch(bench_all, n, GPU_MODEL, sizes=[2**k for k in range(10, 31, 2)], batch_size=16, seq_len=1024,
                     warmup=3, steps=10, backend="nccl", timeout=400)[0]
    md = tables(res)
    print(md)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(res, indent=1))
        (args.out / "results.md").write_text(md + "\n")
        plot(res, args.out / "busbw.png")


if __name__ == "__main__":
    main()
