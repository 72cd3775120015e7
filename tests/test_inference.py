"""Heavier checks of Lecture 8 (cs336_nb.inference) and Lecture 3's KV cache: cached logits equal full forwards at every
step (dense, GQA, MQA, MoE, backends, ragged batches), greedy generation, bad input, speculative decoding's exactness
(chi-square) and greedy identity, the sliding-window and latent caches, the decode cost model, and the CLI."""
import contextlib
import io
import json

import pytest
import torch

from cs336_nb.inference import (LLAMA2_13B, LatentAttention, SlidingWindowAttention, decode_cost, expected_tokens_per_round,
                                generate_cli, kv_cache_table, speculative_generate)
from cs336_nb.model import (ModelConfig, MoEConfig, MultiHeadSelfAttention, TransformerLM, get_attention_backend,
                            sample_logits)

PROMPTS = [[5, 9, 2, 7, 1, 3, 8, 4, 4], [4, 4, 6], [1, 2, 3, 4, 5], [7]]

VARIANTS = {
    "gqa": dict(num_kv_heads=2),
    "mqa": dict(num_kv_heads=1),
    "moe": dict(num_kv_heads=2, moe=MoEConfig(num_experts=4, top_k=2, d_ff=64)),
    "sdpa": dict(num_kv_heads=2, attn_backend="sdpa"),
    "flash_pytorch": dict(attn_backend="flash_pytorch"),
    "qk_norm_tied_softcap": dict(qk_norm=True, tie_embeddings=True, logit_soft_cap=5.0),
    "no_rope_layernorm": dict(rope_theta=None, norm="layer", ffn="gelu", d_ff=256),
    "head_dim": dict(num_kv_heads=2, head_dim=16),
}


def _model(seed=0, **kw):
    if kw.get("attn_backend") == "flash_pytorch": import cs336_nb.kernels  # noqa: F401  registers the flash backends
    torch.manual_seed(seed)
    return TransformerLM.from_config(ModelConfig.tiny(num_layers=2, context_length=48, **kw)).eval()


def _ragged(prompts):
    lens = torch.tensor([len(p) for p in prompts])
    ids = torch.zeros(len(prompts), int(lens.max()), dtype=torch.long)
    for b, p in enumerate(prompts): ids[b, :len(p)] = torch.tensor(p)
    return ids, lens


@pytest.mark.parametrize("name", list(VARIANTS))
@torch.no_grad()
def test_cached_logits_equal_full_forward_every_step(name):
    m = _model(**VARIANTS[name])
    ids, lens = _ragged(PROMPTS)
    cache = m.make_kv_cache(len(PROMPTS), 24)
    logits = m(ids, kv_cache=cache)
    for b, p in enumerate(PROMPTS):
        torch.testing.assert_close(logits[b, :len(p)], m(torch.tensor([p]))[0], atol=2e-5, rtol=1e-4)
    cache.lengths.copy_(lens)
    seqs, g = [list(p) for p in PROMPTS], torch.Generator().manual_seed(1)
    for step in range(4):
        T = 1 if step % 3 else 2  # one-token decode steps and a two-token chunk: the same code
        nxt = torch.randint(0, m.vocab_size, (len(PROMPTS), T), generator=g)
        out = m(nxt, kv_cache=cache)
        for b in range(len(PROMPTS)):
            seqs[b] += nxt[b].tolist()
            torch.testing.assert_close(out[b], m(torch.tensor([seqs[b]]))[0, -T:], atol=2e-5, rtol=1e-4)
    assert cache.lengths.tolist() == [len(s) for s in seqs]


@pytest.mark.parametrize("name", ["gqa", "moe"])
@torch.no_grad()
def test_greedy_generate_equals_naive_loop(name):
    m = _model(**VARIANTS[name])
    out = m.generate(PROMPTS, 5, temperature=0)
    assert out.shape == (len(PROMPTS), 9 + 5)
    for b, p in enumerate(PROMPTS):
        seq = list(p)
        for _ in range(5): seq.append(int(m(torch.tensor([seq]))[0, -1].argmax()))
        assert out[b, :len(seq)].tolist() == seq
        assert out[b, len(seq):].tolist() == [0] * (9 - len(p))


