"""The documentation site: nbdev's pre-render step succeeds, the MkDocs Material site is built, and every page
loads in headless Chromium from file:// with its figures, typeset math, no script errors and no network; the
offline search finds the FlashAttention lecture."""
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
needs_chromium = pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"), reason="headless Chromium not installed")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    r = subprocess.run([sys.executable, "-m", "cs336_nb.cli", "site", "--no-quarto"], cwd=ROOT,
                       capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-6000:]
    assert "MkDocs Material" in r.stdout
    return ROOT / "_docs"


def _pages(site: Path) -> list[str]:
    return (site / "site.txt").read_text().splitlines()[1:]


def _image_outputs(nb: Path) -> int:
    d = json.loads(nb.read_text())
    return sum("image/png" in o.get("data", {}) or "image/svg+xml" in o.get("data", {})
               for c in d["cells"] if c["cell_type"] == "code" for o in c.get("outputs", []))


def test_site_has_every_lecture(site):
    pages = set(_pages(site))
    lectures = sorted((ROOT / "nbs").glob("[0-9][0-9]*.ipynb"))
    assert "index.html" in pages and len(pages) == len(lectures) + 1, pages
    index = (site / "index.html").read_text()
    for p in pages - {"index.html"}:
        assert f'href="{p}"' in index, f"the sidebar of the home page does not link {p}"


def test_site_structure(site):
    core = (site / "core.html").read_text()
    for name in ("get_device", "benchmark", "mfu", "show"):  # exported functions are documented (show_doc)
        assert re.search(rf"<h3[^>]*>{name}\b", core), f"no show_doc entry for {name} in core.html"
    assert 'class="md-nav__title"' in core and "Table of contents" in core        # a table of contents per page
    assert 'class="md-footer__link md-footer__link--next"' in core                # previous/next links
    assert "Lecture 6: GPUs and kernels" in core and re.search(r">\s*A fused RMSNorm\s*<", core)  # lectures grouped with their parts
    assert not re.search(r'<(script|img)[^>]+src="https?://|<link[^>]+href="https?://[^"]+"[^>]*stylesheet|rel="stylesheet"[^>]+href="https?://',
                         core), "the page loads a script, image or stylesheet from the network"
    assert (site / "assets" / "mathjax" / "MathJax.js").exists()
    assert "No description has been provided" not in (site / "accounting.html" if (site / "accounting.html").exists() else site / "resource_accounting.html").read_text()
    assert "%|" not in (site / "tokenization.html").read_text()                   # no progress bars


def _chromium(url: str, profile: Path, screenshot: Path | None = None, budget: int = 15000) -> str:
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", f"--virtual-time-budget={budget}"]
    if screenshot is not None:
        subprocess.run(args + ["--window-size=1280,1200", f"--screenshot={screenshot}", url], capture_output=True, timeout=180)
    return subprocess.run(args + ["--dump-dom", url], capture_output=True, text=True, timeout=180).stdout


def _notebook_of(page: str) -> Path | None:
    if page == "index.html": return ROOT / "nbs" / "index.ipynb"
    return next((p for p in (ROOT / "nbs").glob("[0-9]*.ipynb") if p.stem.split("_", 1)[-1] + ".html" == page), None)


@needs_chromium
def test_pages_load_in_chromium(site, tmp_path):
    assert CHROMIUM, "CI must install Chromium (.ci/run does)"
    problems, math_pages = [], 0
    for name in _pages(site):
        shot = site / name.replace(".html", ".png") if name in ("index.html", "flash_attention.html") else None
        dom = _chromium((site / name).as_uri(), tmp_path / "profile", shot)
        attrs = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', re.search(r"<body[^>]*>", dom).group(0))) if "<body" in dom else {}
        if attrs.get("loaded") != "yes": problems.append(f"{name}: the page did not finish loading"); continue
        broken, errors, math_errors = int(attrs["broken-images"]), int(attrs["errors"]), int(attrs["math-errors"])
        nb = _notebook_of(name)
        want = _image_outputs(nb) if nb else 0
        if broken or errors or math_errors: problems.append(f"{name}: {broken} broken images, {errors} script errors, {math_errors} math errors")
        if int(attrs["images"]) < want: problems.append(f"{name}: {attrs['images']} images shown, the notebook has {want} figures")
        math_pages += int(attrs["math"]) > 0
    assert not problems, "\n".join(problems)
    assert math_pages >= 5, f"MathJax typeset formulas on only {math_pages} pages"
    assert (site / "index.png").stat().st_size > 10_000


@needs_chromium
def test_offline_search_finds_flash_attention(site, tmp_path):
    dom = _chromium((site / "index.html").as_uri() + "?q=FlashAttention", tmp_path / "profile")
    results = re.findall(r'<a href="([^"]+)" class="md-search-result__link"', dom)
    assert any(r.split("?")[0].endswith("/flash_attention.html") or r.startswith("flash_attention.html") for r in results), results[:10]
