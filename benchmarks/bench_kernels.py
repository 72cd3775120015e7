"""Lecture 6 kernels on the GPU, each side by side with the reference in the same run.

Usage: python benchmarks/bench_kernels.py [--quick] [--out results.md]

1. Memory-bound kernels (GeLU float32, softmax and RMSNorm forward / forward+backward in bf16): achieved bandwidth
   (fewest bytes / time) as a fraction of the measured device-to-device copy bandwidth, ours (Triton) against eager
   PyTorch and torch.compile.
2. FlashAttention-2 (Triton, bf16, head dim 64 and 128, seq 512..16K, causal and not): forward and forward+backward
   TFLOP/s against F.scaled_dot_product_attention's flash backend and naive PyTorch attention (OOM reported).
Prints markdown tables (ratios > 1: ours faster) and writes them to --out.
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from cs336_nb.core import describe_device  # noqa: E402
from cs336_nb import kernels as K  # noqa: E402


def fmt(x, nd=1):
    return "OOM" if x is None else f"{x:.{nd}f}"


def memory_bound_tables(copy_bw):
    rows = K.bench_memory_bound(n=2**28, rows=32768, cols=4096, dtype=torch.bfloat16, device="cuda")
    lines = ["| op | impl | ms | GB/s | % of copy BW | ours (triton) speedup vs this |", "|---|---|---|---|---|---|"]
    ours = {r["op"]: r["ms"] for r in rows if r["impl"] == "triton"}
    for r in rows:
        lines.append(f"| {r['op']} | {r['impl']} | {r['ms']:.3f} | {r['GBps']:.0f} | {100 * r['GBps'] * 1e9 / copy_bw:.0f}% "
                     f"| {r['ms'] / ours[r['op']]:.2f}x |")
    # RMSNorm at several sizes (forward): fraction of copy bandwidth
    sizes = [(4096, 1024), (16384, 2048), (32768, 4096), (16384, 8192), (8192, 16384)]
    lines += ["", "| RMSNorm bf16 (rows x d) | triton fwd GB/s (% copy) | compiled fwd GB/s | eager fwd GB/s | triton fwd+bwd GB/s (% copy) | compiled fwd+bwd GB/s | eager fwd+bwd GB/s |",
              "|---|---|---|---|---|---|---|"]
    comp = torch.compile(K.rmsnorm_eager)
    for n, d in sizes:
        x = torch.randn(n, d, device="cuda", dtype=torch.bfloat16)
        xr = x.clone().requires_grad_(True)
        w = torch.randn(d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        dy = torch.randn_like(x)
        res = {}
        for name, f in (("triton", K.rmsnorm_triton), ("compiled", comp), ("eager", K.rmsnorm_eager)):
            with torch.no_grad():
                tf = K.time_fn(lambda: f(x, w))
            tb = K.time_fn(lambda: torch.autograd.grad(f(xr, w), (xr, w), dy))
            res[name] = (2 * x.numel() * 2 / tf, 5 * x.numel() * 2 / tb)
        t, c, e = res["triton"], res["compiled"], res["eager"]
        lines.append(f"| {n} x {d} | {t[0] / 1e9:.0f} ({100 * t[0] / copy_bw:.0f}%) | {c[0] / 1e9:.0f} | {e[0] / 1e9:.0f} "
                     f"| {t[1] / 1e9:.0f} ({100 * t[1] / copy_bw:.0f}%) | {c[1] / 1e9:.0f} | {e[1] / 1e9:.0f} |")
    return "\n".join(lines)


def attention_tables(seqs):
    rows = K.bench_attention(seqs=seqs, head_dims=(64, 128), causals=(False, True), device="cuda")
    by = {(r["d"], r["seq"], r["causal"], r["impl"]): r for r in rows}
    lines = ["| d | seq | causal | batch x heads | triton fwd TFLOP/s | sdpa_flash fwd | naive fwd | fwd ratio (ours/sdpa) "
             "| triton fwd+bwd TFLOP/s | sdpa_flash fwd+bwd | naive fwd+bwd | fwd+bwd ratio (ours/sdpa) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    ratios_f, ratios_b = [], []
    for d in (64, 128):
        for s in seqs:
            for c in (False, True):
                t, sd, nv = (by[(d, s, c, i)] for i in ("triton", "sdpa_flash", "naive"))
                rf = t["fwd_tflops"] / sd["fwd_tflops"] if t["fwd_tflops"] and sd["fwd_tflops"] else None
                rb = (t["fwd_bwd_tflops"] / sd["fwd_bwd_tflops"]) if t["fwd_bwd_tflops"] and sd["fwd_bwd_tflops"] else None
                ratios_f.append(rf); ratios_b.append(rb)
                lines.append(f"| {d} | {s} | {c} | {t['batch']} x {t['heads']} | {fmt(t['fwd_tflops'])} | {fmt(sd['fwd_tflops'])} "
                             f"| {fmt(nv['fwd_tflops'])} | {fmt(rf, 2)} | {fmt(t['fwd_bwd_tflops'])} | {fmt(sd['fwd_bwd_tflops'])} "
                             f"| {fmt(nv['fwd_bwd_tflops'])} | {fmt(rb, 2)} |")
    rf = [r for r in ratios_f if r]; rb = [r for r in ratios_b if r]
    lines.append(f"\nfwd ratio ours/SDPA-flash: min {min(rf):.2f}, median {sorted(rf)[len(rf) // 2]:.2f}; "
                 f"fwd+bwd: min {min(rb):.2f}, median {sorted(rb)[len(rb) // 2]:.2f}")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer sequence lengths")
    ap.add_argument("--out", default=None, help="also write the tables (markdown) here")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-attention", action="store_true")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench_kernels.py needs a CUDA GPU (the kernels' CPU path is the interpreter, for tests only)")
        return 0
    t0 = time.time()
    copy_bw = K.measure_copy_bandwidth(2**31, "cuda")
    mm = K.measure_matmul_flops(8192, torch.bfloat16, "cuda")
    out = [f"Device: {describe_device()}; triton {K._import_triton().__version__}",
           f"Measured ceilings: copy {copy_bw / 1e12:.2f} TB/s (read+write), bf16 8192^3 matmul {mm / 1e12:.0f} TFLOP/s", ""]
    if not a.skip_memory:
        out += ["### Memory-bound kernels", "", memory_bound_tables(copy_bw), ""]
    if not a.skip_attention:
        seqs = (1024, 4096, 16384) if a.quick else (512, 1024, 2048, 4096, 8192, 16384)
        out += ["### FlashAttention-2 (bf16)", "", attention_tables(seqs), ""]
    out.append(f"(benchmark wall time {time.time() - t0:.0f} s; command: `python benchmarks/bench_kernels.py`)")
    text = "\n".join(out)
    print(text)
    if a.out:
        with open(a.out, "w") as f: f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
