"cs336_nb.accounting checked against measurements: numel, FlopCounterMode, autograd's saved tensors, torch.finfo."
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from cs336_nb.accounting import (FLOAT_DTYPES, GPT3_FAMILY, REAL_MODELS, activation_memory, backward_flops, bytes_per_element,
                                 dtype_table, flops_per_token, forward_flops, kv_cache_bytes_per_token, largest_model_that_fits,
                                 matmul_flops, matmul_throughput, model_table, param_counts, same_storage, saved_activation_bytes,
                                 training_flops, training_flops_per_token, training_memory, training_time_days)
from cs336_nb.core import HARDWARE
from cs336_nb.model import ModelConfig, TransformerLM


def _cfg(**kw):
    return ModelConfig.tiny(**{**dict(vocab_size=300, context_length=32, d_model=64, num_layers=2, num_heads=4, d_ff=160), **kw})


VARIANTS = [dict(), dict(num_kv_heads=2), dict(num_kv_heads=1, qk_norm=True), dict(ffn="gelu", d_ff=256), dict(ffn="relu", d_ff=256),
            dict(tie_embeddings=True), dict(rope_theta=None), dict(norm="layer"), dict(attn_backend="naive")]


def test_bytes_per_element_and_table():
    for dt in FLOAT_DTYPES + [torch.int8, torch.int32, torch.int64, torch.uint8, torch.bool]:
        assert bytes_per_element(dt) == torch.empty(0, dtype=dt).element_size()
    rows = {r["dtype"]: r for r in dtype_table()}
    assert rows["bfloat16"]["max"] > 1e38 and rows["float16"]["max"] == 65504.0
    assert rows["float32"]["eps"] == 2.0 ** -23 and rows["bfloat16"]["eps"] == 2.0 ** -7
    with pytest.raises(TypeError): bytes_per_element("float32")


def test_same_storage():
    x = torch.arange(6.0).view(2, 3)
    assert same_storage(x, x.t()) and same_storage(x, x[1]) and not same_storage(x, x.t().contiguous())


@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (3, 5, 7), (64, 32, 128)])
def test_matmul_flops_vs_counter(m, n, k):
    a, b = torch.randn(m, k), torch.randn(k, n)
    with FlopCounterMode(display=False) as fc: a @ b
    assert fc.get_total_flops() == matmul_flops(m, n, k)


@pytest.mark.parametrize("kw", VARIANTS)
def test_params_and_flops_per_token_vs_model(kw):
    torch.manual_seed(0)
    cfg = _cfg(**kw)
    m = TransformerLM.from_config(cfg)
    assert param_counts(cfg)["total"] == sum(p.numel() for p in m.parameters()) == cfg.num_params()
    T = 24
    ids = torch.randint(0, cfg.vocab_size, (3, T))
    with FlopCounterMode(display=False) as fc: logits = m(ids)
    assert fc.get_total_flops() == 3 * T * flops_per_token(cfg, T)["total"]
    with FlopCounterMode(display=False) as fc: F.cross_entropy(logits.flatten(0, 1), ids.flatten()).backward()
    assert fc.get_total_flops() == 2 * 3 * T * flops_per_token(cfg, T)["total"]
    assert training_flops_per_token(cfg, T) == 3 * flops_per_token(cfg, T)["total"]


@pytest.mark.parametrize("kw", VARIANTS)
@pytest.mark.parametrize("mode", ["autocast_bf16", "fp32", "bf16_model"])
def test_activation_memory_vs_autograd_saved_tensors(kw, mode):
    torch.manual_seed(0)
    cfg = _cfg(**kw)
    pdt = torch.bfloat16 if mode == "bf16_model" else torch.float32
    cdt = torch.float32 if mode == "fp32" else torch.bfloat16
    m = TransformerLM.from_config(cfg, dtype=pdt)
    ids = torch.randint(0, cfg.vocab_size, (2, 32))
    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "autocast_bf16"):
            logits = m(ids)
        return F.cross_entropy(logits.flatten(0, 1).float(), ids.flatten())
    _, measured = saved_activation_bytes(step, exclude=m.parameters())
    pred = activation_memory(cfg, 2, 32, compute_dtype=cdt, param_dtype=pdt, attn_backend=cfg.attn_backend or "naive",
                             device_type="cpu")["total"]
    assert abs(pred / measured - 1) < 0.03, (pred, measured)


