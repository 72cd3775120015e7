"""Lecture 9 on a GPU: our own IsoFLOP sweep, WSD branches vs cosine, and a muP learning-rate sweep, on tiny Shakespeare.

Writes three JSON files (to --out-dir, default benchmarks/; with --small, a temporary folder unless --out-dir is given):
  sweep_isoflops.json  records in the schema of isoflops_curves.json (parameters, compute_budget, final_loss), plus the
                       shape, step count, tokens and the device's name in every record
  sweep_wsd.json       the constant-rate trunk, each decay branch and each cosine run: validation-loss histories
  sweep_mup.json       validation loss of 3 widths x several learning rates, standard parametrization and muP
`nbs/09_scaling_laws.ipynb` reads them in its `#| cuda` cells.

  python benchmarks/sweep_isoflops.py                 # the GPU sizes (about 100 s on an H200)
  python benchmarks/sweep_isoflops.py --small         # a CPU check of the same code path, tiny sizes
TinyStories (the course's corpus for this sweep) is not in the offline data; tiny Shakespeare stands in.
"""
import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cs336_nb.core import describe_device, get_device
from cs336_nb.scaling import isoflop_sweep, isoflops_fit, mup_lr_sweep, wsd_branches
from cs336_nb.training import TrainConfig, prepare_corpus

ROOT = Path(__file__).resolve().parents[1]
SIZES = dict(  # everything that differs between the GPU run and the CPU check
    gpu=dict(context_length=128, batch_size=64, budgets=[1e12, 3e12, 1e13], max_iters=2000,
             shapes=[(32, 2), (48, 3), (64, 4), (96, 4), (128, 4), (192, 4)],
             wsd_model=(128, 4), wsd_budgets=[300, 600, 900], mup_widths=[64, 128, 256], mup_lrs=list(np.logspace(-3.5, -1.5, 5)),
             mup_steps=150, mup_batch=32),
    small=dict(context_length=32, batch_size=4, budgets=[2e9, 4e9], max_iters=200, shapes=[(16, 1), (24, 1), (32, 1)],
               wsd_model=(32, 1), wsd_budgets=[20, 40], mup_widths=[16, 32], mup_lrs=[1e-3, 1e-2], mup_steps=10, mup_batch=4),
)


def _write(path: Path, obj) -> None:
    "Write JSON atomically (temp file + rename)."
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f: json.dump(obj, f, indent=1)
    os.replace(tmp, path)
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name}")


def _slim(r: dict) -> dict:
    "The parts of a `train` result the notebook plots."
    h = r["history"]
    return dict(final_val_loss=r["final_val_loss"], iterations=r["iterations"],
                history={k: h[k] for k in ("iter", "lr", "train_loss", "val_iter", "val_loss")})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--small", action="store_true", help="tiny sizes, to check the code path on a CPU")
    p.add_argument("--only", default="isoflops,wsd,mup", help="comma-separated parts to run (isoflops, wsd, mup)")
    p.add_argument("--out-dir", default=None, help="where the JSON files go (default benchmarks/, or a temp folder with --small)")
    p.add_argument("--data", default=os.environ.get("CS336_DATA", str(ROOT.parent / "shared" / "data")), help="folder holding tinyshakespeare.txt")
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)
    parts = set(args.only.split(","))
    if parts - {"isoflops", "wsd", "mup"}: p.error(f"--only: unknown parts {sorted(parts - {'isoflops', 'wsd', 'mup'})}")
    S = SIZES["small" if args.small else "gpu"]
    device = get_device(args.device)
    name = describe_device(device)
    work = Path(tempfile.mkdtemp(prefix="sweep_isoflops_"))
    out_dir = Path(args.out_dir) if args.out_dir else (work / "out" if args.small else ROOT / "benchmarks")
    corpus = str(Path(args.data) / "tinyshakespeare.txt")
    base = TrainConfig(corpus=corpus, vocab_size=512, context_length=S["context_length"], batch_size=S["batch_size"],
                       warmup_iters=20 if not args.small else 2, learning_rate=3e-3, min_learning_rate=3e-4, weight_decay=0.1,
                       device=str(device), compile=False, eval_batches=None, progress=False,
                       out_dir=str(work / "runs"), data_dir=str(work / "data"))
    t0 = time.perf_counter()
    data = prepare_corpus(corpus, base.data_dir, base.vocab_size, progress=False)
    print(f"{name}\ncorpus: tiny Shakespeare, {len(data.train):,} train / {len(data.val):,} val tokens (BPE {data.vocab_size}); "
          f"{time.perf_counter() - t0:.1f} s")
    if "isoflops" in parts:
        t = time.perf_counter()
        recs = isoflop_sweep(S["budgets"], S["shapes"], base, min_iters=10 if args.small else 20, max_iters=S["max_iters"],
                             device_name=name, progress=True)
        _write(out_dir / "sweep_isoflops.json", recs)
        try:
            fit = isoflops_fit(recs, "parabola", n_bootstrap=200)
            print(f"isoflops: {len(recs)} runs, a = {fit.a:.3f}, b = {fit.b:.3f}; {time.perf_counter() - t:.1f} s")
        except ValueError as e:
            print(f"isoflops: {len(recs)} runs; no parabola fit ({e}); {time.perf_counter() - t:.1f} s")
    if "wsd" in parts:
        t = time.perf_counter()
        d, L = S["wsd_model"]
        cfg = dataclasses.replace(base, d_model=d, num_layers=L, num_heads=max(1, d // 16), out_dir=str(work / "wsd"),
                                  eval_interval=max(5, S["wsd_budgets"][0] // 10), eval_batches=8 if not args.small else 2)
        w = wsd_branches(cfg, S["wsd_budgets"], decay_fraction=0.2)
        _write(out_dir / "sweep_wsd.json", dict(device=name, budgets=w["budgets"], decay_fraction=0.2, d_model=d, num_layers=L,
                                                trunk=_slim(w["trunk"]), branch={T: _slim(r) for T, r in w["branch"].items()},
                                                cosine={T: _slim(r) for T, r in w["cosine"].items()}))
        for T in w["budgets"]:
            print(f"wsd: {T} steps: branch {w['branch'][T]['final_val_loss']:.4f}, cosine {w['cosine'][T]['final_val_loss']:.4f}")
        print(f"wsd: {time.perf_counter() - t:.1f} s")
    if "mup" in parts:
        t = time.perf_counter()
        rows = [r for mup in (False, True) for r in mup_lr_sweep(S["mup_widths"], S["mup_lrs"], data, base_width=S["mup_widths"][0],
                                                              mup=mup, steps=S["mup_steps"], batch_size=S["mup_batch"],
                                                              context_length=S["context_length"], device=str(device))]
        _write(out_dir / "sweep_mup.json", dict(device=name, steps=S["mup_steps"], batch_size=S["mup_batch"],
                                                context_length=S["context_length"], base_width=S["mup_widths"][0], rows=rows))
        for mup in (False, True):
            best = {w: min((r for r in rows if r["width"] == w and r["mup"] == mup), key=lambda r: r["loss"])["lr"] for w in S["mup_widths"]}
            print(f"mup: {'muP' if mup else 'SP '} best lr by width: " + ", ".join(f"{w}: {lr:.2g}" for w, lr in best.items()))
        print(f"mup: {time.perf_counter() - t:.1f} s")
    print(f"total {time.perf_counter() - t0:.1f} s")
    if not (args.small and args.out_dir is None): shutil.rmtree(work, ignore_errors=True)   # keep --small's outputs to look at
    return 0


if __name__ == "__main__":
    sys.exit(main())
