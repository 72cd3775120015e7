"Weight-only quantization (Lecture 8b): error bounds, packing, layers and models, state dicts, the Triton kernels (interpreter on CPU)."
import copy

import pytest
import torch

from cs336_nb.model import Linear, ModelConfig, TransformerLM
from cs336_nb.quantization import (GEMV_CONFIGS, Int4Linear, Int8Linear, dequantize_int4, dequantize_int8, int4_weight_matmul,
                                   int8_weight_matmul, model_bytes, pack_int4, quantize_int4, quantize_int8,
                                   quantize_weight_int4, quantize_weight_int8, unpack_int4)


DEV = "cuda" if torch.cuda.is_available() else "cpu"  # Triton kernels: the GPU, else the interpreter (conftest)
TOL = 0.2 if DEV == "cuda" else 1e-3  # tl.dot on float32 inputs uses TF32 on the GPU


def _w(n=48, k=256, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, k, generator=g) * torch.linspace(0.05, 4, n)[:, None]).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_error_within_half_a_step(dtype):
    w = _w(dtype=dtype)
    q, s = quantize_weight_int8(w)
    assert q.dtype == torch.int8 and s.dtype == dtype and s.shape == (w.shape[0],)
    err = (w.float() - q.float() * s.float()[:, None]).abs()
    assert (err <= s.float()[:, None] / 2 * (1 + 1e-2) + 1e-7).all()
    assert q.abs().max() == 127  # the absmax weight of each row maps to +-127


