"""Lecture 9 on a GPU: our own IsoFLOP sweep, WSD branches vs cosine, and a muP learning-rate sweep, on tiny Shakespeare.

Three parts, each runnable alone (`--part isoflop|wsd|mup`, or `all`); each writes its JSON file (to --out-dir,
default benchmarks/) after every finished run, so a run that is cut off keeps what finished:
  sweep_isoflops.json  records in the schema of isoflops_curves.json (parameters, compute_budget, final_loss), plus the
                       shape, step count, tokens, epochs over the training split and the device's name in every record
  sweep_wsd.json       the constant-rate trunk, each decay branch and each cosine run: validation-loss histories
  sweep_mup.json       validation loss of 3 widths x 5 learning rates, standard parametrization and muP
`nbs/09_scaling_laws.ipynb` reads them in its `#| cuda` cells (from $CS336_SWEEP_DIR if set, else benchmarks/).

  python benchmarks/sweep_isoflops.py --part all      # the GPU sizes: 4 to 6 minutes on one H200 (see Sizing)
  python benchmarks/sweep_isoflops.py --small         # a CPU check of the same code path, tiny sizes, a minute

Sizing (GPU). TinyStories is not in the offline data; tiny Shakespeare (BPE 512: 516,824 training tokens) stands in.
Budgets 1e11, 3e11 and 1e12 FLOPs: with Chinchilla's D = 20 N, the optimum needs 1.1, 1.9 and 3.5 epochs of the
training split (data repeats at most about 4 times near the optimum; the smallest model at the largest budget sees it
12 times, where repetition makes its loss an optimistic guess: Muennighoff et al. 2305.16264). Each budget samples 6 sizes from about a quarter to four times that guess (12k to 382k non-embedding
parameters in all), so the minimum lies inside the sampled sizes even if the ratio is off by a factor of a few.
2,048 tokens a step keeps each run at 50 to 3,100 steps: about 12,300 steps in all, 2 to 3 minutes at the 10 to 15 ms
a step these tiny models take on a GPU (launch-bound, not FLOP-bound: an earlier sweep ran 6,478 steps of 8,192
tokens in under 160 s on the H200); WSD is about 2,900 steps (under a minute), muP 30 runs of 150 steps (about a minute).
"""
import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cs336_nb.core import describe_device, get_device
from cs336_nb.scaling import isoflop_sweep, isoflops_fit, mup_lr_sweep, wsd_branches
from cs336_nb.training import TrainConfig, prepare_corpus

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("isoflop", "wsd", "mup")
SHAPES = [(16, 1), (16, 2), (24, 2), (32, 2), (48, 2), (64, 2), (64, 3), (96, 3)]   # 12k to 382k non-embedding parameters
SIZES = dict(  # everything that differs between the GPU run and the CPU check
    gpu=dict(context_length=128, batch_size=16, warmup=20,
             budgets={1e11: SHAPES[:6], 3e11: SHAPES[1:7], 1e12: SHAPES[2:]},   # per budget: 6 shapes bracketing D = 20 N
             min_iters=50, max_iters=5000,
             wsd_model=(48, 2), wsd_budgets=[300, 600, 900], wsd_eval_every=30,
             mup_widths=[64, 128, 256], mup_lrs=list(np.logspace(-3.5, -1.5, 5)), mup_steps=150, mup_batch=32),
    small=dict(context_length=32, batch_size=4, warmup=2, budgets={2e9: [(16, 1), (24, 1), (32, 1)], 4e9: [(16, 1), (24, 1), (32, 1)]},
               min_iters=10, max_iters=200, wsd_model=(32, 1), wsd_budgets=[20, 40], wsd_eval_every=5,
               mup_widths=[16, 32], mup_lrs=[1e-3, 1e-2], mup_steps=10, mup_batch=4),
)


def _write(path: Path, obj) -> None:
    "Write JSON atomically (temp file + rename)."
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f: json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def _slim(r: dict) -> dict:
    "The parts of a `train` result the notebook plots."
    h = r["history"]
    return dict(final_val_loss=r["final_val_loss"], iterations=r["iterations"],
                history={k: h[k] for k in ("iter", "lr", "train_loss", "val_iter", "val_loss")})


def run_isoflop(S: dict, base: TrainConfig, train_tokens: int, name: str, out: Path) -> None:
    "The IsoFLOP sweep, one run at a time; the JSON is rewritten after each run, so a cut-off sweep keeps what finished."
    recs = []
    for C, shapes in S["budgets"].items():
        for shape in shapes:
            t = time.perf_counter()
            new = isoflop_sweep([C], [shape], base, min_iters=S["min_iters"], max_iters=S["max_iters"], device_name=name, progress=False)
            for r in new:
                r["epochs"] = round(r["tokens"] / train_tokens, 2)
                r["seconds"] = round(time.perf_counter() - t, 1)
                print(f"isoflop: C={C:.0e} N={r['parameters']:>7,} {r['iterations']:>5} steps ({r['epochs']} epochs): "
                      f"loss {r['final_loss']:.4f}; {r['seconds']} s", flush=True)
            recs += new
            _write(out, recs)
    fit = isoflops_fit(recs, "parabola", n_bootstrap=200)
    lo, hi = fit.exponent_interval()
    print(f"isoflop: {len(recs)} runs, per-budget status {fit.status}, a = {fit.a:.3f} (95% [{lo:.3f}, {hi:.3f}]), b = {fit.b:.3f}")


