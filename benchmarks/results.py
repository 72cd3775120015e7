"""Writing one benchmark's block into `benchmarks/RESULTS.md`, leaving every other script's rows as they are.

Each script owns the text between `<!-- NAME: begin -->` and `<!-- NAME: end -->`; the first time, the block goes
under the script's section heading (the heading is appended at the end of the file if it is not there yet).
A benchmark harness, not library API: it lives beside the scripts, not in `cs336_nb`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def markers(name: str) -> tuple[str, str]:
    "The begin/end comments around `name`'s block, e.g. `markers('bench_moe.py')`."
    return f"<!-- {name}: begin -->", f"<!-- {name}: end -->"


def read_block(name: str, path: Path = RESULTS) -> str:
    "The text now between `name`'s markers ('' if the block is not there yet)."
    text = path.read_text() if path.exists() else ""
    begin, end = markers(name)
    if begin not in text or end not in text: return ""
    return text[text.index(begin) + len(begin):text.index(end)].strip("\n")


def write_block(name: str, md: str, section: str, path: Path = RESULTS) -> None:
    "Replace `name`'s block with `md`; the first time, put it right under the heading `section` (added if missing)."
    text = path.read_text() if path.exists() else ""
    begin, end = markers(name)
    block = f"{begin}\n{md.strip()}\n{end}"
    if begin in text and end in text:
        i, j = text.index(begin), text.index(end) + len(end)
        text = text[:i] + block + text[j:]
    elif section in text:
        k = text.index(section) + len(section)
        rest = text[k:].lstrip("\n")
        text = text[:k] + "\n\n" + block + "\n" + ("\n" + rest if rest else "")
    else:
        text = text.rstrip("\n") + f"\n\n{section}\n\n{block}\n"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(path)   # atomic: a crash never leaves half a file


def cuda_kernel_times(prof, reps: int) -> list[tuple[str, float, float]]:
    """(kernel name, launches per rep, GPU microseconds per rep) of every CUDA kernel in a finished `torch.profiler`
    trace of `reps` repetitions, slowest first: the kernels themselves, not the CPU ops that launched them (those
    would count the same time twice)."""
    import torch
    rows = [(e.key, e.count / reps, e.self_device_time_total / reps) for e in prof.key_averages()
            if e.device_type == torch.autograd.DeviceType.CUDA and e.self_device_time_total > 0]
    return sorted(rows, key=lambda r: -r[2])


def report(res: dict, md: str, *, json_path: str | None = None, write: Callable[[str], None] | None = None) -> None:
    "A script's last step: the raw results to `json_path` (if given), the table printed, and `write(md)` (if given)."
    if json_path: Path(json_path).write_text(json.dumps(res, indent=1))
    print(md)
    if write is not None: write(md)
