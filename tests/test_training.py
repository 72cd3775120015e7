"Heavier checks of cs336_nb.training (Lecture 4): the loss, schedule, clipping, batches, checkpoints, the loop."
import io
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cs336_nb.model import TransformerLM
from cs336_nb.optim import AdamW
from cs336_nb.training import (TrainConfig, add_residual_dropout, bits_per_byte, build_model, cross_entropy, evaluate,
                               get_batch, get_lr_cosine_schedule, gradient_clipping, load_checkpoint, sample_next_token,
                               save_checkpoint, split_text, tokenize_to_memmap, train, train_cli)

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("shape", [(5,), (3, 4), (2, 3, 4)])
@pytest.mark.parametrize("scale", [1.0, 1e3, 1e5])
def test_cross_entropy_matches_torch(shape, scale):
    g = torch.Generator().manual_seed(hash((shape, scale)) % 2**31)
    V = 37
    logits = torch.randn(*shape, V, generator=g, dtype=torch.float64).float() * scale
    targets = torch.randint(0, V, shape, generator=g)
    ours = cross_entropy(logits, targets)
    ref = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1))
    assert torch.isfinite(ours)
    assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-4 * max(1.0, scale / 1e3))


def test_cross_entropy_bf16_and_grad():
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(8, 16, 100, generator=g) * 30).bfloat16().requires_grad_()
    targets = torch.randint(0, 100, (8, 16), generator=g)
    loss = cross_entropy(logits, targets)
    assert loss.dtype == torch.float32
    ref = F.cross_entropy(logits.detach().float().reshape(-1, 100), targets.reshape(-1))
    assert abs(loss.item() - ref.item()) < 1e-4
    loss.backward()
    assert logits.grad is not None and logits.grad.dtype == torch.bfloat16 and torch.isfinite(logits.grad.float()).all()


def test_cross_entropy_bad_input():
    with pytest.raises(ValueError, match="shape"): cross_entropy(torch.randn(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"): cross_entropy(torch.randn(2, 5), torch.zeros(2))
    with pytest.raises(TypeError): cross_entropy(np.zeros((2, 5)), torch.zeros(2, dtype=torch.long))


def _ref_schedule(t, hi, lo, tw, tc):
    if t < tw: return t / tw * hi
    if t > tc: return lo
    return lo + (1 + math.cos((t - tw) / (tc - tw) * math.pi)) / 2 * (hi - lo)


def test_lr_schedule_against_closed_form():
    # the CS336 assignment's reference values: max 1, min 0.1, warmup 7, cosine until 21
    expected = [0, 0.14285714285714285, 0.2857142857142857, 0.42857142857142855, 0.5714285714285714,
                0.7142857142857143, 0.8571428571428571, 1.0, 0.9887175604818206, 0.9554359905560885,
                0.9018241671106134, 0.8305704108364301, 0.7452476826029011, 0.6501344202803414,
                0.55, 0.44986557971965857, 0.3547523173970989, 0.26942958916356996, 0.19817583288938662,
                0.14456400944391146, 0.11128243951817937, 0.1, 0.1, 0.1, 0.1]
    got = [get_lr_cosine_schedule(t, 1.0, 0.1, 7, 21) for t in range(25)]
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    for args in [(3e-4, 3e-5, 100, 5000), (1.0, 0.0, 0, 10), (2.0, 0.5, 10, 10)]:
        for t in range(0, args[3] + 50, 7):
            assert get_lr_cosine_schedule(t, *args) == pytest.approx(_ref_schedule(t, *args))


@pytest.mark.parametrize("max_norm", [0.01, 1.0, 1e6])
def test_gradient_clipping_matches_torch(max_norm):
    torch.manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(s)) for s in [(7, 3), (5,), (2, 2, 2), (4,)]]
    for p in ps[:3]: p.grad = torch.randn_like(p) * 3
    ref = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    for r, p in zip(ref, ps): r.grad = None if p.grad is None else p.grad.clone()
    n_ours = gradient_clipping(iter(ps), max_norm)   # a generator works, like model.parameters()
    n_ref = torch.nn.utils.clip_grad_norm_(ref, max_norm)
    assert torch.allclose(n_ours, n_ref, rtol=1e-6)
    for r, p in zip(ref, ps):
        assert (p.grad is None) == (r.grad is None)
        if p.grad is not None: assert torch.allclose(p.grad, r.grad, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="max_l2_norm"): gradient_clipping(ps, 0.0)


