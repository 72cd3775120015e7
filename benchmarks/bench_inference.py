"""Decoding speed of `cs336_nb.model.TransformerLM.generate` (Lectures 3 and 8) against Hugging Face `transformers`
`generate`, on the same Llama-style architecture and the same (random) weights, side by side in one run.

- Batch-1 greedy decode tokens/s: ours with `compile=True` (static KV cache, decode step compiled with
  torch.compile "reduce-overhead", i.e. CUDA graphs) against HF `generate(cache_implementation="static")`, which
  compiles its forward the same way (auto-compile on CUDA in recent versions; compiled by hand otherwise).
  Targets: ours >= 1.2x HF, and >= 70% of the bandwidth limit = measured copy bandwidth / bytes one decode step must
  read (weights + the tokens' cached K/V, `cs336_nb.inference.decode_bytes_per_step`).
- Ours at batch 1..256: decode tokens/s and ms/step against the same bandwidth limit (the roofline of decoding).
- Prefill tokens/s (ours, eager SDPA).
- The GPT-2-small shape too (ours, batch 1, compiled, against its bandwidth limit).
- Weight-only int8 and int4 (Lecture 8b, `quantize_int8` / `quantize_int4`, the tied LM head quantized too): batch-1
  decode tokens/s of ours compiled, speed vs bf16, and against the bandwidth limit of the quantized bytes read per step;
  per backend: int8 through our Triton GEMV (a custom operator) or "dequant" (cast and matmul, which inductor turns
  into one reduction over the int8 weights, gpt-fast's recipe), int4 through our Triton GEMV or torch's int4 kernel.

    python benchmarks/bench_inference.py                  # on a GPU: print the tables (a few minutes on an H200)
    python benchmarks/bench_inference.py --write-results  # ... and write them into benchmarks/RESULTS.md
    python benchmarks/bench_inference.py --small          # a tiny CPU smoke run (eager, no compile)
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path: sys.path.insert(0, str(ROOT))
if str(ROOT / "benchmarks") not in sys.path: sys.path.insert(0, str(ROOT / "benchmarks"))

from results import RESULTS, report, write_block  # noqa: E402  (benchmarks/results.py)
from cs336_nb.core import describe_device, fmt_bytes  # noqa: E402
from cs336_nb.inference import decode_bytes_per_step  # noqa: E402
from cs336_nb.kernels import measure_copy_bandwidth  # noqa: E402
from cs336_nb.accounting import kv_cache_bytes_per_token  # noqa: E402
from cs336_nb.model import ModelConfig, TransformerLM, set_attention_backend  # noqa: E402
from cs336_nb.quantization import model_bytes, quantize_int4, quantize_int8  # noqa: E402

SECTION = "## Inference (Lecture 8)"


def llama_config(small: bool, context: int):
    "A Llama-3.2-1B-like transformers LlamaConfig (no RoPE scaling), or a tiny one."
    from transformers import LlamaConfig
    if small:
        return LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, max_position_embeddings=context, tie_word_embeddings=True, rope_theta=500000.0)
    return LlamaConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                       num_key_value_heads=8, head_dim=64, max_position_embeddings=context, tie_word_embeddings=True,
                       rope_theta=500000.0, rms_norm_eps=1e-5)


def sync(dev: torch.device) -> None:
    if dev.type == "cuda": torch.cuda.synchronize(dev)


class _Clock:
    "A transformers streamer that timestamps every generated token (HF syncs every step anyway, for its stopping checks)."
    def __init__(self, dev): self.dev, self.times = dev, []
    def put(self, value): sync(self.dev); self.times.append(time.perf_counter())
    def end(self): pass


def hf_decode(hf, ids: torch.Tensor, new: int, reps: int) -> float:
    "HF greedy decode tokens/s (batch 1) with a static cache, after warm-up; the first put is the prompt, the second the first token."
    dev = ids.device
    kw = dict(max_new_tokens=new, do_sample=False, cache_implementation="static", pad_token_id=0)
    best = 0.0
    for i in range(reps + 1):  # a warm-up run: compilation and CUDA-graph recording happen in its first steps
        clock = _Clock(dev)
        out = hf.generate(ids, streamer=clock, **kw)
        assert out.shape[1] == ids.shape[1] + new, "HF generate stopped early"
        if i >= 1: best = max(best, (len(clock.times) - 2) / (clock.times[-1] - clock.times[1]))
    return best


def ours_decode(model: TransformerLM, ids: torch.Tensor, new: int, reps: int, compile: bool) -> tuple[float, torch.Tensor]:
    "Our greedy decode tokens/s (all rows) after the first token, and the tokens of the last run."
    dev, best = ids.device, 0.0
    for i in range(reps + 1):
        sync(dev)
        it = model.generate_stream(ids, new, temperature=0, compile=compile)
        toks = [next(it)]
        sync(dev); t1 = time.perf_counter()
        toks += list(it)
        sync(dev); t2 = time.perf_counter()
        if i >= 1: best = max(best, ids.shape[0] * (new - 1) / (t2 - t1))
    return best, torch.stack(toks, 1)


def bound_tokens_per_s(cfg: ModelConfig, batch: int, seq_len: int, bw: float, dtype) -> float:
    return batch * bw / decode_bytes_per_step(cfg, batch, seq_len, dtype)


def quantized_decode(ours: TransformerLM, ids: torch.Tensor, new: int, reps: int, compile: bool, bw: float, dtype) -> list[dict]:
    "Batch-1 decode of int8 / int4 copies of `ours` (every Linear, the tied head too): tokens/s and the limit of their bytes."
    seq, rows = ids.shape[1] + new // 2, []
    emb = ours.token_embeddings.weight
    G = 128 if ours.config.d_model % 128 == 0 and ours.config.d_ff % 128 == 0 else 32  # --small: d_model 64
    int4 = lambda m, **kw: quantize_int4(m, G, **kw)
    variants = [("int8", "triton", quantize_int8), ("int8", "dequant", quantize_int8),  # our GEMV kernel; inductor's reduction on int8
                (f"int4 g{G}", "triton", int4), (f"int4 g{G}", "torch", int4)]
    if ids.device.type != "cuda": variants = [v for v in variants if v[1] != "triton"]  # no Triton kernels without a GPU (or its interpreter)
    for name, backend, quantize in variants:
        q = quantize(copy.deepcopy(ours), lm_head=True, backend=backend).eval()
        nbytes = model_bytes(q) - emb.numel() * emb.element_size() + seq * kv_cache_bytes_per_token(q.config, dtype)  # a looked-up row only
        tps, toks = ours_decode(q, ids, new, reps, compile)
        eager = q.generate(ids, 16, temperature=0)[0, ids.shape[1]:]  # the compiled quantized step against its eager self
        rows.append(dict(weights=name, backend=backend, tokens_per_s=tps, bytes_per_step=nbytes, bound_tokens_per_s=bw / nbytes,
                         compiled_equals_eager_first_16=toks[0, :16].tolist() == eager.tolist()))
        del q
    torch._dynamo.reset()  # their compiled steps out of Dynamo's cache: the batch sweep after recompiles within its limit
    return rows


PARTS = ("main", "quantized", "sweep")  # ours vs HF at batch 1; quantized weights; batch sweep, prefill and GPT-2 small


def run_all(small: bool, prompt: int, new: int, reps: int, batches: tuple[int, ...], parts: tuple[str, ...] = PARTS) -> dict:
    dev = torch.device("cpu" if small or not torch.cuda.is_available() else "cuda")
    dtype = torch.float32 if dev.type == "cpu" else torch.bfloat16
    compile = dev.type == "cuda"
    set_attention_backend("sdpa")
    torch.manual_seed(0)
    from transformers import LlamaForCausalLM
    ctx = prompt + new
    with torch.device(dev): hf = LlamaForCausalLM(llama_config(small, ctx)).to(dtype).eval()
    hf.generation_config.eos_token_id = None  # random weights: always run max_new_tokens
    try: from transformers.generation import CompileConfig  # noqa: F401  recent versions compile a static-cache generate themselves
    except ImportError:
        if compile: hf.forward = torch.compile(hf.forward, mode="reduce-overhead", fullgraph=True)  # the older documented recipe
    ours = TransformerLM.from_hf(hf, context_length=ctx, device=dev).eval()
    cfg = ours.config
    bw = measure_copy_bandwidth(2**30 if dev.type == "cuda" else 2**26, dev)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (1, prompt), generator=g).to(dev)
    res = dict(device=describe_device(dev), dtype=str(dtype).removeprefix("torch."), compile=compile, prompt=prompt, new=new,
               params=ours.num_params(), copy_bandwidth=bw, config=dict(d_model=cfg.d_model, layers=cfg.num_layers, heads=cfg.num_heads,
               kv_heads=cfg.kv_heads, d_ff=cfg.d_ff, vocab=cfg.vocab_size))
    if "main" in parts:
        t0 = time.perf_counter()
        ours_tps, ours_toks = ours_decode(ours, ids, new, reps, compile)
        res["ours_compile_s"] = time.perf_counter() - t0
        with torch.no_grad(): ref = hf.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)[0, prompt:]
        res["same_greedy_tokens_first_8"] = ours_toks[0, :8].tolist() == ref.tolist()
        eager = ours.generate(ids, 16, temperature=0)[0, prompt:]  # the compiled step against our eager one
        res["compiled_equals_eager_first_16"] = ours_toks[0, :16].tolist() == eager.tolist()
        t0 = time.perf_counter()
        res["hf_tokens_per_s"] = hf_decode(hf, ids, new, reps)
        res["hf_s"] = time.perf_counter() - t0
        res["ours_tokens_per_s"] = ours_tps
        res["bound_tokens_per_s"] = bound_tokens_per_s(cfg, 1, prompt + new // 2, bw, dtype)
    del hf
    if "quantized" in parts: res["quantized"] = quantized_decode(ours, ids, new, reps, compile, bw, dtype)
    if "sweep" not in parts: return res
    res["sweep"] = []
    for b in batches:
        ib = torch.randint(0, cfg.vocab_size, (b, prompt), generator=g).to(dev)
        tps, _ = ours_decode(ours, ib, new // 2, 1, compile)
        res["sweep"].append(dict(batch=b, tokens_per_s=tps, ms_per_step=b / tps * 1e3,
                                 bound_tokens_per_s=bound_tokens_per_s(cfg, b, prompt + new // 4, bw, dtype)))
    pb = 4 if small else 16
    ip = torch.randint(0, cfg.vocab_size, (pb, ctx), generator=g).to(dev)
    with torch.no_grad():
        for i in range(3):
            sync(dev); t0 = time.perf_counter(); ours(ip); sync(dev); t = time.perf_counter() - t0
    res["prefill"] = dict(batch=pb, seq=ctx, tokens_per_s=pb * ctx / t, flops_per_s=2 * ours.num_params() * pb * ctx / t)
    del ours
    if dev.type == "cuda": torch.cuda.empty_cache()
    g2c = ModelConfig.gpt2_small(context_length=ctx, attn_backend="sdpa") if not small else ModelConfig.tiny(context_length=ctx)
    g2 = TransformerLM.from_config(g2c, device=dev, dtype=dtype).eval()
    ig = torch.randint(0, g2c.vocab_size, (1, prompt), generator=g).to(dev)
    tps, _ = ours_decode(g2, ig, new, reps, compile)
    res["gpt2"] = dict(params=g2.num_params(), tokens_per_s=tps, bound_tokens_per_s=bound_tokens_per_s(g2c, 1, prompt + new // 2, bw, dtype))
    return res


def to_markdown(r: dict) -> str:
    ok = lambda c: "met" if c else "**missed**"
    c = r["config"]
    head = (f"Machine: {r['device']}. Llama-style model, random weights: d_model {c['d_model']}, {c['layers']} layers, {c['heads']} heads "
            f"({c['kv_heads']} KV heads), d_ff {c['d_ff']}, vocab {c['vocab']}, tied embeddings ({r['params'] / 1e9:.2f} B parameters), "
            f"{r['dtype']}; prompt {r['prompt']} tokens, {r['new']} new tokens, greedy. Measured copy bandwidth "
            f"{r['copy_bandwidth'] / 1e12:.2f} TB/s. Command: `python benchmarks/bench_inference.py --write-results`.\n\n")
    vs_hf, of_bound = r["ours_tokens_per_s"] / r["hf_tokens_per_s"], r["ours_tokens_per_s"] / r["bound_tokens_per_s"]
    lines = ["| batch-1 decode | tokens/s | ms/token | vs HF | of bandwidth limit |", "|---|---:|---:|---:|---:|",
             f"| ours, `generate(compile={r['compile']})`{' (static cache, CUDA graphs)' if r['compile'] else ' (eager)'} | {r['ours_tokens_per_s']:,.0f} | {1e3 / r['ours_tokens_per_s']:.3f} | {vs_hf:.2f}x | {of_bound:.0%} |",
             f"| Hugging Face `generate`, static cache{', compiled' if r['compile'] else ''} | {r['hf_tokens_per_s']:,.0f} | {1e3 / r['hf_tokens_per_s']:.3f} | 1.00x | {r['hf_tokens_per_s'] / r['bound_tokens_per_s']:.0%} |",
             f"| bandwidth limit (weights + K/V read per step / copy bandwidth) | {r['bound_tokens_per_s']:,.0f} | {1e3 / r['bound_tokens_per_s']:.3f} | | 100% |",
             f"| GPT-2-small shape ({r['gpt2']['params'] / 1e6:.0f} M), ours compiled | {r['gpt2']['tokens_per_s']:,.0f} | {1e3 / r['gpt2']['tokens_per_s']:.3f} | | {r['gpt2']['tokens_per_s'] / r['gpt2']['bound_tokens_per_s']:.0%} |"]
    sweep = ["", "| batch | decode tokens/s | ms/step | bandwidth limit tokens/s | of limit |", "|---:|---:|---:|---:|---:|"]
    sweep += [f"| {s['batch']} | {s['tokens_per_s']:,.0f} | {s['ms_per_step']:.3f} | {s['bound_tokens_per_s']:,.0f} | {s['tokens_per_s'] / s['bound_tokens_per_s']:.0%} |" for s in r["sweep"]]
    quant = ["", f"| batch-1 decode, ours `generate(compile={r['compile']})` | tokens/s | ms/token | vs {r['dtype']} | bytes read per step | of bandwidth limit |",
             "|---|---:|---:|---:|---:|---:|",
             f"| {r['dtype']} weights | {r['ours_tokens_per_s']:,.0f} | {1e3 / r['ours_tokens_per_s']:.3f} | 1.00x | {fmt_bytes(r['copy_bandwidth'] / r['bound_tokens_per_s'])} | {of_bound:.0%} |"]
    quant += [f"| {q['weights']} weights (`quantize_{q['weights'][:4]}(backend={q.get('backend', 'auto')!r})`, LM head too) | {q['tokens_per_s']:,.0f} | {1e3 / q['tokens_per_s']:.3f} | "
              f"{q['tokens_per_s'] / r['ours_tokens_per_s']:.2f}x | {fmt_bytes(q['bytes_per_step'])} | {q['tokens_per_s'] / q['bound_tokens_per_s']:.0%} |" for q in r["quantized"]]
    p = r["prefill"]
    notes = [f"\nPrefill (ours, eager SDPA, batch {p['batch']} x {p['seq']} tokens): {p['tokens_per_s']:,.0f} tokens/s, "
             f"{p['flops_per_s'] / 1e12:.0f} TFLOP/s (2 N FLOPs per token). Greedy tokens of ours and HF agree on the first 8: "
             f"{r['same_greedy_tokens_first_8']}; ours compiled and eager agree on the first 16: {r['compiled_equals_eager_first_16']} (bf16 random weights can flip near-ties). Compile + warm-up of ours {r['ours_compile_s']:.0f} s, HF {r['hf_s']:.0f} s.",
             "Quantized, compiled and eager agree on the first 16: " + ", ".join(f"{q['weights']} {q.get('backend', 'auto')} {q['compiled_equals_eager_first_16']}" for q in r["quantized"]) + ".",
             f"Targets: ours >= 1.2x HF at batch 1: {vs_hf:.2f}x, {ok(vs_hf >= 1.2)}; >= 70% of the bandwidth limit: {of_bound:.0%}, {ok(of_bound >= 0.7)}."]
    return head + "\n".join(lines + sweep + quant) + "\n" + "\n".join(notes) + "\n"


def write_results(md: str, path: Path = RESULTS) -> None:
    "Put `md` in our block of RESULTS.md (under our section the first time); other scripts' rows stay."
    write_block("bench_inference.py", md, SECTION, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompt", type=int, default=64, help="prompt tokens")
    p.add_argument("--new", type=int, default=256, help="new tokens per batch-1 run")
    p.add_argument("--reps", type=int, default=3, help="timed runs after a warm-up run (the best is reported)")
    p.add_argument("--batches", type=int, nargs="*", default=[1, 4, 16, 64, 256])
    p.add_argument("--small", action="store_true", help="tiny model on CPU, eager: a smoke run")
    p.add_argument("--json", type=str, default=None, help="also write the raw results here")
    p.add_argument("--parts", nargs="*", choices=PARTS, default=list(PARTS), help="what to measure (one device call each, if need be)")
    p.add_argument("--from-json", type=str, nargs="*", default=None, help="format results saved earlier (several: merged) instead of measuring")
    p.add_argument("--write-results", action="store_true", help="write the tables into benchmarks/RESULTS.md")
    a = p.parse_args(argv)
    if a.small: a.prompt, a.new, a.reps, a.batches = 8, 16, 1, [1, 4]
    if a.from_json: res = {k: v for f in a.from_json for k, v in json.loads(Path(f).read_text()).items()}
    else: res = run_all(a.small, a.prompt, a.new, a.reps, tuple(a.batches), tuple(a.parts))
    if missing := [k for k in ("ours_tokens_per_s", "quantized", "sweep") if k not in res]:
        if a.json: Path(a.json).write_text(json.dumps(res, indent=1))
        print(f"measured {sorted(set(res) - {'config'})}; the tables need {missing} too: merge with --from-json A.json B.json")
        return 0
    report(res, to_markdown(res), json_path=a.json, write=write_results if a.write_results else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
