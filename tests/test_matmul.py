"""Lecture 6 part 7: the tiled Triton matmul in both program orders against `torch.matmul`, and the tile-order
arithmetic (every tile once; the Triton tutorial's 90 vs 54 tile loads). On CPU the kernel runs in Triton's
interpreter at small sizes; the GPU test runs only where CUDA is present."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from cs336_nb.kernels import matmul as MM  # noqa: E402
from cs336_nb.kernels import triton_available  # noqa: E402

needs_triton = pytest.mark.skipif(not triton_available(), reason="triton is not installed")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEV = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("grid", [(1, 1), (9, 9), (5, 7), (7, 5), (32, 16)])
@pytest.mark.parametrize("group_m", [1, 2, 3, 8])
def test_grouped_order_covers_every_tile_once(grid, group_m):
    gm, gn = grid
    tiles = [MM.grouped_tile(p, gm, gn, group_m) for p in range(gm * gn)]
    assert sorted(tiles) == [(r, c) for r in range(gm) for c in range(gn)]


@pytest.mark.parametrize("grid", [(9, 9), (5, 7)])
def test_group_of_one_is_row_major(grid):
    gm, gn = grid
    pids = range(gm * gn)
    assert [MM.grouped_tile(p, gm, gn, 1) for p in pids] == [MM.row_major_tile(p, gm, gn) for p in pids]


def test_tutorial_tile_counts():
    k_tiles = 9
    assert MM.tiles_loaded_per_wave(9, 9, k_tiles, wave=9)["tiles_loaded"] == (1 + 9) * k_tiles
    assert MM.tiles_loaded_per_wave(9, 9, k_tiles, wave=9, group_m=3)["tiles_loaded"] == (3 + 3) * k_tiles


def test_bad_arguments():
    with pytest.raises(ValueError, match="pid"):
        MM.row_major_tile(81, 9, 9)
    with pytest.raises(ValueError, match="group_m"):
        MM.grouped_tile(0, 9, 9, 0)


@needs_triton
@pytest.mark.parametrize("shape", [(16, 16, 16), (33, 47, 29), (17, 64, 50)])
@pytest.mark.parametrize("group_m", [1, 8])
def test_matmul_matches_torch(shape, group_m):
    m, k, n = shape
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(m, k, generator=gen).to(DEV), torch.randn(k, n, generator=gen).to(DEV)
    torch.testing.assert_close(MM.matmul_triton(a, b, group_m=group_m), a @ b, rtol=1e-3, atol=1e-3)


@needs_triton
def test_matmul_strided_input_and_errors():
    a = torch.randn(24, 40, device=DEV)
    torch.testing.assert_close(MM.matmul_triton(a.mT, a), a.mT @ a, rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="k, n"):
        MM.matmul_triton(a, a)
    with pytest.raises(TypeError, match="dtype"):
        MM.matmul_triton(a, a.mT.double())


@cuda
@needs_triton
@pytest.mark.parametrize("group_m", [1, 8])
def test_matmul_bf16_on_gpu(group_m):
    a = torch.randn(1000, 768, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(768, 1300, device="cuda", dtype=torch.bfloat16)
    ref = (a.float() @ b.float())
    out = MM.matmul_triton(a, b, group_m=group_m).float()
    assert ((out - ref).norm() / ref.norm()).item() < 1e-2
