"Heavier checks of cs336_nb.scaling (Lecture 9): power laws, IsoFLOP fits, the Chinchilla parametric fit, WSD branches, muP."
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from cs336_nb.scaling import (ChinchillaFit, add_mup_readout, fit_chinchilla, fit_parabola, fit_power_law, isoflop_sweep, isoflops_fit,
                              load_chinchilla_runs, load_isoflop_runs, mup_param_groups, profile_optimum, wsd_branches)

DATA = Path(os.environ.get("CS336_DATA", "")) if os.environ.get("CS336_DATA") else None
needs_data = pytest.mark.skipif(DATA is None or not (DATA / "chinchilla_epoch_extracted.csv").exists(),
                                reason="needs the shared data ($CS336_DATA with isoflops_curves.json, chinchilla_epoch_extracted.csv)")
BESIROGLU = ChinchillaFit(E=1.8172, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658)   # arXiv 2404.10102, Table 1
HOFFMANN = ChinchillaFit(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)            # arXiv 2203.15556, eq. 10


@pytest.mark.parametrize("k,a", [(3.0, 0.5), (0.1, 1.3), (1e4, -0.25)])
def test_power_law_recovers_exponent(k, a):
    rng = np.random.default_rng(0)
    x = np.logspace(0, 6, 30)
    law = fit_power_law(x, k * x ** a * np.exp(rng.normal(0, 0.02, x.size)))
    assert abs(law.a - a) < 0.01
    assert abs(np.log(law.k / k)) < 0.05
    assert np.allclose(law(x), law.k * x ** law.a)


@pytest.mark.parametrize("x,y,msg", [([1, 2], [1, 0], "y must"), ([1, -2], [1, 2], "x must"), ([1, 2, 3], [1, 2], "mismatched"),
                                     ([1], [2], "at least 2"), ([2, 2], [1, 3], "distinct"), ([[1, 2]], [[1, 2]], "1-D")])
def test_power_law_rejects_bad_input(x, y, msg):
    with pytest.raises(ValueError, match=msg): fit_power_law(x, y)


def _synthetic_profiles(a_true: float, noise: float = 0.0, seed: int = 0) -> list[dict]:
    "Parabolic IsoFLOP profiles whose minima lie exactly on N_opt = 0.05 C^a_true."
    rng = np.random.default_rng(seed)
    return [dict(parameters=float(n), compute_budget=c,
                 final_loss=2 + 0.1 * (np.log(n) - np.log(0.05 * c ** a_true)) ** 2 + noise * rng.normal())
            for c in (1e17, 1e18, 1e19, 1e20) for n in np.logspace(5, 12, 41)]


@pytest.mark.parametrize("a_true", [0.4, 0.5, 0.6])
@pytest.mark.parametrize("method,tol", [("parabola", 1e-6), ("lowest", 0.06)])
def test_isoflops_fit_recovers_exponent(a_true, method, tol):
    f = isoflops_fit(_synthetic_profiles(a_true), method, n_bootstrap=0)
    assert abs(f.a - a_true) < tol
    assert abs(f.b - (1 - a_true)) < tol
    C = 1e23
    assert np.isclose(6 * f.params(C) * f.tokens(C), C)


SIZES = np.logspace(6, 9, 7)


def _bowl(n, n_star, curvature=0.05):
    "A convex IsoFLOP profile in log N with its minimum at n_star."
    return 3 + curvature * np.log(n / n_star) ** 2


@pytest.mark.parametrize("profile,status,n_opt", [
    (_bowl(SIZES, 3e7), "parabola", 3e7),                     # convex, minimum inside
    (-_bowl(SIZES, 3e7), "concave", SIZES[-1]),               # a maximum: the lowest run (the end farther from 3e7) stands in
    (_bowl(SIZES, 1e11), "edge", SIZES[-1]),                  # the minimum is past the largest size
    (_bowl(SIZES, 1e4), "edge", SIZES[0]),                    # ... or before the smallest
    (3 - 1e-3 * np.log(SIZES) + 1e-9 * np.log(SIZES) ** 2, "edge", SIZES[-1]),   # nearly flat: the vertex at N ~ e^500000
])
def test_profile_optimum_classifies(profile, status, n_opt):
    with warnings.catch_warnings():
        warnings.simplefilter("error")                        # no overflow warnings
        got, how = profile_optimum(SIZES, profile, "parabola")
    assert how == status
    assert np.isclose(got, n_opt, rtol=1e-9)


