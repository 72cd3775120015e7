"""Shared test set-up: no test touches the network; the real data is used when CS336_DATA names it."""
import os
from pathlib import Path

import pytest

os.environ.setdefault("CS336_OFFLINE", "1")
# Triton kernels run on the CPU through Triton's interpreter. The variable is read when triton is first
# imported, and any test module (or torch itself) may import it first: set it before all of them.
try:
    import torch
    _cuda = torch.cuda.is_available()
except ImportError:
    _cuda = False
if not _cuda:
    os.environ.setdefault("TRITON_INTERPRET", "1")
ROOT = Path(__file__).resolve().parents[1]
_shared = ROOT.parent / "shared" / "data"
if "CS336_DATA" not in os.environ and _shared.is_dir():
    os.environ["CS336_DATA"] = str(_shared)


def test_flags() -> list[str]:
    "Extra nbdev test flags to enable, from $CS336_TEST_FLAGS (e.g. 'cuda' or 'cuda multigpu slow')."
    return os.environ.get("CS336_TEST_FLAGS", "").split()


test_flags.__test__ = False  # not a test


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT
