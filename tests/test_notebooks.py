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
    cmd = [sys.executable, "-c", "from nbdev.test import nbdev_test; nbdev_test()", str(nb), "--n-workers", "0"]
    flags = test_flags()
    if flags: cmd += ["--flags", " ".join(flags)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    took = time.perf_counter() - t0
    print(f"{nb.name}: {took:.1f} s")
    if r.returncode != 0:
        # nbdev prints the failing cell's number and traceback on stderr
        pytest.fail(f"{nb.name} failed under nbdev-test (flags: {flags or 'none'}):\n{r.stdout[-3000:]}\n{r.stderr[-12000:]}",
                    pytrace=False)
