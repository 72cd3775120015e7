#!/usr/bin/env python3
"""Lecture 7 benchmarks: collective bandwidth, data parallelism and FSDP on several GPUs of one host (NCCL).

    python benchmarks/bench_parallel.py [--out DIR] [--smoke]
    python benchmarks/bench_parallel.py --trace-fsdp [--out DIR] [--smoke]

On >= 2 GPUs: all-reduce / all-gather / reduce-scatter bus bandwidth against message size (torch.distributed on NCCL,
compared with NVLink 4's 450 GB/s per direction), training-step time of a ~0.4B-parameter TransformerLM (bf16 autocast)
under our DDP (bucketed, overlapped) vs torch DistributedDataParallel, the naive after-backward all-reduce, our
ShardedOptimizer's memory, and our FSDP vs FSDP2 `fully_shard` (throughput and peak memory per GPU).
`--smoke` (or no GPUs) runs the same code at toy size with gloo on the CPU. Prints markdown tables; with --out writes
results.json, results.md and busbw.png there. NVLink multicast stays off (NCCL_NVLS_ENABLE=0 etc., set by `launch`).

`--trace-fsdp` (one GPU, or the CPU with `--smoke`) traces two open findings about our FSDP. (1) Memory held
between steps, ours against FSDP2: each wrapper trains a few steps in a fresh state and its live memory is split into
parameters, gradients, optimizer state and the rest (the rest's largest blocks named by the allocator's recorded
stacks, `torch.cuda.memory._record_memory_history`), measured as the bench harness does (FSDP2 first, only `del`eted before ours
runs, no garbage collection) and in the reverse order with a collection before each measurement. (2) fp16 compute: the parameter difference,
after a few SGD steps, between one-process training on the full batch and the same batch split in two halves whose
fp32 gradients are averaged (what two data-parallel ranks compute, with no communication at all), on the CPU and on
CUDA (with PyTorch's fp16 reduced-precision GEMM reductions allowed, its default, and not), next to our FSDP in one
process against the full batch; then the same in two processes over gloo (on one GPU both on cuda:0), communication
included."""
import argparse
import gc
import json
import os
import sys
from pathlib import Path

os.environ.update({"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"})
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # so that spawned workers can import this script by name

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


# ---------------------------------------------------------------- --trace-fsdp: FSDP memory and fp16 rounding
def _storage_bytes(tensors) -> tuple[int, set]:
    "Bytes of the distinct storages behind `tensors` (DTensors by their local shard), and their data pointers."
    seen, total = set(), 0
    for t in tensors:
        if t is None: continue
        t = t.to_local() if hasattr(t, "to_local") else t
        st = t.untyped_storage()
        if st.data_ptr() in seen or st.nbytes() == 0: continue
        seen.add(st.data_ptr()); total += st.nbytes()
    return total, seen


