"""Lecture 6 kernels on the GPU, each side by side with the reference in the same run.

Usage: python benchmarks/bench_kernels.py [--quick] [--out results.md]
       python benchmarks/bench_kernels.py --targets [--fa-tune] [--out DIR/targets.md] [--write-results]
       python benchmarks/bench_kernels.py --host-overhead          # also meaningful on a CPU (stub launches)

1. Memory-bound kernels (GeLU float32, softmax and RMSNorm forward / forward+backward in bf16): achieved bandwidth
   (fewest bytes / time) as a fraction of the measured device-to-device copy bandwidth, ours (Triton) against eager
   PyTorch and torch.compile.
2. FlashAttention-2 (Triton, bf16, head dim 64 and 128, seq 512..16K, causal and not): forward and forward+backward
   TFLOP/s against F.scaled_dot_product_attention's flash backend and naive PyTorch attention (OOM reported).
Prints markdown tables (ratios > 1: ours faster) and writes them to --out.

--targets measures the kernel targets (FlashAttention against SDPA, the leaderboard shape, RMSNorm against F.rms_norm), side by side with the references in one process: FlashAttention-2
forward+backward against SDPA's flash backend on every shape of the table (target >= 1.1x) and on the CS336
assignment-2 leaderboard shape (bf16, causal, batch 1, 16 heads, seq 16384, d 64; target < 5.364 ms, the best
published entry, on an H100); forward TFLOP/s at d 64 and 128 beside FlashAttention-3's published forward figures
(Shah et al., 2024, arXiv:2407.08608: about 616-648 TFLOP/s for d 128 at 16K tokens on an H100 SXM5, bf16);
and RMSNorm (eager, and inside torch.compile as a custom operator) against F.rms_norm and torch.compile at Lecture
6's shapes (target >= 1.0x), timed back to back (what a model sees: host time counts when it exceeds the kernel's).
--fa-tune sweeps launch configs of the three FlashAttention kernels at the short-sequence and leaderboard shapes.
--host-overhead times each Python path around the RMSNorm launch per call, with the Triton launch replaced by a
stub (on a CPU, where only the Python is timed) and, on a GPU, also with the real launch.
"""
import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from cs336_nb.core import describe_device  # noqa: E402
from cs336_nb import kernels as K  # noqa: E402
from cs336_nb.kernels import flash_attention as FA, rmsnorm as R  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from results import RESULTS, cuda_kernel_times, write_block  # noqa: E402  (benchmarks/results.py)

SECTION = "## Kernels (Lecture 6)"
RMSNORM_SHAPES = [(4096, 1024), (16384, 2048), (32768, 4096), (8192, 16384)]   # Lecture 6's table (06c)
LEADERBOARD = dict(batch=1, heads=16, seq=16384, d=64, causal=True)              # CS336 assignment 2
LEADERBOARD_MS = 5.364                                                           # best published entry, H100
FA3_FWD_TFLOPS_D128 = (616, 648)                                                 # arXiv:2407.08608, H100, 16K tokens


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


def per_call_back_to_back(fn, n: int = 200) -> float:
    "Seconds per call of `fn` run `n` times back to back (one sync at the end): host time counts where it exceeds the GPU's."
    for _ in range(3): fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n): fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n


