"""Every notebook through `nbdev-test`, one pytest test per notebook, so a failure names the lecture and the cell.

Cells flagged `#| cuda`, `#| multigpu` or `#| slow` are skipped unless $CS336_TEST_FLAGS enables them.
"""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, test_flags

NOTEBOOKS = sorted((ROOT / "nbs").glob("*.ipynb"))


def test_there_are_notebooks():
    names = {p.name for p in NOTEBOOKS}
    assert {"index.ipynb", "00_core.ipynb", "00a_corpora.ipynb"} <= names, names


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook(nb: Path):
    flags = test_flags()
    # Called with keyword arguments: a bare `nbdev_test()` under `python -c` does not read sys.argv (fastcore's
    # call_parse only does so for console scripts) and would test every notebook.
    code = f"from nbdev.test import nbdev_test; nbdev_test(path={str(nb)!r}, flags={' '.join(flags)!r}, n_workers=0, do_print=True)"
    cmd = [sys.executable, "-c", code]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    took = time.perf_counter() - t0
    print(f"{nb.name}: {took:.1f} s")
    assert f"Completed {nb}" in r.stdout or r.returncode != 0, f"nbdev-test did not run {nb.name}:\n{r.stdout[-2000:]}"
    if r.returncode != 0:
        # nbdev prints the failing cell's number and traceback on stderr
        pytest.fail(f"{nb.name} failed under nbdev-test (flags: {flags or 'none'}):\n{r.stdout[-3000:]}\n{r.stderr[-12000:]}",
                    pytrace=False)


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_title_cell_is_title_and_summary_only(nb: Path):
    "nbdev turns the first markdown cell into the page's front matter and drops everything but '# Title' and one '> summary' line."
    import json
    cells = [c for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "markdown"]
    assert cells, f"{nb.name} has no markdown cell"
    lines = [l for l in "".join(cells[0]["source"]).strip().splitlines() if l.strip()]
    assert lines[0].startswith("# "), f"{nb.name}: the first markdown cell must start with '# Title'"
    assert not lines[0].startswith("# #"), f"{nb.name}: the title repeats its '#': {lines[0]!r}"
    assert len(lines) <= 2 and all(l.startswith(">") for l in lines[1:]), \
        f"{nb.name}: the title cell holds more than '# Title' and one '> summary' line; nbdev drops the rest: {lines[1:4]}"


def _code_sources(nb: Path) -> list[str]:
    import json
    return ["".join(c["source"]) for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code"]


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_code_cells_at_most_60_lines(nb: Path):
    "One idea per cell (CONTRIBUTING.md): a code cell longer than 60 lines is split into named steps."
    long = [(i, len(s.splitlines())) for i, s in enumerate(_code_sources(nb)) if len(s.splitlines()) > 60]
    assert not long, f"{nb.name}: code cells over 60 lines, as (code cell index, lines): {long}"


_CHECK = __import__("re").compile(r"\b(assert|test_eq|test_close|test_fail|test_ne|test_is|test_warns)\b")


def _joined_checks(line: str) -> bool:
    "Whether `line` holds a check joined to another statement by a top-level ';'."
    import io, tokenize
    if ";" not in line or not _CHECK.search(line): return False
    try: toks = list(tokenize.generate_tokens(io.StringIO(line.strip() + "\n").readline))
    except (tokenize.TokenError, SyntaxError, IndentationError): return False  # a line inside a multi-line string
    return any(t.type == tokenize.OP and t.string == ";" for t in toks)


def test_joined_checks_are_found():
    assert _joined_checks("test_eq(a, 1); test_eq(b, 2)")
    assert not _joined_checks("test_eq(a, 'x;y')")
    assert not _joined_checks("x = 1; y = 2")


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_one_check_per_line(nb: Path):
    "Tests beside the code keep one check per line, so a failure names its check (never several joined by ';')."
    joined = [l.strip() for s in _code_sources(nb) for l in s.splitlines() if _joined_checks(l)]
    assert not joined, f"{nb.name}: checks joined by ';' (one check per line): {joined[:5]}"
