"Heavier checks of cs336_nb.moe (Lecture 5): every dispatch path against the naive loop (outputs and gradients), routing against Hugging Face's MoE blocks, balancing, the model option."
import itertools
import math

import pytest
import torch

from cs336_nb.model import ModelConfig, MoEConfig, TransformerLM
from cs336_nb.moe import DISPATCH, MoE, capacity_mask, expert_load, route

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    "Tiny scatter/index kernels spin on OpenMP barriers when the CPU is shared: run this module single-threaded."
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


ROUTING = {  # the three scoring rules, as the models use them
    "softmax_renorm": dict(scoring="softmax", norm_topk=True),                      # Mixtral, Qwen3-MoE norm_topk_prob
    "softmax_raw": dict(scoring="softmax", norm_topk=False),                        # Switch, Qwen3-MoE without it
    "sigmoid_groups": dict(scoring="sigmoid", norm_topk=True, routed_scaling=2.5, n_groups=4, topk_groups=2),  # DeepSeek-V3
}


def _moe(routing, capacity, shared, seed=0):
    torch.manual_seed(seed)
    m = MoE(24, 40, num_experts=8, top_k=2, num_shared_experts=1 if shared else 0, d_ff_shared=16,
            capacity_factor=capacity, **ROUTING[routing]).double()
    with torch.no_grad():
        m.router.weight.mul_(4)                                  # confident routing: no near-ties between experts
        m.router.bias.copy_(torch.randn(8, dtype=torch.float64) * 0.05)
    return m


def _grads(m, x, dispatch):
    x = x.clone().requires_grad_(True)
    y = m(x, dispatch=dispatch)
    loss = (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum() + m.last_stats["aux_loss"]
    grads = torch.autograd.grad(loss, [x] + [p for p in m.parameters()])
    return y.detach(), grads


@pytest.mark.parametrize("dispatch", ["sorted", "grouped"])
@pytest.mark.parametrize("routing,capacity,shared", list(itertools.product(ROUTING, [None, 1.0], [False, True])))
def test_dispatch_equals_naive(dispatch, routing, capacity, shared):
    m = _moe(routing, capacity, shared)
    x = torch.randn(3, 17, 24, dtype=torch.float64)
    if dispatch == "grouped": m, x = m.float(), x.float()  # grouped GEMMs take float32/bf16, not float64
    y_ref, g_ref = _grads(m, x, "naive")
    y, g = _grads(m, x, dispatch)
    tol = 1e-10 if x.dtype == torch.float64 else 1e-4
    torch.testing.assert_close(y, y_ref, atol=tol, rtol=tol)
    for a, b in zip(g, g_ref): torch.testing.assert_close(a, b, atol=tol, rtol=tol)
    if capacity is not None: assert m.last_stats["drop_rate"] > 0   # the capacity really dropped slots


def test_triton_dispatch_calls_the_grouped_gemm_of_part_05a():
    "The wiring only (one case, Triton's interpreter on CPU is slow); tests/test_moe_kernels.py tests the kernel itself."
    pytest.importorskip("cs336_nb.moe_grouped_gemm")
    pytest.importorskip("triton")
    m = _moe("sigmoid_groups", 1.0, True).float()
    x = torch.randn(2, 8, 24)
    y_ref, g_ref = _grads(m, x, "naive")
    y, g = _grads(m, x, "triton")
    torch.testing.assert_close(y, y_ref, atol=1e-4, rtol=1e-4)
    for a, b in zip(g, g_ref): torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_capacity_drops_by_priority_and_depends_on_batch():
    idx = torch.tensor([[0, 1], [0, 2], [0, 1], [3, 0]])
    assert capacity_mask(idx, 4, 2).tolist() == [[True, True], [True, True], [False, True], [True, False]]
    m = _moe("softmax_renorm", 1.0, False)
    x = torch.randn(2, 16, 24, dtype=torch.float64)
    alone = m(x[:1])
    together = m(x)[:1]                                        # the same sequence, now competing for capacity
    assert not torch.allclose(alone, together)
    m.capacity_factor = None
    torch.testing.assert_close(m(x[:1]), m(x)[:1])             # without capacity, sequences are independent


def _copy_experts(ours, gate_up, down):
    f = ours.experts.w1.shape[1]
    with torch.no_grad():
        ours.experts.w1.copy_(gate_up[:, :f]); ours.experts.w3.copy_(gate_up[:, f:]); ours.experts.w2.copy_(down)


def _randomize(module, std=0.2):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters(): p.normal_(0, std)
    return module.eval()


def test_matches_hf_mixtral():
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock
    ref = _randomize(MixtralSparseMoeBlock(MixtralConfig(hidden_size=32, intermediate_size=48, num_local_experts=8,
                                                         num_experts_per_tok=2)))
    ours = MoE(32, 48, 8, 2, scoring="softmax", norm_topk=True)
    with torch.no_grad(): ours.router.weight.copy_(ref.gate.weight)
    _copy_experts(ours, ref.experts.gate_up_proj, ref.experts.down_proj)
    x = torch.randn(2, 11, 32)
    torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("norm_topk", [True, False])
def test_matches_hf_qwen3_moe(norm_topk):
    from transformers import Qwen3MoeConfig
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock
    ref = _randomize(Qwen3MoeSparseMoeBlock(Qwen3MoeConfig(hidden_size=32, moe_intermediate_size=24, num_experts=16,
                                                           num_experts_per_tok=4, norm_topk_prob=norm_topk)))
    ours = MoE(32, 24, 16, 4, scoring="softmax", norm_topk=norm_topk)
    with torch.no_grad(): ours.router.weight.copy_(ref.gate.weight)
    _copy_experts(ours, ref.experts.gate_up_proj, ref.experts.down_proj)
    x = torch.randn(2, 11, 32)
    torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)


