"""Lecture 5's fast paths against their references: the grouped GEMM (loop, Triton under TRITON_INTERPRET=1 on CPU,
torch._grouped_mm where it runs) in outputs and both gradients; expert parallelism over 2 and 4 gloo processes
against one process. GPU-only checks run only where CUDA is present."""
import os
import subprocess
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from cs336_nb import moe_grouped_gemm as G  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _triton_available() -> bool:
    try: import triton  # noqa: F401
    except ImportError: return False
    return True


needs_triton = pytest.mark.skipif(not _triton_available(), reason="triton is not installed")


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def _torch_gmm(a, b, offs):
    return torch._grouped_mm(a, b, offs=offs)


def _torch_gmm_runs(a, b, offs) -> bool:
    "Whether torch._grouped_mm runs forward and backward on these inputs here (it wants 16-byte strides)."
    a, b = a.detach().requires_grad_(), b.detach().requires_grad_()
    try:
        y = _torch_gmm(a, b, offs); torch.autograd.backward(y, torch.ones_like(y)); return True
    except (RuntimeError, AttributeError, NotImplementedError): return False


IMPLS = {"triton": pytest.param(G.grouped_mm, marks=needs_triton), "torch": _torch_gmm}
CASES = [  # (M, K, N, cumulative ends): odd sizes, empty groups first/middle/last, rows in no group, one group
    (37, 24, 19, [5, 5, 20, 33]), (37, 24, 19, [0, 9, 37, 37]), (40, 32, 24, [7, 7, 30, 40]), (21, 17, 18, [21]),
    (0, 16, 16, [0, 0]), (33, 16, 8, [0, 0, 0]),
]


def _inputs(M, K, N, ends, dtype=torch.float32, transposed=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(M, K, generator=g).to(DEV, dtype).requires_grad_()
    E = len(ends)
    b = torch.randn(E, N, K, generator=g).transpose(1, 2) if transposed else torch.randn(E, K, N, generator=g)
    b = b.to(DEV, dtype).requires_grad_()
    return a, b, torch.tensor(ends, dtype=torch.int32, device=DEV), torch.randn(M, N, generator=g).to(DEV, dtype)


def _run(fn, a, b, offs, dout):
    y = fn(a, b, offs)
    da, db = torch.autograd.grad(y, (a, b), dout, allow_unused=True)
    return y, torch.zeros_like(a) if da is None else da, torch.zeros_like(b) if db is None else db


@pytest.mark.parametrize("impl", IMPLS.values(), ids=IMPLS.keys())
@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}x{c[1]}x{c[2]}-{c[3]}" for c in CASES])
@pytest.mark.parametrize("transposed", [False, True], ids=["b", "bT"])
def test_grouped_mm_matches_loop(impl, case, transposed):
    a, b, offs, dout = _inputs(*case, transposed=transposed)
    if impl is _torch_gmm and not _torch_gmm_runs(a.detach(), b.detach(), offs):
        pytest.skip("torch._grouped_mm does not run on these inputs here")
    y, da, db = _run(impl, a, b, offs, dout)
    y0, da0, db0 = _run(G.grouped_mm_loop, a, b, offs, dout)
    end = case[3][-1]
    assert y.shape == y0.shape
    assert rel(y[:end], y0[:end]) < 1e-5
    if impl is not _torch_gmm:  # torch leaves the rows after offs[-1] unspecified; ours are zero
        assert rel(y, y0) < 1e-5 and rel(da, da0) < 1e-5
    assert rel(da[:end], da0[:end]) < 1e-5
    assert rel(db, db0) < 1e-5


@needs_triton
def test_grouped_mm_bf16_and_gradient_layout():
    a, b, offs, dout = _inputs(50, 40, 33, [10, 10, 25, 50], dtype=torch.bfloat16, transposed=True)
    y, da, db = _run(G.grouped_mm, a, b, offs, dout)
    y0, da0, db0 = _run(G.grouped_mm_loop, a.float(), b.float(), offs, dout.float())
    assert y.dtype == torch.bfloat16 and max(rel(y, y0), rel(da, da0), rel(db, db0)) < 1e-2
    assert db.stride() == b.stride()  # the weight gradient is laid out like the (transposed) weight
    assert db[1].abs().sum() == 0     # an expert with no rows gets a zero gradient


def test_tile_schedule_covers_every_row_once():
    offs = torch.tensor([3, 3, 20, 21], dtype=torch.int32)
    group, row0, end, ends = G.tile_schedule(offs, M=25, block_m=4)
    real = group <= 4
    covered = torch.zeros(25, dtype=torch.long)
    for g, r, e in zip(group[real].tolist(), row0[real].tolist(), end[real].tolist()):
        covered[r:min(r + 4, e)] += 1
    assert covered.tolist() == [1] * 25
    assert group.numel() >= int(real.sum()) and ends.tolist() == [3, 3, 20, 21]