def test_profile_optimum_noisy_and_few_sizes():
    rng = np.random.default_rng(0)
    errs = [np.log(profile_optimum(SIZES, _bowl(SIZES, 3e7) + rng.normal(0, 0.002, SIZES.size), "parabola")[0] / 3e7) for _ in range(50)]
    assert np.abs(errs).max() < 0.3
    assert abs(np.mean(errs)) < 0.05
    assert profile_optimum(SIZES[:2], _bowl(SIZES[:2], 3e7), "parabola")[1] == "few sizes"
    assert profile_optimum(SIZES, _bowl(SIZES, 3e7), "lowest")[1] == "lowest"


def test_parabola_is_scale_free():
    "Standardized coordinates: the same profile at N 1e12 times larger gives the same curvature and a vertex shifted by 1e12."
    small, big = fit_parabola(SIZES, _bowl(SIZES, 3e7)), fit_parabola(SIZES * 1e12, _bowl(SIZES, 3e7))
    assert np.isclose(small.p2, big.p2)
    assert np.isclose(big.log_vertex - small.log_vertex, np.log(1e12))


def _with_far_budget(a_true=0.5):
    "Synthetic profiles plus one budget (1e23) whose optimum lies beyond the sampled sizes."
    far = [dict(parameters=float(n), compute_budget=1e23, final_loss=2 + 0.1 * (np.log(n) - np.log(0.05 * 1e23 ** a_true)) ** 2)
           for n in np.logspace(5, 9, 21)]
    return _synthetic_profiles(a_true) + far


@pytest.mark.parametrize("method", ["parabola", "lowest"])
def test_isoflops_unlocated_minimum_warns_and_falls_back(method):
    with pytest.warns(UserWarning, match=r"1e\+23 \(edge\)"):
        f = isoflops_fit(_with_far_budget(), method, n_bootstrap=20)
    assert f.status[-1] == "edge"
    assert not f.located[-1]
    assert f.n_opt[-1] == 1e9                                   # the lowest run (the largest size) stands in
    assert f.used.all()


def test_isoflops_drop_and_raise():
    with pytest.warns(UserWarning, match="left out"):
        f = isoflops_fit(_with_far_budget(), "parabola", n_bootstrap=50, on_unlocated="drop")
    assert f.used.tolist() == [True, True, True, True, False]
    assert abs(f.a - 0.5) < 1e-6
    with pytest.raises(ValueError, match="not inside the sampled"):
        isoflops_fit(_with_far_budget(), n_bootstrap=0, on_unlocated="raise")
    with pytest.raises(ValueError, match="on_unlocated"):
        isoflops_fit(_with_far_budget(), n_bootstrap=0, on_unlocated="ignore")


def test_isoflops_concave_budget_and_bootstrap_fallback():
    runs = _synthetic_profiles(0.5) + [dict(parameters=float(n), compute_budget=1e21, final_loss=float(4 - 0.01 * (np.log(n) - 20) ** 2))
                                       for n in np.logspace(5, 12, 9)]
    with pytest.warns(UserWarning, match="concave"):
        f = isoflops_fit(runs, "parabola", n_bootstrap=100)
    assert f.status[-1] == "concave"
    assert 0 < f.boot_fallback < 1                            # the concave budget's resamples fall back, the others do not
    assert np.isfinite(f.boot).all()


def test_isoflops_bootstrap_covers_truth():
    f = isoflops_fit(_synthetic_profiles(0.5, noise=0.005), "parabola", n_bootstrap=300, seed=1)
    lo, hi = np.percentile(f.boot[:, 1], [2.5, 97.5])
    assert lo < 0.5 < hi
    assert hi - lo < 0.1
    lo, hi = f.interval(1e22)
    assert lo < 0.05 * 1e22 ** 0.5 < hi


@needs_data
def test_isoflops_on_course_data_path_and_records_agree():
    path = DATA / "isoflops_curves.json"
    by_path, by_records = isoflops_fit(path, n_bootstrap=0), isoflops_fit(json.loads(path.read_text()), n_bootstrap=0)
    assert by_path.a == by_records.a
    assert 0.45 < by_path.a < 0.55
    assert len(by_path.budgets) == 9