def test_get_batch_memmap_uniform_and_shifted(tmp_path):
    data = np.arange(1000, dtype=np.uint16)
    data.tofile(tmp_path / "d.bin")
    mm = np.memmap(tmp_path / "d.bin", dtype=np.uint16, mode="r")
    x, y = get_batch(mm, 32, 10, "cpu", generator=np.random.default_rng(0))
    assert x.shape == y.shape == (32, 10) and x.dtype == y.dtype == torch.int64
    assert torch.equal(y, x + 1) and torch.equal(x[:, 1:] - x[:, :-1], torch.ones(32, 9, dtype=torch.int64))
    rng = np.random.default_rng(1)
    starts = np.concatenate([get_batch(mm, 64, 10, "cpu", generator=rng)[0][:, 0].numpy() for _ in range(200)])
    assert starts.min() == 0 and starts.max() == 1000 - 10 - 1          # every valid window, including the last
    counts = np.bincount(starts, minlength=990)
    assert counts.std() < 1.3 * np.sqrt(counts.mean())                 # uniform: Poisson-like spread, no favourites
    xt, _ = get_batch(torch.arange(50), 2, 5, "cpu", generator=np.random.default_rng(1))
    assert xt.shape == (2, 5)
    with pytest.raises(TypeError): get_batch(np.zeros((3, 3)), 2, 2, "cpu")
    with pytest.raises(ValueError, match="too few"): get_batch(np.arange(10), 2, 10, "cpu")


def _tiny_model(seed=0):
    torch.manual_seed(seed)
    return TransformerLM(64, 16, 32, 2, 2, 64, 10000.0)


def _steps(model, opt, n, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x = torch.randint(0, 64, (4, 16), generator=g)
        loss = cross_entropy(model(x[:, :-1]), x[:, 1:])
        loss.backward(); gradient_clipping(model.parameters(), 1.0); opt.step(); opt.zero_grad(set_to_none=True)
    return loss.item()


def test_checkpoint_resume_is_exact(tmp_path):
    m1 = _tiny_model(); o1 = AdamW(m1.parameters(), lr=1e-2, weight_decay=0.1)
    _steps(m1, o1, 3, seed=1)
    save_checkpoint(m1, o1, 3, tmp_path / "sub" / "c.pt")
    end1 = _steps(m1, o1, 3, seed=2)
    m2 = _tiny_model(seed=123); o2 = AdamW(m2.parameters(), lr=1e-2, weight_decay=0.1)
    assert load_checkpoint(tmp_path / "sub" / "c.pt", m2, o2) == 3
    end2 = _steps(m2, o2, 3, seed=2)
    assert end1 == end2
    for a, b in zip(m1.parameters(), m2.parameters()): assert torch.equal(a, b)
    buf = io.BytesIO(); save_checkpoint(m1, o1, 11, buf); buf.seek(0)
    assert load_checkpoint(buf, _tiny_model(), AdamW(_tiny_model().parameters())) == 11
    with pytest.raises(TypeError, match="out"): save_checkpoint(m1, o1, 1, 12345)


def test_checkpoint_crash_mid_save_keeps_old_file(tmp_path, monkeypatch):
    m = _tiny_model(); o = AdamW(m.parameters())
    dest = tmp_path / "c.pt"
    save_checkpoint(m, o, 1, dest)
    before = dest.read_bytes()
    def boom(obj, f, *a, **k):
        f.write(b"\0" * 1000); raise OSError("disk full")
    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError, match="disk full"): save_checkpoint(m, o, 2, dest)
    monkeypatch.undo()
    assert dest.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]
    assert load_checkpoint(dest, m, o) == 1


class _NextTokenModel(torch.nn.Module):
    "Predicts (x + 1) % V with a margin of 50 nats."
    def __init__(self, V): super().__init__(); self.V = V; self.p = torch.nn.Parameter(torch.zeros(()))
    def forward(self, x): return F.one_hot((x + 1) % self.V, self.V).float() * 50.0 + self.p


def test_evaluate_covers_every_token():
    V, n = 7, 1000
    data = np.arange(n) % V
    data[-1] = (data[-2] + 3) % V                   # one surprise, in the last (partial) window
    loss = evaluate(_NextTokenModel(V), data, context_length=64, batch_size=4, device="cpu")
    surprise = -torch.log_softmax(torch.tensor([50.0] + [0.0] * (V - 1)), 0)[1].item()
    assert loss == pytest.approx(surprise / (n - 1), rel=1e-4)
    part = evaluate(_NextTokenModel(V), data, context_length=64, batch_size=4, device="cpu", max_batches=1)
    assert part < 1e-6                               # the first 4 windows hold no surprise