def memory_by_category(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict:
    "Live bytes of the parameters, their gradients and the optimizer state, and (on CUDA) everything else allocated."
    params = list(model.parameters())
    p_bytes, p_ptrs = _storage_bytes(params)
    g_bytes, g_ptrs = _storage_bytes(p.grad for p in params)
    state = [v for st in opt.state.values() for v in st.values() if isinstance(v, torch.Tensor) and v.numel() > 1]
    s_bytes, s_ptrs = _storage_bytes(state)
    cuda = any(p.is_cuda for p in params)
    allocated = torch.cuda.memory_allocated() if cuda else p_bytes + g_bytes + s_bytes
    return dict(allocated=allocated, params=p_bytes, grads=g_bytes, optimizer_state=s_bytes,
                other=allocated - p_bytes - g_bytes - s_bytes, known_ptrs=p_ptrs | g_ptrs | s_ptrs)


def _other_blocks(known_ptrs: set, top: int = 5) -> list[dict]:
    "The largest live CUDA blocks outside `known_ptrs`, with the innermost frames of the code that allocated them."
    rows = []
    for seg in torch.cuda.memory._snapshot()["segments"]:
        addr = seg["address"]
        for b in seg["blocks"]:
            if b["state"] == "active_allocated" and addr not in known_ptrs:
                frames = [f"{Path(f['filename']).name}:{f['line']} {f['name']}" for f in b.get("frames", [])
                          if "cs336_nb" in f["filename"] or "bench_parallel" in f["filename"] or "fsdp" in f["filename"]]
                rows.append(dict(bytes=b["size"], frames=frames[:4]))
            addr += b["size"]
    return sorted(rows, key=lambda r: -r["bytes"])[:top]


def _build_wrapped(mode: str, cfg: ModelConfig, dev: torch.device, world_size: int):
    "The model wrapped as in bench_fsdp: our FSDP or FSDP2 `fully_shard`, bf16 compute on CUDA, fp32 master weights."
    from cs336_nb.parallel import FSDP
    from cs336_nb.testing import build_check_model
    torch.manual_seed(0)
    model = build_check_model(cfg, device=dev)
    cdt = torch.bfloat16 if dev.type == "cuda" else None
    if mode == "fsdp": return FSDP(model, compute_dtype=cdt)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    mp = MixedPrecisionPolicy(param_dtype=cdt, reduce_dtype=torch.float32)
    mesh = init_device_mesh(dev.type, (world_size,))
    for layer in model.layers: fully_shard(layer, mesh=mesh, mp_policy=mp)
    return fully_shard(model, mesh=mesh, mp_policy=mp)


def trace_fsdp_memory(rank: int, world_size: int, cfg: ModelConfig, *, order: tuple[str, ...], collect: bool,
                      batch_size: int, seq_len: int, steps: int = 3) -> list[dict]:
    """Worker: for each wrapper in `order`, train `steps` steps, then (after `gc.collect()` if `collect`) split the
    memory held between steps by category; the previous wrapper is `del`eted (and collected only if `collect`)."""
    from cs336_nb.parallel.collectives import _device
    from cs336_nb.testing import loss_of, make_batch
    dev = _device()
    if dev.type == "cuda": torch.cuda.memory._record_memory_history(max_entries=200_000)
    rows = []
    for mode in order:
        m = _build_wrapped(mode, cfg, dev, world_size)
        opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
        x, y = make_batch(cfg, rank, batch_size, seq_len, seed=1, device=dev)
        for _ in range(steps):
            loss_of(cfg, m(x), y).backward()
            if mode == "fsdp": m.finish_gradient_synchronization()
            opt.step(); opt.zero_grad(set_to_none=True)
        if collect: gc.collect()
        if dev.type == "cuda": torch.cuda.synchronize()
        mem = memory_by_category(m, opt)
        ptrs = mem.pop("known_ptrs")
        blocks = _other_blocks(ptrs) if dev.type == "cuda" else []
        if dev.type == "cuda":  # blocks freed in Python but still awaiting a stream's events (record_stream) go now
            torch.cuda.empty_cache(); mem["after_empty_cache"] = torch.cuda.memory_allocated()
        else: mem["after_empty_cache"] = mem["allocated"]
        rows.append(dict(mode=mode, position=len(rows), collect=collect, **mem, other_blocks=blocks))
        del m, opt, x, y
        if collect: gc.collect()
    if dev.type == "cuda": torch.cuda.memory._record_memory_history(enabled=None)
    return rows


class Fp16Probe(torch.nn.Module):
    "The toy of the fp16 finding: Embedding -> RMSNorm -> Linear -> ReLU -> RMSNorm -> Linear -> Linear (the LM head)."
    def __init__(self, vocab: int = 64, d: int = 32, d_ff: int = 64):
        super().__init__()
        self.embed, self.norm0 = torch.nn.Embedding(vocab, d), torch.nn.RMSNorm(d)
        self.linear1, self.norm1 = torch.nn.Linear(d, d_ff), torch.nn.RMSNorm(d_ff)
        self.linear2, self.head = torch.nn.Linear(d_ff, d), torch.nn.Linear(d, vocab)

    def forward(self, x):                                                              # (batch, seq) token ids
        h = self.norm0(self.embed(x))                                                  # (batch, seq, d)
        return self.head(self.linear2(self.norm1(torch.relu(self.linear1(h)))))        # (batch, seq, vocab)


def _fp16_grads(model: torch.nn.Module, x, y) -> dict:
    "fp32 gradients of the fp32 master weights when the forward runs on fp16 casts of them (as FSDP's compute_dtype)."
    params = dict(model.named_parameters())
    casts = {n: p.to(torch.float16) for n, p in params.items()}
    logits = torch.func.functional_call(model, casts, (x,))
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
    return dict(zip(params, torch.autograd.grad(loss, list(params.values()))))


def fp16_split_rounding(device: str, *, steps: int = 2, lr: float = 0.01, batch_size: int = 8, seq_len: int = 16,
                        seed: int = 0, reduced_precision_reduction: bool | None = None) -> dict:
    """Largest parameter difference after `steps` SGD steps (fp16 compute, fp32 master weights) between the full batch
    in one process and the two half batches' gradients averaged in fp32: data parallelism's rounding, no communication;
    also our FSDP (one process, `compute_dtype=torch.float16`) against the full batch. On CUDA,
    `reduced_precision_reduction` sets `torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction` for the run
    (PyTorch's default is True: cuBLAS may reduce fp16 GEMMs in fp16, and a weight gradient reduces over the batch's
    tokens, so half and full batches round differently; the CPU kernels accumulate in fp32)."""
    flag = torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction
    if reduced_precision_reduction is not None:
        torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = reduced_precision_reduction
    try:
        out = _fp16_split_rounding(device, steps=steps, lr=lr, batch_size=batch_size, seq_len=seq_len, seed=seed)
    finally:
        torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = flag
    return dict(out, reduced_precision_reduction=None if device == "cpu" else
                (flag if reduced_precision_reduction is None else reduced_precision_reduction))


def _fp16_split_rounding(device: str, *, steps: int, lr: float, batch_size: int, seq_len: int, seed: int) -> dict:
    "The body of `fp16_split_rounding`."
    from cs336_nb.parallel import FSDP
    torch.manual_seed(seed)
    full = Fp16Probe().to(device)
    split = Fp16Probe().to(device); split.load_state_dict(full.state_dict())
    ours = Fp16Probe().to(device); ours.load_state_dict(full.state_dict())
    fsdp = FSDP(ours, compute_dtype=torch.float16)
    opt = torch.optim.SGD(fsdp.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randint(0, 64, (batch_size, seq_len), generator=gen).to(device)
        y = torch.randint(0, 64, (batch_size, seq_len), generator=gen).to(device)
        g_full = _fp16_grads(full, x, y)
        halves = [_fp16_grads(split, xs, ys) for xs, ys in zip(x.chunk(2), y.chunk(2))]
        with torch.no_grad():
            for n, p in full.named_parameters(): p -= lr * g_full[n]
            for n, p in split.named_parameters(): p -= lr * (halves[0][n] + halves[1][n]) / 2
        logits = fsdp(x)
        torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), y.flatten()).backward()
        fsdp.finish_gradient_synchronization(); opt.step(); opt.zero_grad(set_to_none=True)
    ref = dict(full.named_parameters())
    split_diff = {n: (p - ref[n]).abs().max().item() for n, p in split.named_parameters()}
    ours_diff = {n: (p.to(device) - ref[n]).abs().max().item() for n, p in fsdp.gather_full_params().items()}
    worst = max(split_diff, key=split_diff.get)
    return dict(device=device, split_vs_full=split_diff[worst], split_worst_param=worst,
                ours_one_process_vs_full=max(ours_diff.values()), split_by_param=split_diff)


