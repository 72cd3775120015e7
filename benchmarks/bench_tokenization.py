"""Benchmark Lecture 1's tokenizer against the libraries a user would otherwise pick, side by side in one run.

  python benchmarks/bench_tokenization.py                  # training, encoding, 200 MB streaming (this machine)
  python benchmarks/bench_tokenization.py --scaling        # pre-tokenization throughput vs worker count (>= 100 MB)
  python benchmarks/bench_tokenization.py --quick          # a small smoke run (tests, CI)

Training: `train_bpe` vs Hugging Face `tokenizers` BpeTrainer, same corpus, same vocabulary size, same special
token, same pre-tokenization (GPT-2's regex, byte-level). Each trainer runs in a fresh subprocess, which reports
its time (median of --reps runs) and its peak resident memory above the interpreter's baseline. Compression:
both train on the first 90% of the corpus and encode the last 10%.
Encoding: GPT-2's vocabulary (local files) on tiny Shakespeare, one thread, vs `tiktoken` and `tokenizers`.
Streaming: `encode_iterable` over a lazily generated 200 MB stream; resident memory is sampled as it goes.
Prints markdown tables (paste into benchmarks/RESULTS.md); `--json PATH` also writes the numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
EOT = "<|endoftext|>"
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def machine() -> str:
    from cs336_nb.core import cpu_name
    return f"{cpu_name()}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}"


def rss_bytes() -> int:
    "Current resident set size of this process."
    with open("/proc/self/statm") as f: return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class RSSSampler:
    "Context manager: the largest resident set size seen by a thread polling /proc every millisecond."
    def __enter__(self):
        import threading
        self.peak, self._stop = rss_bytes(), threading.Event()
        def poll():
            while not self._stop.wait(0.001): self.peak = max(self.peak, rss_bytes())
        self._t = threading.Thread(target=poll, daemon=True); self._t.start()
        return self
    def __exit__(self, *exc):
        self._stop.set(); self._t.join(); self.peak = max(self.peak, rss_bytes())


# ---------------------------------------------------------------- training (one subprocess per trainer)
def _child_train(which: str, path: str, vocab_size: int, reps: int, heldout_train: str, heldout_eval: str) -> dict:
    import regex  # noqa: F401  (imports before the memory baseline)
    from cs336_nb.tokenization import GPT2_PATTERN, Tokenizer, train_bpe
    from tokenizers import Regex, Tokenizer as HFTokenizer, models, pre_tokenizers, trainers

    def hf_train(p):
        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(GPT2_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        tr = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                 initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train([p], tr)
        return tok

    run = lambda: train_bpe(path, vocab_size, [EOT], progress=False) if which == "ours" else hf_train(path)
    base = rss_bytes()
    with RSSSampler() as sampler: run()           # first run: memory (a sampler thread polls RSS every ms)
    peak = sampler.peak - base
    times = []
    for _ in range(reps):                         # then the timed runs, without the sampler
        t0 = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - t0)
    size = len(out[0]) if which == "ours" else out.get_vocab_size()
    text = Path(heldout_eval).read_text(encoding="utf-8")
    if which == "ours":
        v, m = train_bpe(heldout_train, vocab_size, [EOT], progress=False)
        n = len(Tokenizer(v, m, [EOT]).encode(text))
    else:
        n = len(hf_train(heldout_train).encode(text).ids)
    return dict(times=times, median=statistics.median(times), peak_rss=peak, vocab=size,
                heldout_bytes_per_token=len(text.encode()) / n)


def run_child(func: str, *args) -> dict:
    code = (f"import sys, json; sys.path.insert(0, {str(ROOT)!r}); sys.argv=['x']; "
            f"import importlib.util as u; s=u.spec_from_file_location('b', {__file__!r}); m=u.module_from_spec(s); "
            f"s.loader.exec_module(m); print('@@' + json.dumps(m.{func}(*json.loads(sys.stdin.read()))))")
    r = subprocess.run([sys.executable, "-c", code], input=json.dumps(args), capture_output=True, text=True)
    if r.returncode: raise RuntimeError(r.stderr[-3000:])
    return json.loads(r.stdout.split("@@")[-1])


def bench_training(corpora, reps, tmp: Path) -> list[dict]:
    rows = []
    for name, path, vocab_size in corpora:
        text = Path(path).read_text(encoding="utf-8")
        cut = int(len(text) * 0.9)
        tr, ev = tmp / f"{name}.train.txt", tmp / f"{name}.eval.txt"
        tr.write_text(text[:cut], encoding="utf-8"); ev.write_text(text[cut:], encoding="utf-8")
        ours = run_child("_child_train", "ours", str(path), vocab_size, reps, str(tr), str(ev))
        theirs = run_child("_child_train", "hf", str(path), vocab_size, reps, str(tr), str(ev))
        rows.append(dict(corpus=name, bytes=Path(path).stat().st_size, vocab_size=vocab_size, ours=ours, hf=theirs))
        print(f"  train {name}@{vocab_size}: ours {ours['median']:.3f}s, tokenizers {theirs['median']:.3f}s", flush=True)
    return rows


# ---------------------------------------------------------------- encoding throughput
def bench_encoding(path: str, reps: int) -> dict:
    import tiktoken
    from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers
    from cs336_nb.corpora import corpus_path
    from cs336_nb.tokenization import GPT2_PATTERN, gpt2_tokenizer

    text = Path(path).read_text(encoding="utf-8")
    nbytes = len(text.encode())
    t0 = time.perf_counter(); ours = gpt2_tokenizer(); t_load = time.perf_counter() - t0
    t0 = time.perf_counter(); ids = ours.encode(text); cold = time.perf_counter() - t0
    ranks = {b: i for i, b in ours.vocab.items() if i != 50256}
    tk = tiktoken.Encoding(name="gpt2-local", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={EOT: 50256})
    hf = HFTokenizer(models.BPE.from_file(str(corpus_path("gpt2_vocab")), str(corpus_path("gpt2_merges"))))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)   # GPT-2's regex inside
    hf.decoder = decoders.ByteLevel()
    assert tk.encode(text, allowed_special="all") == ids and hf.encode(text).ids == ids, "ids differ"

    def timed(fn):
        fn()
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter(); fn(); ts.append(time.perf_counter() - t0)
        return statistics.median(ts)
    res = dict(bytes=nbytes, tokens=len(ids), load_s=t_load, ours_cold_s=cold,
               ours_s=timed(lambda: ours.encode(text)),
               tiktoken_s=timed(lambda: tk.encode(text, allowed_special="all")),
               hf_s=timed(lambda: hf.encode(text)))
    for k in ("ours_cold", "ours", "tiktoken", "hf"): res[k + "_mbps"] = nbytes / res[k + "_s"] / 1e6
    return res


# ---------------------------------------------------------------- streaming memory
def bench_stream(path: str, total_mb: int) -> dict:
    from cs336_nb.tokenization import gpt2_tokenizer
    lines = Path(path).read_text(encoding="utf-8").splitlines(keepends=True)
    tok = gpt2_tokenizer()
    target = total_mb * 10**6

    def stream():   # lazily repeats the corpus, a document separator between copies
        sent = 0
        while sent < target:
            for line in lines:
                yield line; sent += len(line)
            yield EOT + "\n"; sent += len(EOT) + 1
    samples, n_ids, warm = [], 0, None
    t0 = time.perf_counter()
    start = rss_bytes()
    for n_ids, _ in enumerate(tok.encode_iterable(stream()), 1):
        if n_ids % 1_000_000 == 0:
            samples.append(rss_bytes())
            if warm is None and len(samples) == 3: warm = samples[-1]
    dt = time.perf_counter() - t0
    samples.append(rss_bytes())
    return dict(stream_mb=total_mb, ids=n_ids, seconds=dt, mbps=target / dt / 1e6, rss_start=start,
                rss_max=max(samples), rss_end=samples[-1], rss_after_warmup=warm or samples[0],
                growth_after_warmup=max(samples) - (warm or samples[0]))


# ---------------------------------------------------------------- scaling with processes
def bench_scaling(corpus_mb: int, workers: list[int], tmp: Path, vocab_size: int = 10_000) -> dict:
    from cs336_nb.corpora import corpus_path
    from cs336_nb.tokenization import _merge_loop, pretokenize_counts
    piece = (corpus_path("tinyshakespeare").read_text(encoding="utf-8") + "\n" + EOT + "\n"
             + corpus_path("tinystories_sample").read_text(encoding="utf-8") + "\n" + EOT + "\n")
    p = tmp / "big.txt"
    reps = -(-corpus_mb * 10**6 // len(piece.encode()))
    with open(p, "w", encoding="utf-8") as f:
        for _ in range(reps): f.write(piece)
    size = p.stat().st_size
    rows, ref = [], None
    for w in workers:
        t0 = time.perf_counter()
        counts = pretokenize_counts(p, [EOT], num_workers=w)
        dt = time.perf_counter() - t0
        if ref is None: ref = counts
        assert counts == ref, f"counts differ with {w} workers"
        rows.append(dict(workers=w, seconds=dt, mbps=size / dt / 1e6))
        print(f"  pretokenize {size / 1e6:.0f} MB with {w:2d} workers: {dt:.2f}s ({size / dt / 1e6:.1f} MB/s)", flush=True)
    for r in rows: r["speedup"] = rows[0]["seconds"] / r["seconds"]
    vocab = {i: bytes([i]) for i in range(256)}; vocab[256] = EOT.encode()
    t0 = time.perf_counter(); _merge_loop(ref, vocab, vocab_size, False); t_merge = time.perf_counter() - t0
    best = max(rows, key=lambda r: r["mbps"])
    ts_bytes = 2_227_753_162   # TinyStoriesV2-GPT4-train.txt
    return dict(corpus_bytes=size, distinct_pretokens=len(ref), rows=rows, merge_seconds=t_merge,
                vocab_size=vocab_size, best_workers=best["workers"],
                projected_pretok_s=ts_bytes / (best["mbps"] * 1e6), tinystories_bytes=ts_bytes)


# ---------------------------------------------------------------- tables
def md_tables(res: dict) -> str:
    out = [f"Machine: {res['machine']}. Command: `{res['command']}`.", ""]
    if "training" in res:
        out += ["**Training** (`train_bpe` vs `tokenizers` BpeTrainer, same GPT-2 pre-tokenization, special token "
                "`<|endoftext|>`; median of runs; peak RSS of the first run above the RSS before it; held-out = train on the first 90%, "
                "encode the last 10%)", "",
                "| corpus | vocab | ours (s) | tokenizers (s) | time ours/theirs | peak RSS ours | peak RSS theirs "
                "| held-out bytes/token ours | theirs |", "|---|---|---|---|---|---|---|---|---|"]
        for r in res["training"]:
            o, h = r["ours"], r["hf"]
            out.append(f"| {r['corpus']} ({r['bytes'] / 1e6:.2f} MB) | {r['vocab_size']:,} | {o['median']:.3f} | "
                       f"{h['median']:.3f} | {o['median'] / h['median']:.2f}x | {o['peak_rss'] / 2**20:.0f} MiB | "
                       f"{h['peak_rss'] / 2**20:.0f} MiB | {o['heldout_bytes_per_token']:.3f} | {h['heldout_bytes_per_token']:.3f} |")
        out.append("")
    if "encoding" in res:
        e = res["encoding"]
        out += [f"**Encoding** with GPT-2's vocabulary, tiny Shakespeare ({e['bytes'] / 1e6:.2f} MB, {e['tokens']:,} "
                "tokens, identical ids from all three), one thread, median", "",
                "| encoder | MB/s | ours / it |", "|---|---|---|",
                f"| ours, warm cache | {e['ours_mbps']:.2f} | 1 |",
                f"| ours, first call (cold cache) | {e['ours_cold_mbps']:.2f} | |",
                f"| tiktoken | {e['tiktoken_mbps']:.2f} | {e['ours_mbps'] / e['tiktoken_mbps']:.2f} |",
                f"| tokenizers (one `encode` call on the whole text) | {e['hf_mbps']:.2f} | {e['ours_mbps'] / e['hf_mbps']:.2f} |", ""]
    if "stream" in res:
        s = res["stream"]
        out += [f"**Streaming**: `encode_iterable` over a lazily generated {s['stream_mb']} MB stream (GPT-2 vocab): "
                f"{s['ids']:,} ids in {s['seconds']:.1f} s ({s['mbps']:.2f} MB/s); resident memory "
                f"{s['rss_start'] / 2**20:.0f} MiB at the start, {s['rss_after_warmup'] / 2**20:.0f} MiB after 3M ids, "
                f"{s['rss_max'] / 2**20:.0f} MiB at most: growth after warm-up "
                f"{s['growth_after_warmup'] / 2**20:.1f} MiB (flat).", ""]
    if "scaling" in res:
        s = res["scaling"]
        out += [f"**Scaling** of pre-tokenization (`pretokenize_counts`) with worker processes, "
                f"{s['corpus_bytes'] / 1e6:.0f} MB corpus (tiny Shakespeare + TinyStories sample, repeated), "
                f"{s.get('machine', res['machine'])}", "",
                "| workers | seconds | MB/s | speedup |", "|---|---|---|---|"]
        for r in s["rows"]:
            out.append(f"| {r['workers']} | {r['seconds']:.2f} | {r['mbps']:.1f} | {r['speedup']:.2f}x |")
        out += ["", f"Merging to {s['vocab_size']:,} tokens over its {s['distinct_pretokens']:,} distinct pre-tokens: "
                f"{s['merge_seconds']:.2f} s. Projection for TinyStories-train ({s['tinystories_bytes'] / 1e9:.2f} GB) "
                f"at 10K: pre-tokenization {s['projected_pretok_s']:.0f} s with {s['best_workers']} workers, plus the "
                f"merge loop (about {s['merge_seconds']:.1f} s per {s['distinct_pretokens']:,} distinct pre-tokens; it "
                f"grows with the distinct pre-tokens, not the bytes).", ""]
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small smoke run")
    ap.add_argument("--scaling", action="store_true", help="only the worker-scaling measurement")
    ap.add_argument("--scaling-mb", type=int, default=100)
    ap.add_argument("--workers", default="1,2,4,8,16")
    ap.add_argument("--stream-mb", type=int, default=200)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    a = ap.parse_args(argv)
    from cs336_nb.corpora import corpus_path
    res = dict(machine=machine(), command="python benchmarks/bench_tokenization.py " + " ".join(argv or sys.argv[1:]))
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if a.scaling or a.quick:
            workers = [int(x) for x in a.workers.split(",")] if not a.quick else [1, 2]
            res["scaling"] = bench_scaling(a.scaling_mb if not a.quick else 2, workers, tmp,
                                           vocab_size=10_000 if not a.quick else 300)
        if not a.scaling:
            corpora = [("corpus.en", corpus_path("corpus_en"), 500)]
            if not a.quick: corpora.append(("tinyshakespeare", corpus_path("tinyshakespeare"), 10_000))
            res["training"] = bench_training(corpora, 1 if a.quick else a.reps, tmp)
            res["encoding"] = bench_encoding(str(corpus_path("tinyshakespeare")), 1 if a.quick else a.reps)
            res["stream"] = bench_stream(str(corpus_path("tinyshakespeare")), 2 if a.quick else a.stream_mb)
    table = md_tables(res)
    print(table)
    if a.json: a.json.write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
