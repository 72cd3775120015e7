"""The fused linear + cross-entropy (Lecture 6, `cs336_nb.kernels.fused_cross_entropy`) against the simple path:
the full logits, then `cs336_nb.training.cross_entropy`."""
import os

import pytest
import torch

from cs336_nb.accounting import saved_activation_bytes
from cs336_nb.kernels.fused_cross_entropy import (default_chunk_size, linear_cross_entropy,
                                                  linear_cross_entropy_memory, linear_cross_entropy_reference, lm_loss)
from cs336_nb.model import ModelConfig, TransformerLM
from cs336_nb.training import cross_entropy

N, D, V = 60, 24, 131


def make_inputs(seed: int = 0, pad_every: int = 0):
    "Hidden states (N, D), a head weight (V, D) and targets (N,), every `pad_every`-th target set to -100."
    g = torch.Generator().manual_seed(seed)
    hidden, weight = torch.randn(N, D, generator=g), torch.randn(V, D, generator=g) / D ** 0.5
    targets = torch.randint(0, V, (N,), generator=g)
    if pad_every: targets[::pad_every] = -100
    return hidden, weight, targets


def loss_and_grads(fn, hidden, weight, targets, **kw):
    "Loss, d/d(hidden), d/d(weight) on fresh leaf copies."
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss = fn(h, w, targets, **kw)
    loss.backward()
    return loss.detach(), h.grad, w.grad


def rel_err(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("chunk_size", [None, N, 20, 7, 1])   # default, all rows, divides N, does not, one row
@pytest.mark.parametrize("pad_every", [0, 3])                  # no ignored targets; every third ignored
def test_matches_simple_path_fp32(chunk_size, pad_every):
    hidden, weight, targets = make_inputs(pad_every=pad_every)
    expected = loss_and_grads(linear_cross_entropy_reference, hidden, weight, targets)
    got = loss_and_grads(linear_cross_entropy, hidden, weight, targets, chunk_size=chunk_size)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chunk_size", [20, 7])
def test_matches_simple_path_bf16(chunk_size):
    hidden, weight, targets = make_inputs(pad_every=4)
    expected = loss_and_grads(linear_cross_entropy_reference, hidden, weight, targets)
    got = loss_and_grads(linear_cross_entropy, hidden.bfloat16(), weight.bfloat16(), targets, chunk_size=chunk_size)
    for g, e in zip(got, expected):
        assert rel_err(g, e) < 2e-2


def test_ignore_index_other_value():
    hidden, weight, targets = make_inputs()
    targets[:10] = 5                                    # class 5 is ignored: those rows drop out of the mean
    expected = torch.nn.functional.cross_entropy(hidden @ weight.t(), targets, ignore_index=5)
    torch.testing.assert_close(linear_cross_entropy(hidden, weight, targets, ignore_index=5, chunk_size=8), expected)


def test_tied_weights_get_both_gradients():
    hidden, weight, targets = make_inputs(pad_every=5)
    ids = torch.randint(0, V, (N,), generator=torch.Generator().manual_seed(1))

    def tied_grad(loss_fn):
        w = weight.clone().requires_grad_()
        loss_fn(torch.nn.functional.embedding(ids, w) * 2.0, w, targets).backward()
        return w.grad

    torch.testing.assert_close(tied_grad(lambda h, w, t: linear_cross_entropy(h, w, t, chunk_size=9)),
                               tied_grad(linear_cross_entropy_reference))


def test_compiles_without_graph_breaks():
    hidden, weight, targets = make_inputs(pad_every=3)
    expected = loss_and_grads(linear_cross_entropy, hidden, weight, targets, chunk_size=16)
    compiled = torch.compile(linear_cross_entropy, backend="aot_eager", fullgraph=True)
    for g, e in zip(loss_and_grads(compiled, hidden, weight, targets, chunk_size=16), expected):
        torch.testing.assert_close(g, e)


@pytest.mark.parametrize("compiled", [False, True])
def test_triton_operator_matches_simple_path(compiled):
    "The GPU path (custom op + Triton row kernel), here in Triton's CPU interpreter (set by conftest without a GPU)."
    pytest.importorskip("triton")
    hidden, weight, targets = make_inputs(pad_every=3)
    if not torch.cuda.is_available(): assert os.environ.get("TRITON_INTERPRET") == "1"
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    hidden, weight, targets = hidden.to(dev), weight.to(dev), targets.to(dev)
    expected = loss_and_grads(linear_cross_entropy_reference, hidden, weight, targets)
    fn = torch.compile(linear_cross_entropy, backend="aot_eager", fullgraph=True) if compiled else linear_cross_entropy
    for g, e in zip(loss_and_grads(fn, hidden, weight, targets, chunk_size=13, impl="triton"), expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)


def test_no_grad_forward_equals_loss():
    hidden, weight, targets = make_inputs()
    with torch.no_grad():
        got = linear_cross_entropy(hidden, weight, targets, chunk_size=13)
    torch.testing.assert_close(got, linear_cross_entropy_reference(hidden, weight, targets))


@pytest.mark.parametrize("fused", [False, True])
def test_saved_bytes_match_formula(fused):
    hidden, weight, targets = make_inputs()
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    if fused: fn = lambda: linear_cross_entropy(h, w, targets, chunk_size=16)
    else: fn = lambda: cross_entropy(h @ w.t(), targets)
    _, saved = saved_activation_bytes(fn, exclude=(h, w, targets))
    assert saved == linear_cross_entropy_memory(N, V, D, fused=fused, chunk_size=16)["saved"]


def test_default_chunk_size():
    rows = default_chunk_size(16 * 1024, 50304, 768)
    assert rows & (rows - 1) == 0                                   # a power of two
    assert rows * 50304 >= 16 * 1024 * 768 / 2                      # logits of a chunk ~ the hidden states' size
    assert default_chunk_size(5, 64, 64) == 5                       # never more rows than there are


def test_bad_inputs():
    hidden, weight, targets = make_inputs()
    with pytest.raises(ValueError, match="chunk_size"): linear_cross_entropy(hidden, weight, targets, chunk_size=0)
    with pytest.raises(ValueError, match="width"): linear_cross_entropy(hidden, weight[:, 1:], targets)
    with pytest.raises(TypeError, match="integer"): linear_cross_entropy(hidden, weight, targets.float())
    with pytest.raises(ValueError, match="targets"): linear_cross_entropy(hidden, weight, targets[1:])
    with pytest.raises(ValueError, match="impl"): linear_cross_entropy(hidden, weight, targets, impl="cuda")


def test_lm_loss_matches_unfused():
    "Tied embeddings: the head's and the embedding's gradients meet in one parameter."
    cfg = ModelConfig.tiny(vocab_size=67, context_length=12, tie_embeddings=True, num_layers=1)

    def run(fused):
        torch.manual_seed(0)
        model = TransformerLM.from_config(cfg)
        x = torch.randint(0, cfg.vocab_size, (3, 12))
        y = x.roll(-1, dims=1)
        y[:, -1] = -100
        loss = lm_loss(model, x, y, fused=fused, chunk_size=5)
        loss.backward()
        return [loss.detach()] + [p.grad for p in model.parameters()]

    for f, u in zip(run(True), run(False)):
        torch.testing.assert_close(f, u, rtol=1e-5, atol=1e-6)


def test_lm_loss_refuses_soft_cap():
    model = TransformerLM.from_config(ModelConfig.tiny(vocab_size=67, context_length=12, logit_soft_cap=30.0))
    x = torch.randint(0, 67, (2, 12))
    with pytest.raises(ValueError, match="logit_soft_cap"): lm_loss(model, x, x)