def test_tokenize_to_memmap_streams_and_checks(tmp_path):
    from cs336_nb.tokenization import Tokenizer, train_bpe
    text = "the quick brown fox jumps over the lazy dog.\n" * 200 + "<|endoftext|>" + "and again\n" * 50
    (tmp_path / "t.txt").write_text(text)
    vocab, merges = train_bpe(tmp_path / "t.txt", 300, ["<|endoftext|>"], progress=False)
    tok = Tokenizer(vocab, merges, ["<|endoftext|>"])
    mm = tokenize_to_memmap(tok, tmp_path / "t.txt", tmp_path / "t.bin", chunk_tokens=64, progress=False)
    assert mm.dtype == np.uint16 and mm.tolist() == tok.encode(text)
    mm2 = tokenize_to_memmap(tok, iter(text.splitlines(keepends=True)), tmp_path / "t2.bin", progress=False)
    assert mm2.tolist() == mm.tolist()

    class Big:
        vocab = dict.fromkeys(range(70000))
    with pytest.raises(ValueError, match="uint16"): tokenize_to_memmap(Big(), [], tmp_path / "x.bin")


def test_sample_next_token_top_p_and_temperature():
    g = torch.Generator().manual_seed(0)
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]] * 2))
    for top_p, allowed in [(0.4, {0}), (0.75, {0, 1}), (0.85, {0, 1, 2}), (1.0, {0, 1, 2, 3})]:
        seen = set(torch.cat([sample_next_token(logits, 1.0, top_p, g).flatten() for _ in range(300)]).tolist())
        assert seen == allowed, (top_p, seen)
    cold = torch.cat([sample_next_token(logits, 0.05, 1.0, g) for _ in range(200)])
    assert (cold == 0).all()
    assert torch.equal(sample_next_token(logits, 0.0), torch.tensor([0, 0]))


def test_dropout_hooks_only_in_training():
    m = _tiny_model()
    x = torch.randint(0, 64, (2, 16))
    ref = m(x).detach()
    hs = add_residual_dropout(m, 0.3)
    assert len(hs) == 1 + 2 * 2
    m.eval()
    assert torch.allclose(m(x), ref, atol=1e-6)
    m.train()
    assert not torch.allclose(m(x), ref, atol=1e-3)
    with pytest.raises(ValueError): add_residual_dropout(m, 1.0)
    with pytest.raises(TypeError): add_residual_dropout(torch.nn.Linear(2, 2), 0.1)


def test_bits_per_byte_and_split():
    assert bits_per_byte(1.4697, 1, 1) == pytest.approx(2.1203, abs=1e-4)
    tr, va = split_text("abcdefghij", 0.1)
    assert (tr, va) == ("abcdefghi", "j")
    with pytest.raises(ValueError): split_text("abc", 1.0)
    with pytest.raises(ValueError): bits_per_byte(1.0, 0, 1)


def _tiny_cfg(tmp_path, **kw):
    base = dict(corpus=str(tmp_path / "corpus.txt"), vocab_size=300, context_length=32, d_model=32, num_layers=1,
                num_heads=2, batch_size=8, max_iters=30, warmup_iters=5, learning_rate=3e-3, eval_interval=10,
                log_interval=5, out_dir=str(tmp_path / "run"), device="cpu", progress=False, dropout=0.1)
    return TrainConfig(**{**base, **kw})


@pytest.fixture
def corpus(tmp_path):
    from cs336_nb.corpora import load_text
    (tmp_path / "corpus.txt").write_text(load_text("tinyshakespeare")[:60_000])
    return tmp_path


def test_train_learns_and_resumes_exactly(corpus):
    full = train(_tiny_cfg(corpus, out_dir=str(corpus / "full")))
    h = full["history"]
    assert h["train_loss"][-1] < h["train_loss"][0] - 0.5
    assert full["iterations"] == 30 and len(h["val_loss"]) == 3 and full["best_val_bpb"] <= full["final_val_bpb"]
    assert (corpus / "full" / "best.pt").exists() and json.loads((corpus / "full" / "result.json").read_text())["iterations"] == 30
    part = train(_tiny_cfg(corpus, out_dir=str(corpus / "part"), max_iters=20, cosine_cycle_iters=30))
    assert part["iterations"] == 20
    resumed = train(_tiny_cfg(corpus, out_dir=str(corpus / "part"), max_iters=30, resume=True))
    assert resumed["final_val_loss"] == pytest.approx(full["final_val_loss"], abs=1e-5)