def fp16_two_ranks(rank: int, world_size: int, *, device: str, steps: int = 2, lr: float = 0.01, batch_size: int = 8,
                   seq_len: int = 16, seed: int = 0) -> dict:
    """Worker (gloo): our FSDP with `compute_dtype=torch.float16` on `device` (both ranks on cuda:0 on a one-GPU machine),
    each rank half of every batch, SGD; against one-process training of the same fp16 casts on the full batch (computed
    by every rank), the largest parameter difference: the issue's two-process comparison, communication included."""
    import torch.distributed as dist
    from cs336_nb.parallel import FSDP
    dev = torch.device(device)
    torch.manual_seed(seed)
    full = Fp16Probe().to(dev)
    ours = Fp16Probe().to(dev); ours.load_state_dict(full.state_dict())
    fsdp = FSDP(ours, compute_dtype=torch.float16)
    opt = torch.optim.SGD(fsdp.parameters(), lr=lr)
    gen, b = torch.Generator().manual_seed(seed), batch_size // world_size
    for _ in range(steps):
        x = torch.randint(0, 64, (batch_size, seq_len), generator=gen).to(dev)
        y = torch.randint(0, 64, (batch_size, seq_len), generator=gen).to(dev)
        g_full = _fp16_grads(full, x, y)
        with torch.no_grad():
            for n, p in full.named_parameters(): p -= lr * g_full[n]
        logits = fsdp(x[rank * b:(rank + 1) * b])
        torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), y[rank * b:(rank + 1) * b].flatten()).backward()
        fsdp.finish_gradient_synchronization(); opt.step(); opt.zero_grad(set_to_none=True)
    ref = dict(full.named_parameters())
    diff = {n: (p.to(dev) - ref[n]).abs().max().item() for n, p in fsdp.gather_full_params().items()}
    worst = max(diff, key=diff.get)
    return dict(device=f"{device}, {world_size} ranks over {dist.get_backend()}", two_ranks_vs_full=diff[worst],
                worst_param=worst, by_param=diff)