def _fa_inputs(batch, heads, seq, d):
    q, k, v = (torch.randn(batch, heads, seq, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    return q, k, v, torch.randn_like(q)


def _fa_fwd_bwd_ms(fn, q, k, v, do, causal) -> float:
    return K.time_fn(lambda: torch.autograd.grad(fn(q, k, v, causal), (q, k, v), do)) * 1e3


def fa_target_table() -> tuple[str, dict]:
    "FlashAttention-2 fwd+bwd vs SDPA flash on the table's grid and the leaderboard shape; forward TFLOP/s beside FA3."
    impls = K.attention_impls()
    ours, sdpa = impls["triton"], impls["sdpa_flash"]
    shapes = [(16384 // s, 2048 // d, s, d, c) for d in (64, 128) for s in (512, 1024, 2048, 4096, 8192, 16384) for c in (False, True)]
    lb = LEADERBOARD
    shapes.append((lb["batch"], lb["heads"], lb["seq"], lb["d"], lb["causal"]))
    lines = ["| batch x heads | seq | d | causal | ours fwd TFLOP/s | sdpa fwd TFLOP/s | ours fwd+bwd ms | sdpa fwd+bwd ms | fwd+bwd ratio (sdpa/ours) |",
             "|---|---|---|---|---|---|---|---|---|"]
    summary = dict(ratios=[], leaderboard_ms=None, fwd_tflops={})
    for b, h, s, d, c in shapes:
        q, k, v, do = _fa_inputs(b, h, s, d)
        t_f = {n: K.time_fn(lambda f=f: f(q, k, v, c)) for n, f in (("ours", ours), ("sdpa", sdpa))}
        t_b = {n: _fa_fwd_bwd_ms(f, q, k, v, do, c) for n, f in (("ours", ours), ("sdpa", sdpa))}
        flops = K.attention_flops(b * h, s, s, d, c)
        ratio = t_b["sdpa"] / t_b["ours"]
        is_lb = (b, h, s, d, c) == (lb["batch"], lb["heads"], lb["seq"], lb["d"], lb["causal"])
        if is_lb: summary["leaderboard_ms"] = t_b["ours"]
        else: summary["ratios"].append(((b, h, s, d, c), ratio))
        if s == 16384 and not is_lb: summary["fwd_tflops"][(d, c)] = flops / t_f["ours"] / 1e12
        lines.append(f"| {b} x {h}{' (leaderboard)' if is_lb else ''} | {s} | {d} | {c} | {flops / t_f['ours'] / 1e12:.0f} "
                     f"| {flops / t_f['sdpa'] / 1e12:.0f} | {t_b['ours']:.3f} | {t_b['sdpa']:.3f} | {ratio:.2f}x |")
        del q, k, v, do
    worst = min(summary["ratios"], key=lambda r: r[1])
    met = sum(r >= 1.1 for _, r in summary["ratios"])
    lines += ["", f"fwd+bwd >= 1.1x SDPA flash: {met} of {len(summary['ratios'])} shapes; weakest {worst[1]:.2f}x at "
              f"batch {worst[0][0]}, {worst[0][1]} heads, seq {worst[0][2]}, d {worst[0][3]}, causal {worst[0][4]}.",
              f"Leaderboard shape (bf16, causal, batch 1, 16 heads, seq 16384, d 64): {summary['leaderboard_ms']:.3f} ms "
              f"fwd+bwd (target < {LEADERBOARD_MS} ms, the best published entry, on an H100).",
              "Forward TFLOP/s at seq 16384 (16 heads x d 128, or 32 x d 64): "
              + ", ".join(f"d {d} {'causal' if c else 'non-causal'} {t:.0f}" for (d, c), t in sorted(summary["fwd_tflops"].items()))
              + f"; FlashAttention-3 reports {FA3_FWD_TFLOPS_D128[0]}-{FA3_FWD_TFLOPS_D128[1]} TFLOP/s forward at d 128, 16K tokens, "
              "on an H100 SXM5 (arXiv:2407.08608)."]
    return "\n".join(lines), summary


FWD_CANDIDATES = [(64, 64, 4, 3), (128, 64, 8, 3), (128, 64, 4, 3), (128, 128, 8, 3), (64, 32, 4, 4), (128, 32, 4, 3)]
DKDV_CANDIDATES = [(32, 64, 4, 4), (64, 64, 4, 3), (32, 128, 4, 3), (64, 128, 8, 3), (16, 64, 4, 4), (64, 64, 8, 3)]
DQ_CANDIDATES = [(128, 64, 8, 3), (64, 64, 4, 3), (128, 32, 8, 3), (64, 32, 4, 4), (128, 64, 4, 3)]


def fa_tune(shapes=((32, 16, 512, 128, True), (1, 16, 16384, 64, True))) -> str:
    "Sweep each kernel's (BLOCK_Q, BLOCK_K, warps, stages) with the other two at their defaults; ms of fwd (fwd configs) or fwd+bwd."
    lines = ["| shape (b, h, seq, d, causal) | kernel | default ms | best config | best ms |", "|---|---|---|---|---|"]
    ours = K.attention_impls()["triton"]
    for b, h, s, d, c in shapes:
        q, k, v, do = _fa_inputs(b, h, s, d)
        default = K.flash_config(d, c)
        for which, cands in ((0, FWD_CANDIDATES), (1, DKDV_CANDIDATES), (2, DQ_CANDIDATES)):
            res = {}
            for cfg in [default[which]] + [x for x in cands if x != default[which]]:
                trial = list(default)
                trial[which] = cfg
                K.FLASH_CONFIGS[(d, c)] = tuple(trial)
                try:
                    res[cfg] = (K.time_fn(lambda: ours(q, k, v, c)) * 1e3 if which == 0 else _fa_fwd_bwd_ms(ours, q, k, v, do, c))
                except Exception as e:   # a config that does not fit (shared memory, registers) is skipped
                    print(f"skip {cfg} for {(b, h, s, d, c)}: {type(e).__name__}")
                finally:
                    K.FLASH_CONFIGS.pop((d, c), None)
            best = min(res, key=res.get)
            lines.append(f"| {(b, h, s, d, c)} | {('fwd', 'dK/dV', 'dQ')[which]} | {res[default[which]]:.3f} | {best} | {res[best]:.3f} |")
        if c:   # the causal tile order: natural (the default) against the heaviest query tiles first
            order, default_order = {}, FA._CAUSAL_HEAVY_FIRST
            for heavy_first in (True, False):
                FA._CAUSAL_HEAVY_FIRST = heavy_first
                order[heavy_first] = _fa_fwd_bwd_ms(ours, q, k, v, do, c)
            FA._CAUSAL_HEAVY_FIRST = default_order
            lines.append(f"| {(b, h, s, d, c)} | causal order, fwd+bwd | natural {order[False]:.3f} | heavy first | {order[True]:.3f} |")
        del q, k, v, do
    return "\n".join(lines)


def rmsnorm_target_table() -> str:
    "RMSNorm bf16 at Lecture 6's shapes: ours eager vs F.rms_norm, ours compiled vs torch.compile; back-to-back us per call."
    lines = ["| rows x d | pass | ours eager | F.rms_norm | ours / F.rms_norm | ours in torch.compile | torch.compile(F.rms_norm) "
             "| torch.compile(rmsnorm_eager) | compiled ours / best compiled reference |", "|---|---|---|---|---|---|---|---|---|"]
    ratios = []
    for n, d in RMSNORM_SHAPES:
        x = torch.randn(n, d, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(d, device="cuda", dtype=torch.bfloat16)
        xr, wr = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
        dy = torch.randn_like(x)
        fns = {"ours": K.rmsnorm_triton, "F.rms_norm": lambda x, w: F.rms_norm(x, (x.shape[-1],), w, 1e-5)}
        fns["ours compiled"] = torch.compile(K.rmsnorm_triton, fullgraph=True, dynamic=False)
        fns["F.rms_norm compiled"] = torch.compile(fns["F.rms_norm"], dynamic=False)
        fns["eager compiled"] = torch.compile(K.rmsnorm_eager, dynamic=False)
        for pass_ in ("fwd", "fwd+bwd"):
            if pass_ == "fwd":
                with torch.no_grad(): t = {k_: per_call_back_to_back(lambda f=f: f(x, w)) for k_, f in fns.items()}
            else:
                t = {k_: per_call_back_to_back(lambda f=f: torch.autograd.grad(f(xr, wr), (xr, wr), dy)) for k_, f in fns.items()}
            r_eager = t["F.rms_norm"] / t["ours"]
            r_comp = min(t["F.rms_norm compiled"], t["eager compiled"]) / t["ours compiled"]
            ratios += [r_eager, r_comp]
            us = {k_: f"{v_ * 1e6:.1f}" for k_, v_ in t.items()}
            lines.append(f"| {n} x {d} | {pass_} | {us['ours']} | {us['F.rms_norm']} | {r_eager:.2f}x | {us['ours compiled']} "
                         f"| {us['F.rms_norm compiled']} | {us['eager compiled']} | {r_comp:.2f}x |")
    lines += ["", f"(microseconds per call, 200 calls back to back; target >= 1.0x everywhere: {sum(r >= 1.0 for r in ratios)} of "
              f"{len(ratios)} met, weakest {min(ratios):.2f}x)"]
    return "\n".join(lines)


class _StubLaunch:
    "Stands in for a Triton kernel: `stub[grid](*args, **kw)` does nothing, so only the Python around it is timed."
    def __getitem__(self, grid): return lambda *a, **kw: None


def host_overhead_table(cuda: bool) -> str:
    "Per-call host time of each RMSNorm path (x 8 x 1024; with stub launches, and on a GPU with the real ones)."
    import timeit
    dev = "cuda" if cuda else "cpu"
    x = torch.randn(8, 1024, device=dev, dtype=torch.bfloat16 if cuda else torch.float32)
    w = torch.randn(1024, device=dev, dtype=x.dtype)
    xg = x.clone().requires_grad_(True)
    paths = {"rmsnorm_triton, no grad (bare launcher)": lambda: K.rmsnorm_triton(x, w),
             "rmsnorm_triton, grad (autograd.Function)": lambda: K.rmsnorm_triton(xg, w),
             "custom operator, no grad": lambda: R._rmsnorm_fwd_op(x, w, 1e-5),
             "F.rms_norm": lambda: F.rms_norm(x, (1024,), w, 1e-5)}
    def per_call(fn, n=2000):
        fn()
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        sync()
        t = timeit.timeit(fn, number=n) / n
        sync()
        return t
    real = {k_: per_call(f) for k_, f in paths.items()} if cuda else {}
    fwd, bwd = R._rmsnorm_kernels() if cuda else (None, None)
    if cuda:
        y, rstd = torch.empty_like(x), torch.empty(8, device=dev)
        bm, bd, nw = R._rmsnorm_launch(1024)
        real["raw Triton launch (precomputed arguments)"] = per_call(
            lambda: fwd[(R.triton.cdiv(8, bm),)](x, w, y, rstd, 8, 1024, 1e-5, BLOCK_M=bm, BLOCK_D=bd, num_warps=nw))
        real["cached_launch (precomputed arguments)"] = per_call(
            lambda: K.cached_launch(fwd, (R.triton.cdiv(8, bm),), (x, w, y, rstd, 8, 1024, 1e-5), (bm, bd), num_warps=nw))
    saved = R._rmsnorm_kernels
    saved()   # build the real kernels once: binds `triton` in the module, as a first call would
    R._rmsnorm_kernels = lambda: (_StubLaunch(), _StubLaunch())
    try:
        stub = {k_: per_call(f) for k_, f in paths.items()}   # F.rms_norm: its real time, the reference
    finally:
        R._rmsnorm_kernels = saved
    lines = ["| path | host us per call, stub launch | us per call, real launch (back to back) |", "|---|---|---|"]
    for k_ in list(paths) + (["raw Triton launch (precomputed arguments)", "cached_launch (precomputed arguments)"] if cuda else []):
        lines.append(f"| {k_} | {stub[k_] * 1e6:.1f} |" if k_ in stub else f"| {k_} | - |")
        lines[-1] += f" {real[k_] * 1e6:.1f} |" if k_ in real else " - |"
    return f"Host overhead ({describe_device()}):\n\n" + "\n".join(lines)


def profile_rmsnorm(shapes=((4096, 1024), (16384, 2048)), reps: int = 50) -> str:
    """Where a forward+backward of RMSNorm goes (bf16, eager, `torch.autograd.grad` as in the target table): GPU
    microseconds per step of each kernel from `torch.profiler`, next to the back-to-back wall time per step."""
    from torch.profiler import ProfilerActivity, profile
    lines = [f"Device: {describe_device()}", "", "| rows x d | implementation | wall us per step (back to back) | GPU us per step, all kernels | kernels (us per step) |",
             "|---|---|---:|---:|---|"]
    for n, d in shapes:
        x = torch.randn(n, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        w = torch.randn(d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        dy = torch.randn_like(x)
        for name, f in (("ours", K.rmsnorm_triton), ("F.rms_norm", lambda x, w: F.rms_norm(x, (d,), w, 1e-5))):
            step = lambda: torch.autograd.grad(f(x, w), (x, w), dy)
            wall = per_call_back_to_back(step)
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(reps): step()
                torch.cuda.synchronize()
            ks = [(k, us) for k, _, us in cuda_kernel_times(prof, reps)]
            kern = "; ".join(f"`{k[:40]}` {us:.1f}" for k, us in ks[:5])
            lines.append(f"| {n} x {d} | {name} | {wall * 1e6:.1f} | {sum(us for _, us in ks):.1f} | {kern} |")
    return "\n".join(lines)


def write_results(md: str, path: Path = RESULTS) -> None:
    "Put `md` in our targets block of RESULTS.md (under the kernels section); other scripts' rows stay."
    write_block("bench_kernels.py targets", md, SECTION, path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer sequence lengths")
    ap.add_argument("--out", default=None, help="also write the tables (markdown) here")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-attention", action="store_true")
    ap.add_argument("--targets", action="store_true", help="the kernel targets: FlashAttention vs SDPA, leaderboard, RMSNorm")
    ap.add_argument("--fa-tune", action="store_true", help="sweep FlashAttention launch configs at short and long sequences")
    ap.add_argument("--host-overhead", action="store_true", help="per-call host time of the RMSNorm paths (CPU: stubs only)")
    ap.add_argument("--write-results", action="store_true", help="write the --targets tables into benchmarks/RESULTS.md")
    ap.add_argument("--profile-rmsnorm", action="store_true", help="per-kernel GPU time of RMSNorm forward+backward, ours vs F.rms_norm")
    a = ap.parse_args()
    if a.profile_rmsnorm:
        print(profile_rmsnorm() if torch.cuda.is_available() else "--profile-rmsnorm needs a CUDA GPU")
        return 0
    if a.host_overhead:
        if not torch.cuda.is_available(): os.environ.setdefault("TRITON_INTERPRET", "1")
        text = host_overhead_table(torch.cuda.is_available())
        print(text)
        if a.out: Path(a.out).write_text(text + "\n")
        return 0
    if not torch.cuda.is_available():
        print("bench_kernels.py needs a CUDA GPU (the kernels' CPU path is the interpreter, for tests only)")
        return 0
    t0 = time.time()
    if a.targets or a.fa_tune:
        out = [f"Device: {describe_device()}; triton {K._import_triton().__version__}", ""]
        if a.targets:
            fa_md, _ = fa_target_table()
            out += ["#### Targets: FlashAttention-2 forward+backward against SDPA's flash backend (bf16)", "", fa_md, "",
                    "#### RMSNorm against F.rms_norm and torch.compile (bf16, Lecture 6's shapes)", "", rmsnorm_target_table(), "",
                    host_overhead_table(True), ""]
        if a.fa_tune:
            out += ["#### FlashAttention launch-config sweep", "", fa_tune(), ""]
        out.append(f"(wall time {time.time() - t0:.0f} s; command: `python benchmarks/bench_kernels.py"
                   f"{' --targets' if a.targets else ''}{' --fa-tune' if a.fa_tune else ''}`)")
        text = "\n".join(out)
        print(text)
        if a.out: Path(a.out).write_text(text + "\n")
        if a.write_results and a.targets: write_results(text)
        return 0
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