def test_generate_layout_eos_stream_and_sampling():
    m = _model(**VARIANTS["gqa"])
    greedy = m.generate(PROMPTS, 6, temperature=0)
    eos = int(greedy[1, 3 + 1])  # row 1's second new token
    out = m.generate(PROMPTS, 6, temperature=0, eos_id=eos)
    row1 = out[1, 3:].tolist()
    assert row1[:2] == greedy[1, 3:5].tolist() and set(row1[2:]) <= {eos}  # EOS, then EOS padding
    stream = torch.stack(list(m.generate_stream(PROMPTS, 6, temperature=0)), 1)
    for b, p in enumerate(PROMPTS): assert stream[b].tolist() == greedy[b, len(p):len(p) + 6].tolist()
    ids = torch.tensor([PROMPTS[2]] * 3)
    a = m.generate(ids, 8, top_k=5, top_p=0.9, generator=torch.Generator().manual_seed(3))
    b = m.generate(ids, 8, top_k=5, top_p=0.9, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and torch.equal(a[:, :5], ids)
    assert m.generate(ids, 0).shape == ids.shape
    assert torch.equal(m.generate(ids, 4, top_k=1), m.generate(ids, 4, temperature=0))


def test_sample_logits_top_k_top_p():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0]]).repeat(4000, 1)
    g = torch.Generator().manual_seed(0)
    assert set(sample_logits(logits, 1.0, top_k=2, generator=g).tolist()) == {0, 1}
    p = torch.softmax(logits[0], -1)
    assert set(sample_logits(logits, 1.0, top_p=float(p[0]) + 1e-3, generator=g).tolist()) == {0, 1}
    counts = torch.bincount(sample_logits(logits, 1.0, generator=g), minlength=5) / 4000
    torch.testing.assert_close(counts, p, atol=0.03, rtol=0)
    assert sample_logits(logits[:1], 0.0).tolist() == [0]


def test_bad_input_errors():
    m = _model(**VARIANTS["gqa"])
    cache = m.make_kv_cache(2, 8)
    with pytest.raises(ValueError, match="KV cache full"): m(torch.zeros(2, 9, dtype=torch.long), kv_cache=cache)
    with pytest.raises(ValueError, match="batch"): m(torch.zeros(3, 1, dtype=torch.long), kv_cache=cache)
    with pytest.raises(ValueError, match="longer than context_length"): m.generate([list(range(49))], 1)
    with pytest.raises(ValueError, match="exceeds context_length"): m.generate([list(range(40))], 9)
    with pytest.raises(ValueError, match="context_length"): m.make_kv_cache(1, 49)
    with pytest.raises(ValueError, match="at least one token"): m.generate([[1], []], 2)
    with pytest.raises(TypeError, match="prompt_ids"): m.generate("hello", 2)
    with pytest.raises(ValueError, match="max_new_tokens"): m.generate([[1]], -1)
    with pytest.raises(ValueError, match="top_k"): m.generate([[1]], 2, top_k=0)


def test_sdpa_backend_causal_mask_is_bottom_right():
    q, k, v = torch.randn(1, 2, 3, 8), torch.randn(1, 2, 7, 8), torch.randn(1, 2, 7, 8)
    torch.testing.assert_close(get_attention_backend("sdpa")(q, k, v, True), get_attention_backend("naive")(q, k, v, True))


def test_bf16_model_cache_dtype_and_size():
    m = TransformerLM.from_config(ModelConfig.tiny(num_layers=2, num_kv_heads=2), dtype=torch.bfloat16)
    c = m.make_kv_cache(3, 16)
    assert c.k[0].dtype == torch.bfloat16 and c.k[0].shape == (3, 2, 16, 32)
    assert c.nbytes == 2 * 2 * 3 * 2 * 16 * 32 * 2
    assert m.generate([[1, 2], [3]], 3, temperature=0).shape == (2, 5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="compile=True with CUDA graphs is checked on a GPU")