@pytest.mark.parametrize("runs,msg", [
    ([dict(parameters=1e6, compute_budget=1e18)], "final_loss"),
    ([dict(parameters=0, compute_budget=1e18, final_loss=3.0)], "non-positive"),
    ([], "empty"),
    ([dict(parameters=1e6, compute_budget=1e18, final_loss=3.0)] * 3, "2 or more"),
])
def test_isoflops_rejects_bad_input(runs, msg):
    with pytest.raises(ValueError, match=msg): isoflops_fit(runs, n_bootstrap=0)


def test_isoflops_rejects_bad_method_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="method"): isoflops_fit(_synthetic_profiles(0.5), "cubic")
    with pytest.raises(FileNotFoundError): load_isoflop_runs(tmp_path / "none.json")
    with pytest.raises(TypeError): load_isoflop_runs(dict(parameters=1))


@pytest.mark.parametrize("true", [ChinchillaFit(1.8, 400.0, 1500.0, 0.34, 0.36), ChinchillaFit(1.5, 1000.0, 300.0, 0.4, 0.28)])
def test_chinchilla_recovers_synthetic(true):
    N, D = (g.ravel() for g in np.meshgrid(np.logspace(7.5, 10.5, 9), np.logspace(9, 12, 9)))
    loss = true(N, D) * np.exp(np.random.default_rng(0).normal(0, 0.001, N.size))
    fit = fit_chinchilla(N, D, loss, n_starts=8)
    assert abs(fit.alpha - true.alpha) < 0.01
    assert abs(fit.beta - true.beta) < 0.01
    assert abs(fit.E - true.E) < 0.02
    assert abs(fit.a - true.a) < 0.01


def test_optimal_is_the_minimum_on_the_isoflop_line():
    from scipy.optimize import minimize_scalar
    for f in (BESIROGLU, HOFFMANN):
        C = 5.76e23
        r = minimize_scalar(lambda logn: f(np.exp(logn), C / (6 * np.exp(logn))), bounds=(15, 35), method="bounded",
                            options=dict(xatol=1e-10))
        N, D = f.optimal(C)
        assert abs(np.log(N) - r.x) < 1e-4
        assert np.isclose(6 * N * D, C)


@needs_data
def test_chinchilla_fit_agrees_with_published_replication():
    r = load_chinchilla_runs(DATA / "chinchilla_epoch_extracted.csv")
    assert len(r["N"]) == 245
    fit = fit_chinchilla(r["N"], r["D"], r["loss"], exclude_highest=5, n_starts=8)
    assert fit.n_points == 240
    # tolerance: E within 0.01, exponents within 0.005, A and B within 10% (Besiroglu et al.'s SEs: 0.03, 0.02, 26%, 62%)
    assert abs(fit.E - BESIROGLU.E) < 0.01
    assert abs(fit.alpha - BESIROGLU.alpha) < 0.005
    assert abs(fit.beta - BESIROGLU.beta) < 0.005
    assert abs(np.log(fit.A / BESIROGLU.A)) < 0.1
    assert abs(np.log(fit.B / BESIROGLU.B)) < 0.1
    assert 15 < fit.tokens_per_param(5.76e23) < 25
    assert HOFFMANN.tokens_per_param(5.76e23) > 40            # the rounded paper values disagree
    assert fit.objective < fit_chinchilla(r["N"], r["D"], r["loss"], exclude_highest=5, n_starts=1, grid=dict(a=[0.0], b=[0.0], e=[0.0], alpha=[0.0], beta=[0.0])).objective + 1e-9


@pytest.mark.parametrize("kw,msg", [(dict(exclude_highest=200), "exclude_highest"), (dict(delta=0), "delta"), (dict(n_starts=0), "n_starts")])
def test_chinchilla_rejects_bad_options(kw, msg):
    N, D = np.logspace(7, 10, 10), np.logspace(9, 12, 10)
    with pytest.raises(ValueError, match=msg): fit_chinchilla(N, D, 2 + 0 * N, **kw)