def test_training_memory_static_parts_and_phases():
    cfg = ModelConfig.gpt2_small()
    P = cfg.num_params()
    tm = training_memory(cfg, 8)
    assert tm["params"] + tm["grads"] + tm["optimizer_state"] == 16 * P        # the 16 bytes/param of fp32 AdamW
    assert tm["peak"] == max(tm["peak_at_backward"], tm["peak_at_optimizer"]) and tm["phase"] == "backward"
    assert training_memory(cfg, 8, optimizer="sgd")["optimizer_state"] == 0
    assert training_memory(cfg, 8, optimizer="adagrad")["optimizer_state"] == 4 * P
    tiny = training_memory(cfg, 1, 8, compiled=True)
    assert tiny["phase"] == "optimizer" and tiny["peak"] == 20 * P   # tiny batch: the optimizer step sets the peak
    # activations grow linearly with the batch; the naive attention adds a T^2 term
    a1, a2 = (activation_memory(cfg, b)["layers"] for b in (1, 2))
    assert 1.99 < a2 / a1 <= 2  # linear in the batch (RoPE's cos/sin tables are per layer, not per sequence)
    assert activation_memory(cfg, 1, attn_backend="naive")["layers"] > a1
    assert training_memory(cfg, 4, compiled=True)["activations"] < training_memory(cfg, 4)["activations"]
    with pytest.raises(ValueError, match="optimizer"): training_memory(cfg, 8, optimizer="lion")
    with pytest.raises(ValueError, match="seq_len"): training_memory(cfg, 8, 4096)
    with pytest.raises(ValueError, match="attn_backend"): activation_memory(cfg, 8, attn_backend="flashy")


def test_napkin_math():
    acc = HARDWARE["H100 SXM"]
    days = training_time_days(70e9, 15e12, 1024, 0.5, acc)
    assert days == pytest.approx(6 * 70e9 * 15e12 / (1024 * 0.5 * acc.peak_flops["bf16"]) / 86400)
    assert training_time_days(70e9, 15e12, 2048, 0.5, acc) == pytest.approx(days / 2)
    assert largest_model_that_fits(8 * 80e9) == 40e9 and largest_model_that_fits(80e9, 2) == 40e9
    assert training_flops(10, 10) == forward_flops(10, 10) + backward_flops(10, 10) == 600
    with pytest.raises(ValueError, match="mfu"): training_time_days(1, 1, 1, 1.5)
    with pytest.raises(ValueError, match="num_gpus"): training_time_days(1, 1, 0)


def test_real_models_and_kv_cache():
    rows = model_table()
    assert len(rows) == len(REAL_MODELS)
    for r in rows: assert 0.95 < r["params_vs_reported"] < 1.05, r
    l70 = REAL_MODELS["Llama 2 70B"][0]
    assert kv_cache_bytes_per_token(l70) == 2 * 80 * 8 * 128 * 2            # GQA: 8 KV heads
    assert kv_cache_bytes_per_token(l70.replace(num_kv_heads=None)) == 8 * kv_cache_bytes_per_token(l70)
    with torch.device("meta"):
        m = TransformerLM.from_config(REAL_MODELS["Llama 3 8B"][0].replace(context_length=128))
    assert sum(p.numel() for p in m.parameters()) == REAL_MODELS["Llama 3 8B"][0].num_params()
    shares = [flops_per_token(c)["attention_scores"] / flops_per_token(c)["total"] for c in GPT3_FAMILY.values()]
    assert shares[0] > shares[-1]  # attention's quadratic share shrinks as d_model grows at fixed context


def test_matmul_throughput_cpu_smoke():
    rows = matmul_throughput([32, 64], ("fp32",), device="cpu", warmup=1, reps=2)
    assert [r["n"] for r in rows] == [32, 64] and all(r["flops_per_s"] > 0 for r in rows)
    with pytest.raises(ValueError, match="format"): matmul_throughput([8], ("int4",), device="cpu")