def run_wsd(S: dict, base: TrainConfig, name: str, out: Path) -> None:
    "One WSD trunk, a decay branched at each budget, and cosine runs of each length."
    d, L = S["wsd_model"]
    cfg = base.replace(d_model=d, num_layers=L, num_heads=max(1, d // 16), out_dir=str(Path(base.out_dir).parent / "wsd"),
                       eval_interval=S["wsd_eval_every"], eval_batches=8)
    w = wsd_branches(cfg, S["wsd_budgets"], decay_fraction=0.2, progress=False)
    _write(out, dict(device=name, budgets=w["budgets"], decay_fraction=0.2, d_model=d, num_layers=L, trunk=_slim(w["trunk"]),
                     branch={T: _slim(r) for T, r in w["branch"].items()}, cosine={T: _slim(r) for T, r in w["cosine"].items()}))
    for T in w["budgets"]:
        print(f"wsd: {T} steps: branch {w['branch'][T]['final_val_loss']:.4f}, cosine {w['cosine'][T]['final_val_loss']:.4f}")


def run_mup(S: dict, data, device, name: str, out: Path) -> None:
    "Loss against learning rate for 3 widths, SP then muP; the JSON is rewritten after each parametrization."
    rows = []
    for mup in (False, True):
        rows += mup_lr_sweep(S["mup_widths"], S["mup_lrs"], data, base_width=S["mup_widths"][0], mup=mup, steps=S["mup_steps"],
                             batch_size=S["mup_batch"], context_length=S["context_length"], device=str(device), progress=False)
        _write(out, dict(device=name, steps=S["mup_steps"], batch_size=S["mup_batch"], context_length=S["context_length"],
                         base_width=S["mup_widths"][0], rows=rows))
        best = {w: min((r for r in rows if r["width"] == w and r["mup"] == mup), key=lambda r: r["loss"])["lr"] for w in S["mup_widths"]}
        print(f"mup: {'muP' if mup else 'SP '} best lr by width: " + ", ".join(f"{w}: {lr:.2g}" for w, lr in best.items()), flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--part", default="all", help=f"comma-separated parts to run ({', '.join(PARTS)}), or all")
    p.add_argument("--small", action="store_true", help="tiny sizes, to check the code path on a CPU")
    p.add_argument("--out-dir", default=None, help="where the JSON files go (default benchmarks/; with --small a temporary folder)")
    p.add_argument("--work-dir", default=None, help="checkpoints and the tokenized corpus (default: a temporary folder)")
    p.add_argument("--data", default=os.environ.get("CS336_DATA", str(ROOT.parent / "shared" / "data")), help="folder holding tinyshakespeare.txt")
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)
    parts = PARTS if args.part == "all" else tuple(args.part.split(","))
    if bad := sorted(set(parts) - set(PARTS)): p.error(f"--part: unknown parts {bad}; known: {', '.join(PARTS)}, all")
    corpus = Path(args.data) / "tinyshakespeare.txt"
    if not corpus.exists(): p.error(f"no {corpus}: pass --data FOLDER (or set CS336_DATA) to a folder holding tinyshakespeare.txt")
    S = SIZES["small" if args.small else "gpu"]
    device = get_device(args.device)
    name = describe_device(device)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="sweep_isoflops_"))
    out_dir = Path(args.out_dir) if args.out_dir else (work / "out" if args.small else ROOT / "benchmarks")
    base = TrainConfig(corpus=str(corpus), model=dict(vocab_size=512, context_length=S["context_length"]), batch_size=S["batch_size"],
                       warmup_iters=S["warmup"], learning_rate=3e-3, min_learning_rate=3e-4, weight_decay=0.1,
                       device=str(device), compile=False, eval_batches=None, progress=False,
                       out_dir=str(work / "runs"), data_dir=str(work / "data"))
    t0 = time.perf_counter()
    data = prepare_corpus(str(corpus), base.data_dir, base.model.vocab_size, progress=False)
    print(f"{name}\ncorpus: tiny Shakespeare, {len(data.train):,} train / {len(data.val):,} val tokens (BPE {data.vocab_size}); "
          f"{time.perf_counter() - t0:.1f} s; parts {', '.join(parts)}; writing to {out_dir}", flush=True)
    for part in parts:
        t = time.perf_counter()
        if part == "isoflop": run_isoflop(S, base, len(data.train), name, out_dir / "sweep_isoflops.json")
        if part == "wsd": run_wsd(S, base, name, out_dir / "sweep_wsd.json")
        if part == "mup": run_mup(S, data, device, name, out_dir / "sweep_mup.json")
        print(f"{part}: {time.perf_counter() - t:.1f} s", flush=True)
    print(f"total {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
