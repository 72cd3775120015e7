"""Lecture 6 kernels against references. On CPU the Triton kernels run in Triton's interpreter (TRITON_INTERPRET=1,
set here before triton is imported), at tiny sizes; the GPU tests run only where CUDA is present."""
import math
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from cs336_nb import kernels as K  # noqa: E402

needs_triton = pytest.mark.skipif(not K.triton_available(), reason="triton is not installed")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def test_import_without_triton_is_lazy():
    import subprocess, sys
    code = ("import sys, cs336_nb.kernels as K; assert 'triton' not in sys.modules, 'triton imported eagerly'; "
            "print(K.FlashAttention2PyTorch.__name__)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_missing_triton_gives_clear_error():
    import subprocess, sys
    code = ("import sys; sys.modules['triton'] = None\n"
            "import torch, cs336_nb.kernels as K\n"
            "try:\n    K.gelu_triton(torch.randn(4))\nexcept K.TritonUnavailable as e:\n    print('OK', e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("OK"), r.stdout
    assert "pip install triton" in r.stdout, r.stdout


PUBLIC = ("FLASH_CONFIGS FlashAttention2PyTorch FlashAttention2Triton GELU_CUDA_SOURCE RMSNORM_BWD_CONFIG "
          "RMSNORM_MAX_DIM RMSNormTritonFunction TritonRMSNorm TritonUnavailable attention_flops attention_impls "
          "attention_reference bench_attention bench_memory_bound flash_config gelu_cuda gelu_eager gelu_torch gelu_triton "
          "interpret_triton_without_gpu matmul_tile_efficiency measure_copy_bandwidth measure_matmul_flops plot_roofline "
          "register_attention_backends rmsnorm_eager rmsnorm_triton roofline softmax_eager softmax_triton time_fn "
          "triton_available triton_interpreting").split()


def test_package_reexports_every_kernel_module():
    "One module per kernel; `cs336_nb.kernels` re-exports their public names (the same objects, not copies)."
    from cs336_nb.kernels import _triton, elementwise, flash_attention, measurements, rmsnorm, ceilings
    assert [n for n in PUBLIC if not hasattr(K, n)] == []
    for m in (_triton, ceilings, elementwise, rmsnorm, flash_attention, measurements):
        assert m.__all__, m.__name__
        assert set(m.__all__) <= set(K.__all__), f"{m.__name__}: {set(m.__all__) - set(K.__all__)} not re-exported"
        for n in m.__all__:
            assert getattr(K, n) is getattr(m, n), f"{m.__name__}.{n}"
    assert K._import_triton is _triton._import_triton  # benchmarks/bench_kernels.py uses it


@needs_triton
def test_each_kernel_module_binds_triton_in_its_own_globals():
    "@triton.jit resolves `tl` in the defining module's globals: building one module's kernels binds that module only."
    import subprocess, sys
    code = ("import torch, cs336_nb.kernels as K\n"
            "from cs336_nb.kernels import elementwise as E, rmsnorm as R, flash_attention as FA\n"
            "assert E.tl is None and R.tl is None and FA.tl is None, 'triton bound before any kernel was built'\n"
            "x = torch.randn(5, 40, device=DEV, requires_grad=True); w = torch.randn(40, device=DEV, requires_grad=True)\n"
            "y = K.rmsnorm_triton(x, w); y.sum().backward()\n"
            "assert R.tl is R.triton.language and E.tl is None and FA.tl is None\n"
            "K.softmax_triton(x.detach()); assert E.tl is E.triton.language and FA.tl is None\n"
            "q = torch.randn(1, 20, 16, device=DEV); K.FlashAttention2Triton.apply(q, q, q, True)\n"
            "assert FA.tl is FA.triton.language is R.tl\n"
            "print('OK')\n").replace("DEV", repr(DEV))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == "OK", r.stdout


def test_flash_config_without_building_kernels():
    "flash_config is public: it must not need the kernels built (nor Triton imported) to answer."
    import subprocess, sys
    code = ("import sys, cs336_nb.kernels as K\n"
            "print(K.flash_config(64, False), K.flash_config(128, True, 'cuda', 4), K.flash_config(8, True, 'cpu'))\n"
            "assert 'triton' not in sys.modules\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr

@needs_triton
@pytest.mark.parametrize("n", [1, 1000, 4099])
def test_gelu_triton(n):
    torch.manual_seed(n)
    x = torch.randn(n, device=DEV) * 3
    out = K.gelu_triton(x, block=1024)
    ref = torch.nn.functional.gelu(x.double(), approximate="tanh")
    assert not out.isnan().any()
    assert rel(out, ref) < 1e-6
    assert rel(K.gelu_eager(x), ref) < 1e-4  # 1 + tanh(z) cancels for x < -3, where CPU tanh is off by up to ~1e-4 in some processes


@needs_triton
@pytest.mark.parametrize("shape", [(1, 7), (37, 1000), (3, 5, 130)])
def test_softmax_triton(shape):
    torch.manual_seed(0)
    x = torch.randn(*shape, device=DEV) * 10
    ref = torch.softmax(x.double(), -1)
    assert rel(K.softmax_triton(x), ref) < 1e-6
    assert rel(K.softmax_eager(x), ref) < 1e-6


@needs_triton
@pytest.mark.parametrize("shape", [(5, 100), (7, 3, 64), (70, 33)])
def test_rmsnorm_triton_fwd_bwd(shape):
    torch.manual_seed(1)
    x = torch.randn(*shape, device=DEV, requires_grad=True)
    w = torch.randn(shape[-1], device=DEV, requires_grad=True)
    dy = torch.randn(*shape, device=DEV)
    y = K.rmsnorm_triton(x, w)
    gx, gw = torch.autograd.grad(y, (x, w), dy)
    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    y64 = K.rmsnorm_eager(x64, w64)
    rx, rw = torch.autograd.grad(y64, (x64, w64), dy.double())
    assert rel(y, y64) < 1e-5
    assert rel(gx, rx) < 1e-5
    assert rel(gw, rw) < 1e-5


@needs_triton
def test_rmsnorm_module_drop_in():
    from cs336_nb.model import RMSNorm
    torch.manual_seed(2)
    ref = RMSNorm(48).to(DEV)
    with torch.no_grad(): ref.weight.normal_()
    ours = K.TritonRMSNorm(48).to(DEV)
    ours.load_state_dict(ref.state_dict())  # same state dict
    x = torch.randn(9, 48, device=DEV)
    assert rel(ours(x), ref(x)) < 1e-5
    assert rel(K.TritonRMSNorm.from_module(ref)(x), ref(x)) < 1e-5
    with pytest.raises(ValueError, match="d_model"):
        K.TritonRMSNorm(0)
    with pytest.raises(ValueError, match="weight"):
        K.rmsnorm_triton(x, torch.ones(47, device=DEV))


TOL32 = 1e-4 if DEV == "cpu" else 5e-3  # on a GPU tl.dot runs float32 as tf32


def _check_flash(cls, lead, nq, nk, d, causal, dtype=torch.float32, device=DEV, tol=None):
    tol = tol or (1e-4 if device == "cpu" else TOL32)
    q = torch.randn(*lead, nq, d, device=device, dtype=dtype, requires_grad=True)
    k = torch.randn(*lead, nk, d, device=device, dtype=dtype, requires_grad=True)
    v = torch.randn(*lead, nk, d, device=device, dtype=dtype, requires_grad=True)
    out = cls.apply(q, k, v, causal)
    saved = [t for t in out.grad_fn.saved_tensors if t.shape == (math.prod(lead), nq)]
    assert len(saved) == 1, "logsumexp must be the one saved tensor of shape (batch, n_queries)"
    do = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), do)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref, lse = K.attention_reference(q64, k64, v64, causal)
    ref_grads = torch.autograd.grad(ref, (q64, k64, v64), do.double())
    errs = [rel(out, ref), rel(saved[0].view(lse.shape), lse)] + [rel(a, b) for a, b in zip(grads, ref_grads)]
    assert all(e == e for e in errs), errs
    assert max(errs) < tol, errs


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("lead,nq,nk,d", [((2,), 37, 37, 8), ((1, 2), 20, 45, 16), ((2,), 50, 17, 8)])
def test_flash_pytorch(lead, nq, nk, d, causal):
    torch.manual_seed(3)
    _check_flash(K.FlashAttention2PyTorch, lead, nq, nk, d, causal, device="cpu")


@pytest.mark.parametrize("causal", [False, True])
def test_flash_pytorch_gradcheck(causal):
    torch.manual_seed(4)
    q = torch.randn(2, 19, 8, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(2, 23, 8, dtype=torch.float64, requires_grad=True) for _ in range(2))
    assert torch.autograd.gradcheck(lambda q, k, v: K.FlashAttention2PyTorch.apply(q, k, v, causal), (q, k, v))


@needs_triton
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("lead,nq,nk,d", [((2,), 37, 37, 16), ((1, 2), 20, 45, 8), ((2,), 50, 17, 24), ((1,), 64, 64, 16)])
def test_flash_triton_matches_autograd_of_naive(lead, nq, nk, d, causal):
    torch.manual_seed(5)
    _check_flash(K.FlashAttention2Triton, lead, nq, nk, d, causal)


@needs_triton
def test_flash_triton_odd_block_configs():
    # tiles of different shapes for forward, dK/dV and dQ (the GPU uses such mixes)
    if DEV != "cpu": pytest.skip("interpreter-size config test")
    torch.manual_seed(6)
    saved = dict(K.FLASH_CONFIGS)
    try:
        for c in (False, True):
            K.FLASH_CONFIGS[(16, c)] = ((32, 16, 1, 1), (16, 32, 1, 1), (32, 16, 1, 1))
        for c in (False, True):
            _check_flash(K.FlashAttention2Triton, (2,), 45, 70, 16, c)
            _check_flash(K.FlashAttention2Triton, (2,), 70, 33, 16, c)
    finally:
        K.FLASH_CONFIGS.clear()
        K.FLASH_CONFIGS.update(saved)


def test_bad_inputs():
    q = torch.randn(2, 5, 8)
    with pytest.raises(ValueError, match="k"):
        K.FlashAttention2PyTorch.apply(q, torch.randn(2, 5, 4), torch.randn(2, 5, 8), False)
    with pytest.raises(ValueError, match="q"):
        K.FlashAttention2PyTorch.apply(torch.randn(5, 8), torch.randn(5, 8), torch.randn(5, 8), False)
    with pytest.raises(ValueError, match="leading"):
        K.FlashAttention2PyTorch.apply(q, torch.randn(3, 5, 8), torch.randn(3, 5, 8), False)


@needs_triton
def test_attention_backends_registered():
    from cs336_nb import model as M
    assert {"flash_pytorch", "flash_triton"} <= set(M.available_attention_backends())
    torch.manual_seed(7)
    q, k, v = (torch.randn(1, 2, 21, 16, device=DEV) for _ in range(3))
    ref = M.get_attention_backend("naive")(q, k, v, True)
    for name in ("flash_pytorch", "flash_triton"):
        assert rel(M.get_attention_backend(name)(q, k, v, True), ref) < TOL32


def test_accounting():
    assert K.attention_flops(2, 8, 8, 4) == 4 * 2 * 8 * 8 * 4
    assert K.attention_flops(2, 8, 8, 4, is_causal=True, backward=True) == 3.5 * 4 * 2 * 8 * 8 * 4 / 2
    assert K.roofline(2.0, 100.0, 10.0) == 20.0
    assert K.roofline(50.0, 100.0, 10.0) == 100.0


@cuda
@needs_triton
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 5e-3), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("causal", [False, True])
def test_flash_triton_gpu(dtype, tol, causal):
    torch.manual_seed(8)
    for lead, nq, nk, d in [((4,), 128, 128, 64), ((2, 3), 1000, 1000, 128), ((2,), 333, 777, 64), ((2,), 513, 129, 96)]:
        _check_flash(K.FlashAttention2Triton, lead, nq, nk, d, causal, dtype=dtype, device="cuda", tol=tol)