def test_published_shapes_build_and_count_like_configs():
    from cs336_nb.accounting import ModelShape
    for cfg, _, _ in REAL_MODELS.values():
        assert isinstance(cfg, ModelShape)
    for cfg in GPT3_FAMILY.values():
        assert cfg.num_params() == param_counts(cfg)["total"]
    small = GPT3_FAMILY["125M"].replace(context_length=64, vocab_size=100)
    with torch.device("meta"):
        m = TransformerLM.from_config(small)
    assert sum(p.numel() for p in m.parameters()) == small.num_params()
    assert small.num_params(include_embeddings=False) == m.num_params(include_embeddings=False)
    with pytest.raises(ValueError, match="divisible"):
        ModelShape(d_model=100, num_heads=3)


@pytest.mark.parametrize("kw", [dict(), dict(norm="layer"), dict(qk_norm=True), dict(sliding_window=8, global_every=2)])
def test_norm_flops_are_an_extra_entry(kw):
    cfg = _cfg(**kw)
    plain, with_norms = flops_per_token(cfg), flops_per_token(cfg, norms=True)
    assert with_norms["total"] == plain["total"] + with_norms["norms"]
    assert "norms" not in plain
    per_norm = (4 if cfg.norm == "rms" else 7) * cfg.d_model
    qk = cfg.num_layers * 4 * cfg.d_head * (cfg.num_heads + cfg.kv_heads) if cfg.qk_norm else 0
    assert with_norms["norms"] == (2 * cfg.num_layers + 1) * per_norm + qk
    assert with_norms["norms"] / with_norms["total"] < 0.01


def test_sliding_window_attention_flops_match_flop_counter():
    torch.manual_seed(0)
    cfg = _cfg(sliding_window=8, global_every=2, attn_backend="naive")
    m = TransformerLM.from_config(cfg)
    with FlopCounterMode(display=False) as fc:
        m(torch.randint(0, cfg.vocab_size, (1, 32)))
    full = flops_per_token(cfg.replace(sliding_window=None, global_every=None))
    # FlopCounterMode counts the full T x T matmuls of a masked kernel; the windowed count is the work a banded kernel needs
    assert fc.get_total_flops() == 32 * full["total"]
    assert flops_per_token(cfg)["attention_scores"] == pytest.approx(full["attention_scores"] * (8 + 32) / (2 * 32))


def test_training_memory_terms_of_a_stack_of_linears():
    from cs336_nb.accounting import training_memory_terms
    torch.manual_seed(0)
    B, D, L = 3, 8, 3
    model = torch.nn.Sequential(*[torch.nn.Linear(D, D, bias=False) for _ in range(L)], torch.nn.Linear(D, 1, bias=False))
    P = sum(p.numel() for p in model.parameters())
    x = torch.randn(B, D)
    loss, saved = saved_activation_bytes(lambda: model(x).mean(), exclude=model.parameters())
    assert saved == B * D * (L + 1) * 4          # every linear layer keeps its input
    opt = torch.optim.Adam(model.parameters())
    loss.backward()
    opt.step()
    state = sum(t.numel() for st in opt.state.values() for k, t in st.items() if k != "step")
    terms = training_memory_terms(P, B * D * (L + 1), optimizer="adam")
    assert terms["optimizer_state"] == state * 4
    assert terms["gradients"] == sum(p.grad.numel() for p in model.parameters()) * 4
    assert terms["total"] == terms["parameters"] + terms["activations"] + terms["gradients"] + terms["optimizer_state"]
    with pytest.raises(ValueError, match="optimizer"):
        training_memory_terms(1, 1, optimizer="lion")


def test_measuring_functions_take_a_model_not_a_config():
    from cs336_nb.accounting import measure_training_step_memory, time_training_step
    cfg = _cfg()
    ids = torch.randint(0, cfg.vocab_size, (2, 16))
    with pytest.raises(TypeError, match="build_model"):
        measure_training_step_memory(cfg, ids, make_optimizer=torch.optim.SGD)
    with pytest.raises(TypeError, match="nn.Module"):
        time_training_step(cfg, ids)
    assert time_training_step(TransformerLM.from_config(cfg), ids, warmup=0, reps=1) > 0