def test_compiled_decode_equals_eager_on_gpu():
    torch.manual_seed(0)
    m = TransformerLM.from_config(ModelConfig.tiny(num_layers=2, num_kv_heads=2, attn_backend="sdpa"), device="cuda").eval()
    ref = m.generate(PROMPTS, 10, temperature=0)
    for _ in range(2): assert torch.equal(m.generate(PROMPTS, 10, temperature=0, compile=True), ref)


def _tiny_lm(seed, vocab=4, sharpen=3.0):
    torch.manual_seed(seed)
    m = TransformerLM.from_config(ModelConfig.tiny(vocab_size=vocab, d_model=16, num_heads=2, num_layers=1, d_ff=32, context_length=32)).eval()
    with torch.no_grad(): m.lm_head.weight *= sharpen
    return m


@pytest.mark.parametrize("lookahead", [1, 4])
def test_speculative_greedy_equals_target_greedy(lookahead):
    target, draft = _model(0, **VARIANTS["gqa"]), _tiny_lm(1, vocab=256, sharpen=1.0)
    out, st = speculative_generate(target, draft, PROMPTS[0], 10, lookahead=lookahead, temperature=0)
    assert out.tolist() == target.generate([PROMPTS[0]], 10, temperature=0)[0].tolist()
    assert 0 <= st["acceptance_rate"] <= 1 and st["rounds"] >= 10 / (lookahead + 1)


def _chi2_pvalue(counts, probs):
    exp = probs * counts.sum()
    keep = exp >= 5
    obs, e = torch.cat([counts[keep], counts[~keep].sum()[None]]), torch.cat([exp[keep], exp[~keep].sum()[None]])
    obs, e = obs[e > 0], e[e > 0]
    return float(torch.special.gammaincc(torch.tensor((len(e) - 1) / 2, dtype=torch.float64), ((obs - e) ** 2 / e).sum().double() / 2))


@torch.no_grad()
def test_speculative_samples_the_target_joint_distribution():
    target, draft, prompt = _tiny_lm(0, vocab=3), _tiny_lm(5, vocab=3), [1, 2]
    pa = torch.softmax(target(torch.tensor([prompt]))[0, -1], -1)
    pb = torch.softmax(target(torch.tensor([[*prompt, a] for a in range(3)]))[:, -1], -1)
    q = (pa[:, None] * pb).flatten()
    da = torch.softmax(draft(torch.tensor([prompt]))[0, -1], -1)
    db = torch.softmax(draft(torch.tensor([[*prompt, a] for a in range(3)]))[:, -1], -1)
    p = (da[:, None] * db).flatten()
    assert 0.5 * (p - q).abs().sum() > 0.2  # the draft really is wrong
    g, counts, accepted = torch.Generator().manual_seed(0), torch.zeros(9), 0
    for _ in range(800):
        out, st = speculative_generate(target, draft, prompt, 2, lookahead=2, temperature=1.0, generator=g)
        counts[3 * out[2] + out[3]] += 1
        accepted += st["accepted"]
    assert _chi2_pvalue(counts, q) > 1e-3
    assert _chi2_pvalue(counts, p) < 1e-6
    assert 0 < accepted < 1600  # some proposals rejected, some accepted: both branches ran


def test_speculative_errors():
    t = _model(0)
    with pytest.raises(ValueError, match="vocabularies"): speculative_generate(t, _tiny_lm(0), [1], 2)
    with pytest.raises(ValueError, match="context_length"): speculative_generate(t, t, [1] * 40, 9)
    with pytest.raises(ValueError, match="lookahead"): speculative_generate(t, t, [1], 2, lookahead=0)
    with pytest.raises(ValueError, match="one sequence"): speculative_generate(t, t, torch.ones(2, 3, dtype=torch.long), 2)
    assert expected_tokens_per_round(0.8, 4) == pytest.approx((1 - 0.8 ** 5) / 0.2)


