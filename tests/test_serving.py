"Continuous batching over a paged KV cache (Lecture 8c): outputs equal each request's own generate, pages freed, errors."
from collections import deque

import pytest
import torch

from cs336_nb.model import ModelConfig, TransformerLM
from cs336_nb.serving import Engine, PagedKVCache, mixed_workload, paged_forward, static_batching


def _model(**kw):
    torch.manual_seed(0)
    return TransformerLM.from_config(ModelConfig.tiny(**{**dict(num_layers=2, vocab_size=97, context_length=64, d_model=64, d_ff=128), **kw})).eval()


def _work(n, seed=0, max_prompt=12, max_new=20):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, 97, (int(torch.randint(1, max_prompt + 1, (1,), generator=g)),), generator=g).tolist(),
             int(torch.randint(1, max_new + 1, (1,), generator=g))) for _ in range(n)]


@pytest.mark.parametrize("kw,max_batch,page_size,max_pages", [(dict(), 4, 4, 40), (dict(num_kv_heads=1), 3, 8, 6),
                                                               (dict(num_kv_heads=2, qk_norm=True, head_dim=24), 16, 1, 200),
                                                               (dict(tie_embeddings=True), 4, 4, 40)])
def test_outputs_equal_own_generate(kw, max_batch, page_size, max_pages):
    model, work = _model(**kw), _work(10)
    eng = Engine(model, max_batch=max_batch, page_size=page_size, max_pages=max_pages)
    ids = [eng.submit(p, n) for p, n in work]
    out = eng.run()
    for i, (p, n) in zip(ids, work):
        assert out[i] == model.generate(torch.tensor([p]), n, temperature=0)[0].tolist()
    assert eng.cache.pages_free == max_pages and not eng.running and not eng.waiting
    assert max(s["running"] for s in eng.log) <= max_batch


def test_small_pool_preempts_and_stays_exact():
    model, work = _model(), _work(8, seed=3, max_new=30)
    eng = Engine(model, max_batch=8, page_size=4, max_pages=12)
    ids = [eng.submit(p, n) for p, n in work]
    out = eng.run()
    assert eng.preemptions > 0
    for i, (p, n) in zip(ids, work): assert out[i] == model.generate(torch.tensor([p]), n, temperature=0)[0].tolist()


def test_requests_admitted_and_retired_every_step():
    model = _model()
    eng = Engine(model, max_batch=2, page_size=4, max_pages=20)
    a = eng.submit([1, 2, 3], 2); b = eng.submit([4, 5], 6); c = eng.submit([6], 3)
    eng.step()  # a and b prefill
    assert [r.id for r in eng.running] == [a, b] and len(eng.waiting) == 1
    done = eng.step()  # a finishes after its second token, its pages go back
    assert [r.id for r in done] == [a] and eng.cache.pages_used == len(eng.running[0].pages)
    eng.step()  # c is admitted the step after a left
    assert c in [r.id for r in eng.running]
    eng.run()
    assert eng.cache.pages_free == 20


def test_eos_stops_a_request():
    model = _model()
    p = [5, 6, 7]
    ref = model.generate(torch.tensor([p]), 12, temperature=0)[0].tolist()
    eos = ref[len(p) + 2]  # the third generated token
    eng = Engine(model, max_batch=2, page_size=4, max_pages=10)
    i = eng.submit(p, 12, eos_id=eos)
    got = eng.run()[i]
    assert got[-1] == eos and got == ref[: len(got)] and len(got) <= len(p) + 3


def test_sampling_is_reproducible_with_a_generator():
    model = _model()
    outs = []
    for _ in range(2):
        eng = Engine(model, max_batch=4, page_size=4, max_pages=40)
        ids = [eng.submit(p, n, temperature=1.0, top_k=20, generator=torch.Generator().manual_seed(7 + j)) for j, (p, n) in enumerate(_work(5))]
        res = eng.run()
        outs.append([res[i] for i in ids])
    assert outs[0] == outs[1]


def test_paged_forward_matches_full_forward_with_scattered_pages():
    model = _model(num_kv_heads=2)
    cache = PagedKVCache([(l.attn.num_kv_heads, l.attn.d_head) for l in model.layers], max_pages=8, page_size=3)
    cache.free = deque([5, 1, 7, 0, 3, 6, 2, 4])
    p = torch.randint(0, 97, (7,), generator=torch.Generator().manual_seed(0))
    table = torch.tensor([cache.allocate(3)])
    with torch.no_grad():
        got = paged_forward(model, p[None], torch.tensor([0]), torch.tensor([7]), table, cache)
        torch.testing.assert_close(got[0], model(p[None])[0, -1], atol=1e-5, rtol=0)