@cuda
@needs_triton
def test_rmsnorm_gelu_softmax_gpu_bf16():
    torch.manual_seed(9)
    x = torch.randn(1025, 4096, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(4096, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    dy = torch.randn_like(x)
    y = K.rmsnorm_triton(x, w)
    g = torch.autograd.grad(y, (x, w), dy)
    yr = K.rmsnorm_eager(x, w)
    gr = torch.autograd.grad(yr, (x, w), dy)
    assert rel(y, yr) < 1e-2
    assert rel(g[0], gr[0]) < 1e-2
    assert rel(g[1], gr[1]) < 1e-2
    assert rel(K.softmax_triton(x), torch.softmax(x.float(), -1)) < 1e-2
    assert rel(K.gelu_triton(x), K.gelu_torch(x)) < 1e-2


@cuda
@needs_triton
def test_flash_backend_under_torch_compile():
    "The Triton FlashAttention backend inside a compiled model: same loss and gradients as the sdpa backend."
    from cs336_nb.model import ModelConfig, TransformerLM
    from cs336_nb.training import cross_entropy
    cfg = ModelConfig.tiny(vocab_size=256, context_length=128, d_model=128, num_heads=2, num_layers=2)
    out = {}
    for backend in ("sdpa", "flash_triton"):
        torch.manual_seed(0)
        m = TransformerLM.from_config(cfg.replace(attn_backend=backend), device="cuda")
        x = torch.randint(0, 256, (4, 128), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
        step = torch.compile(lambda x: cross_entropy(m(x), x))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = step(x)
        loss.backward()
        out[backend] = (loss.item(), m.layers[0].attn.q_proj.weight.grad.float())
    assert abs(out["sdpa"][0] - out["flash_triton"][0]) < 2e-2
    g0, g1 = out["sdpa"][1], out["flash_triton"][1]
    assert (g0 - g1).norm() / g0.norm() < 5e-2


# --- custom operators (torch.library): schema, fake implementations, autograd, torch.compile without graph breaks ---

def _op_cases():
    "(name, operator, example args) for every custom operator of Lecture 6, built on DEV at tiny sizes."
    from cs336_nb.kernels import elementwise as E, flash_attention as FA, rmsnorm as R
    g = torch.Generator().manual_seed(10)
    rnd = lambda *shape, grad=False: torch.randn(*shape, generator=g).to(DEV).requires_grad_(grad)
    x, w = rnd(6, 40, grad=True), rnd(40, grad=True)
    q, k, v = (rnd(1, 2, 20, 16, grad=True) for _ in range(3))
    o, lse = FA._flash_fwd_op(q, k, v, True)
    return [("rmsnorm_fwd", R._rmsnorm_fwd_op, (x, w, 1e-5)),
            ("rmsnorm_bwd", R._rmsnorm_bwd_op, (rnd(6, 40), x.detach(), w.detach(), rnd(6).abs())),
            ("gelu", E._gelu_op, (x, 64)),
            ("softmax", E._softmax_op, (x,)),
            ("flash_attention_fwd", FA._flash_fwd_op, (q, k, v, True)),
            ("flash_attention_bwd", FA._flash_bwd_op, (torch.randn_like(o), q.detach(), k.detach(), v.detach(),
                                                       o.detach(), lse.detach(), True))]


@needs_triton
@pytest.mark.parametrize("case", range(6), ids=["rmsnorm_fwd", "rmsnorm_bwd", "gelu", "softmax", "flash_fwd", "flash_bwd"])
def test_custom_op_opcheck(case):
    "torch.library.opcheck: schema, fake implementation against the real one, autograd registration, AOT dispatch."
    name, op, args = _op_cases()[case]
    torch.library.opcheck(op, args)


@needs_triton
@pytest.mark.parametrize("fn,ref", [(K.gelu_triton, K.gelu_torch), (K.softmax_triton, lambda t: torch.softmax(t, -1)),
                                    (lambda t: K.rmsnorm_triton(t, torch.linspace(0.5, 2, t.shape[-1], device=t.device)),
                                     lambda t: K.rmsnorm_eager(t, torch.linspace(0.5, 2, t.shape[-1], device=t.device)))],
                         ids=["gelu", "softmax", "rmsnorm"])
def test_triton_ops_gradients(fn, ref):
    "Every Triton op is differentiable (GeLU and softmax through their custom operators' autograd formulas)."
    torch.manual_seed(11)
    x = torch.randn(7, 96, device=DEV, dtype=torch.float64 if DEV == "cpu" else torch.float32, requires_grad=True)
    dy = torch.randn_like(x)
    ours = torch.autograd.grad(fn(x), x, dy)[0]
    theirs = torch.autograd.grad(ref(x), x, dy)[0]
    assert rel(ours, theirs) < 1e-5


def _tiny_model_with_our_kernels():
    "A tiny TransformerLM on DEV with the flash_triton backend and every RMSNorm swapped for TritonRMSNorm."
    from cs336_nb import model as M
    M.get_attention_backend("flash_triton")   # load the backend before tracing (the model imports it lazily)
    cfg = M.ModelConfig.tiny(vocab_size=64, context_length=16, d_model=32, num_heads=2, num_layers=1)
    torch.manual_seed(12)
    m = M.TransformerLM.from_config(cfg.replace(attn_backend="flash_triton"), device=DEV)
    for mod in list(m.modules()):
        for cn, child in list(mod.named_children()):
            if isinstance(child, M.RMSNorm): setattr(mod, cn, K.TritonRMSNorm.from_module(child))
    return m


@needs_triton
def test_model_with_our_kernels_compiles_without_graph_breaks():
    "fullgraph=True fails on any graph break; the compiled model matches eager in loss and gradients."
    m = _tiny_model_with_our_kernels()
    assert any(isinstance(mod, K.TritonRMSNorm) for mod in m.modules())
    x = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0)).to(DEV)
    explained = torch._dynamo.explain(m)(x)
    assert explained.graph_break_count == 0, explained.break_reasons
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager" if DEV == "cpu" else "inductor")
    loss = compiled(x).float().logsumexp(-1).mean()
    grads = torch.autograd.grad(loss, [p for p in m.parameters()])
    loss_ref = m(x).float().logsumexp(-1).mean()
    grads_ref = torch.autograd.grad(loss_ref, [p for p in m.parameters()])
    assert abs(loss.item() - loss_ref.item()) < 1e-4
    assert max(rel(a, b) for a, b in zip(grads, grads_ref)) < 1e-3


def test_softmax_memory_traffic():
    "The eager softmax's per-op counts add up to the lecture's 5MN + M reads, 3MN + 2M writes; fused: MN and MN."
    from cs336_nb.kernels.elementwise import softmax_memory_traffic
    for m, n in [(1, 1), (3, 7), (4096, 50257)]:
        t = softmax_memory_traffic(m, n)
        assert t["eager total"] == dict(reads=5 * m * n + m, writes=3 * m * n + 2 * m)
        assert t["fused"] == dict(reads=m * n, writes=m * n)


@needs_triton
def test_rmsnorm_eager_paths_agree():
    "The three eager paths (bare launcher without autograd, autograd.Function, custom operator) give one answer."
    from cs336_nb.kernels import rmsnorm as R
    torch.manual_seed(13)
    x = torch.randn(3, 5, 48, device=DEV)
    w = torch.randn(48, device=DEV)
    with torch.no_grad(): bare = K.rmsnorm_triton(x, w)
    via_function = K.RMSNormTritonFunction.apply(x.requires_grad_(), w, 1e-5)
    via_op = R._rmsnorm_fwd_op(x, w, 1e-5)[0]
    assert torch.equal(bare, via_function)
    assert torch.equal(bare, via_op)


@cuda
@needs_triton
def test_kernels_capture_in_cuda_graph():
    "Each Triton op (forward and backward) records into a CUDA graph and replays to the eager result."
    from cs336_nb.kernels.flash_attention import flash_attention_triton
    torch.manual_seed(14)
    x = torch.randn(1024, 512, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(512, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    q, k, v = (torch.randn(2, 4, 256, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    def step():
        y = K.rmsnorm_triton(x, w).float().sum() + K.softmax_triton(x).float().sum() + K.gelu_triton(x).float().sum()
        a = flash_attention_triton(q, k, v, True).float().sum()
        return torch.autograd.grad(y + a, (x, w, q, k, v))
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2): eager = step()   # warm-up: compile the kernels outside the capture
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(captured, eager):
        assert torch.equal(a, b)
