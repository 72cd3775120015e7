"""Lecture 11 measurements, side by side in one run (markdown on stdout):

1. MinHash signatures + LSH candidates: ours (vectorized NumPy) vs datasketch (MinHash + MinHashLSH), the same
   permutations (datasketch's `legacy` scheme, bit-identical signatures) and the same bands, on a synthetic
   near-duplicate corpus with known duplicates: time and precision/recall against the ground truth.
2. The quality classifier: ours (PyTorch) vs fastText (`fasttext-numpy2`): training and prediction time, accuracy on
   the test split and on the held-out pages (needs $CS336_DATA).
3. Pipeline throughput (MB/s of uncompressed WARC input through the default stages) with 1, 2, 4, ... workers
   (weak scaling: 4 shards per worker), and the projected machine-hours for one Common Crawl dump.

    python benchmarks/bench_data.py --small                 # smoke run
    python benchmarks/bench_data.py --write-results         # all three, into benchmarks/RESULTS.md
    python benchmarks/bench_data.py --only pipeline --workers 1 2 4 8 16 --write-results   # the 16-core host
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")       # one thread per pipeline worker (children inherit it)
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "benchmarks") not in sys.path: sys.path.insert(0, str(ROOT / "benchmarks"))
from results import RESULTS, write_block  # noqa: E402  (benchmarks/results.py)

SECTION = "## Lecture 11: data (`benchmarks/bench_data.py`)"
sys.path.insert(0, str(ROOT))

from cs336_nb.core import cpu_name
from cs336_nb.data import (affine_permutations, fast_minhash_signatures, jaccard, lsh_candidates,
                           lsh_collision_probability, minhash_permutations, minhash_signatures, near_duplicate_corpus,
                           ngram_hashes, ngrams_of_words, normalize_text, page_to_html, run_pipeline, shingle_hashes,
                           write_warc)

#: Size of one Common Crawl dump, uncompressed WARC content: CC-MAIN-2024-51 (December 2024), "2.64 billion web pages
#: (or 394 TiB of uncompressed content)", Common Crawl's announcement at
#: https://blog.commoncrawl.org/blog/december-2024-crawl-archive-now-available (other 2024 dumps: May, CC-MAIN-2024-22,
#: 377 TiB, https://www.commoncrawl.org/blog/may-2024-crawl-archive-now-available).
DUMP_TIB = 394.0
DUMP_SOURCE = ("uncompressed content of CC-MAIN-2024-51, December 2024, 2.64 billion pages, from Common Crawl's announcement "
               "https://blog.commoncrawl.org/blog/december-2024-crawl-archive-now-available; pass another dump's size to "
               "`--dump-tib`")


# ---------------------------------------------------------------- 1. MinHash + LSH
def _stages(times: list[tuple[str, float]]) -> dict[str, float]:
    "Seconds per stage from (stage, perf_counter at its end) marks; the first mark is the start."
    return {name: t - times[i][1] for i, (name, t) in enumerate(times[1:])}


def _ours(words: list[list[str]], num_hashes: int, num_bands: int, ngrams: int, fast: bool, seed: int = 0):
    "Our signatures + LSH candidates, timed by stage: the fast path or the datasketch-identical reference."
    t = [("start", time.perf_counter())]
    if fast:
        hashes, counts = ngram_hashes(words, ngrams, seed)
        t.append(("shingle hashes (mmh3 per word, vectorized n-grams)", time.perf_counter()))
        sig = fast_minhash_signatures(hashes, counts, affine_permutations(num_hashes, seed))
        t.append(("signatures (uint32 affine, (K, shingles) chunks)", time.perf_counter()))
    else:
        shingles = [ngrams_of_words(w, ngrams) for w in words]
        t.append(("shingle strings", time.perf_counter()))
        hashes = [shingle_hashes(s, seed) for s in shingles]
        t.append(("mmh3 per shingle", time.perf_counter()))
        sig = minhash_signatures(hashes, minhash_permutations(num_hashes, seed))
        t.append(("signatures (uint64 Mersenne, datasketch legacy)", time.perf_counter()))
    cand = lsh_candidates(sig, num_bands, seed)
    t.append(("LSH candidates", time.perf_counter()))
    return cand, sig, _stages(t)


def _datasketch(words: list[list[str]], num_hashes: int, num_bands: int, ngrams: int, threshold: float,
                scheme: str, perms=None):
    "datasketch MinHash + MinHashLSH on the same word lists, timed by stage (its own Python loop per document)."
    import datasketch
    import mmh3
    hf = lambda b: mmh3.hash(b, 0, signed=False)
    t = [("start", time.perf_counter())]
    shingles = [[x.encode() for x in ngrams_of_words(w, ngrams)] for w in words]
    t.append(("shingle strings (bytes)", time.perf_counter()))
    mhs = []
    for s in shingles:
        m = datasketch.MinHash(num_perm=num_hashes, hashfunc=hf, permutations=perms, scheme=scheme)
        m.update_batch(s)
        mhs.append(m)
    t.append((f"MinHash.update_batch (mmh3 per shingle, {scheme} permutations)", time.perf_counter()))
    lsh = datasketch.MinHashLSH(threshold=threshold, num_perm=num_hashes, params=(num_bands, num_hashes // num_bands))
    for i, m in enumerate(mhs): lsh.insert(i, m)
    cand = {(min(i, j), max(i, j)) for i, m in enumerate(mhs) for j in lsh.query(m) if j != i}
    t.append(("MinHashLSH insert + query", time.perf_counter()))
    return cand, np.stack([m.hashvalues for m in mhs]), _stages(t)


def bench_minhash(families: int, variants: int, words: int, num_hashes: int, num_bands: int, ngrams: int,
                  threshold: float, seed: int = 0, repeats: int = 3) -> dict:
    docs, family = near_duplicate_corpus(families, variants, words, edit=0.01, seed=seed)
    t0 = time.perf_counter()
    doc_words = [normalize_text(d).split() for d in docs]          # shared by every implementation, timed apart
    t_normalize = time.perf_counter() - t0
    sh = [ngrams_of_words(w, ngrams) for w in doc_words]
    # ground truth: pairs of one family with true Jaccard >= threshold (random documents of different families
    # share no 5-gram of a 20,000-word vocabulary, checked on a sample below)
    size = variants + 1
    truth = {(i, j) for i in range(len(docs)) for j in range(i + 1, (i // size + 1) * size)
             if jaccard(sh[i], sh[j]) >= threshold}
    rng = random.Random(1)
    cross = [(rng.randrange(len(docs)), rng.randrange(len(docs))) for _ in range(2000)]
    assert all(jaccard(sh[i], sh[j]) < threshold for i, j in cross if family[i] != family[j])

    def pr(c):
        verified = {p for p in c if jaccard(sh[p[0]], sh[p[1]]) >= threshold}
        return dict(candidates=len(c), precision=len(c & truth) / max(len(c), 1), recall=len(c & truth) / max(len(truth), 1),
                    verified_precision=len(verified & truth) / max(len(verified), 1),
                    verified_recall=len(verified & truth) / max(len(truth), 1))
    impls, sigs = {}, {}
    runs = [("ours, fast", lambda: _ours(doc_words, num_hashes, num_bands, ngrams, True, seed)),
                      ("ours, reference", lambda: _ours(doc_words, num_hashes, num_bands, ngrams, False, seed)),
                      ("datasketch legacy", lambda: _datasketch(doc_words, num_hashes, num_bands, ngrams, threshold,
                                                                "legacy", minhash_permutations(num_hashes, seed))),
                      ("datasketch affine32", lambda: _datasketch(doc_words, num_hashes, num_bands, ngrams, threshold,
                                                                  "affine32"))]
    for _ in range(repeats):                       # interleaved; each implementation's fastest run is kept
        for name, run in runs:
            cand, sig, stages = run()
            if name not in impls or sum(stages.values()) < impls[name]["seconds"]:
                sigs[name] = sig
                impls[name] = dict(seconds=sum(stages.values()), stages=stages, **pr(cand))
    fast_s = impls["ours, fast"]["seconds"]
    r = num_hashes // num_bands
    pair_j = [jaccard(sh[i], sh[j]) for i, j in truth]
    return dict(cpus=os.cpu_count(), docs=len(docs), shingles=sum(map(len, sh)), num_hashes=num_hashes, bands=num_bands, rows=r,
                threshold=threshold, true_pairs=len(truth), normalize_s=t_normalize, repeats=repeats, impls=impls,
                expected_recall=float(lsh_collision_probability(pair_j, r, num_bands).mean()),
                speedup_vs_legacy=impls["datasketch legacy"]["seconds"] / fast_s,
                speedup_vs_affine32=impls["datasketch affine32"]["seconds"] / fast_s,
                identical_signatures=bool(np.array_equal(sigs["ours, reference"], sigs["datasketch legacy"])))


# ---------------------------------------------------------------- 2. classifier
def bench_classifier() -> dict | None:
    if not os.environ.get("CS336_DATA"): return None
    from cs336_nb.data import fasttext_compare, quality_heldout_data, quality_training_data
    texts, labels = quality_training_data()
    n = len(texts) // 5
    rows = fasttext_compare((texts[n:], labels[n:]), dict(test=(texts[:n], labels[:n]), heldout=quality_heldout_data()))
    return dict(train_docs=len(texts) - n, test_docs=n, rows=rows)


# ---------------------------------------------------------------- 3. pipeline
def _pages(seed: int = 0) -> tuple[list[tuple[str, bytes, str]], str]:
    "HTML pages from the sample (or synthetic English pages without $CS336_DATA) and what they are."
    d = os.environ.get("CS336_DATA")
    if d and (Path(d) / "cc_sample_documents.txt").is_file():
        from cs336_nb.data import load_cc_sample
        texts = [t for _, t in load_cc_sample()]
        paras = [p for p in (Path(d) / "wiki_reference.txt").read_text().splitlines() if len(p.split()) >= 30]
        texts += ["\n".join(paras[i:i + 5]) for i in range(0, len(paras), 5)]
        what = "the 10 sample Common Crawl pages and the wiki_reference paragraphs (5 per page), as HTML"
    else:
        rng = random.Random(seed)
        words = "the of and to in is was for on that with as by at from it this be are an which or".split() + \
                [f"word{i}" for i in range(2000)]
        texts = ["\n".join(" ".join(rng.choice(words) for _ in range(15)).capitalize() + "." for _ in range(40))
                 for _ in range(20)]
        what = "20 synthetic English pages (no $CS336_DATA), as HTML"
    return [(f"http://example.com/{i}", page_to_html(f"p{i}", t), "utf-8") for i, t in enumerate(texts)], what


def bench_pipeline(workers: list[int], shards_per_worker: int, copies: int, dump_tib: float = DUMP_TIB) -> dict:
    pages, what = _pages()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = tmp / "in"; src.mkdir()
        n_max = max(workers) * shards_per_worker
        for i in range(n_max): write_warc(src / f"s{i:05d}.warc", pages * copies)
        shard_mb = (src / "s00000.warc").stat().st_size / 1e6
        run_pipeline(sorted(src.iterdir())[:1], tmp / "warmup", workers=1, progress=False)   # imports, model load: not timed
        for w in workers:
            files = sorted(src.iterdir())[:w * shards_per_worker]
            rep = run_pipeline(files, tmp / f"out{w}", workers=w, progress=False)
            rows.append(dict(workers=w, shards=len(files), input_mb=len(files) * shard_mb, seconds=rep.seconds,
                             mb_per_s=rep.mb_per_s, kept_docs=rep.stages[-1]["docs_out"], read_docs=rep.stages[0]["docs_out"]))
    best = max(rows, key=lambda r: r["mb_per_s"])
    dump_mb = dump_tib * 2**40 / 1e6
    return dict(pages=what, shard_mb=shard_mb, dump_tib=dump_tib, cpus=os.cpu_count(), cpu=cpu_name(), rows=rows,
                best_workers=best["workers"], best_mb_per_s=best["mb_per_s"],
                dump_machine_hours=dump_mb / best["mb_per_s"] / 3600,
                dump_core_hours=dump_mb / best["mb_per_s"] * best["workers"] / 3600)


# ---------------------------------------------------------------- markdown
def md_minhash(r: dict) -> str:
    f = lambda d: f"{d['candidates']:,} | {d['precision']:.3f} | {d['recall']:.3f} | {d['verified_precision']:.3f} | {d['verified_recall']:.3f}"
    best = min(r["speedup_vs_legacy"], r["speedup_vs_affine32"])
    ok = "met" if best >= 3 else f"MISSED by {3 / best:.2f}x"
    lines = [f"MinHash + LSH on a synthetic near-duplicate corpus (`near_duplicate_corpus`): {r['docs']:,} documents "
             f"({r['shingles']:,} word 5-gram shingles, distinct within each document; families of one random 200-word document and 3 copies "
             f"with 1% of words replaced), {r['num_hashes']} hashes as {r['bands']} bands of {r['rows']} rows, Jaccard "
             f"threshold {r['threshold']}; {r['true_pairs']:,} true pairs, expected LSH recall from the S-curve over "
             f"their Jaccards {r['expected_recall']:.3f}. Every implementation starts from the same normalized word lists "
             f"(normalizing took {r['normalize_s']:.2f} s, not counted), one process, one thread each, the fastest of "
             f"{r.get('repeats', 1)} interleaved runs each. Reference "
             f"signatures bit-identical to datasketch legacy: {r['identical_signatures']}.\n",
             "| implementation | seconds (shingles + signatures + LSH) | candidates | precision | recall | "
             "precision after verification | recall after verification |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, d in r["impls"].items(): lines.append(f"| {name} | {d['seconds']:.2f} | {f(d)} |")
    lines += [f"\nSpeed-up of the fast path: {r['speedup_vs_legacy']:.1f}x datasketch legacy, "
              f"{r['speedup_vs_affine32']:.1f}x datasketch affine32 (its default scheme); target >= 3x against both: {ok}.\n",
              "Where the time goes (seconds per stage):\n", "| implementation | stage | seconds | share |", "|---|---|---:|---:|"]
    for name, d in r["impls"].items():
        for stage, sec in d["stages"].items(): lines.append(f"| {name} | {stage} | {sec:.3f} | {sec / d['seconds']:.0%} |")
    return "\n".join(lines) + "\n"


def md_classifier(r: dict | None) -> str:
    if r is None: return "Quality classifier: skipped (set $CS336_DATA).\n"
    lines = [f"Quality classifier (`quality_training_data`: {r['train_docs']} training, {r['test_docs']} test documents; "
             "held-out: wiki_reference.txt paragraphs + low_quality_cc.txt, never trained on):\n",
             "| model | train s | test acc | held-out acc | predict ms/doc |", "|---|---:|---:|---:|---:|"]
    for x in r["rows"]:
        lines.append(f"| {x['model']} | {x['train_s']:.2f} | {x['test_acc']:.3f} | {x['heldout_acc']:.3f} | "
                     f"{x['test_predict_ms_per_doc']:.3f} |")
    return "\n".join(lines) + "\n"


def md_pipeline(r: dict) -> str:
    lines = [f"Pipeline (default stages: read WARC + resiliparse, language, gopher, c4, pii, quality) on {r['cpus']} CPUs "
             f"({r['cpu']}); shards of {r['shard_mb']:.2f} MB uncompressed WARC built from {r['pages']}; "
             f"{r['rows'][0]['shards'] // r['rows'][0]['workers']} shards per worker (weak scaling); wall time includes "
             "starting the worker processes.\n",
             "| workers | shards | input MB | seconds | MB/s | speed-up vs 1 |", "|---:|---:|---:|---:|---:|---:|"]
    base = r["rows"][0]["mb_per_s"]
    for x in r["rows"]:
        lines.append(f"| {x['workers']} | {x['shards']} | {x['input_mb']:.1f} | {x['seconds']:.2f} | {x['mb_per_s']:.2f} | "
                     f"{x['mb_per_s'] / base:.2f} |")
    tib = r.get("dump_tib", DUMP_TIB)
    source = DUMP_SOURCE if tib == DUMP_TIB else "a size given with --dump-tib, unverified here"
    lines.append(f"\nOne Common Crawl dump ({tib} TiB; {source}) at the best rate, {r['best_mb_per_s']:.2f} MB/s with "
                 f"{r['best_workers']} workers: **{r['dump_machine_hours']:,.0f} machine-hours** on this machine "
                 f"({r['dump_core_hours']:,.0f} worker-hours).\n")
    return "\n".join(lines)


def minhash_key(cpus: int | None) -> str:
    "The MinHash block's name: `minhash` for the 2-core machine (its historical name), `minhash-<n>cpu` elsewhere."
    return "minhash" if (cpus or 1) <= 2 else f"minhash-{cpus}cpu"


def write_results(parts: dict[str, str], path: Path = RESULTS) -> None:
    "Replace each part's block (`bench_data.py KEY`) under the Lecture 11 section; the rest of the file stays."
    for key, md in parts.items(): write_block(f"bench_data.py {key}", md, SECTION, path)


def format_saved(res: dict, write: bool) -> int:
    "Markdown of results saved with --json (the machine line is not re-measured)."
    parts = {}
    if "classifier" in res: parts["classifier"] = md_classifier(res["classifier"])
    if "minhash" in res: parts[minhash_key(res["minhash"].get("cpus", 2))] = md_minhash(res["minhash"])
    if "pipeline" in res: parts[f"pipeline-{res['pipeline']['cpus']}cpu"] = md_pipeline(res["pipeline"])
    parts = {k: v + f"\n{res.get('machine', '')}\n" for k, v in parts.items()}
    print("\n".join(parts.values()))
    if write: write_results(parts)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="*", default=["minhash", "classifier", "pipeline"],
                   choices=["minhash", "classifier", "pipeline"])
    p.add_argument("--families", type=int, default=1000, help="near-duplicate families (4 documents each)")
    p.add_argument("--workers", type=int, nargs="*", default=None, help="pipeline worker counts (default 1 2, or 1..cpus)")
    p.add_argument("--copies", type=int, default=4, help="copies of the page set in each pipeline shard")
    p.add_argument("--dump-tib", type=float, default=DUMP_TIB, help="size of one Common Crawl dump, TiB uncompressed")
    p.add_argument("--small", action="store_true", help="tiny sizes: a smoke run")
    p.add_argument("--json", type=str, default=None, help="also write the raw results here")
    p.add_argument("--write-results", action="store_true", help="write the tables into benchmarks/RESULTS.md")
    p.add_argument("--from-json", type=str, default=None, help="format results saved earlier (--json) instead of measuring")
    a = p.parse_args(argv)
    if a.from_json: return format_saved(json.loads(Path(a.from_json).read_text()), a.write_results)
    fam, copies = (100, 1) if a.small else (a.families, a.copies)
    workers = a.workers or [w for w in (1, 2, 4, 8, 16) if w <= (os.cpu_count() or 1)]
    print(f"Machine: {cpu_name()}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}.\n")
    cmd = ("CS336_DATA=... " if os.environ.get("CS336_DATA") else "") + "python benchmarks/bench_data.py " + \
        " ".join(argv if argv is not None else sys.argv[1:])
    load = f" (load average {os.getloadavg()[0]:.1f} at the start: other processes share it)" if hasattr(os, "getloadavg") else ""
    res = {"machine": f"Machine: {cpu_name()}, {os.cpu_count()} logical CPUs{load}. Command: `{cmd.strip()}`."}
    parts = {}
    if "classifier" in a.only:   # first: fasttext-numpy2's random NaN is rarer in a fresh process
        res["classifier"] = bench_classifier()
        parts["classifier"] = md_classifier(res["classifier"])
    if "minhash" in a.only:
        res["minhash"] = bench_minhash(fam, 3, 200, 128, 16, 5, 0.8, repeats=1 if a.small else 3)
        parts[minhash_key(os.cpu_count())] = md_minhash(res["minhash"])
    if "pipeline" in a.only:
        res["pipeline"] = bench_pipeline(workers[:2] if a.small else workers, 1 if a.small else 4, copies, a.dump_tib)
        parts[f"pipeline-{os.cpu_count()}cpu"] = md_pipeline(res["pipeline"])
    md = "\n".join(parts.values()) + f"\n{res['machine']}\n"
    parts = {k: v + f"\n{res['machine']}\n" for k, v in parts.items()}
    print(md)
    if a.json: Path(a.json).write_text(json.dumps(res, indent=1, default=str))
    if a.write_results: write_results(parts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