def trace_fsdp(smoke: bool) -> dict:
    """Both traces: memory by category (NCCL on up to two GPUs: on one, world size 1, where our FSDP sends nothing; gloo
    on the CPU with --smoke) and fp16 rounding."""
    import bench_parallel as this  # spawned workers import their function by module name
    cuda = torch.cuda.is_available() and not smoke
    cfg, kw = (GPU_MODEL, dict(batch_size=4, seq_len=1024)) if cuda else (SMOKE_MODEL, dict(batch_size=2, seq_len=32))
    backend, ws = ("nccl", min(2, torch.cuda.device_count())) if cuda else ("gloo", 2)  # 2 GPUs where there are
    out = dict(memory=[])
    for order, collect in ((("fsdp2", "fsdp"), False), (("fsdp", "fsdp2"), True)):  # as bench_fsdp; then reversed, collected
        out["memory"] += launch(this.trace_fsdp_memory, ws, cfg, order=order, collect=collect, backend=backend,
                                timeout=300, **kw)[0]
    out["fp16"] = [fp16_split_rounding("cpu")]
    if torch.cuda.is_available():
        out["fp16"] += [fp16_split_rounding("cuda", reduced_precision_reduction=f) for f in (True, False)]
    out["fp16_two_ranks"] = [launch(this.fp16_two_ranks, 2, device=d, timeout=120)[0]
                             for d in (["cpu"] + (["cuda:0"] if torch.cuda.is_available() else []))]
    from cs336_nb.core import describe_device
    out["device"], out["world_size"], out["model_params"] = describe_device(), ws, out["memory"][0]["params"]
    return out


def trace_tables(res: dict) -> str:
    "Markdown tables of `trace_fsdp`'s result."
    lines = [f"Machine: {res['device']}; world size {res['world_size']} for the memory trace.", "",
             "| order | gc before measuring | wrapper | allocated | after empty_cache | parameters | gradients | optimizer state | other | largest other blocks |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in res["memory"]:
        blocks = "; ".join(f"{fmt_bytes(b['bytes'])} ({' < '.join(b['frames'][:2]) or 'torch'})" for b in r["other_blocks"][:3])
        lines.append(f"| {'first' if r['position'] == 0 else 'second'} | {r['collect']} | {r['mode']} | {fmt_bytes(r['allocated'])} | "
                     f"{fmt_bytes(r['after_empty_cache'])} | "
                     f"{fmt_bytes(r['params'])} | {fmt_bytes(r['grads'])} | {fmt_bytes(r['optimizer_state'])} | "
                     f"{fmt_bytes(r['other'])} | {blocks} |")
    lines += ["", "| device | fp16 reduced-precision GEMM reduction | full batch vs two halves averaged (max param diff) | worst parameter | our FSDP (1 process) vs full batch |",
              "|---|---|---:|---|---:|"]
    for r in res["fp16"]:
        lines.append(f"| {r['device']} | {r['reduced_precision_reduction']} | {r['split_vs_full']:.2e} | {r['split_worst_param']} | "
                     f"{r['ours_one_process_vs_full']:.2e} |")
    lines += ["", "| two processes (our FSDP, fp16 compute, SGD) | vs one process on the full batch (max param diff) | worst parameter |",
              "|---|---:|---|"]
    for r in res.get("fp16_two_ranks", []):
        lines.append(f"| {r['device']} | {r['two_ranks_vs_full']:.2e} | {r['worst_param']} |")
    return "\n".join(lines)


def _show_and_save(res: dict, md: str, out: Path | None, stem: str) -> None:
    "Print the tables; with `out`, also write `stem`.json (raw results) and `stem`.md there."
    print(md)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{stem}.json").write_text(json.dumps(res, indent=1))
        (out / f"{stem}.md").write_text(md + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--smoke", action="store_true", help="toy sizes on the CPU with gloo")
    ap.add_argument("--trace-fsdp", action="store_true", help="trace FSDP's memory between steps and fp16 rounding (one GPU)")
    args = ap.parse_args()
    if args.trace_fsdp:
        res = trace_fsdp(args.smoke)
        _show_and_save(res, trace_tables(res), args.out, "trace_fsdp")
        return
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if args.smoke or n < 2:
        res = launch(bench_all, 2, SMOKE_MODEL, sizes=[2**k for k in range(10, 21, 5)], batch_size=2, seq_len=32,
                     warmup=1, steps=2)[0]
    else:
        res = launch(bench_all, n, GPU_MODEL, sizes=[2**k for k in range(10, 31, 2)], batch_size=16, seq_len=1024,
                     warmup=3, steps=10, backend="nccl", timeout=400)[0]
    _show_and_save(res, tables(res), args.out, "results")
    if args.out: plot(res, args.out / "busbw.png")


if __name__ == "__main__":
    main()
