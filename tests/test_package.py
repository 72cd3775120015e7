"""The package as users meet it: exported code in sync with the notebooks, the console script, the imports."""
import subprocess
import sys

from conftest import ROOT


def test_export_is_in_sync(tmp_path):
    "nbdev-export from the notebooks reproduces the committed cs336_nb/ exactly (nobody edited it by hand)."
    import shutil
    work = tmp_path / "repo"
    shutil.copytree(ROOT, work, ignore=shutil.ignore_patterns(".git", "_docs", "_proc", "__pycache__", ".whl", ".data"))
    r = subprocess.run([sys.executable, "-c", "from nbdev.doclinks import nbdev_export; nbdev_export()"], cwd=work,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    diffs = []
    for f in sorted((ROOT / "cs336_nb").rglob("*.py")):
        rel = f.relative_to(ROOT)
        g = work / rel
        if not g.exists() or g.read_text() != f.read_text(): diffs.append(str(rel))
    new = {p.relative_to(work) for p in (work / "cs336_nb").rglob("*.py")} - {p.relative_to(ROOT) for p in (ROOT / "cs336_nb").rglob("*.py")}
    assert not diffs and not new, f"out of sync with the notebooks: {diffs} new: {sorted(map(str, new))}"


def test_console_script():
    r = subprocess.run([sys.executable, "-m", "cs336_nb.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "build" in r.stdout and "train" in r.stdout, r.stdout + r.stderr
    r = subprocess.run([sys.executable, "-m", "cs336_nb.cli", "build", "--only", "no_such_lecture", "--no-site"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode != 0 and "matches no lecture" in r.stderr


def test_every_module_imports():
    import importlib, pkgutil
    import cs336_nb
    names = [m.name for m in pkgutil.walk_packages(cs336_nb.__path__, "cs336_nb.")]
    assert "cs336_nb.core" in names and "cs336_nb.corpora" in names and "cs336_nb.cli" in names
    for n in names:
        importlib.import_module(n)