@pytest.mark.parametrize("window,prefill", [(3, 2), (3, 7), (5, 1), (16, 4)])
@torch.no_grad()
def test_sliding_window_cache_matches_full(window, prefill):
    torch.manual_seed(0)
    kw = dict(num_kv_heads=2, theta=10000.0, max_seq_len=64)
    swa = SlidingWindowAttention(32, 4, window, **kw).eval()
    x = torch.randn(2, 12, 32)
    ref = swa(x)
    cache = swa.make_cache(2)
    outs = [swa(x[:, :prefill], cache)] + [swa(x[:, t:t + 1], cache) for t in range(prefill, 12)]
    torch.testing.assert_close(torch.cat(outs, 1), ref, atol=1e-5, rtol=1e-4)
    # the band mask: position p's output does not depend on tokens before p - window + 1
    x2 = x.clone(); x2[:, 0] += 5.0
    torch.testing.assert_close(swa(x2)[:, window:], ref[:, window:], atol=1e-5, rtol=1e-4)
    if window < 12: assert not torch.allclose(swa(x2)[:, :window], ref[:, :window])
    full = MultiHeadSelfAttention(32, 4, **kw); full.load_state_dict(swa.state_dict())
    if window >= 12: torch.testing.assert_close(ref, full(x), atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_latent_attention_absorbed_and_cached():
    torch.manual_seed(0)
    mla = LatentAttention(48, 4, latent_dim=10, rope_dim=6, max_seq_len=64)
    x = torch.randn(3, 9, 48)
    ref = mla(x, absorb=False)
    torch.testing.assert_close(mla(x), ref, atol=1e-5, rtol=1e-4)
    cache = mla.make_cache(3, 12)
    outs = [mla(x[:, :4], cache), mla(x[:, 4:6], cache)] + [mla(x[:, t:t + 1], cache) for t in range(6, 9)]
    torch.testing.assert_close(torch.cat(outs, 1), ref, atol=1e-5, rtol=1e-4)
    assert cache.nbytes == 3 * 12 * (10 + 6) * 4


def test_decode_cost_reproduces_the_course_table():
    bw = 3.35e12
    b1, b64 = decode_cost(LLAMA2_13B, 1, 1024, bandwidth=bw), decode_cost(LLAMA2_13B, 64, 1024, bandwidth=bw)
    gqa = decode_cost(LLAMA2_13B.replace(num_kv_heads=8), 64, 1024, bandwidth=bw)
    assert round(b1["params"] / 1e9, 1) == 13.0
    assert (round(b1["memory_bytes"] / 1e9, 1), round(b1["latency_s"] * 1e3, 1), round(b1["tokens_per_s"])) == (26.9, 8.0, 125)
    assert (round(b64["memory_bytes"] / 1e9, 1), round(b64["tokens_per_s"], -1)) == (79.7, 2690)
    assert (round(gqa["memory_bytes"] / 1e9, 1), round(gqa["tokens_per_s"])) == (33.4, 6417)
    with pytest.raises(ValueError, match="bandwidth"): decode_cost(LLAMA2_13B, 1, 1, bandwidth=0)
    rows = {r["kind"]: r["bytes_per_token"] for r in kv_cache_table(LLAMA2_13B.replace(num_kv_heads=8), 8192, window=4096)}
    assert rows["mha"] == 5 * rows["gqa"] and rows["window"] == rows["gqa"] / 2 and rows["latent"] == 40 * 576 * 2


def _fake_run(tmp_path):
    "A run folder as Lecture 4's `train` leaves it: best.pt, result.json, a byte-level BPE tokenizer."
    from cs336_nb.tokenization import Tokenizer
    from cs336_nb.training import TrainConfig, build_model, save_checkpoint
    data = tmp_path / "data"; data.mkdir()
    tok = Tokenizer({i: bytes([i]) for i in range(256)}, [], special_tokens=["<|endoftext|>"])
    tok.save(data / "vocab.json", data / "merges.txt")
    cfg = TrainConfig(context_length=64, d_model=32, num_layers=1, num_heads=2, out_dir=str(tmp_path), data_dir=str(data), device="cpu")
    save_checkpoint(build_model(cfg, 257), None, 1, tmp_path / "best.pt")
    (tmp_path / "result.json").write_text(json.dumps({"config": cfg.to_dict()}))
    return tmp_path


def test_generate_cli(tmp_path):
    run = _fake_run(tmp_path)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert generate_cli(["--checkpoint", str(run), "--prompt", "ROMEO:", "--max-new-tokens", "5", "--device", "cpu"]) == 0
        assert generate_cli(["--checkpoint", str(run / "best.pt"), "--draft", str(run), "--prompt", "Hi", "--max-new-tokens", "4",
                             "--temperature", "0", "--device", "cpu"]) == 0
    assert out.getvalue().startswith("ROMEO:") and err.getvalue().count("tokens/s") == 2
    with contextlib.redirect_stderr(err):
        assert generate_cli(["--checkpoint", str(tmp_path / "missing.pt"), "--prompt", "x"]) == 2
        assert generate_cli(["--checkpoint", str(run), "--prompt", "x" * 80, "--device", "cpu"]) == 2
    assert "does not exist" in err.getvalue() and "no room left" in err.getvalue()


def test_compiled_decode_cache_is_sized_to_the_generation():
    from cs336_nb.model import _COMPILED_STEPS, static_cache_slots
    torch.manual_seed(0)
    m = TransformerLM.from_config(ModelConfig.tiny(num_layers=1, num_kv_heads=2, context_length=4096, sliding_window=4)).eval()
    ref = m.generate([[1, 2, 3]], 5, temperature=0)  # 8 tokens: the window of 4 acts, in one_query_attention when compiled
    assert torch.equal(m.generate([[1, 2, 3]], 5, temperature=0, compile=True), ref)  # over 256 slots, not the 4096 of the context
    assert _COMPILED_STEPS[m]["cache"].max_seq_len == static_cache_slots(8, 4096) == 256
    _, cache = m._step_and_cache(1, 303, compile=True, greedy=True)  # a longer generation: a new, larger cache
    assert cache.max_seq_len == 1024 and _COMPILED_STEPS[m]["cache"] is cache
    assert m._step_and_cache(1, 300, compile=True, greedy=True)[1] is cache  # the same size: reused
    step, cache = m._step_and_cache(1, 16, compile=True)  # the compiled logits step, against a full forward
    ids = torch.tensor([[5, 1, 7, 2, 9, 3]])
    with torch.no_grad():
        m._forward_cached(ids, None, cache)
        torch.testing.assert_close(step(torch.tensor([[4]]), cache), m(torch.cat([ids, torch.tensor([[4]])], 1))[:, -1], atol=1e-5, rtol=0)


def test_profile_decode_classifies_inductor_gemvs():
    "Inductor lowers a one-row matmul to a reduction named after the ops fused in it (`..._mm_...`): a weight GEMV."
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "profile_decode.py"
    spec = importlib.util.spec_from_file_location("profile_decode", path)
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    assert mod.classify("triton_red_fused__unsafe_view_mm_mul_sigmoid_transpose_view_11").startswith("inductor: weight GEMVs")
    assert mod.classify("triton_red_fused_mm_transpose_view_10").startswith("inductor: weight GEMVs")
    assert mod.classify("triton_red_fused__softmax__to_copy_add_exp_mul_11").startswith("inductor: attention's softmax")
    assert mod.classify("nvjet_tst_128x64_64x4").startswith("weight matmuls in cuBLAS")
    assert mod.classify("triton_poi_fused_add_1").startswith("inductor: other fused kernels")