def test_matches_hf_deepseek_v3():
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE
    cfg = DeepseekV3Config(hidden_size=32, intermediate_size=64, moe_intermediate_size=16, n_routed_experts=16,
                           num_experts_per_tok=4, n_group=4, topk_group=2, n_shared_experts=2, routed_scaling_factor=2.5,
                           norm_topk_prob=True)
    ref = _randomize(DeepseekV3MoE(cfg))
    with torch.no_grad(): ref.gate.e_score_correction_bias.normal_(0, 0.1)   # the selection bias matters
    ours = MoE(32, 16, 16, 4, num_shared_experts=2, d_ff_shared=16, scoring="sigmoid", norm_topk=True,
               routed_scaling=2.5, n_groups=4, topk_groups=2)
    with torch.no_grad():
        ours.router.weight.copy_(ref.gate.weight); ours.router.bias.copy_(ref.gate.e_score_correction_bias)
        ours.shared.w1.weight.copy_(ref.shared_experts.gate_proj.weight)
        ours.shared.w3.weight.copy_(ref.shared_experts.up_proj.weight)
        ours.shared.w2.weight.copy_(ref.shared_experts.down_proj.weight)
    _copy_experts(ours, ref.experts.gate_up_proj, ref.experts.down_proj)
    x = torch.randn(2, 11, 32)
    torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)


def test_bias_update_moves_skewed_router_toward_uniform():
    torch.manual_seed(0)
    m = MoE(16, 16, 8, 2, scoring="sigmoid", bias_update_rate=0.01, aux_loss_coef=0.0)
    with torch.no_grad(): m.router.weight[0].add_(2.0); m.router.weight[1].add_(1.5)  # experts 0, 1 favoured
    x = torch.randn(256, 16)
    imbalance = lambda load: (load.max() / load.mean()).item()
    m.eval(); m(x); before = imbalance(m.last_stats["load"])
    m.train()
    with torch.no_grad():
        for _ in range(200): m(x)
    m.eval(); m(x); after = imbalance(m.last_stats["load"])
    assert before > 1.5 and after < 1.3, (before, after)
    assert m.router.bias[0] < 0 and m.router.bias[1] < 0        # the favoured experts were pushed down


def test_bad_inputs_name_the_argument():
    for kw, arg in [(dict(top_k=9), "top_k"), (dict(n_groups=3), "num_experts"), (dict(n_groups=2, topk_groups=3), "topk_groups"),
                    (dict(capacity_factor=0), "capacity_factor"), (dict(capacity_factor=-1.0), "capacity_factor"),
                    (dict(dispatch="fast"), "dispatch")]:
        with pytest.raises(ValueError, match=arg): MoE(16, 16, **{**dict(num_experts=8, top_k=2), **kw})
    with pytest.raises(ValueError, match="d_model"): MoE(16, 16, 8, 2)(torch.randn(4, 15))


def test_model_option_trains_saves_and_counts():
    torch.manual_seed(0)
    cfg = ModelConfig.tiny(vocab_size=64, context_length=16, d_model=32, num_layers=3, num_heads=2, d_ff=64,
                           moe=dict(num_experts=4, top_k=2, d_ff=32, first_dense=1, num_shared_experts=1))
    lm = TransformerLM.from_config(cfg)
    assert [type(l.ffn).__name__ for l in lm.layers] == ["SwiGLU", "MoE", "MoE"]
    assert cfg.num_params() == lm.num_params()
    assert "layers.1.ffn.router.bias" in lm.state_dict() and "layers.1.ffn.experts.w1" in lm.state_dict()
    ids = torch.randint(0, 64, (2, 16))
    loss = torch.nn.functional.cross_entropy(lm(ids).flatten(0, 1), ids.flatten()) + lm.moe_aux_loss()
    loss.backward()
    assert lm.layers[1].ffn.router.weight.grad.abs().sum() > 0  # the aux loss and the gates reach the router
    lm2 = TransformerLM.from_config(ModelConfig(**cfg.to_dict()))
    lm2.load_state_dict(lm.state_dict())
    torch.testing.assert_close(lm2(ids), lm(ids))
