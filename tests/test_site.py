"""The documentation site: nbdev's pre-render step succeeds, the plain-HTML fallback is built, and every
lecture page loads in headless Chromium with its figures and without script errors."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    r = subprocess.run([sys.executable, "-m", "cs336_nb.cli", "site", "--no-quarto"], cwd=ROOT,
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-6000:]
    assert "plain HTML fallback" in r.stdout
    return ROOT / "_docs"


def _image_outputs(nb: Path) -> int:
    d = json.loads(nb.read_text())
    return sum("image/png" in o.get("data", {}) or "image/svg+xml" in o.get("data", {})
               for c in d["cells"] if c["cell_type"] == "code" for o in c.get("outputs", []))


def test_site_has_every_lecture(site):
    pages = {l.split("\t")[0] for l in (site / "site.txt").read_text().splitlines()[1:]}
    lectures = sorted((ROOT / "nbs").glob("[0-9][0-9]*.ipynb"))
    assert "index.html" in pages and len(pages) == len(lectures) + 1, pages
    index = (site / "index.html").read_text()
    for p in pages - {"index.html"}:
        assert f'href="{p}"' in index, f"index does not link {p}"
    # exported functions are documented (show_doc) on their lecture's page
    core = (site / "core.html").read_text()
    for name in ("get_device", "benchmark", "mfu", "show"):
        assert re.search(rf"<h3[^>]*>{name}<", core), f"no show_doc entry for {name} in core.html"


def _load(page: Path, screenshot: Path | None = None) -> str:
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={page.parent / '.chromium-profile'}", "--virtual-time-budget=8000"]
    if screenshot is not None:
        subprocess.run(args + ["--window-size=1280,1600", f"--screenshot={screenshot}", page.as_uri()],
                       capture_output=True, timeout=120)
    r = subprocess.run(args + ["--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    return r.stdout


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"), reason="headless Chromium not installed")
def test_pages_load_in_chromium(site, tmp_path):
    assert CHROMIUM, "CI must install Chromium (.ci/run does)"
    problems = []
    for line in (site / "site.txt").read_text().splitlines()[1:]:
        name = line.split("\t")[0]
        dom = _load(site / name, screenshot=site / "index.png" if name == "index.html" else None)
        m = re.search(r'<body[^>]*data-images="(\d+)"[^>]*data-broken-images="(\d+)"[^>]*data-errors="(\d+)"[^>]*data-loaded="yes"', dom)
        if not m: problems.append(f"{name}: the page did not finish loading"); continue
        images, broken, errors = map(int, m.groups())
        stem = next((p for p in (ROOT / "nbs").glob("*.ipynb")
                     if f"{name}" == "index.html" and p.stem == "index" or p.stem.split("_", 1)[-1] + ".html" == name), None)
        want = _image_outputs(stem) if stem else 0
        if broken or errors: problems.append(f"{name}: {broken} broken images, {errors} script errors")
        if images < want: problems.append(f"{name}: {images} images shown, the notebook has {want} figures")
    shutil.rmtree(site / ".chromium-profile", ignore_errors=True)
    assert not problems, "\n".join(problems)
    assert (site / "index.png").stat().st_size > 10_000
