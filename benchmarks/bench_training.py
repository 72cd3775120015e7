"""Training throughput, MFU and peak memory of `cs336_nb.model.TransformerLM` against the same architecture built
from PyTorch's own modules (nn.Embedding, nn.Linear, nn.RMSNorm, F.scaled_dot_product_attention).

One training step = forward under bf16 autocast + cross-entropy + backward + global-norm clipping + AdamW step,
compiled with torch.compile, GPT-2-small shape (12 layers, d_model 768, 12 heads, SwiGLU d_ff 2048, tied
embeddings, vocabulary 50257 padded to 50304), context 1024.

    python benchmarks/bench_training.py                 # on a GPU: print the table
    python benchmarks/bench_training.py --write-results # ... and write it into benchmarks/RESULTS.md
    python benchmarks/bench_training.py --small         # a tiny CPU smoke run (what the tests run)
    python benchmarks/bench_training.py --ablation --write-results --json abl.json   # our fused parts, one at a time
    python benchmarks/bench_training.py --ablation --tiny                            # ... the same code on a CPU

All variants run at batch 16; ours and the reference also at batch 64, llm.c's setting for this model.
`--ablation` measures, in one process, today's compiled step (the baseline) and each of our faster parts alone and all
together: FlashAttention-2 in Triton (`attn_backend="flash_triton"`), the fused Triton RMSNorm (every `RMSNorm` module
swapped for `kernels.rmsnorm.TritonRMSNorm`: the model has no norm-backend switch), the fused linear + cross-entropy
(`kernels.fused_cross_entropy.lm_loss`), and the optimizer (our `AdamW` with `foreach=False` against its default
`foreach=True`, and `torch.optim.AdamW(fused=True)` as a reference row).
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import re
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path: sys.path.insert(0, str(ROOT))
if str(ROOT / "benchmarks") not in sys.path: sys.path.insert(0, str(ROOT / "benchmarks"))

from results import RESULTS, cuda_kernel_times, write_block  # noqa: E402  (benchmarks/results.py)
from cs336_nb import accounting  # noqa: E402
from cs336_nb.core import benchmark, describe_device, detect_accelerator, fmt_bytes, mfu  # noqa: E402
from cs336_nb.model import ModelConfig, TransformerLM  # noqa: E402
from cs336_nb.optim import AdamW  # noqa: E402
from cs336_nb.training import cross_entropy, gradient_clipping  # noqa: E402
from cs336_nb.kernels.fused_cross_entropy import default_chunk_size, linear_cross_entropy_memory, lm_loss  # noqa: E402

SECTION = "## Training throughput and memory (Lectures 2–4)"
ABLATION_BLOCK = "bench_training.py:ablation"  # its own RESULTS.md block, beside the main table's
PROFILE_BLOCK = "bench_training.py:profile"  # where the compiled step's GPU time goes (--profile)


# ---------------------------------------------------------------- the reference: the same model from torch.nn modules
class RefRoPE(nn.Module):
    def __init__(self, d_head: int, max_seq_len: int, theta: float, device=None):
        super().__init__()
        inv = theta ** (-torch.arange(0, d_head, 2, dtype=torch.float64, device=device) / d_head)
        ang = torch.outer(torch.arange(max_seq_len, dtype=torch.float64, device=device), inv)
        self.register_buffer("cos", ang.cos().float(), persistent=False)
        self.register_buffer("sin", ang.sin().float(), persistent=False)

    def forward(self, x):  # x: (B, H, T, D), rotate pairs (x[2i], x[2i+1]) like ours
        T = x.shape[-2]
        cos, sin = self.cos[:T].to(x.dtype), self.sin[:T].to(x.dtype)
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


class RefBlock(nn.Module):
    def __init__(self, c: ModelConfig, device=None):
        super().__init__()
        kw = dict(bias=False, device=device)
        d, self.h = c.d_model, c.num_heads
        self.ln1, self.ln2 = nn.RMSNorm(d, eps=1e-5, device=device), nn.RMSNorm(d, eps=1e-5, device=device)
        self.q_proj, self.k_proj, self.v_proj, self.output_proj = (nn.Linear(d, d, **kw) for _ in range(4))
        self.w1, self.w3, self.w2 = nn.Linear(d, c.d_ff, **kw), nn.Linear(d, c.d_ff, **kw), nn.Linear(c.d_ff, d, **kw)
        self.rope = RefRoPE(d // c.num_heads, c.context_length, c.rope_theta, device=device)

    def forward(self, x):
        B, T, d = x.shape
        y = self.ln1(x)
        q, k, v = (p(y).view(B, T, self.h, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        a = F.scaled_dot_product_attention(self.rope(q), self.rope(k), v, is_causal=True)
        x = x + self.output_proj(a.transpose(1, 2).reshape(B, T, d))
        y = self.ln2(x)
        return x + self.w2(F.silu(self.w1(y)) * self.w3(y))


class RefLM(nn.Module):
    def __init__(self, c: ModelConfig, device=None):
        super().__init__()
        self.token_embeddings = nn.Embedding(c.vocab_size, c.d_model, device=device)
        self.layers = nn.ModuleList(RefBlock(c, device) for _ in range(c.num_layers))
        self.ln_final = nn.RMSNorm(c.d_model, eps=1e-5, device=device)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False, device=device)
        if c.tie_embeddings: self.token_embeddings.weight = self.lm_head.weight

    def forward(self, ids):
        x = self.token_embeddings(ids)
        for layer in self.layers: x = layer(x)
        return self.lm_head(self.ln_final(x))


# ---------------------------------------------------------------- one measured configuration
def make_step(model: nn.Module, optimizer, cfg: ModelConfig, batch_size: int, seq_len: int, device, *,
              ours_loss: bool = True, compile: bool = True, fused_loss: bool = False, loss_chunk: int | None = None):
    "One training step on a fixed random batch: compiled forward + loss, backward, clipping, optimizer, zero_grad."
    amp = device.type == "cuda"
    params = list(model.parameters())
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randint(0, cfg.vocab_size, (batch_size, seq_len), device=device, generator=g)
    y = torch.randint(0, cfg.vocab_size, (batch_size, seq_len), device=device, generator=g)

    def loss_fn(x, y):  # model + loss compiled as one graph, for both implementations
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            if fused_loss: return lm_loss(model, x, y, chunk_size=loss_chunk)   # never the full logits
            logits = model(x)
            if ours_loss: return cross_entropy(logits, y)
            return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
    step_loss = torch.compile(loss_fn) if compile else loss_fn

    def step():
        loss = step_loss(x, y)
        loss.backward()
        if ours_loss: gradient_clipping(params, 1.0)
        else: torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def measure(name: str, model: nn.Module, optimizer, cfg: ModelConfig, batch_size: int, seq_len: int, device, *,
            ours_loss: bool = True, compile: bool = True, reps: int = 20, warmup: int = 5, fused_loss: bool = False,
            loss_chunk: int | None = None) -> dict:
    params = list(model.parameters())
    step = make_step(model, optimizer, cfg, batch_size, seq_len, device, ours_loss=ours_loss, compile=compile,
                     fused_loss=fused_loss, loss_chunk=loss_chunk)
    t0 = time.perf_counter()
    step()  # compile
    if device.type == "cuda": torch.cuda.synchronize()
    first = time.perf_counter() - t0
    if device.type == "cuda": torch.cuda.reset_peak_memory_stats()
    timing = benchmark(step, warmup=warmup, reps=reps, device=device)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    tokens = batch_size * seq_len
    fpt = flops_per_token(cfg, seq_len)
    acc = detect_accelerator() if device.type == "cuda" else None
    return dict(name=name, step_ms=timing.median * 1e3, tokens_per_s=tokens / timing.median,
                mfu=mfu(fpt * tokens, timing.median, accelerator=acc) if acc else None,
                peak_memory=peak, compile_s=first, params=sum(p.numel() for p in params))


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    "Training FLOPs per token (forward + backward) from our accounting."
    return accounting.training_flops_per_token(cfg, seq_len=seq_len)


def predicted_memory(cfg: ModelConfig, batch_size: int, seq_len: int, attn_backend: str = "sdpa", compiled: bool = True) -> float:
    "Peak bytes of a steady-state training step (fp32 params, AdamW; bf16 autocast when compiled on a GPU) from our accounting."
    kw = {} if compiled else dict(compute_dtype=torch.float32, device_type="cpu")
    return accounting.training_memory(cfg, batch_size, seq_len, attn_backend=attn_backend, compiled=compiled, **kw)["peak"]


def memory_held_now(device) -> int:
    "Bytes allocated on `device` once earlier rows' compiled graphs (and the models they hold) are dropped; 0 on a CPU."
    torch._dynamo.reset()   # disk caches stay: the same graph compiles again from the FX-graph cache
    gc.collect()
    if device.type != "cuda": return 0
    torch.cuda.synchronize(); torch.cuda.empty_cache()
    return torch.cuda.memory_allocated()


def log_row(r: dict) -> None:
    "One progress line per measured row."
    print(f"{r['name']} (batch {r['batch_size']}): {r['step_ms']:.1f} ms/step, {r['tokens_per_s']:.0f} tok/s, "
          f"compile+first step {r['compile_s']:.0f} s", flush=True)


def add_speed_ratio(rows: list[dict], ref_name: str, key: str) -> None:
    "Set `r[key]`: the row's tokens/s over `ref_name`'s at the same batch (None where there is no such row)."
    for r in rows:
        ref = next((q for q in rows if q["name"] == ref_name and q["batch_size"] == r["batch_size"]), None)
        r[key] = r["tokens_per_s"] / ref["tokens_per_s"] if ref else None


def run_all(batch_size: int = 16, seq_len: int = 1024, reps: int = 20, small: bool = False, variants=None,
            batch_sizes: tuple[int, ...] = ()) -> dict:
    """Every variant at `batch_size`; then `ours-sdpa` and `reference` again at each of `batch_sizes` (larger batches
    amortise the per-step costs that do not grow with the batch: the optimizer step, clipping, launch overhead)."""
    device = torch.device("cuda" if torch.cuda.is_available() and not small else "cpu")
    if small:
        cfg = ModelConfig.tiny(vocab_size=512, context_length=64)
        batch_size, seq_len, reps, batch_sizes = 4, 64, 3, tuple(b // 4 for b in batch_sizes)
    else:
        cfg = ModelConfig.gpt2_small(vocab_size=50304, context_length=seq_len)
    compile = device.type == "cuda"
    rows = []
    variants = variants or ["ours-sdpa", "reference", "ours-naive", "ours-sdpa+torch-AdamW"]
    plan = [(v, batch_size) for v in variants] + [(v, b) for b in batch_sizes if b != batch_size
                                                   for v in ("ours-sdpa", "reference") if v in variants]
    for v, bs in plan:
        torch.manual_seed(0)
        base = memory_held_now(device)  # memory held before this variant (other objects in the process) is not its own
        if v == "reference":
            model = RefLM(cfg, device=device)
            opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1,
                                    fused=device.type == "cuda")
            r = measure(v, model, opt, cfg, bs, seq_len, device, ours_loss=False, compile=compile, reps=reps)
        else:
            backend = "naive" if v == "ours-naive" else "sdpa"
            model = TransformerLM.from_config(cfg.replace(attn_backend=backend), device=device)
            opt = (torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1, fused=device.type == "cuda")
                   if v.endswith("torch-AdamW") else AdamW(model.parameters(), lr=3e-4, weight_decay=0.1))
            r = measure(v, model, opt, cfg, bs, seq_len, device, compile=compile, reps=reps)
        if r["peak_memory"] is not None: r["peak_memory"] -= base
        r["batch_size"] = bs
        r["predicted_memory"] = predicted_memory(cfg, bs, seq_len, "naive" if v == "ours-naive" else "sdpa",
                                                 compiled=compile)
        rows.append(r)
        log_row(r)
        del model, opt
    add_speed_ratio(rows, "reference", "vs_reference")
    return dict(device=describe_device(device), batch_size=batch_size, seq_len=seq_len, config=cfg.to_dict(),
                flops_per_token=flops_per_token(cfg, seq_len), rows=rows, small=small)


def to_markdown(res: dict) -> str:
    shape = "a tiny model (CPU smoke run)" if res.get("small") else "GPT-2-small shape"
    batches = sorted({r.get("batch_size", res["batch_size"]) for r in res["rows"]})
    head = (f"Machine: {res['device']}. {shape} (vocab {res['config']['vocab_size']}, tied embeddings), "
            f"context {res['seq_len']}, batch {' and '.join(map(str, batches))}, "
            f"{'float32, eager' if res.get('small') else 'bf16 autocast, torch.compile'}; one step = "
            f"forward + cross-entropy + backward + clipping + AdamW. FLOPs/token from `accounting`: "
            f"{res['flops_per_token'] / 1e6:.0f} M. Command: `python benchmarks/bench_training.py --write-results`.\n\n")
    lines = ["| variant | batch | ms/step | tokens/s | MFU | vs reference | peak memory | predicted (accounting) | pred/measured |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        pm, pred = r["peak_memory"], r["predicted_memory"]
        mfu_s = "" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        vs = "" if r["vs_reference"] is None else f"{r['vs_reference']:.2f}x"
        lines.append(f"| {r['name']} | {r.get('batch_size', res['batch_size'])} | {r['step_ms']:.1f} | {r['tokens_per_s']:,.0f} | "
                     f"{mfu_s} | {vs} | {'' if pm is None else fmt_bytes(pm)} | {fmt_bytes(pred)} | "
                     f"{'' if pm is None else f'{pred / pm:.2f}'} |")
    notes = ("\n\nVariants: `ours-sdpa` = `TransformerLM(attn_backend=\"sdpa\")` with our `AdamW`, `cross_entropy`, "
             "`gradient_clipping`; `reference` = the same architecture from `nn.Embedding`/`nn.Linear`/`nn.RMSNorm`/"
             "`F.scaled_dot_product_attention` with `torch.optim.AdamW(fused=True)`, `F.cross_entropy`, "
             "`clip_grad_norm_`; `ours-naive` = our own attention (materialised scores); "
             "`ours-sdpa+torch-AdamW` isolates the optimizer.\n")
    ok = lambda c: "met" if c else "MISSED"
    targets = []
    for r in res["rows"]:
        if r["name"] != "ours-sdpa" or r["mfu"] is None: continue
        mem = r["predicted_memory"] / r["peak_memory"]
        targets.append(f"Targets (ours-sdpa, batch {r['batch_size']}): MFU >= 40%: {100 * r['mfu']:.1f}%, {ok(r['mfu'] >= 0.4)}; "
                       f">= 0.9x the reference: {r['vs_reference']:.2f}x, {ok(r['vs_reference'] >= 0.9)}; "
                       f"peak memory predicted within 10%: {mem:.2f}, {ok(abs(mem - 1) <= 0.1)}.")
    return head + "\n".join(lines) + notes + ("\n" + "\n".join(targets) + "\n" if targets else "")



# ---------------------------------------------------------------- the ablation: our fused parts, alone and together
# name -> (attention backend, Triton RMSNorm, fused linear + cross-entropy, optimizer); the baseline is today's step
ABLATION = {
    "baseline": ("sdpa", False, False, "ours-foreach"),
    "+ flash_triton": ("flash_triton", False, False, "ours-foreach"),
    "+ triton RMSNorm": ("sdpa", True, False, "ours-foreach"),
    "+ fused linear+CE": ("sdpa", False, True, "ours-foreach"),
    "AdamW foreach=False": ("sdpa", False, False, "ours-loop"),
    "torch AdamW(fused) (reference)": ("sdpa", False, False, "torch-fused"),
    "all ours": ("flash_triton", True, True, "ours-foreach"),
    "all ours + torch AdamW(fused)": ("flash_triton", True, True, "torch-fused"),
}
LOSS_CHUNK = 4096  # rows per chunk of the fused loss on the GPU (H200: 1024 rows 37.3 ms/step, 4096 35.0, 8192 34.8)
# rows repeated at the larger batches (each new shape compiles again: ~1 min a row at batch 64)
ABLATION_LARGER_BATCH = ("baseline", "+ fused linear+CE", "all ours", "all ours + torch AdamW(fused)")


def use_triton_rmsnorm(model: nn.Module) -> int:
    "Swap every `cs336_nb.model.RMSNorm` in `model` for a `TritonRMSNorm` with the same weight; returns how many."
    from cs336_nb.kernels.rmsnorm import TritonRMSNorm
    from cs336_nb.model import RMSNorm
    swaps = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
             if type(child) is RMSNorm]
    for parent, name, child in swaps: setattr(parent, name, TritonRMSNorm.from_module(child))
    return len(swaps)


def make_optimizer(kind: str, params, device):
    "Our AdamW (foreach or per-parameter loop) or torch's fused AdamW, the hyperparameters of every row."
    kw = dict(lr=3e-4, weight_decay=0.1)
    if kind == "torch-fused": return torch.optim.AdamW(params, fused=device.type == "cuda", **kw)
    if kind in ("ours-foreach", "ours-loop"): return AdamW(params, foreach=kind == "ours-foreach", **kw)
    raise ValueError(f"optimizer kind must be 'ours-foreach', 'ours-loop' or 'torch-fused', got {kind!r}")


def predicted_memory_ablation(cfg: ModelConfig, batch_size: int, seq_len: int, *, attn_backend: str, fused_loss: bool,
                              compiled: bool, loss_chunk: int | None = None) -> float:
    """`accounting.training_memory`'s peak; with the fused loss, the head's saved bf16 input, logits and bf16 weight copy
    are replaced by the two gradients the fused forward saves (`linear_cross_entropy_memory`), and the forward's own
    peak (its last chunk: that chunk's logits, the weight cast to bf16 and its bf16 share of d/dW) is a third candidate."""
    acc_backend = "flash" if attn_backend == "flash_triton" else attn_backend
    kw = {} if compiled else dict(compute_dtype=torch.float32, device_type="cpu")
    m = accounting.training_memory(cfg, batch_size, seq_len, attn_backend=acc_backend, compiled=compiled, **kw)
    if not fused_loss: return m["peak"]
    N, V, d = batch_size * seq_len, cfg.vocab_size, cfg.d_model
    a = 2 if compiled else 4
    if compiled: held = N * (a * d + a * V) + V * d * a   # head input and logits (bf16), the head weight's bf16 copy
    else: held = N * (a * d + 4 * V + 8) + N * V * 8    # eager float32: head input, log-probs, ids; the loss gradients
    saved = linear_cross_entropy_memory(N, V, d, compute_dtype=torch.bfloat16 if compiled else torch.float32)["saved"]
    at_backward = m["peak_at_backward"] - held + saved
    c = min(N, loss_chunk or default_chunk_size(N, V, d))
    # the chunk's logits; the weight's bf16 copy (compiled on a GPU) and the chunk's share of d/dW before it is added
    at_loss_forward = at_backward - m["lm_head_gradient"] + c * V * a + (2 if compiled else 1) * V * d * a
    return max(at_backward, at_loss_forward, m["peak_at_optimizer"])


def build_variant(v: str, cfg: ModelConfig, device) -> tuple[nn.Module, object]:
    "The model and optimizer of `ABLATION[v]`, seeded alike for every row."
    attn, triton_norm, _, opt_kind = ABLATION[v]
    torch.manual_seed(0)
    model = TransformerLM.from_config(cfg.replace(attn_backend=attn), device=device)
    if triton_norm: use_triton_rmsnorm(model)
    return model, make_optimizer(opt_kind, model.parameters(), device)


KERNEL_CLASSES = [  # (label, test on a CUDA kernel's name), first match wins
    ("ours: FlashAttention", lambda n: n.startswith("_flash_")),   # cuDNN's SDPA kernels also say "_flash_"
    ("ours: RMSNorm", lambda n: n.startswith("_rmsnorm_")),
    ("ours: cross-entropy", lambda n: n.startswith("_ce_row")),
    ("SDPA flash attention", lambda n: "flash" in n.lower() or "fmha" in n.lower()),
    ("matmul (cuBLAS / CUTLASS)", lambda n: any(t in n.lower() for t in ("gemm", "nvjet", "cutlass", "sm90_", "xmma", "cublas"))),
    ("optimizer and clipping (multi-tensor)", lambda n: "multi_tensor" in n or "foreach" in n.lower()),
    ("inductor's fused kernels", lambda n: n.startswith("triton_")),
    ("copies (aten)", lambda n: "copy" in n.lower() or "CatArray" in n),
]


def kernel_class(name: str) -> str:
    "The `KERNEL_CLASSES` label of a CUDA kernel name ('other' if none matches)."
    return next((label for label, test in KERNEL_CLASSES if test(name)), "other")


def profile_ablation(variants, batch_size: int = 16, seq_len: int = 1024, reps: int = 5, top: int = 12) -> str:
    """Where one compiled training step's GPU time goes, per `ABLATION` row: wall ms per step next to the sum of its
    kernels, by kernel class and the slowest kernels, from `torch.profiler` (GPU only)."""
    from torch.profiler import ProfilerActivity, profile
    if not torch.cuda.is_available(): raise SystemExit("--profile profiles CUDA kernels: it needs a CUDA GPU")
    device, cfg = torch.device("cuda"), ModelConfig.gpt2_small(vocab_size=50304, context_length=seq_len)
    out = [f"Machine: {describe_device(device)}; GPT-2-small shape, batch {batch_size}, context {seq_len}, compiled; "
           f"{reps} steps profiled. Command: `python benchmarks/bench_training.py --profile {' '.join(repr(v) for v in variants)} --write-results`."]
    for v in variants:
        _, _, fused, _ = ABLATION[v]
        model, opt = build_variant(v, cfg, device)
        step = make_step(model, opt, cfg, batch_size, seq_len, device, fused_loss=fused, loss_chunk=LOSS_CHUNK)
        wall = benchmark(step, warmup=3, reps=reps, device=device).median
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(reps): step()
            torch.cuda.synchronize()
        ks = cuda_kernel_times(prof, reps)
        total = sum(us for _, _, us in ks)
        by = {}
        for name, calls, us in ks:
            c = by.setdefault(kernel_class(name), [0.0, 0.0]); c[0] += calls; c[1] += us
        out += ["", f"**{v}**: {wall * 1e3:.1f} ms per step (wall), {total / 1e3:.1f} ms of kernels "
                    f"({sum(c for _, c, _ in ks):.0f} launches)", "",
                "| kernel class | launches per step | ms per step | share |", "|---|---:|---:|---:|"]
        out += [f"| {k} | {n:.0f} | {us / 1e3:.2f} | {us / total:.0%} |" for k, (n, us) in sorted(by.items(), key=lambda kv: -kv[1][1])]
        out += ["", "| slowest kernels | launches per step | ms per step |", "|---|---:|---:|"]
        out += [f"| `{name[:80]}` | {calls:g} | {us / 1e3:.2f} |" for name, calls, us in ks[:top]]
        del model, opt, step, prof
        gc.collect(); torch.cuda.empty_cache()
    return "\n".join(out)


def run_ablation(batch_size: int = 16, seq_len: int = 1024, reps: int = 10, tiny: bool = False,
                 batch_sizes: tuple[int, ...] = (64,), variants=None, loss_chunk: int | None = LOSS_CHUNK) -> dict:
    """Every `ABLATION` row at `batch_size`, then the `ABLATION_LARGER_BATCH` rows at each of `batch_sizes`, in this
    process on one device. `tiny`: a small model on the CPU, uncompiled, Triton kernels in the interpreter."""
    from cs336_nb.kernels._triton import interpret_triton_without_gpu
    interpret_triton_without_gpu()  # no GPU: the Triton kernels run in the interpreter (before triton is imported)
    device = torch.device("cuda" if torch.cuda.is_available() and not tiny else "cpu")
    if tiny:
        cfg = ModelConfig.tiny(vocab_size=512, context_length=32, d_model=64, num_layers=2, d_ff=128, tie_embeddings=True)
        batch_size, seq_len, reps, batch_sizes = 2, 32, 1, tuple(min(b, 4) for b in batch_sizes[:1])
    else:
        cfg = ModelConfig.gpt2_small(vocab_size=50304, context_length=seq_len)
    compile = device.type == "cuda"
    variants = list(variants or ABLATION)
    plan = [(v, batch_size) for v in variants] + [(v, b) for b in batch_sizes if b != batch_size
                                                  for v in ABLATION_LARGER_BATCH if v in variants]
    rows = []
    for v, bs in tqdm(plan, desc="ablation", disable=not compile):
        attn, triton_norm, fused, opt_kind = ABLATION[v]
        base = memory_held_now(device)
        model, opt = build_variant(v, cfg, device)
        r = measure(v, model, opt, cfg, bs, seq_len, device, compile=compile, reps=reps,
                    warmup=1 if tiny else 3, fused_loss=fused, loss_chunk=loss_chunk)
        if r["peak_memory"] is not None: r["peak_memory"] -= base
        r["memory_before"] = base
        r.update(batch_size=bs, loss_chunk=loss_chunk, attn_backend=attn, triton_rmsnorm=triton_norm, fused_loss=fused, optimizer=opt_kind,
                 predicted_memory=predicted_memory_ablation(cfg, bs, seq_len, attn_backend=attn, fused_loss=fused,
                                                            compiled=compile, loss_chunk=loss_chunk))
        rows.append(r)
        log_row(r)
        del model, opt
    add_speed_ratio(rows, "baseline", "vs_baseline")
    return dict(device=describe_device(device), batch_size=batch_size, seq_len=seq_len, config=cfg.to_dict(),
                flops_per_token=flops_per_token(cfg, seq_len), rows=rows, tiny=tiny)


def ratio_cell(x: float | None) -> str:
    "A speed ratio like 1.05x, blank where there is no baseline row to compare with."
    return "" if x is None else f"{x:.2f}x"


def mfu_cell(r: dict) -> str:
    "MFU as a percentage, blank where there is none (CPU)."
    return "" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"


def ablation_markdown(res: dict) -> str:
    "The ablation table (one row per variant and batch) and the targets, met or missed by how much."
    shape = "a tiny model (CPU smoke run, uncompiled, Triton interpreter)" if res.get("tiny") else "GPT-2-small shape"
    head = (f"Machine: {res['device']}. {shape} (vocab {res['config']['vocab_size']}, tied embeddings), context "
            f"{res['seq_len']}, {'float32, eager' if res.get('tiny') else 'bf16 autocast, torch.compile'}; one step = forward + "
            f"cross-entropy + backward + clipping + optimizer. FLOPs/token from `accounting`: {res['flops_per_token'] / 1e6:.0f} M. "
            f"Command: `python benchmarks/bench_training.py --ablation --write-results`.\n\n")
    lines = ["| variant | batch | attention | RMSNorm | loss | optimizer | ms/step | tokens/s | MFU | vs baseline | peak memory | predicted | pred/measured |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        pm, pred = r["peak_memory"], r["predicted_memory"]
        lines.append(f"| {r['name']} | {r['batch_size']} | {r['attn_backend']} | {'Triton' if r['triton_rmsnorm'] else 'model'} | "
                     f"{'fused' if r['fused_loss'] else 'logits + CE'} | {r['optimizer']} | {r['step_ms']:.1f} | "
                     f"{r['tokens_per_s']:,.0f} | {mfu_cell(r)} | "
                     f"{ratio_cell(r['vs_baseline'])} | {'' if pm is None else fmt_bytes(pm)} | {fmt_bytes(pred)} | "
                     f"{'' if pm is None else f'{pred / pm:.2f}'} |")
    notes = ("\n\nRows: `baseline` = today's step (`sdpa` attention, the model's `RMSNorm`, logits then `cross_entropy`, our "
             "`AdamW(foreach=True)`); each `+` row changes one part; `AdamW foreach=False` is our per-parameter loop; "
             "`torch AdamW(fused)` is PyTorch's single-kernel optimizer (a reference, not ours); `all ours` = flash_triton + "
             "Triton RMSNorm (modules swapped: the model has no norm-backend switch) + the fused linear + cross-entropy "
             f"(`kernels.fused_cross_entropy.lm_loss`, {res['rows'][0].get('loss_chunk') or LOSS_CHUNK} rows a chunk).\n\n")
    return (head + "\n".join(lines) + notes + "\n".join(ablation_findings(res)) + "\n\n"
            + "\n".join(ablation_targets(res)) + "\n")


def ablation_findings(res: dict) -> list[str]:
    "What the rows say, computed: each part's speed against the baseline, and the peak memory the fused loss saves."
    out = []
    for bs in sorted({r["batch_size"] for r in res["rows"]}):
        rows = {r["name"]: r for r in res["rows"] if r["batch_size"] == bs}
        if "baseline" not in rows: continue
        slower = [f"{n} ({r['vs_baseline']:.2f}x)" for n, r in rows.items() if n != "baseline" and r["vs_baseline"] < 1]
        faster = [f"{n} ({r['vs_baseline']:.2f}x)" for n, r in rows.items() if n != "baseline" and r["vs_baseline"] >= 1]
        out.append(f"Batch {bs}: faster than the baseline: {', '.join(faster) or 'none'}; slower: {', '.join(slower) or 'none'}.")
        f, b = rows.get("+ fused linear+CE"), rows["baseline"]
        if f and f["peak_memory"] is not None:
            out.append(f"Batch {bs}: the fused loss lowers the peak by {fmt_bytes(b['peak_memory'] - f['peak_memory'])} "
                       f"({f['peak_memory'] / b['peak_memory']:.2f}x the baseline's).")
    return out


def ablation_targets(res: dict) -> list[str]:
    "One line per target: MFU >= 50% for 'all ours' at the first batch; peak memory within 10% on every row."
    if res.get("tiny"): return ["Targets are checked on the GPU run only (no MFU or peak memory on a CPU)."]
    out = []
    for r in res["rows"]:
        if r["name"] == "all ours":
            gap = 0.5 - r["mfu"]
            out.append(f"MFU >= 50% (all ours, batch {r['batch_size']}): {100 * r['mfu']:.1f}%, "
                       + ("met." if gap <= 0 else f"MISSED by {100 * gap:.1f} points ({r['mfu'] / 0.5:.2f}x the target)."))
    bad = [r for r in res["rows"] if abs(r["predicted_memory"] / r["peak_memory"] - 1) > 0.1]
    out.append("Peak memory predicted within 10% on every row: " + ("met." if not bad else "MISSED on " + ", ".join(
        f"{r['name']} (batch {r['batch_size']}: {r['predicted_memory'] / r['peak_memory']:.2f})" for r in bad) + "."))
    return out



def write_results(md: str, path: Path = RESULTS, block: str = "bench_training.py") -> None:
    "Put `md` in our block of RESULTS.md (under our section the first time); other scripts' rows stay."
    write_block(block, md, SECTION, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=16, help="batch of every variant")
    p.add_argument("--batch-sizes", type=int, nargs="*", default=[64],
                   help="more batches for ours-sdpa and the reference (default 64: llm.c's GPT-2-small setting)")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--small", action="store_true", help="tiny model on CPU: a smoke run")
    p.add_argument("--ablation", action="store_true", help="baseline and each fused part alone and together")
    p.add_argument("--tiny", action="store_true", help="with --ablation: a small model on the CPU, in seconds")
    p.add_argument("--variants", nargs="*", default=None, help="with --ablation: only these rows (names of ABLATION)")
    p.add_argument("--loss-chunk", type=int, default=LOSS_CHUNK, help="with --ablation: rows per chunk of the fused loss")
    p.add_argument("--json", type=str, default=None, help="also write the raw results here")
    p.add_argument("--from-json", type=str, nargs="+", default=None,
                   help="format results saved earlier instead of measuring (several files: their rows in order)")
    p.add_argument("--write-results", action="store_true", help="write the table into benchmarks/RESULTS.md")
    p.add_argument("--profile", nargs="+", default=None, metavar="VARIANT",
                   help="print where these ABLATION rows' compiled steps spend GPU time (torch.profiler; GPU only)")
    a = p.parse_args(argv)
    if a.profile:
        md = profile_ablation(a.profile, a.batch_size, a.seq_len)
        print(md)
        if a.write_results: write_results(md, block=PROFILE_BLOCK)
        return 0
    if a.from_json:
        parts = [json.loads(Path(f).read_text()) for f in a.from_json]
        res = {**parts[0], "rows": [r for part in parts for r in part["rows"]]}
    elif a.ablation: res = run_ablation(a.batch_size, a.seq_len, a.reps, tiny=a.tiny, batch_sizes=tuple(a.batch_sizes),
                                        variants=a.variants, loss_chunk=a.loss_chunk)
    else: res = run_all(a.batch_size, a.seq_len, a.reps, small=a.small, batch_sizes=tuple(a.batch_sizes))
    if a.json: Path(a.json).write_text(json.dumps(res, indent=1))
    ablation = "vs_baseline" in res["rows"][0]
    md = ablation_markdown(res) if ablation else to_markdown(res)
    print(md)
    if a.write_results: write_results(md, block=ABLATION_BLOCK if ablation else "bench_training.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
