"""Rollout throughput for RL (Lecture 12): our batched KV-cache `TransformerLM.generate` (eager, and compiled with
CUDA graphs) against Hugging Face `generate` on the same model (our weights exported with `to_hf`) and device.

Each variant samples `--new-tokens` tokens (temperature 1, no EOS, so every row generates the same number) for a
batch of `--batch` prompts of `--prompt-len` tokens: tokens/s = batch x new tokens / seconds (median of `--reps`).

    python benchmarks/bench_alignment.py                  # on a GPU: print the table
    python benchmarks/bench_alignment.py --write-results  # ... and write it into benchmarks/RESULTS.md
    python benchmarks/bench_alignment.py --small          # a tiny CPU smoke run

On an H200 the whole run takes about a minute (most of it compiling the CUDA-graph variant); each variant's wall
time, warm-up included, is printed.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path: sys.path.insert(0, str(ROOT))
if str(ROOT / "benchmarks") not in sys.path: sys.path.insert(0, str(ROOT / "benchmarks"))

from results import RESULTS, report, write_block  # noqa: E402  (benchmarks/results.py)
from cs336_nb.core import describe_device, get_device  # noqa: E402
from cs336_nb.model import TransformerLM, swiglu_hidden_dim  # noqa: E402

SECTION = "## Rollout generation for RL (Lecture 12)"


def _time(fn, device, reps: int) -> float:
    "Median seconds of fn() after one warm-up call."
    fn()
    ts = []
    for _ in range(reps):
        if device.type == "cuda": torch.cuda.synchronize()
        t = time.perf_counter(); fn()
        if device.type == "cuda": torch.cuda.synchronize()
        ts.append(time.perf_counter() - t)
    return sorted(ts)[len(ts) // 2]


def run_all(batch: int, prompt_len: int, new_tokens: int, reps: int, d_model: int, layers: int, small: bool = False) -> dict:
    device = torch.device("cpu") if small else get_device()
    torch.manual_seed(0)
    heads = max(1, d_model // 64)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    ours = TransformerLM(1024, prompt_len + new_tokens, d_model, layers, heads, swiglu_hidden_dim(d_model), 10000.0,
                         attn_backend="sdpa" if device.type == "cuda" else "naive").to(device=device, dtype=dtype).eval()
    prompts = torch.randint(0, 1024, (batch, prompt_len), device=device)
    rows, note = [], ""
    variants = [("ours (eager, KV cache)", lambda: ours.generate(prompts, new_tokens, temperature=1.0))]
    if device.type == "cuda":
        variants.append(("ours (compile=True, CUDA graphs)", lambda: ours.generate(prompts, new_tokens, temperature=1.0, compile=True)))
    try:
        hf = ours.to_hf().to(device=device, dtype=dtype).eval()
        note = "Hugging Face model: our weights exported with `TransformerLM.to_hf` (same architecture and weights)."
    except Exception as e:  # pragma: no cover - depends on Lecture 8a
        import transformers
        cfg = transformers.LlamaConfig(vocab_size=1024, hidden_size=d_model, intermediate_size=swiglu_hidden_dim(d_model),
                                       num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=prompt_len + new_tokens)
        hf = transformers.LlamaForCausalLM(cfg).to(device=device, dtype=dtype).eval()
        note = f"Hugging Face model: a random Llama of the same shape (to_hf failed: {type(e).__name__})."
    mask = torch.ones_like(prompts)
    variants.append(("Hugging Face generate", lambda: hf.generate(prompts, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0,
                                                                  max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0)))
    with torch.no_grad():
        for name, fn in variants:
            t0 = time.perf_counter()
            s = _time(fn, device, reps)
            rows.append(dict(variant=name, seconds=s, tokens_per_s=batch * new_tokens / s))
            print(f"{name}: {time.perf_counter() - t0:.1f} s wall (warm-up and {reps} timed runs)", file=sys.stderr)
    ref = rows[-1]["tokens_per_s"]
    for r in rows: r["vs_hf"] = r["tokens_per_s"] / ref
    return dict(device=describe_device(device), batch=batch, prompt_len=prompt_len, new_tokens=new_tokens, d_model=d_model,
                layers=layers, dtype=str(dtype).removeprefix("torch."), rows=rows, note=note)


def to_markdown(res: dict) -> str:
    head = (f"Device: {res['device']}. Model: d_model {res['d_model']}, {res['layers']} layers, vocabulary 1024, "
            f"{res['dtype']}. Batch {res['batch']} prompts of {res['prompt_len']} tokens, {res['new_tokens']} sampled tokens each "
            f"(temperature 1, no EOS). {res['note']}\n\n| variant | seconds | tokens/s | vs HF |\n|---|---|---|---|\n")
    return head + "\n".join(f"| {r['variant']} | {r['seconds']:.4f} | {r['tokens_per_s']:,.0f} | {r['vs_hf']:.2f}x |" for r in res["rows"]) + "\n"


def write_results(md: str, path: Path = RESULTS) -> None:
    "Put `md` in our block of RESULTS.md (under our section the first time); other scripts' rows stay."
    write_block("bench_alignment.py", md, SECTION, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--small", action="store_true", help="tiny model on CPU: a smoke run")
    p.add_argument("--json", type=str, default=None, help="also write the raw results here")
    p.add_argument("--write-results", action="store_true", help="write the table into benchmarks/RESULTS.md")
    a = p.parse_args(argv)
    if a.small: a.batch, a.prompt_len, a.new_tokens, a.d_model, a.layers, a.reps = 4, 8, 8, 64, 2, 2
    res = run_all(a.batch, a.prompt_len, a.new_tokens, a.reps, a.d_model, a.layers, small=a.small)
    report(res, to_markdown(res), json_path=a.json, write=write_results if a.write_results else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