def test_chinchilla_rejects_bad_data():
    with pytest.raises(ValueError, match="at least 5"): fit_chinchilla([1, 2, 3], [1, 2, 3], [1, 2, 3])
    with pytest.raises(ValueError, match="mismatched"): fit_chinchilla([1] * 6, [1] * 5, [1] * 6)
    with pytest.raises(ValueError, match="loss must"): fit_chinchilla([1] * 6, [1] * 6, [1, 2, 3, 4, 5, np.nan])


def _tiny_lm(width: int):
    from cs336_nb.model import TransformerLM
    torch.manual_seed(0)
    return TransformerLM(64, 16, width, 2, width // 16, 4 * width, 10000.0)


def test_mup_groups_and_readout():
    m = _tiny_lm(128)
    groups = mup_param_groups(m, 32, 1e-2, weight_decay=0.1)
    assert [g["lr_mult"] for g in groups] == [0.25, 1.0, 1.0]
    hidden = {id(p) for p in groups[0]["params"]}
    assert id(m.lm_head.weight) not in hidden
    assert id(m.token_embeddings.weight) not in hidden
    assert id(m.layers[0].attn.q_proj.weight) in hidden
    assert id(m.layers[0].ffn.w1.weight) in hidden
    assert sum(len(g["params"]) for g in groups) == len(list(m.parameters()))
    x = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        before = m(x)
        h = add_mup_readout(m, 32)
        assert torch.allclose(m(x), before * 0.25)
        h.remove()


def test_mup_coordinate_check():
    "After a few Adam steps, the logits move by an amount that grows with width under SP, and much less under muP."
    from cs336_nb.optim import AdamW
    def change(width, mup):
        m = _tiny_lm(width)
        if mup: add_mup_readout(m, 32)
        groups = mup_param_groups(m, 32, 1e-3) if mup else [dict(params=list(m.parameters()), lr=1e-3)]
        opt, x = AdamW(groups, lr=1e-3, weight_decay=0.0), torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(0))
        with torch.no_grad(): f0 = m(x)
        for _ in range(3):
            out = m(x); (out.logsumexp(-1).mean() - out[..., 0].mean()).backward(); opt.step(); opt.zero_grad()
        with torch.no_grad(): return (m(x) - f0).abs().mean().item()
    sp, mu = change(256, False) / change(32, False), change(256, True) / change(32, True)
    assert sp > 4                    # 8x wider: SP's update grows about as fast as the width,
    assert mu < 1.5                  # muP's does not grow


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    from cs336_nb.training import TrainConfig
    if DATA is None or not (DATA / "tinyshakespeare.txt").exists(): pytest.skip("needs tinyshakespeare.txt in $CS336_DATA")
    d = tmp_path_factory.mktemp("scaling")
    return TrainConfig(corpus=str(DATA / "tinyshakespeare.txt"), max_corpus_bytes=60_000, vocab_size=300, context_length=16,
                       batch_size=4, d_model=32, num_layers=1, num_heads=2, warmup_iters=2, eval_interval=10, eval_batches=2,
                       device="cpu", compile=False, out_dir=str(d / "runs"), data_dir=str(d / "data"), progress=False)


def test_wsd_branch_equals_wsd_run_from_scratch(tiny_base):
    import dataclasses
    from cs336_nb.training import train
    out = wsd_branches(tiny_base, [20, 30], decay_fraction=0.2, progress=False)
    scratch = train(dataclasses.replace(tiny_base, schedule="wsd", max_iters=30, decay_iters=6, keep_best=False,
                                        out_dir=tiny_base.out_dir + "/scratch"))
    assert out["branch"][30]["final_val_loss"] == pytest.approx(scratch["final_val_loss"], rel=1e-5)
    assert out["trunk"]["iterations"] == 24
    assert out["branch"][30]["history"]["lr"][-1] < tiny_base.learning_rate / 2     # it decayed
    assert set(out["cosine"]) == {20, 30}


def test_isoflop_sweep_records(tiny_base):
    recs = isoflop_sweep([2e8], [(16, 1), (32, 1)], tiny_base, min_iters=5, progress=False)
    assert {"parameters", "compute_budget", "final_loss", "iterations"} <= set(recs[0])
    for r in recs:
        assert abs(6 * r["parameters"] * r["tokens"] / r["compute_budget"] - 1) < 0.2      # C = 6 N D, up to rounding of steps
    with pytest.raises(TypeError): isoflop_sweep([1e8], [(16, 1)], dict(d_model=16))