def test_static_batching_baseline_equals_generate():
    model, work = _model(), _work(5)
    outs, secs = static_batching(model, work, 2)
    assert secs > 0
    for o, (p, n) in zip(outs, work): assert o == model.generate(torch.tensor([p]), n, temperature=0)[0].tolist()


def test_mixed_workload_shape():
    w = mixed_workload(50, 97, max_prompt=16, max_new=64)
    assert len(w) == 50 and all(4 <= len(p) <= 16 and 4 <= n <= 64 for p, n in w)


def test_bad_requests():
    model = _model()
    eng = Engine(model, max_batch=2, page_size=4, max_pages=4)
    with pytest.raises(ValueError, match="exceeds context_length=64"): eng.submit([1] * 60, 5)
    with pytest.raises(ValueError, match="needs 5 pages"): eng.submit([1] * 10, 10)
    with pytest.raises(ValueError, match="non-empty"): eng.submit([], 2)
    with pytest.raises(ValueError, match="token ids in"): eng.submit([1000], 2)
    with pytest.raises(ValueError, match="max_new_tokens must be a positive int"): eng.submit([1], 0)
    with pytest.raises(ValueError, match="temperature"): eng.submit([1], 2, temperature=-1)
    with pytest.raises(ValueError, match="max_batch"): Engine(model, max_batch=0, page_size=4, max_pages=4)
    with pytest.raises(ValueError, match="page_size"): Engine(model, max_batch=1, page_size=0, max_pages=4)
    with pytest.raises(TypeError, match="TransformerLM"): Engine(torch.nn.Linear(2, 2), max_batch=1, page_size=4, max_pages=4)
    with pytest.raises(RuntimeError, match="out of KV pages"): eng.cache.allocate(5)


@pytest.fixture
def interpret_triton(monkeypatch):
    "Triton kernels on CPU tensors through the interpreter (TRITON_INTERPRET is read at launch)."
    pytest.importorskip("triton")
    if not torch.cuda.is_available(): monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.mark.parametrize("T,starts,Hkv,H,D,P", [(1, [13, 6], 2, 4, 16, 4),     # decode: elementwise path, GQA
                                                (16, [0, 7], 2, 4, 16, 4),     # prefill block: tl.dot path
                                                (3, [0, 20], 1, 3, 24, 3),     # MQA, head_dim and page size not powers of 2
                                                (1, [0, 0], 2, 2, 8, 8)])      # first token only
def test_paged_kernel_equals_gather(interpret_triton, T, starts, Hkv, H, D, P):
    from cs336_nb.serving import gathered_attention, paged_attention_triton
    torch.manual_seed(0)
    k_pages, v_pages = torch.randn(32, P, Hkv, D), torch.randn(32, P, Hkv, D)
    n = -(-(max(starts) + T) // P)
    table = torch.randperm(32)[:2 * n].reshape(2, n)
    pos = torch.tensor(starts)[:, None] + torch.arange(T)
    q = torch.randn(2, H, T, D)
    torch.testing.assert_close(paged_attention_triton(q, k_pages, v_pages, table, pos),
                               gathered_attention(q, k_pages, v_pages, table, pos), atol=1e-5, rtol=1e-5)


def test_paged_forward_impls_agree(interpret_triton):
    model = _model(num_kv_heads=2)
    cache_g = PagedKVCache([(l.attn.num_kv_heads, l.attn.d_head) for l in model.layers], max_pages=8, page_size=4)
    cache_t = PagedKVCache([(l.attn.num_kv_heads, l.attn.d_head) for l in model.layers], max_pages=8, page_size=4)
    table = torch.tensor([[3, 0, 5], [1, 7, 2]])
    ids = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        a = paged_forward(model, ids, torch.tensor([0, 0]), torch.tensor([9, 5]), table, cache_g, impl="gather")
        b = paged_forward(model, ids, torch.tensor([0, 0]), torch.tensor([9, 5]), table, cache_t, impl="triton")
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_paged_impl_is_checked():
    model = _model()
    cache = PagedKVCache([(l.attn.num_kv_heads, l.attn.d_head) for l in model.layers], max_pages=4, page_size=4)
    with pytest.raises(ValueError, match="impl must be"):
        paged_forward(model, torch.zeros(1, 1, dtype=torch.long), torch.tensor([0]), torch.tensor([1]), torch.tensor([[0]]), cache, impl="nosuch")
