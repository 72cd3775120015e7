"""Where the time of one batch-1 decode step goes: the compiled step of `bench_inference.py`'s 1.24B Llama shape, profiled.

`bench_inference.py` measures tokens/s against the bandwidth limit (weights + K/V bytes per step / copy bandwidth);
this script says what stands between the two. It profiles `generate(compile=True)` steps with `torch.profiler` (the
kernels replayed from the CUDA graph), groups the kernels by what they do, and times each weight matmul shape of the
model alone at one row (20 calls captured in a CUDA graph, so launch cost is not counted) as effective bandwidth.

    python benchmarks/profile_decode.py                  # needs a CUDA GPU
    python benchmarks/profile_decode.py --write-results  # its block of RESULTS.md, under Inference (Lecture 8)
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "benchmarks") not in sys.path: sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_inference import SECTION, llama_config, ours_decode  # noqa: E402
from results import report, write_block  # noqa: E402
from cs336_nb.core import describe_device  # noqa: E402
from cs336_nb.inference import decode_bytes_per_step  # noqa: E402
from cs336_nb.kernels import graphed_seconds, measure_copy_bandwidth  # noqa: E402
from cs336_nb.model import TransformerLM, set_attention_backend  # noqa: E402

CLASSES = [  # (label, test on the kernel name), first match wins. Inductor names its kernels after the ops fused in them.
    ("weight matmuls in cuBLAS (GEMV/GEMM, split-K reductions)", lambda n: any(s in n for s in ("nvjet", "gemv", "gemm", "splitK", "cutlass", "sm90_xmma"))),
    ("attention in SDPA's kernel", lambda n: ("sdpa" in n or "flash" in n or "fmha" in n or "attention" in n) and not n.startswith("triton")),
    ("inductor: attention's softmax (with its value product)", lambda n: n.startswith("triton") and "softmax" in n),
    ("inductor: argmax", lambda n: "argmax" in n or "reduce_kernel" in n),
    ("inductor: weight GEMVs (an mm lowered to a reduction; norms, SwiGLU, residuals fused in)",
     lambda n: n.startswith("triton_") and ("_mm_" in n or n.endswith("_mm"))),
    ("inductor: multiply-sum reductions (the weight GEMVs, attention scores; norms, SwiGLU, residuals fused in)",
     lambda n: n.startswith("triton_") and "mul" in n and "sum" in n),
    ("inductor: other fused kernels (norms, RoPE, cache writes)", lambda n: n.startswith("triton")),
    ("copies and memsets", lambda n: "memset" in n.lower() or "copy" in n.lower() or "multi_tensor" in n),
]


def classify(name: str) -> str:
    return next((label for label, test in CLASSES if test(name)), "other")


def profile_kernels(model, ids, steps: int = 30) -> dict:
    "Kernels and microseconds per step, by class and by kernel name, from a torch.profiler trace of `steps` compiled steps."
    from torch.profiler import ProfilerActivity, profile
    it = model.generate_stream(ids, steps + 5, temperature=0, compile=True)
    for _ in range(5): next(it)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps): next(it)
        torch.cuda.synchronize()
    by, names = defaultdict(lambda: [0, 0.0]), defaultdict(lambda: [0, 0.0])
    for e in prof.events():
        if not str(getattr(e, "device_type", "")).endswith("CUDA"): continue
        for c in (by[classify(e.name)], names[e.name]):
            c[0] += 1
            c[1] += e.time_range.end - e.time_range.start  # microseconds
    per_step = lambda d: {k: dict(kernels=n / steps, us=us / steps) for k, (n, us) in sorted(d.items(), key=lambda kv: -kv[1][1])}
    return per_step(by), per_step(names)


def matmul_shapes(model) -> dict:
    "The model's weight matrices by (out, in) shape, with how many of each a decode step reads."
    counts = defaultdict(int)
    for name, p in model.named_parameters():
        if p.dim() == 2 and "embeddings" not in name: counts[tuple(p.shape)] += 1
    if model.lm_head.weight is model.token_embeddings.weight: counts[tuple(model.lm_head.weight.shape)] += 1
    return dict(counts)


def time_matmuls(model, dtype) -> list[dict]:
    "Each weight shape at one row: cuBLAS (`x @ w.T` eager) and inductor's kernel for it (compiled as the decode step is)."
    from cs336_nb.model import _DECODE_COMPILE_OPTIONS
    compiled = torch.compile(lambda x, w: x @ w.T, options={k: v for k, v in _DECODE_COMPILE_OPTIONS.items() if k != "triton.cudagraphs"})
    rows = []
    for (n, k), count in sorted(matmul_shapes(model).items(), key=lambda kv: -kv[0][0] * kv[0][1]):
        w = torch.randn(n, k, device="cuda", dtype=dtype)
        x = torch.randn(1, k, device="cuda", dtype=dtype)
        us, ind = (graphed_seconds(f) * 1e6 for f in (lambda: x @ w.T, lambda: compiled(x, w)))
        nbytes = n * k * w.element_size()
        rows.append(dict(shape=f"{n} x {k}", per_step=count, us=us, tb_per_s=nbytes / us / 1e6, inductor_us=ind,
                         inductor_tb_per_s=nbytes / ind / 1e6, us_per_step=min(us, ind) * count))
    return rows


def run_all(prompt: int = 64, new: int = 256) -> dict:
    if not torch.cuda.is_available(): raise SystemExit("profile_decode.py profiles CUDA kernels: it needs a CUDA GPU")
    dev, dtype = torch.device("cuda"), torch.bfloat16
    set_attention_backend("sdpa")
    torch.manual_seed(0)
    from transformers import LlamaForCausalLM
    ctx = prompt + new
    with torch.device(dev): hf = LlamaForCausalLM(llama_config(False, ctx)).to(dtype).eval()
    model = TransformerLM.from_hf(hf, context_length=ctx, device=dev).eval()
    del hf
    bw = measure_copy_bandwidth(2**30, dev)
    ids = torch.randint(0, model.config.vocab_size, (1, prompt), device=dev)
    wall = 1 / ours_decode(model, ids, new, 3, compile=True)[0]  # bench_inference's timing: a warm-up run, the best of 3
    bound = decode_bytes_per_step(model.config, 1, prompt + new // 2, dtype) / bw
    return dict(device=describe_device(dev), params=model.num_params(), copy_bandwidth=bw, step_us=wall * 1e6, bound_us=bound * 1e6,
                **dict(zip(("kernels", "by_name"), profile_kernels(model, ids))), matmuls=time_matmuls(model, dtype))


def to_markdown(r: dict) -> str:
    k = r["kernels"]
    total_us, total_n = sum(v["us"] for v in k.values()), sum(v["kernels"] for v in k.values())
    out = [f"Where a batch-1 decode step's time goes. Machine: {r['device']}. The compiled greedy step of `generate(compile=True)` "
           f"on bench_inference's Llama shape ({r['params'] / 1e9:.2f} B parameters, bf16): {r['step_us']:,.0f} µs per step measured, "
           f"against {r['bound_us']:,.0f} µs for reading the weights and K/V once at the copy bandwidth "
           f"({r['copy_bandwidth'] / 1e12:.2f} TB/s): {r['bound_us'] / r['step_us']:.0%} of the limit. "
           "Command: `python benchmarks/profile_decode.py --write-results`.", "",
           "| kernels (torch.profiler, 30 steps) | kernels per step | µs per step | share of kernel time |", "|---|---:|---:|---:|"]
    out += [f"| {name} | {v['kernels']:.0f} | {v['us']:,.0f} | {v['us'] / total_us:.0%} |" for name, v in k.items()]
    out += [f"| all kernels | {total_n:.0f} | {total_us:,.0f} | 100% |",
            f"| step time not covered by kernels (gaps between {total_n:.0f} kernels, graph launch) | | {r['step_us'] - total_us:,.0f} | |", "",
            "The kernels that take most of the step (inductor names a kernel after the ops fused into it):", "",
            "| kernel | calls per step | µs per step |", "|---|---:|---:|"]
    out += [f"| `{name[:90]}` | {v['kernels']:.0f} | {v['us']:,.1f} |" for name, v in list(r["by_name"].items())[:12]]
    out += ["", "Each weight matmul of the model alone at one row (20 calls in one CUDA graph: no launch cost), as effective "
            "bandwidth, in cuBLAS and as inductor compiles it (the decode step's compile options):", "",
            "| weight (out x in) | per step | cuBLAS µs | cuBLAS TB/s | inductor µs | inductor TB/s | µs per step (faster) |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    out += [f"| {m['shape']} | {m['per_step']} | {m['us']:.1f} | {m['tb_per_s']:.2f} | {m['inductor_us']:.1f} | {m['inductor_tb_per_s']:.2f} | "
            f"{m['us_per_step']:,.0f} |" for m in r["matmuls"]]
    mm = sum(m["us_per_step"] for m in r["matmuls"])
    best = lambda m: max(m["tb_per_s"], m["inductor_tb_per_s"])
    slow = ", ".join(f"{m['shape']} ({best(m):.2f} TB/s)" for m in r["matmuls"] if best(m) < 0.5 * r["copy_bandwidth"] / 1e12)
    out += ["", f"The matmuls alone take {mm:,.0f} µs of the step at the faster of the two speeds ({r['bound_us'] / mm:.0%} of the limit if nothing else ran). "
            f"Below half the copy bandwidth: {slow or 'none'}."]
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", default=None, help="also write the raw results here")
    p.add_argument("--write-results", action="store_true", help="write the tables into benchmarks/RESULTS.md")
    a = p.parse_args(argv)
    res = run_all()
    report(res, to_markdown(res), json_path=a.json, write=(lambda md: write_block("profile_decode.py", md, SECTION)) if a.write_results else None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