def test_bad_input_names_the_argument():
    a, b = torch.randn(6, 4), torch.randn(2, 4, 3)
    offs = torch.tensor([2, 6], dtype=torch.int32)
    for bad, words in [((a, b, offs.long()), "int32"), ((a, b[:, :3], offs), "K must match"),
                       ((a, b.double(), offs), "one dtype"), ((a[0], b, offs), "2-D"),
                       ((a, b, torch.tensor([4, 2], dtype=torch.int32)), "non-decreasing")]:
        with pytest.raises((ValueError, TypeError), match=words):
            G.grouped_mm_loop(*bad)


def test_import_is_lazy_and_missing_triton_is_clear():
    code = ("import sys; sys.modules['triton'] = None\n"
            "import torch, cs336_nb.moe_grouped_gemm as G\n"
            "a, b, o = torch.randn(4, 4), torch.randn(1, 4, 4), torch.tensor([4], dtype=torch.int32)\n"
            "assert torch.allclose(G.grouped_mm_loop(a, b, o), a @ b[0])\n"
            "try:\n    G.grouped_mm(a, b, o)\nexcept RuntimeError as e:\n    print('OK', e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("OK") and "pip install triton" in r.stdout, r.stdout + r.stderr


@cuda
def test_grouped_mm_cuda_bf16_matches_torch():
    offs = G.random_offs(2048, 8, 64, "cuda")
    a = torch.randn(2048 * 8, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    b = torch.randn(64, 192, 256, device="cuda", dtype=torch.bfloat16).transpose(1, 2).requires_grad_()
    dout = torch.randn(a.shape[0], 192, device="cuda", dtype=torch.bfloat16)
    ours, ref = _run(G.grouped_mm, a, b, offs, dout), _run(_torch_gmm, a, b, offs, dout)
    for x, r in zip(ours, ref): assert rel(x, r) < 1e-2


# Expert parallelism: 2 and 4 gloo processes against one process (one launch per world size, all configs inside).
EP_CONFIGS = [
    dict(d_model=16, d_ff=12, num_experts=8, top_k=2, num_shared_experts=1),
    dict(d_model=16, d_ff=12, num_experts=8, top_k=3, scoring="sigmoid", n_groups=4, topk_groups=2, routed_scaling=2.5,
         norm_topk=True),
    dict(d_model=16, d_ff=12, num_experts=8, top_k=2, norm_topk=False, capacity_factor=1.0, num_shared_experts=2,
         d_ff_shared=8),
]


@pytest.mark.parametrize("world_size", [2, 4])
def test_expert_parallel_matches_one_process(world_size):
    from cs336_nb import moe_parallel as MP
    from cs336_nb.parallel import launch
    ep = launch(MP.expert_parallel_check, world_size, EP_CONFIGS, tokens=20, seed=1)
    ref = MP.expert_parallel_reference(EP_CONFIGS, world_size, tokens=20, seed=1)
    for cfg, err in zip(EP_CONFIGS, MP.expert_parallel_errors(ep, ref)):
        assert max(err.values()) < 1e-5, (cfg, err)
    assert max(ep[r][2]["drop_rate"] for r in range(world_size)) > 0  # the capacity config really drops slots
    for r in range(world_size):  # each rank holds its slice of the experts, under the MoE's parameter names
        grads = ep[r][0]["grads"]
        assert grads["experts.w1"].shape == (8 // world_size, 12, 16) and "router.weight" in grads
    sent = [sum(ep[r][0]["all_to_all"]["send_rows"]) for r in range(world_size)]
    received = [sum(ep[r][0]["all_to_all"]["recv_rows"]) for r in range(world_size)]
    assert sum(sent) == sum(received) == 20 * 2 * world_size  # no capacity: every slot travels (or stays) once
    a2a = ep[0][0]["all_to_all"]
    assert a2a["bytes_sent"] == (sent[0] - a2a["send_rows"][0]) * 16 * 4


def test_shard_expert_state_and_errors():
    from cs336_nb import moe_parallel as MP
    from cs336_nb.moe import MoE
    moe = MoE(8, 6, 4, 2, num_shared_experts=1)
    parts = [MP.shard_expert_state(moe.state_dict(), r, 2) for r in range(2)]
    assert torch.equal(torch.cat([p["experts.w2"] for p in parts]), moe.experts.w2)
    assert torch.equal(parts[1]["router.weight"], moe.router.weight) and torch.equal(parts[1]["shared.w1.weight"], moe.shared.w1.weight)
    with pytest.raises(ValueError, match="do not split"):
        MP.shard_expert_state(moe.state_dict(), 0, 3)
    with pytest.raises(RuntimeError, match="process group"):
        MP.ExpertParallelMoE(8, 6, 4, 2)
    assert MP.all_to_all_bytes(16384, 8, 2048, 8) == 16384 * 8 * 7 / 8 * 2048 * 2
