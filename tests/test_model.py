"Heavier checks of cs336_nb.model (Lecture 3): equality with a model built from PyTorch's modules, gradients, GQA, RoPE."
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cs336_nb.model import (Embedding, Linear, ModelConfig, MultiHeadSelfAttention, RMSNorm, RotaryPositionalEmbedding,
                            SwiGLU, TransformerBlock, TransformerLM, available_attention_backends, get_attention_backend,
                            register_attention_backend, scaled_dot_product_attention, set_attention_backend, softmax,
                            use_attention_backend, z_loss)


class _RefBlock(nn.Module):
    "The same pre-norm block from PyTorch's modules (nn.Linear, nn.RMSNorm, F.scaled_dot_product_attention)."
    def __init__(self, d, h, f, theta, T):
        super().__init__()
        self.h, self.d = h, d
        self.ln1, self.ln2 = nn.RMSNorm(d, eps=1e-5), nn.RMSNorm(d, eps=1e-5)
        self.attn = nn.Module()
        for n in ("q_proj", "k_proj", "v_proj", "output_proj"): setattr(self.attn, n, nn.Linear(d, d, bias=False))
        self.ffn = nn.Module()
        self.ffn.w1, self.ffn.w3, self.ffn.w2 = nn.Linear(d, f, bias=False), nn.Linear(d, f, bias=False), nn.Linear(f, d, bias=False)
        dk = d // h
        ang = torch.outer(torch.arange(T).double(), theta ** (-torch.arange(0, dk, 2).double() / dk))
        self.register_buffer("freqs", torch.polar(torch.ones_like(ang), ang).to(torch.complex64), persistent=False)

    def rope(self, x):  # complex-number RoPE (Llama's reference formulation)
        z = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
        return torch.view_as_real(z * self.freqs[: x.shape[-2]]).flatten(-2).to(x.dtype)

    def forward(self, x):
        B, T, d = x.shape
        y = self.ln1(x)
        q, k, v = (getattr(self.attn, n)(y).view(B, T, self.h, -1).transpose(1, 2) for n in ("q_proj", "k_proj", "v_proj"))
        a = F.scaled_dot_product_attention(self.rope(q), self.rope(k), v, is_causal=True)
        x = x + self.attn.output_proj(a.transpose(1, 2).reshape(B, T, d))
        y = self.ln2(x)
        return x + self.ffn.w2(F.silu(self.ffn.w1(y)) * self.ffn.w3(y))


class _RefLM(nn.Module):
    def __init__(self, V, T, d, L, h, f, theta):
        super().__init__()
        self.token_embeddings = nn.Embedding(V, d)
        self.layers = nn.ModuleList(_RefBlock(d, h, f, theta, T) for _ in range(L))
        self.ln_final = nn.RMSNorm(d, eps=1e-5)
        self.lm_head = nn.Linear(d, V, bias=False)

    def forward(self, ids):
        x = self.token_embeddings(ids)
        for l in self.layers: x = l(x)
        return self.lm_head(self.ln_final(x))


def _tiny(**kw):
    return ModelConfig.tiny(**{**dict(vocab_size=97, context_length=64, d_model=64, num_layers=2, num_heads=4, d_ff=160), **kw})


def test_matches_reference_built_from_torch_modules_and_state_dict_loads():
    torch.manual_seed(0)
    cfg = _tiny()
    ours = TransformerLM.from_config(cfg)
    ref = _RefLM(cfg.vocab_size, cfg.context_length, cfg.d_model, cfg.num_layers, cfg.num_heads, cfg.d_ff, cfg.rope_theta)
    # the reference's state dict (assignment-1 names) loads into ours as it is, strictly
    missing, unexpected = ours.load_state_dict(ref.state_dict(), strict=True)
    assert not missing and not unexpected
    ids = torch.randint(0, cfg.vocab_size, (3, 40))
    torch.testing.assert_close(ours(ids), ref(ids), atol=2e-5, rtol=1e-4)
    with use_attention_backend("sdpa"):
        torch.testing.assert_close(ours(ids), ref(ids), atol=2e-5, rtol=1e-4)


