"""Training throughput, MFU and peak memory of `cs336_nb.model.TransformerLM` against the same architecture built
from PyTorch's own modules (nn.Embedding, nn.Linear, nn.RMSNorm, F.scaled_dot_product_attention).

One training step = forward under bf16 autocast + cross-entropy + backward + global-norm clipping + AdamW step,
compiled with torch.compile, GPT-2-small shape (12 layers, d_model 768, 12 heads, SwiGLU d_ff 2048, tied
embeddings, vocabulary 50257 padded to 50304), context 1024.

    python benchmarks/bench_training.py                 # on a GPU: print the table
    python benchmarks/bench_training.py --write-results # ... and write it into benchmarks/RESULTS.md
    python benchmarks/bench_training.py --small         # a tiny CPU smoke run (what the tests run)

All variants run at batch 16; ours and the reference also at batch 64, llm.c's setting for this model.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path: sys.path.insert(0, str(ROOT))
if str(ROOT / "benchmarks") not in sys.path: sys.path.insert(0, str(ROOT / "benchmarks"))

from results import RESULTS, write_block  # noqa: E402  (benchmarks/results.py)
from cs336_nb import accounting  # noqa: E402
from cs336_nb.core import benchmark, describe_device, detect_accelerator, fmt_bytes, mfu  # noqa: E402
from cs336_nb.model import ModelConfig, TransformerLM  # noqa: E402
from cs336_nb.optim import AdamW  # noqa: E402
from cs336_nb.training import cross_entropy, gradient_clipping  # noqa: E402

SECTION = "## Training throughput and memory (Lectures 2–4)"


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
def measure(name: str, model: nn.Module, optimizer, cfg: ModelConfig, batch_size: int, seq_len: int, device, *,
            ours_loss: bool = True, compile: bool = True, reps: int = 20, warmup: int = 5) -> dict:
    amp = device.type == "cuda"
    params = list(model.parameters())
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randint(0, cfg.vocab_size, (batch_size, seq_len), device=device, generator=g)
    y = torch.randint(0, cfg.vocab_size, (batch_size, seq_len), device=device, generator=g)

    def loss_fn(x, y):  # model + loss compiled as one graph, for both implementations
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
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
        base = 0
        if device.type == "cuda":  # memory held before this variant (other objects in the process) is not its own
            torch.cuda.synchronize(); torch.cuda.empty_cache(); base = torch.cuda.memory_allocated()
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
        print(f"{v} (batch {bs}): {r['step_ms']:.1f} ms/step, {r['tokens_per_s']:.0f} tok/s, "
              f"compile+first step {r['compile_s']:.0f} s", flush=True)
        del model, opt
    for r in rows:
        ref = next((q for q in rows if q["name"] == "reference" and q["batch_size"] == r["batch_size"]), None)
        r["vs_reference"] = r["tokens_per_s"] / ref["tokens_per_s"] if ref else None
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




def write_results(md: str, path: Path = RESULTS) -> None:
    "Put `md` in our block of RESULTS.md (under our section the first time); other scripts' rows stay."
    write_block("bench_training.py", md, SECTION, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=16, help="batch of every variant")
    p.add_argument("--batch-sizes", type=int, nargs="*", default=[64],
                   help="more batches for ours-sdpa and the reference (default 64: llm.c's GPT-2-small setting)")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--small", action="store_true", help="tiny model on CPU: a smoke run")
    p.add_argument("--json", type=str, default=None, help="also write the raw results here")
    p.add_argument("--from-json", type=str, default=None, help="format results saved earlier instead of measuring")
    p.add_argument("--write-results", action="store_true", help="write the table into benchmarks/RESULTS.md")
    a = p.parse_args(argv)
    if a.from_json: res = json.loads(Path(a.from_json).read_text())
    else: res = run_all(a.batch_size, a.seq_len, a.reps, small=a.small, batch_sizes=tuple(a.batch_sizes))
    if a.json: Path(a.json).write_text(json.dumps(res, indent=1))
    md = to_markdown(res)
    print(md)
    if a.write_results: write_results(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
