"cs336_nb.optim against torch.optim: same parameters after several steps, state_dict round trip, bad arguments."
import copy

import pytest
import torch

from cs336_nb.optim import SGD, AdaGrad, AdamW


def _net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4), torch.nn.LayerNorm(4))


def _train(net, opt, steps=10, seed=1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = torch.randn(32, 8, generator=g), torch.randn(32, 4, generator=g)
        opt.zero_grad()
        torch.nn.functional.mse_loss(net(x), y).backward()
        opt.step()
    return torch.cat([p.detach().flatten() for p in net.parameters()])


@pytest.mark.parametrize("ours,theirs", [
    (lambda p: SGD(p, lr=0.05), lambda p: torch.optim.SGD(p, lr=0.05)),
    (lambda p: SGD(p, lr=0.05, weight_decay=1e-2, foreach=True), lambda p: torch.optim.SGD(p, lr=0.05, weight_decay=1e-2)),   # fused pass
    (lambda p: SGD(p, lr=0.05, weight_decay=1e-2, foreach=False), lambda p: torch.optim.SGD(p, lr=0.05, weight_decay=1e-2)),  # per parameter
    (lambda p: SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-2), lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-2)),
    (lambda p: AdaGrad(p, lr=0.05), lambda p: torch.optim.Adagrad(p, lr=0.05)),
    (lambda p: AdamW(p), lambda p: torch.optim.AdamW(p)),
    (lambda p: AdamW(p, lr=3e-3, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1),
     lambda p: torch.optim.AdamW(p, lr=3e-3, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1)),
    (lambda p: AdamW(p, lr=3e-3, weight_decay=0.1, foreach=False), lambda p: torch.optim.AdamW(p, lr=3e-3, weight_decay=0.1)),
])
def test_matches_torch(ours, theirs):
    a, b = _net(), _net()
    pa, pb = _train(a, ours(a.parameters())), _train(b, theirs(b.parameters()))
    p0 = torch.cat([p.detach().flatten() for p in _net().parameters()])
    assert (pa - p0).abs().max() > 1e-3  # it moved
    torch.testing.assert_close(pa, pb, atol=1e-6, rtol=1e-5)


def test_adamw_defaults_and_param_groups_with_lr_change():
    opt = AdamW([torch.nn.Parameter(torch.zeros(2))])
    g = opt.param_groups[0]
    assert (g["lr"], g["betas"], g["eps"], g["weight_decay"]) == (1e-3, (0.9, 0.999), 1e-8, 0.01)
    a, b = _net(), _net()
    oa = AdamW([{"params": a[0].parameters(), "weight_decay": 0.0}, {"params": list(a[2].parameters()) + list(a[3].parameters())}], lr=1e-2)
    ob = torch.optim.AdamW([{"params": b[0].parameters(), "weight_decay": 0.0}, {"params": list(b[2].parameters()) + list(b[3].parameters())}], lr=1e-2)
    _train(a, oa, 3); _train(b, ob, 3)
    for o in (oa, ob):
        for grp in o.param_groups: grp["lr"] *= 0.5  # what a schedule does
    torch.testing.assert_close(_train(a, oa, 3, seed=2), _train(b, ob, 3, seed=2), atol=1e-6, rtol=1e-5)


def test_state_dict_round_trip_resumes_identically():
    a = _net(); oa = AdamW(a.parameters(), lr=1e-2)
    _train(a, oa, 4)
    b = copy.deepcopy(a); ob = AdamW(b.parameters(), lr=1e-2); ob.load_state_dict(copy.deepcopy(oa.state_dict()))
    torch.testing.assert_close(_train(a, oa, 3, seed=5), _train(b, ob, 3, seed=5), atol=0, rtol=0)
    assert all(set(s) == {"step", "exp_avg", "exp_avg_sq"} for s in oa.state.values())


def test_skips_params_without_grad():
    p, q = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    opt = AdamW([p, q], lr=0.1)
    (p.sum()).backward(); opt.step()
    assert torch.equal(q.detach(), torch.ones(3)) and not torch.equal(p.detach(), torch.ones(3)) and q not in opt.state


@pytest.mark.parametrize("bad", [dict(lr=-1.0), dict(betas=(1.0, 0.9)), dict(betas=0.9), dict(eps=-1e-8), dict(weight_decay=-0.1), dict(lr="x")])
def test_bad_hyperparameters(bad):
    with pytest.raises((ValueError, TypeError)):
        AdamW([torch.nn.Parameter(torch.zeros(1))], **bad)
