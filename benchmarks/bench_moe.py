"""Mixture-of-experts layer speed (Lecture 5): `cs336_nb.moe.MoE` forward+backward with each dispatch (the naive
expert loop with boolean masks, sorted slices, `torch._grouped_mm`, our Triton grouped GEMM) next to a dense SwiGLU
with the same active FLOPs, and our Triton grouped GEMM next to `torch._grouped_mm` and the dense bf16 matmul ceiling,
side by side in one run.

bf16 parameters and activations (the router computes in float32), 16K tokens, d_model 2048, two shapes:
64 fine-grained experts top-8, d_ff 1408, plus 2 shared experts (DeepSeekMoE-like); 8 experts top-2, d_ff 5632
(Mixtral-like). Random inputs, freshly initialized routers (a roughly balanced load).

    python benchmarks/bench_moe.py                  # on a GPU: print the tables
    python benchmarks/bench_moe.py --write-results  # ... and write them into benchmarks/RESULTS.md
    python benchmarks/bench_moe.py --small          # a tiny CPU smoke run (Triton in its interpreter)
    python benchmarks/bench_moe.py --profile-gemm   # per-kernel GPU time of the grouped GEMMs, ours vs torch._grouped_mm
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

if not torch.cuda.is_available(): os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is first imported

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path: sys.path.insert(0, str(ROOT))
if str(ROOT / "benchmarks") not in sys.path: sys.path.insert(0, str(ROOT / "benchmarks"))

from results import RESULTS, cuda_kernel_times, report, write_block  # noqa: E402  (benchmarks/results.py)
from cs336_nb import moe_grouped_gemm as G  # noqa: E402
from cs336_nb.core import benchmark, describe_device, fmt_flops_per_s  # noqa: E402
from cs336_nb.model import SwiGLU  # noqa: E402
from cs336_nb.moe import MoE  # noqa: E402
from cs336_nb.moe_grouped_gemm import grouped_mm, random_offs  # noqa: E402

SECTION = "## Mixture of experts (Lecture 5)"
FULL = dict(tokens=16384, d_model=2048, shapes=[dict(name="64 experts top-8, d_ff 1408, 2 shared", num_experts=64, top_k=8,
                                                      d_ff=1408, num_shared_experts=2),
                                                 dict(name="8 experts top-2, d_ff 5632 (Mixtral-like)", num_experts=8, top_k=2,
                                                      d_ff=5632, num_shared_experts=0)])
SMALL = dict(tokens=48, d_model=32, shapes=[dict(name="8 experts top-2, d_ff 16, 1 shared", num_experts=8, top_k=2, d_ff=16,
                                                  num_shared_experts=1),
                                             dict(name="4 experts top-2, d_ff 64", num_experts=4, top_k=2, d_ff=64,
                                                  num_shared_experts=0)])
DISPATCHES = ("naive", "sorted", "grouped", "triton")


def active_flops(tokens: int, d_model: int, s: dict, backward: bool = True) -> float:
    "Matmul FLOPs of the layer: every token through k routed and the shared SwiGLU experts (3 matmuls each) and the router."
    d_ff_active = s["top_k"] * s["d_ff"] + s["num_shared_experts"] * s["d_ff"]
    fwd = 2 * tokens * d_model * (3 * d_ff_active + s["num_experts"])
    return fwd * (3 if backward else 1)


def _fwd_bwd(module, x, dout):
    "A closure running module(x) forward and backward with the given output gradient."
    def step():
        y = module(x)
        torch.autograd.backward(y, dout)
    return step


def _time(step, reps: int, device) -> float:
    t = benchmark(step, warmup=2 if device.type == "cuda" else 1, reps=reps, device=device).median
    if device.type == "cuda": torch.cuda.empty_cache()
    return t


def bench_layer(tokens: int, d_model: int, s: dict, dtype, device, reps: int) -> dict:
    "Seconds per forward+backward of the MoE layer with each dispatch and of the dense SwiGLU of equal active FLOPs."
    torch.manual_seed(0)
    moe = MoE(d_model, s["d_ff"], s["num_experts"], s["top_k"], num_shared_experts=s["num_shared_experts"],
              device=device, dtype=dtype)
    x = torch.randn(tokens, d_model, device=device, dtype=dtype, requires_grad=True)
    dout = torch.randn(tokens, d_model, device=device, dtype=dtype)
    out, ref = {}, None
    for name in DISPATCHES:
        moe.dispatch = name
        with torch.no_grad(): y = moe(x).float()
        ref = y if ref is None else ref
        out[f"err_{name}"] = ((y - ref).norm() / ref.norm()).item()     # vs the naive loop, same weights
        out[name] = _time(_fwd_bwd(moe, x, dout), reps, device)
    d_ff_dense = (s["top_k"] + s["num_shared_experts"]) * s["d_ff"]
    dense = SwiGLU(d_model, d_ff_dense, device=device, dtype=dtype)
    out["dense"] = _time(_fwd_bwd(dense, x, dout), reps, device)
    out["d_ff_dense"] = d_ff_dense
    return out


def _gemm_inputs(tokens: int, d_model: int, s: dict, dtype, device) -> tuple:
    "The first expert projection's operands: group offsets, tokens (S, d), expert weights (E, d, d_ff) and an output gradient."
    E, k, dff = s["num_experts"], s["top_k"], s["d_ff"]
    offs = random_offs(tokens, k, E, device)
    a = torch.randn(tokens * k, d_model, device=device, dtype=dtype, requires_grad=True)
    b = (torch.randn(E, dff, d_model, device=device, dtype=dtype) * d_model**-0.5).transpose(1, 2).requires_grad_()
    return offs, a, b, torch.randn(tokens * k, dff, device=device, dtype=dtype)


def bench_gemm(tokens: int, d_model: int, s: dict, dtype, device, reps: int) -> dict:
    "Seconds per forward+backward of the first expert projection, (S, d) x (d, d_ff) per expert: Triton, torch, dense."
    offs, a, b, dout = _gemm_inputs(tokens, d_model, s, dtype, device)
    k, dff = s["top_k"], s["d_ff"]
    w = b[0].detach().contiguous().requires_grad_()
    def run(f):
        def step(): torch.autograd.backward(f(), dout)
        return _time(step, reps, device)
    fns = dict(triton=lambda: grouped_mm(a, b, offs), torch=lambda: torch._grouped_mm(a, b, offs=offs), dense=lambda: a @ w)
    out = {name: run(f) for name, f in fns.items()}
    out["queued"] = {name: queued_seconds(lambda: torch.autograd.backward(fns[name](), dout), reps, device) for name in ("triton", "torch")}
    return dict(out, flops=3 * 2 * tokens * k * d_model * dff)


def queued_seconds(step, reps: int, device) -> dict:
    """Per call of `step` run `reps` times back to back: `host`, the seconds Python takes to enqueue it (no sync inside), and
    `device`, the seconds per call between two events around the whole run, where the GPU never waits for the host if the
    host is faster. `benchmark` times each call between its own events instead, so its median includes host time the GPU
    spends waiting; where `host` nears that median, the call is host-bound."""
    step()                                               # warm (autotune, compile) outside the timing
    if device.type != "cuda":
        t0 = time.perf_counter()
        for _ in range(reps): step()
        t = (time.perf_counter() - t0) / reps   # on the CPU the work is done by the time Python returns
        return dict(host=t, device=t)
    torch.cuda.synchronize(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record(); t0 = time.perf_counter()
    for _ in range(reps): step()
    host = (time.perf_counter() - t0) / reps
    end.record(); end.synchronize()
    return dict(host=host, device=start.elapsed_time(end) / 1e3 / reps)


def picked_tiles(d_model: int, d_ff: int, dtype) -> dict:
    "The tiles `triton.autotune` picked for this shape's grouped GEMMs (after they ran): forward/dA per (N, K), dB per (K, N)."
    picked, dt = G.picked_configs(), str(dtype).removeprefix("torch.")
    out = {}
    for kern, dims, tn in (("fwd/dA", "N, K", False), ("dB", "K, N", True)):
        for key in ((d_ff, d_model), (d_model, d_ff)):
            if (c := picked[kern].get((*key, dt))) is not None: out[f"{kern} ({dims}) = {key}"] = _tiles(c, tn)
    return out


def _tiles(c: dict, tn: bool = False) -> str:
    dims = (c["block_k"], c["block_n"], c["block_m"]) if tn else (c["block_m"], c["block_n"], c["block_k"])
    return "x".join(map(str, dims)) + f" w{c['num_warps']} s{c['num_stages']}"


def matmul_ceiling(n: int, dtype, device, reps: int) -> float:
    "FLOP/s of one dense n x n x n matmul."
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    return 2 * n**3 / _time(lambda: a @ b, reps, device)


def run_all(small: bool = False, reps: int = 10) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() and not small else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    c = SMALL if small else FULL
    res = dict(device=describe_device(device), dtype=str(dtype).replace("torch.", ""), tokens=c["tokens"],
               d_model=c["d_model"], small=small, shapes=[])
    res["ceiling_n"] = 8192 if device.type == "cuda" else 256
    res["ceiling_flops"] = matmul_ceiling(res["ceiling_n"], dtype, device, reps)
    for s in c["shapes"]:
        print(f"{s['name']} ...", file=sys.stderr, flush=True)
        row = dict(s, flops=active_flops(c["tokens"], c["d_model"], s))
        row["layer"] = bench_layer(c["tokens"], c["d_model"], s, dtype, device, reps)
        row["gemm"] = bench_gemm(c["tokens"], c["d_model"], s, dtype, device, reps)
        row["tiles"] = picked_tiles(c["d_model"], s["d_ff"], dtype)   # empty under the interpreter (nothing tuned)
        res["shapes"].append(row)
    return res


def _tf(flops: float, seconds: float) -> str:
    return f"{flops / seconds / 1e12:.1f}" if flops / seconds >= 1e11 else f"{flops / seconds / 1e12:.3f}"


def to_markdown(res: dict) -> str:
    ok = lambda b: "met" if b else "**missed**"
    ceil = res["ceiling_flops"]
    head = (f"Machine: {res['device']}. {res['dtype']}, {res['tokens']:,} tokens, d_model {res['d_model']}, forward+backward "
            f"(output gradient given), median of the timed reps. Dense {res['dtype']} matmul ceiling ({res['ceiling_n']}^3, same run): "
            f"{fmt_flops_per_s(ceil)}. Command: `python benchmarks/bench_moe.py{' --small' if res['small'] else ' --write-results'}`.\n\n")
    lines = ["| shape | variant | ms | active TFLOP/s | vs naive | vs dense | rel. err vs naive |", "|---|---|---|---|---|---|---|"]
    targets = []
    for s in res["shapes"]:
        L = s["layer"]
        for name in (*DISPATCHES, "dense"):
            t = L[name]
            label = f"dense SwiGLU d_ff {L['d_ff_dense']}" if name == "dense" else f"MoE, dispatch={name}"
            err = "" if name in ("dense", "naive") else f"{L[f'err_{name}']:.1e}"
            lines.append(f"| {s['name']} | {label} | {t * 1e3:.2f} | {_tf(s['flops'], t)} | {L['naive'] / t:.2f}x "
                         f"| {L['dense'] / t:.2f}x | {err} |")
        best = min(DISPATCHES[1:], key=lambda n: L[n])
        targets.append(f"- {s['name']}: fastest dispatch `{best}` is {L['naive'] / L[best]:.1f}x the naive loop "
                       f"(target >= 3x: {ok(L['naive'] / L[best] >= 3)}) and {L['dense'] / L[best]:.2f}x the dense "
                       f"SwiGLU's throughput (target >= 0.6x: {ok(L['dense'] / L[best] >= 0.6)}); the Triton dispatch "
                       f"{L['grouped'] / L['triton']:.2f}x torch._grouped_mm's. What limits it: the dense SwiGLU doing the "
                       f"same matmul FLOPs with no routing is {L['naive'] / L['dense']:.2f}x the naive loop, so a dispatch "
                       f"reaches 3x only if it beats that dense layer.")
    g_lines = ["| shape | (S, d) x (d, d_ff) per expert | ours (Triton) TFLOP/s | torch._grouped_mm TFLOP/s | dense matmul TFLOP/s "
               "| ours / torch | ours / ceiling |", "|---|---|---|---|---|---|---|"]
    for s in res["shapes"]:
        G = s["gemm"]
        k, S = s["top_k"], res["tokens"] * s["top_k"]
        g_lines.append(f"| {s['name']} | ({S:,}, {res['d_model']}) x ({res['d_model']}, {s['d_ff']}), {s['num_experts']} groups "
                       f"| {_tf(G['flops'], G['triton'])} | {_tf(G['flops'], G['torch'])} | {_tf(G['flops'], G['dense'])} "
                       f"| {G['torch'] / G['triton']:.2f}x | {G['flops'] / G['triton'] / ceil:.0%} |")
        targets.append(f"- {s['name']}: our Triton grouped GEMM (fwd+bwd) is {G['torch'] / G['triton']:.2f}x "
                       f"torch._grouped_mm (target >= 0.8x: {ok(G['torch'] / G['triton'] >= 0.8)}), "
                       f"{G['flops'] / G['triton'] / ceil:.0%} of the dense matmul ceiling.")
    q_lines = ["", "The same forward+backward per call, host against GPU: the median above times each call between its own events "
               "(the GPU waits while Python enqueues); back to back, `reps` calls between two events, the GPU runs ahead "
               "of the host. Where the host time nears the per-call median, the call is bound by its launches:", "",
               "| shape | variant | per-call median ms | back-to-back ms | host ms to enqueue |", "|---|---|---|---|---|"]
    queued = [s for s in res["shapes"] if "queued" in s["gemm"]]   # none in a JSON saved before this table
    if not queued: q_lines = []
    for s in queued:
        G = s["gemm"]
        q_lines += [f"| {s['name']} | {label} | {G[n] * 1e3:.3f} | {G['queued'][n]['device'] * 1e3:.3f} | {G['queued'][n]['host'] * 1e3:.3f} |"
                    for n, label in (("triton", "ours (Triton)"), ("torch", "torch._grouped_mm"))]
    note = ("\n\nThe MoE layer (router in float32, sort, gather, three grouped GEMMs, weighted scatter-add, shared experts, "
            "auxiliary-loss statistics) against a dense SwiGLU whose d_ff is the active width (k + shared) x d_ff, so both "
            "do the same matmul FLOPs per token; 'active TFLOP/s' counts those FLOPs (3x the forward's for forward+backward). "
            "The grouped GEMM alone, forward+backward (dA: the same kernel with b transposed; dB: per-group a^T dout), "
            "random routing of the tokens:\n\n")
    tune = "".join(f"\n- {s['name']}: " + "; ".join(f"{k}: {v}" for k, v in s["tiles"].items())
                   for s in res["shapes"] if s.get("tiles"))
    if tune: tune = ("\n\nTriton tiles `triton.autotune` picked in this run per problem shape (forward/dA as BMxBNxBK, "
                     "dB as BKxBNxBM, warps, stages), in the layer and the grouped GEMM timed here:" + tune)
    return head + "\n".join(lines) + tune + note + "\n".join(g_lines + q_lines) + "\n\n" + ("Targets:\n" + "\n".join(targets) + "\n" if not res["small"]
                                                                        else "(CPU smoke run: the targets apply on the GPU.)\n")


def profile_gemm(small: bool = False, reps: int = 10) -> str:
    """Per kernel, GPU microseconds per forward+backward of the first expert projection at each shape: our Triton grouped
    GEMM (forward and dA share one kernel, dB is the transposed one) against `torch._grouped_mm`, from `torch.profiler`."""
    from torch.profiler import ProfilerActivity, profile
    device = torch.device("cuda" if torch.cuda.is_available() and not small else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    c, act = (SMALL if small else FULL), (ProfilerActivity.CUDA if device.type == "cuda" else ProfilerActivity.CPU)
    lines = [f"Machine: {describe_device(device)}; {dtype}, {c['tokens']:,} tokens, d_model {c['d_model']}; "
             f"per call of forward+backward, {reps} calls profiled", "",
             "| shape | implementation | kernel | calls per step | us per step | share |", "|---|---|---|---:|---:|---:|"]
    for s in c["shapes"]:
        offs, a, b, dout = _gemm_inputs(c["tokens"], c["d_model"], s, dtype, device)
        for name, f in (("triton", lambda: grouped_mm(a, b, offs)), ("torch._grouped_mm", lambda: torch._grouped_mm(a, b, offs=offs))):
            step = lambda: torch.autograd.backward(f(), dout)
            for _ in range(3): step()                      # autotune and warm up outside the profile
            if device.type == "cuda": torch.cuda.synchronize()
            with profile(activities=[act]) as prof:
                for _ in range(reps): step()
                if device.type == "cuda": torch.cuda.synchronize()
            if device.type == "cuda":  # the kernels themselves (not the ops that launched them, which would count twice)
                rows = cuda_kernel_times(prof, reps)
            else:
                rows = [(e.key, e.count / reps, e.cpu_time_total / reps) for e in prof.key_averages() if "grouped" in e.key]
            if not rows:
                lines.append(f"| {s['name']} | {name} | none profiled (Triton's interpreter runs in Python) | | | |"); continue
            total = sum(r[2] for r in rows)
            for kname, calls, us in sorted(rows, key=lambda r: -r[2])[:6]:
                lines.append(f"| {s['name']} | {name} | `{kname[:70]}` | {calls:g} | {us:,.1f} | {us / total:.0%} |")
            lines.append(f"| {s['name']} | {name} | all kernels | | {total:,.1f} | 100% |")
    return "\n".join(lines)


def write_results(md: str, path: Path = RESULTS) -> None:
    "Put `md` in our block of RESULTS.md (under our section the first time); other scripts' rows stay."
    write_block("bench_moe.py", md, SECTION, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="tiny sizes on CPU: a smoke run")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions per variant (default 10 on a GPU, 1 with --small)")
    p.add_argument("--json", type=str, default=None, help="also write the raw results here")
    p.add_argument("--from-json", type=str, default=None, help="format results saved earlier instead of measuring")
    p.add_argument("--write-results", action="store_true", help="write the tables into benchmarks/RESULTS.md")
    p.add_argument("--profile-gemm", action="store_true", help="per-kernel GPU time of the grouped GEMMs (ours vs torch), print only")
    a = p.parse_args(argv)
    if a.profile_gemm:
        print(profile_gemm(a.small, a.reps or (1 if a.small else 10)))
        return 0
    res = json.loads(Path(a.from_json).read_text()) if a.from_json else run_all(a.small, a.reps or (1 if a.small else 10))
    report(res, to_markdown(res), json_path=a.json, write=write_results if a.write_results else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