def test_gradients_flow_and_backends_agree():
    torch.manual_seed(0)
    cfg = _tiny(num_kv_heads=2, qk_norm=True)
    m = TransformerLM.from_config(cfg)
    ids = torch.randint(0, cfg.vocab_size, (2, 33))
    grads = {}
    for backend in ("naive", "sdpa"):
        m.zero_grad(set_to_none=True)
        with use_attention_backend(backend):
            loss = F.cross_entropy(m(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        grads[backend] = {n: p.grad.clone() for n, p in m.named_parameters()}
    for n, p in m.named_parameters():
        assert grads["naive"][n].abs().sum() > 0, f"no gradient reaches {n}"
        torch.testing.assert_close(grads["naive"][n], grads["sdpa"][n], atol=1e-5, rtol=1e-4)


def test_gqa_equals_mha_with_repeated_kv_weights():
    torch.manual_seed(0)
    d, h, hkv = 48, 6, 2
    gqa = MultiHeadSelfAttention(d, h, num_kv_heads=hkv, max_seq_len=32, theta=10000.0)
    mha = MultiHeadSelfAttention(d, h, max_seq_len=32, theta=10000.0)
    dh, g = d // h, h // hkv
    with torch.no_grad():
        mha.q_proj.weight.copy_(gqa.q_proj.weight); mha.output_proj.weight.copy_(gqa.output_proj.weight)
        for n in ("k_proj", "v_proj"):
            w = getattr(gqa, n).weight.view(hkv, dh, d).repeat_interleave(g, dim=0).reshape(d, d)
            getattr(mha, n).weight.copy_(w)
    x = torch.randn(2, 20, d)
    torch.testing.assert_close(gqa(x), mha(x), atol=1e-5, rtol=1e-5)
    assert gqa.k_proj.weight.shape == (hkv * dh, d)


def test_rope_makes_model_shift_invariant_in_position():
    # No absolute position embeddings: shifting every position by the same constant changes nothing.
    torch.manual_seed(0)
    cfg = _tiny()
    m = TransformerLM.from_config(cfg)
    ids = torch.randint(0, cfg.vocab_size, (2, 16))
    pos = torch.arange(16).expand(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(m(ids, pos + 17), m(ids, pos), atol=1e-4, rtol=1e-4)
        assert not torch.allclose(m(ids, pos.flip(-1)), m(ids, pos), atol=1e-3)


def test_causality_under_every_option():
    torch.manual_seed(0)
    for kw in [dict(), dict(norm="layer", norm_position="post"), dict(ffn="gelu"), dict(num_kv_heads=1), dict(rope_theta=None)]:
        m = TransformerLM.from_config(_tiny(**kw))
        ids = torch.randint(0, 97, (1, 30))
        ids2 = ids.clone(); ids2[0, 12] = (ids2[0, 12] + 1) % 97
        with torch.no_grad():
            a, b = m(ids), m(ids2)
        torch.testing.assert_close(a[:, :12], b[:, :12], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(a[:, 12:], b[:, 12:]), kw


@pytest.mark.parametrize("kw", [dict(), dict(tie_embeddings=True), dict(num_kv_heads=2, qk_norm=True), dict(norm="layer", ffn="relu"),
                                dict(rope_theta=None, ffn="gelu")])
def test_num_params_closed_form(kw):
    cfg = _tiny(**kw)
    m = TransformerLM.from_config(cfg)
    assert m.num_params() == cfg.num_params() == sum(p.numel() for p in m.parameters())
    assert m.num_params(include_embeddings=False) == cfg.num_params(include_embeddings=False)


def test_presets():
    small = ModelConfig.gpt2_small()
    assert (small.num_layers, small.d_model, small.num_heads, small.vocab_size, small.context_length) == (12, 768, 12, 50257, 1024)
    assert 120e6 < small.num_params() < 130e6  # 124M-shaped
    assert ModelConfig.gpt2_small(tie_embeddings=False).num_params() == small.num_params() + 50257 * 768
    with torch.device("meta"):
        m = TransformerLM.from_config(small)
    assert m.num_params() == small.num_params()


def test_dtypes_and_autocast():
    torch.manual_seed(0)
    cfg = _tiny()
    m = TransformerLM.from_config(cfg, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in m.parameters())
    ids = torch.randint(0, cfg.vocab_size, (2, 8))
    assert m(ids).dtype == torch.bfloat16
    m32 = TransformerLM.from_config(cfg)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m32(ids)
    assert out.dtype == torch.bfloat16
    r = RMSNorm(8); x = torch.randn(3, 8, dtype=torch.float16)
    assert r(x).dtype == torch.float16


def test_custom_backend_registry():
    calls = []
    def spy(q, k, v, is_causal):
        calls.append((tuple(q.shape), tuple(k.shape), is_causal))
        return get_attention_backend("sdpa")(q, k, v, is_causal)
    register_attention_backend("spy_test", spy)
    assert "spy_test" in available_attention_backends()
    m = MultiHeadSelfAttention(32, 4, num_kv_heads=2, attn_backend="spy_test")
    m(torch.randn(2, 5, 32))
    assert calls == [((2, 4, 5, 8), (2, 4, 5, 8), True)]  # K/V repeated to num_heads before the call
    prev = set_attention_backend("spy_test")
    try:
        MultiHeadSelfAttention(32, 4)(torch.randn(1, 3, 32))
    finally:
        set_attention_backend(prev)
    assert len(calls) == 2
    with pytest.raises(ValueError, match="not registered"):
        MultiHeadSelfAttention(32, 4, attn_backend="nope")(torch.randn(1, 3, 32))


def test_bad_arguments():
    with pytest.raises(ValueError, match="divisible"): MultiHeadSelfAttention(30, 4)
    with pytest.raises(ValueError, match="d_k must be even"): RotaryPositionalEmbedding(10000.0, 7, 16)
    with pytest.raises(ValueError, match="exceeds context_length"):
        TransformerLM.from_config(_tiny())(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="norm"): TransformerBlock(16, 2, 32, max_seq_len=8, theta=None, norm="batch")
    with pytest.raises(TypeError, match="integer"): Embedding(4, 2)(torch.zeros(3))
    with pytest.raises(TypeError, match="cfg"): TransformerLM.from_config(dict(d_model=3))
    with pytest.raises(ValueError, match="max_seq_len"): MultiHeadSelfAttention(16, 2, theta=10000.0)


def test_softmax_sdpa_and_zloss():
    torch.manual_seed(0)
    x = torch.randn(4, 5, 6) * 100
    torch.testing.assert_close(softmax(x, dim=1), torch.softmax(x, dim=1))
    q, k, v = torch.randn(2, 3, 9, 4), torch.randn(2, 3, 9, 4), torch.randn(2, 3, 9, 4)
    mask = torch.ones(9, 9, dtype=torch.bool).tril()
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, mask), F.scaled_dot_product_attention(q, k, v, is_causal=True))
    logits = torch.randn(3, 7, 11)
    torch.testing.assert_close(z_loss(logits), torch.logsumexp(logits, -1).pow(2).mean())


def test_later_backends_load_by_name():
    "attn_backend='flash_pytorch' works in a fresh process without importing cs336_nb.kernels first (no import side effects)."
    import subprocess, sys
    code = ("import sys, torch; from cs336_nb import model as M\n"
            "assert not any(m.startswith('cs336_nb.kernels') for m in sys.modules)\n"
            "m = M.TransformerLM.from_config(M.ModelConfig.tiny(num_layers=1, attn_backend='flash_pytorch'))\n"
            "ref = M.TransformerLM.from_config(M.ModelConfig.tiny(num_layers=1)); ref.load_state_dict(m.state_dict())\n"
            "x = torch.randint(0, 256, (2, 9))\n"
            "assert (m(x) - ref(x)).abs().max() < 1e-4\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.parametrize("backend", ["naive", "sdpa"])
@pytest.mark.parametrize("window", [1, 3, 64])
def test_sliding_window_matches_masked_reference(backend, window):
    "A sliding-window layer equals attention written out with the band mask (keys p - window + 1 .. p), GQA included."
    torch.manual_seed(0)
    mha = MultiHeadSelfAttention(32, 4, num_kv_heads=2, max_seq_len=64, theta=10000.0, attn_backend=backend, sliding_window=window)
    x = torch.randn(2, 20, 32)
    q = mha.rope(mha.q_proj(x).view(2, 20, 4, 8).transpose(1, 2), torch.arange(20))
    k = mha.rope(mha.k_proj(x).view(2, 20, 2, 8).transpose(1, 2), torch.arange(20)).repeat_interleave(2, 1)
    v = mha.v_proj(x).view(2, 20, 2, 8).transpose(1, 2).repeat_interleave(2, 1)
    i, j = torch.arange(20)[:, None], torch.arange(20)[None, :]
    band = (j <= i) & (j > i - window)
    ref = torch.softmax((q @ k.mT / math.sqrt(8)).masked_fill(~band, float("-inf")), -1) @ v
    expected = mha.output_proj(ref.transpose(1, 2).reshape(2, 20, 32))
    torch.testing.assert_close(mha(x), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", ["naive", "sdpa"])
@torch.no_grad()
def test_hybrid_local_global_model_and_cached_decode(backend):
    torch.manual_seed(0)
    cfg = _tiny(num_layers=4, sliding_window=5, global_every=2, num_kv_heads=2, attn_backend=backend)
    assert cfg.layer_windows() == [5, None, 5, None]
    m = TransformerLM.from_config(cfg).eval()
    assert [layer.attn.sliding_window for layer in m.layers] == [5, None, 5, None]
    ids = torch.randint(0, cfg.vocab_size, (2, 16))
    cache = m.make_kv_cache(2, 16)
    prefill = m(ids[:, :12], kv_cache=cache)
    torch.testing.assert_close(prefill, m(ids[:, :12]), atol=1e-5, rtol=1e-4)
    for t in range(12, 16):  # decode token by token: the cached mask keeps the window
        step = m(ids[:, t:t + 1], kv_cache=cache)[:, -1]
        torch.testing.assert_close(step, m(ids[:, :t + 1])[:, -1], atol=1e-5, rtol=1e-4)
    full = TransformerLM.from_config(cfg.replace(sliding_window=cfg.context_length))  # a window of the whole context
    full.load_state_dict(m.state_dict())
    glob = TransformerLM.from_config(cfg.replace(sliding_window=None, global_every=None))
    glob.load_state_dict(m.state_dict())
    torch.testing.assert_close(full(ids), glob(ids), atol=1e-5, rtol=1e-4)


def test_sliding_window_needs_a_backend_that_masks_it(monkeypatch):
    import cs336_nb.model as M
    monkeypatch.setitem(M._ATTENTION_BACKENDS, "global_only_test", lambda q, k, v, is_causal: F.scaled_dot_product_attention(q, k, v, is_causal=is_causal))
    mha = MultiHeadSelfAttention(16, 2, sliding_window=4, attn_backend="global_only_test")
    with pytest.raises(ValueError, match="no sliding-window mask"):
        mha(torch.randn(1, 6, 16))
    with pytest.raises(ValueError, match="sliding_window"):
        ModelConfig.tiny(global_every=2)
    with pytest.raises(ValueError, match="sliding_window"):
        MultiHeadSelfAttention(16, 2, sliding_window=0)


def test_model_config_extends_lecture2_shape_in_positional_order():
    from dataclasses import fields
    from cs336_nb.accounting import REAL_MODELS, ModelShape
    shape_fields = [f.name for f in fields(ModelShape)]
    assert [f.name for f in fields(ModelConfig)][:len(shape_fields)] == shape_fields
    values = (97, 64, 64, 2, 4, 160, None, 2, True, 30.0, "layer", "post", "gelu", True, "sdpa")
    assert ModelConfig(*values) == ModelConfig(**dict(zip([f.name for f in fields(ModelConfig)], values)))
    shape = REAL_MODELS["Mistral 7B"][0].replace(context_length=64, num_layers=1, d_model=64, num_heads=4, num_kv_heads=2, d_ff=96, vocab_size=50)
    m = TransformerLM.from_config(shape)
    assert m.config == ModelConfig(**shape.to_dict())
    assert m.num_params() == shape.num_params()


def test_modules_import_only_earlier_lectures():
    "Lecture 2 (accounting) imports Lecture 0 only; Lecture 3 (model) Lectures 0 and 2: later lectures are found by name."
    import ast, pathlib
    import cs336_nb
    root = pathlib.Path(cs336_nb.__file__).parent
    def imported(name):
        tree = ast.parse((root / f"{name}.py").read_text())
        mods = {("cs336_nb." if n.level else "") + (n.module or "") for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        mods |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        return {m.split(".")[1] for m in mods if m.startswith("cs336_nb.")}
    assert imported("accounting") == {"core"}
    assert imported("model") == {"accounting"}