@pytest.mark.parametrize("G", [32, 64, 128])
def test_int4_error_within_half_a_step(G):
    w = _w()
    p, s, z = quantize_weight_int4(w, G)
    assert p.shape == (48, 128) and p.dtype == torch.uint8 and s.shape == z.shape == (48, 256 // G)
    err = (w - dequantize_int4(p, s, z)).abs()
    assert (err <= s.repeat_interleave(G, dim=1) / 2 + 1e-6).all()
    codes = unpack_int4(p)
    assert codes.max() <= 15 and codes.min() >= 0


def test_pack_unpack_round_trip_and_layout():
    c = torch.randint(0, 16, (5, 64), generator=torch.Generator().manual_seed(0))
    assert torch.equal(unpack_int4(pack_int4(c)), c.to(torch.uint8))
    assert pack_int4(torch.tensor([[3, 12]])).item() == 3 | (12 << 4)
    with pytest.raises(ValueError, match="even"): pack_int4(torch.zeros(2, 3, dtype=torch.long))


def test_bad_inputs():
    with pytest.raises(ValueError, match="divisible by group_size=128"): quantize_weight_int4(torch.randn(4, 96))
    with pytest.raises(ValueError, match="group_size must be a positive even int"): quantize_weight_int4(torch.randn(4, 96), 3)
    with pytest.raises(TypeError, match="2-D floating-point"): quantize_weight_int8(torch.randn(3))
    with pytest.raises(ValueError, match="backend must be one of"): Int8Linear.from_linear(Linear(8, 8), backend="x")(torch.randn(1, 8))
    with pytest.raises(TypeError, match="model must be an nn.Module"): quantize_int8("model")


@pytest.mark.parametrize("make", [lambda l: Int8Linear.from_linear(l), lambda l: Int4Linear.from_linear(l, 64)])
def test_layer_equals_matmul_with_the_dequantized_weight(make):
    torch.manual_seed(0)
    lin = Linear(128, 40)
    q = make(lin)
    w = dequantize_int8(q.weight, q.scale) if isinstance(q, Int8Linear) else q.dequantized_weight()
    x = torch.randn(2, 7, 128)
    torch.testing.assert_close(q(x), x @ w.T, atol=1e-4, rtol=1e-4)
    assert (q(x) - lin(x)).norm() / lin(x).norm() < (0.01 if isinstance(q, Int8Linear) else 0.1)


def test_torch_backends_agree():
    torch.manual_seed(0)
    lin = Linear(256, 64)
    x = torch.randn(3, 256)
    torch.testing.assert_close(Int8Linear.from_linear(lin, backend="torch")(x), Int8Linear.from_linear(lin)(x), atol=1e-4, rtol=1e-4)
    try:
        got = Int4Linear.from_linear(lin, backend="torch")(x.bfloat16()).float()
    except (RuntimeError, NotImplementedError, AttributeError):
        pytest.skip("no int4 weight-only op in this torch build")
    torch.testing.assert_close(got, Int4Linear.from_linear(lin)(x.bfloat16()).float(), atol=0.05, rtol=0.02)


@pytest.mark.parametrize("M,N,K", [(1, 64, 128), (3, 72, 384), (17, 40, 256)])
@pytest.mark.parametrize("split_k", [1, 2])
def test_triton_int8_kernel(M, N, K, split_k):
    w, x = _w(N, K).to(DEV), torch.randn(M, K, generator=torch.Generator().manual_seed(1)).to(DEV)
    q, s = quantize_weight_int8(w)
    torch.testing.assert_close(int8_weight_matmul(x, q, s, split_k=split_k), x @ dequantize_int8(q, s).T, atol=TOL, rtol=1e-4)


@pytest.mark.parametrize("M,N,K,G", [(1, 64, 128, 128), (3, 72, 384, 128), (2, 40, 256, 32), (5, 16, 512, 256)])
@pytest.mark.parametrize("split_k", [1, 3])
def test_triton_int4_kernel(M, N, K, G, split_k):
    w, x = _w(N, K).to(DEV), torch.randn(M, K, generator=torch.Generator().manual_seed(1)).to(DEV)
    p, s, z = quantize_weight_int4(w, G)
    torch.testing.assert_close(int4_weight_matmul(x, p, s, z, G, split_k=split_k), x @ dequantize_int4(p, s, z).T, atol=TOL, rtol=1e-4)


def test_triton_backend_in_the_layers():
    torch.manual_seed(0)
    lin = Linear(256, 48, device=DEV)
    x = torch.randn(4, 256, device=DEV)
    for a, b in [(Int8Linear.from_linear(lin, backend="triton"), Int8Linear.from_linear(lin)),
                 (Int4Linear.from_linear(lin, backend="triton"), Int4Linear.from_linear(lin))]:
        torch.testing.assert_close(a(x), b(x), atol=TOL, rtol=1e-4)


@pytest.mark.parametrize("fn,cls", [(quantize_int8, Int8Linear), (lambda m, **k: quantize_int4(m, 64, **k), Int4Linear)])
def test_model_quantization_state_dict_round_trip(fn, cls, tmp_path):
    cfg = ModelConfig.tiny(num_layers=2, d_model=128, d_ff=256, num_kv_heads=2, vocab_size=97, context_length=32)
    torch.manual_seed(0)
    base = TransformerLM.from_config(cfg).eval()
    qm = fn(copy.deepcopy(base))
    assert all(type(m) is not Linear for m in qm.modules())  # every Linear replaced, the LM head too (untied)
    assert type(qm.layers[1].ffn.w2) is cls
    torch.save(qm.state_dict(), tmp_path / "q.pt")
    torch.manual_seed(1)
    fresh = fn(TransformerLM.from_config(cfg)).eval()
    fresh.load_state_dict(torch.load(tmp_path / "q.pt"))
    ids = torch.randint(0, 97, (2, 12))
    with torch.no_grad():
        assert torch.equal(fresh(ids), qm(ids))
        assert (qm(ids) - base(ids)).abs().max() < 1.0
    assert model_bytes(qm) < model_bytes(base) * (0.4 if cls is Int8Linear else 0.3)


def test_tied_head_kept_unless_asked():
    cfg = ModelConfig.tiny(num_layers=1, d_model=128, d_ff=256, tie_embeddings=True)
    m = quantize_int8(TransformerLM.from_config(cfg))
    assert type(m.lm_head) is Linear and m.lm_head.weight is m.token_embeddings.weight
    assert type(quantize_int8(TransformerLM.from_config(cfg), lm_head=True).lm_head) is Int8Linear
    assert type(quantize_int8(TransformerLM.from_config(ModelConfig.tiny(num_layers=1)), lm_head=False).lm_head) is Linear


def test_quantized_model_generates_like_its_dequantized_twin():
    cfg = ModelConfig.tiny(num_layers=2, d_model=128, d_ff=256, vocab_size=97, context_length=32)
    torch.manual_seed(0)
    qm = quantize_int8(TransformerLM.from_config(cfg)).eval()
    twin = TransformerLM.from_config(cfg).eval()  # the same function with float weights
    sd = {k: v for k, v in qm.state_dict().items()}
    with torch.no_grad():
        for name, mod in qm.named_modules():
            if isinstance(mod, Int8Linear): twin.get_submodule(name).weight.copy_(dequantize_int8(mod.weight, mod.scale))
        for k, v in twin.state_dict().items():
            if k in sd and sd[k].dtype == v.dtype and sd[k].shape == v.shape: v.copy_(sd[k])
    prompt = torch.randint(0, 97, (2, 5))
    assert torch.equal(qm.generate(prompt, 10, temperature=0), twin.generate(prompt, 10, temperature=0))


@pytest.mark.parametrize("config", list(GEMV_CONFIGS))
@pytest.mark.parametrize("M,N,K,split_k", [(1, 64, 256, 1), (1, 72, 384, 2), (3, 40, 512, 3), (4, 33, 1024, None)])
def test_gemv_int8_kernel(config, M, N, K, split_k):
    w, x = _w(N, K).to(DEV), torch.randn(M, K, generator=torch.Generator().manual_seed(1)).to(DEV)
    q, s = quantize_weight_int8(w)
    got = int8_weight_matmul(x, q, s, kernel="gemv", config=config, split_k=split_k)
    torch.testing.assert_close(got, x @ dequantize_int8(q, s).T, atol=TOL, rtol=1e-4)


@pytest.mark.parametrize("config", list(GEMV_CONFIGS))
@pytest.mark.parametrize("M,N,K,G,split_k", [(1, 64, 256, 128, 1), (1, 72, 384, 128, 2), (2, 40, 256, 32, 1), (3, 16, 512, 256, 3),
                                             (4, 33, 1024, 64, None)])
def test_gemv_int4_kernel(config, M, N, K, G, split_k):
    w, x = _w(N, K).to(DEV), torch.randn(M, K, generator=torch.Generator().manual_seed(1)).to(DEV)
    p, s, z = quantize_weight_int4(w, G)
    got = int4_weight_matmul(x, p, s, z, G, kernel="gemv", config=config, split_k=split_k)
    torch.testing.assert_close(got, x @ dequantize_int4(p, s, z).T, atol=TOL, rtol=1e-4)


def test_gemv_bf16_activations():
    w = _w(48, 256).to(DEV)
    x = torch.randn(1, 256, generator=torch.Generator().manual_seed(1)).to(DEV, torch.bfloat16)
    q, s = quantize_weight_int8(w)
    p, sc, z = quantize_weight_int4(w, 128)
    torch.testing.assert_close(int8_weight_matmul(x, q, s, kernel="gemv").float(), x.float() @ dequantize_int8(q, s).T, atol=0.5, rtol=0.02)
    torch.testing.assert_close(int4_weight_matmul(x, p, sc, z, 128, kernel="gemv").float(), x.float() @ dequantize_int4(p, sc, z).T, atol=0.5, rtol=0.02)


def test_kernel_choice():
    w, x = _w(40, 256).to(DEV), torch.randn(6, 256, generator=torch.Generator().manual_seed(1)).to(DEV)
    q, s = quantize_weight_int8(w)
    torch.testing.assert_close(int8_weight_matmul(x[:1], q, s), int8_weight_matmul(x[:1], q, s, kernel="tile"), atol=TOL, rtol=1e-4)
    torch.testing.assert_close(int8_weight_matmul(x, q, s), int8_weight_matmul(x, q, s, kernel="gemv"), atol=TOL, rtol=1e-4)
    with pytest.raises(ValueError, match="kernel must be"): int8_weight_matmul(x, q, s, kernel="gemm")


def test_custom_ops_opcheck():
    from cs336_nb.quantization import _int4_mm_op, _int8_mm_op
    w, x = _w(48, 256).to(DEV), torch.randn(2, 256, generator=torch.Generator().manual_seed(1)).to(DEV)
    torch.library.opcheck(_int8_mm_op, (x, *quantize_weight_int8(w)))
    torch.library.opcheck(_int4_mm_op, (x, *quantize_weight_int4(w, 128), 128))


@pytest.mark.parametrize("backend", ["dequant", "triton", "torch"])
@pytest.mark.parametrize("bits", [8, 4])
def test_compiled_decode_equals_eager(bits, backend):
    cfg = ModelConfig.tiny(num_layers=2, d_model=128, d_ff=256, vocab_size=96, context_length=32)  # vocab % 16: the CPU int4 op
    torch.manual_seed(0)
    base = TransformerLM.from_config(cfg, device=DEV).eval()
    qm = quantize_int8(base, backend=backend) if bits == 8 else quantize_int4(base, 64, backend=backend)
    prompt = torch.randint(0, 96, (1, 5), device=DEV)
    eager = qm.generate(prompt, 6, temperature=0)
    assert torch.equal(qm.generate(prompt, 6, temperature=0, compile=True), eager)  # fullgraph=True: a graph break raises


@pytest.mark.parametrize("backend", ["dequant", "triton", "torch"])
@pytest.mark.parametrize("rows", [1, 5])  # the GEMV kernel, and the tile kernel above GEMV_MAX_ROWS
@pytest.mark.parametrize("bits", [8, 4])
def test_layer_backends_match_the_dequantized_reference(bits, rows, backend):
    torch.manual_seed(0)
    lin = Linear(256, 48, device=DEV)
    q = Int8Linear.from_linear(lin, backend=backend) if bits == 8 else Int4Linear.from_linear(lin, 128, backend=backend)
    w = dequantize_int8(q.weight, q.scale) if bits == 8 else q.dequantized_weight()
    x = torch.randn(rows, 256, device=DEV)
    if backend == "torch" and bits == 4: x, w = x.bfloat16(), w.bfloat16()  # PyTorch's int4 operator takes bf16
    tol = 0.1 if x.dtype == torch.bfloat16 else TOL
    torch.testing.assert_close(q(x).float(), (x @ w.T).float(), atol=tol, rtol=0.02)