def test_train_cli_configs_and_overrides(corpus, capsys):
    cfg_path = corpus / "c.json"
    d = json.loads((ROOT / "configs" / "shakespeare_cpu.json").read_text())
    d.update(corpus=str(corpus / "corpus.txt"), vocab_size=300, context_length=16, d_model=16, num_layers=1, num_heads=2,
             max_iters=4, eval_interval=2, batch_size=4, progress=False)
    cfg_path.write_text(json.dumps(d))
    out = corpus / "cli"
    assert train_cli(["--config", str(cfg_path), "-o", f"out_dir={out}", "--override", "learning_rate=0.01"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["iterations"] == 4
    assert json.loads((out / "result.json").read_text())["config"]["learning_rate"] == 0.01
    assert train_cli(["--config", str(cfg_path), "-o", "nope=1"]) == 2
    assert train_cli(["--config", str(corpus / "missing.json")]) == 2
    assert train_cli(["--config", str(cfg_path), "-o", "no_equals_sign"]) == 2
    assert train_cli([]) == 2                                    # argparse: --config is required
    for name in ("shakespeare_cpu.json", "shakespeare_h100.json", "gpt2_small_h100.json", "moe_shakespeare_cpu.json",
                 "moe_shakespeare_h200.json"):
        TrainConfig.from_json(ROOT / "configs" / name)           # the shipped configs are valid
    assert train_cli(["--config", str(cfg_path), "-o", f"out_dir={out}", "-o", "model.d_model=32", "-o", "max_iters=2"]) == 0
    assert json.loads((out / "result.json").read_text())["config"]["model"]["d_model"] == 32  # a dotted override


# the `config` of a result.json written before TrainConfig held a ModelConfig: the model's fields at the top level
OLD_RESULT_CONFIG = {
    "corpus": "tinyshakespeare", "vocab_size": 300, "val_fraction": 0.1, "max_corpus_bytes": None, "context_length": 32,
    "d_model": 32, "num_layers": 1, "num_heads": 2, "d_ff": None, "num_kv_heads": None, "rope_theta": 10000.0,
    "tie_embeddings": False, "attn_backend": "auto", "dropout": 0.0, "ema_decay": None, "moe": {"num_experts": 4, "top_k": 2},
    "batch_size": 32, "max_iters": 1000, "max_time_s": None, "learning_rate": 0.001, "min_learning_rate": 0.0001,
    "warmup_iters": 100, "cosine_cycle_iters": None, "schedule": "cosine", "decay_iters": None, "weight_decay": 0.1,
    "beta1": 0.9, "beta2": 0.95, "eps": 1e-08, "grad_clip": 1.0, "eval_interval": 200, "eval_batches": None,
    "log_interval": 20, "out_dir": "runs/x", "data_dir": None, "checkpoint_interval": None, "keep_best": True,
    "resume": False, "init_checkpoint": None, "device": "cpu", "dtype": "auto", "compile": None, "seed": 0, "progress": True}


def test_train_config_reads_the_old_flat_layout():
    "A stored flat config loads into the nested TrainConfig: the same model as before, and it round-trips nested."
    from cs336_nb.model import MoEConfig
    cfg = TrainConfig.from_dict(OLD_RESULT_CONFIG)
    assert cfg.model.d_ff == 128                                 # d_ff None: 8/3 * 32 = 85.3, rounded up to a multiple of 64
    assert cfg.model.moe == MoEConfig(num_experts=4, top_k=2)
    assert cfg.model.attn_backend == "auto"
    assert cfg.model.vocab_size == 300 and cfg.max_iters == 1000
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg           # written back nested, read again
    assert "d_model" not in cfg.to_dict() and cfg.to_dict()["model"]["d_model"] == 32
    assert build_model(cfg, 300).layers[0].attn.attn_backend == "naive"  # "auto" on the CPU


def test_train_config_routes_model_keys():
    "Flat, dotted and nested spellings of a model field are one; replace routes them; unknown keys are errors."
    nested = TrainConfig.from_dict({"model": {"d_model": 64, "num_heads": 2}, "batch_size": 4})
    assert TrainConfig.from_dict({"d_model": 64, "num_heads": 2, "batch_size": 4}) == nested
    assert TrainConfig.from_dict({"model.d_model": 64, "model.num_heads": 2, "batch_size": 4}) == nested
    assert TrainConfig(d_model=64, num_heads=2, batch_size=4) == nested
    assert nested.replace(num_layers=3, max_iters=5).model.num_layers == 3
    assert nested.replace(num_layers=3, max_iters=5).max_iters == 5
    assert nested.replace(d_model=128).model.d_ff == 384          # the default width follows d_model ...
    assert nested.replace(d_ff=96).replace(d_model=128).model.d_ff == 96  # ... a chosen one stays
    assert nested.d_model == 64                                   # the read-only shortcut
    with pytest.raises(AttributeError, match="cfg.replace"): nested.d_model = 8
    with pytest.raises(ValueError, match="unknown TrainConfig keys"): TrainConfig.from_dict({"nope": 1})
    with pytest.raises(ValueError, match="unknown TrainConfig.model keys"): TrainConfig.from_dict({"model": {"nope": 1}})
    with pytest.raises(ValueError, match="TrainConfig.model.d_model=30"): TrainConfig(d_model=30, num_heads=4)


def test_bench_script_smoke():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_training
    finally:
        sys.path.pop(0)
    res = bench_training.run_all(small=True, variants=["ours-sdpa", "reference"])
    assert [r["name"] for r in res["rows"]] == ["ours-sdpa", "reference"] and res["rows"][1]["vs_reference"] == 1.0
    assert all(r["tokens_per_s"] > 0 and r["predicted_memory"] > 0 for r in res["rows"])
    assert "| ours-sdpa |" in bench_training.to_markdown(res)


@pytest.mark.parametrize("kernel, label", [
    ("_flash_bwd_dkdv_kernel", "ours: FlashAttention"),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_26_64x64x64_1x4", "SDPA flash attention"),
    ("_rmsnorm_fwd_kernel", "ours: RMSNorm"),
    ("nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_NNT", "matmul (cuBLAS / CUTLASS)"),
    ("triton_per_fused__to_copy__unsafe_view_add_mean_mul_pow_rsqrt_7", "inductor's fused kernels"),
    ("void at::native::elementwise_kernel<128, 4, at::native::gpu_kernel_impl_nocast<a", "other"),
])
def test_bench_profile_kernel_classes(kernel, label):
    "The training profile's classes, on kernel names of an H200 run (cuDNN's SDPA kernels are not ours)."
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_training
    finally:
        sys.path.pop(0)
    assert bench_training.kernel_class(kernel) == label


def test_cross_entropy_saves_no_float32_logits():
    "For backward only the bf16 logits and one float32 value per row are kept, never a float32 N x V copy."
    torch.manual_seed(0)
    logits = torch.randn(4, 8, 300, dtype=torch.bfloat16, requires_grad=True)
    targets = torch.randint(0, 300, (4, 8))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append((t.dtype, t.numel())) or t, lambda t: t):
        loss = cross_entropy(logits, targets)
    assert not any(dt == torch.float32 and n >= 32 * 300 for dt, n in saved), saved
    assert (torch.bfloat16, 32 * 300) in saved
    loss.backward()
    assert logits.grad.dtype == torch.bfloat16


@pytest.mark.parametrize("chunk", [1, 7 * 11, 10**9])  # smaller than a row, a few rows, everything at once
def test_cross_entropy_eager_chunks(monkeypatch, chunk):
    "Eager mode bounds its float32 temporaries by processing rows in chunks: any chunk size gives the same loss and gradient."
    import cs336_nb.training as T
    monkeypatch.setattr(T, "_CE_CHUNK", chunk)
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(5, 9, 11, generator=g) * 4).requires_grad_()
    targets = torch.randint(0, 11, (5, 9), generator=g)
    cross_entropy(logits, targets).backward()
    ref = logits.detach().clone().requires_grad_()
    F.cross_entropy(ref.reshape(-1, 11), targets.reshape(-1)).backward()
    assert torch.allclose(logits.grad, ref.grad, atol=1e-7)


def test_train_with_weight_average_resumes_exactly(corpus):
    "With `ema_decay`, validation (and the best checkpoint) use the averaged weights; stopping and resuming changes nothing."
    full = train(_tiny_cfg(corpus, out_dir=str(corpus / "ema_full"), ema_decay=0.9))
    plain = train(_tiny_cfg(corpus, out_dir=str(corpus / "ema_plain")))
    assert full["final_val_loss"] != pytest.approx(plain["final_val_loss"], abs=1e-6)  # it did evaluate other weights
    for a, b in zip(full["model"].parameters(), plain["model"].parameters()): assert torch.equal(a, b)  # training itself untouched
    train(_tiny_cfg(corpus, out_dir=str(corpus / "ema_part"), max_iters=20, cosine_cycle_iters=30, ema_decay=0.9))
    resumed = train(_tiny_cfg(corpus, out_dir=str(corpus / "ema_part"), max_iters=30, resume=True, ema_decay=0.9))
    assert resumed["final_val_loss"] == pytest.approx(full["final_val_loss"], abs=1e-5)
    best = torch.load(corpus / "ema_full" / "best.pt", weights_only=True)
    assert best["extra"]["ema"] is True
