"Heavier checks of cs336_nb.evaluation (Lecture 10): data loaders, parsers, scoring, the harness, ratings, contamination."
import json
import math
import os

import pytest

from cs336_nb import evaluation as E

HAVE_DATA = bool(os.environ.get("CS336_DATA")) and os.path.isdir(os.path.join(os.environ.get("CS336_DATA", ""), "mmlu"))
needs_data = pytest.mark.skipif(not HAVE_DATA, reason="needs the shared data ($CS336_DATA with mmlu/ and gsm8k/)")


@pytest.mark.parametrize("text,want", [
    ("The answer is 42.", "42"), ("$1,000,000 total", "1000000"), ("3.50 dollars", "3.5"), ("-7 degrees", "-7"),
    ("first 12 then 13", "13"), ("10, 20, 30", "30"), ("nothing", None), ("0.0", "0"), ("#### 1,234", "1234"),
])
def test_parse_gsm8k_response(text, want):
    assert E.parse_gsm8k_response(text) == want


@pytest.mark.parametrize("out,want", [
    ("The correct answer is B", "B"), ("the correct answer is (D).", "D"), ("THE CORRECT ANSWER IS A", "A"),
    ("The correct answer is", None), ("Answer: C", None), ("The correct answer is E", None),
    ("The correct answer is Blue", "B"),
])
def test_parse_mmlu_response(out, want):
    ex = dict(question="q", choices=["x", "Blue", "y", "z"], answer="B")
    assert E.parse_mmlu_response(ex, out) == want


def test_gsm8k_answer_extraction_and_match():
    assert E.extract_gsm8k_answer("a\nb <<2*3=6>>6\n#### 6") == "6"
    assert E.gsm8k_match("6.0", "6")
    assert not E.gsm8k_match("6.5", "6")
    with pytest.raises(ValueError, match="####"):
        E.extract_gsm8k_answer("6")


@needs_data
def test_loaders_on_shared_data():
    assert len(E.mmlu_subjects()) == 57
    val = E.load_mmlu("val")
    assert len(val) == 1531
    assert {e["answer"] for e in val} == set("ABCD")
    g = E.load_gsm8k("test")
    assert len(g) == 1319
    assert all(x["target"] == E.extract_gsm8k_answer(x["answer"]) for x in g)


def test_missing_data_says_where(tmp_path, monkeypatch):
    monkeypatch.setenv("CS336_DATA", str(tmp_path))
    monkeypatch.setenv("CS336_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CS336_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="data.tar"):
        E.load_mmlu()
    with pytest.raises(FileNotFoundError, match="gsm8k/test.jsonl"):
        E.load_gsm8k()


# ---------------------------------------------------------------- models used below (built here, nothing downloaded)
import numpy as np
import torch

TEXT = ("First Citizen: Before we proceed any further, hear me speak. All: Speak, speak. "
        "You are all resolved rather to die than to famish? Resolved. resolved. ") * 40


@pytest.fixture(scope="module")
def ours():
    from cs336_nb.model import TransformerLM
    from cs336_nb.tokenization import Tokenizer
    vocab = {i: bytes([i]) for i in range(256)}
    tok = Tokenizer(vocab, [], ["<|endoftext|>"])
    torch.manual_seed(0)
    return TransformerLM(len(tok.vocab), 96, 32, 2, 4, 64, 10000.0, attn_backend="sdpa").eval(), tok


@pytest.fixture(scope="module")
def hf():
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    t = Tokenizer(models.BPE()); t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False); t.decoder = decoders.ByteLevel()
    t.train_from_iterator([TEXT], trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=t, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128)
    return LlamaForCausalLM(cfg).eval(), tok


def _ref_loglik(model, ids, n_cont, hf_model):
    x = torch.tensor([ids[:-1]])
    with torch.no_grad():
        logits = model(input_ids=x).logits if hf_model else model(x)
    lp = torch.log_softmax(logits.float(), -1)[0, -n_cont:]
    return float(lp.gather(-1, torch.tensor(ids[-n_cont:])[:, None]).sum())


@pytest.mark.parametrize("which", ["ours", "hf"])
def test_loglikelihood_matches_direct_computation(which, request):
    model, tok = request.getfixturevalue(which)
    lm = E.LMAdapter(model, tok)
    pairs = [("Speak, speak.", " You are"), ("All:", " Speak"), ("All:", " Resolved. resolved."), ("First ", "Citizen")]
    reqs = [E.encode_pair(lm.tok, c, x) for c, x in pairs]
    got = lm.loglikelihood(reqs, batch_size=3)
    for (ctx, cont), (lp, _) in zip(reqs, got):
        assert lp == pytest.approx(_ref_loglik(model, ctx + cont, len(cont), which == "hf"), abs=1e-4)


def test_loglikelihood_left_truncates_like_lm_eval(ours):
    model, tok = ours
    lm = E.LMAdapter(model, tok)
    ctx, cont = tok.encode(TEXT[:300]), tok.encode(" Speak")
    (lp, _), = lm.loglikelihood([(ctx, cont)])
    full = (ctx + cont)[-(lm.max_length + 1):]             # lm-eval keeps the last max_length + 1 tokens
    assert lp == pytest.approx(_ref_loglik(model, full, len(cont), False), abs=1e-4)
    with pytest.raises(ValueError, match="continuation"):
        lm.loglikelihood([(ctx, [])])


def test_encode_pair_moves_trailing_space(ours):
    _, tok = ours
    ctx, cont = E.encode_pair(E.TokenizerAdapter(tok), "Answer: ", "B")
    assert tok.decode(ctx) == "Answer:"
    assert tok.decode(cont) == " B"


def test_greedy_generation_same_with_and_without_kv_cache(ours):
    model, tok = ours

    class NoGenerate(torch.nn.Module):                       # hides TransformerLM.generate: the fallback loop
        def __init__(self, m): super().__init__(); self.m, self.context_length = m, m.context_length
        def forward(self, x): return self.m(x)

    prompts = [tok.encode("All:"), tok.encode("First Citizen: Before"), tok.encode("You")]
    a = E.LMAdapter(model, tok).generate(prompts, 10, batch_size=2)
    b = E.LMAdapter(NoGenerate(model), tok).generate(prompts, 10, batch_size=2)
    assert a == b
    assert all(len(x) <= 10 for x in a)


def test_hf_model_and_its_from_hf_conversion_agree(hf):
    from cs336_nb.model import TransformerLM
    llama, tok = hf
    conv = TransformerLM.from_hf(llama)
    prompts = [tok.encode("All: Speak"), tok.encode("You are all resolved")]
    assert E.LMAdapter(llama, tok).generate(prompts, 8) == E.LMAdapter(conv, tok).generate(prompts, 8)
    if HAVE_DATA:
        subs = E.mmlu_subjects()[:3]
        a = E.evaluate_mmlu(llama, tok, shots=2, limit=3, subjects=subs, progress=False)
        b = E.evaluate_mmlu(conv, tok, shots=2, limit=3, subjects=subs, progress=False)
        assert a["predictions"] == b["predictions"]
        assert np.allclose(a["scores"], b["scores"], atol=1e-3)


def test_perplexity_uniform_model_and_bits_per_byte(ours):
    _, tok = ours

    class Uniform(torch.nn.Module):
        def __init__(self, V): super().__init__(); self.V, self.context_length, self.w = V, 50, torch.nn.Parameter(torch.zeros(1))
        def forward(self, ids): return torch.zeros(*ids.shape, self.V) + self.w

    V = len(tok.vocab)
    r = E.perplexity(Uniform(V), tok, TEXT, batch_size=3)
    assert r["perplexity"] == pytest.approx(V, rel=1e-4)
    assert r["tokens"] == len(tok.encode(TEXT))              # the first token is predicted after EOS
    assert r["bits_per_byte"] == pytest.approx(math.log2(V) * r["tokens"] / len(TEXT.encode()), rel=1e-6)
    with pytest.raises(ValueError, match="non-empty"):
        E.perplexity(Uniform(V), tok, "")


@needs_data
def test_mmlu_prompts_and_loglik_scoring(ours):
    model, tok = ours
    r = E.evaluate_mmlu(model, tok, shots=1, limit=2, subjects=["anatomy", "virology"], progress=False)
    assert r["n"] == 4
    assert set(r["per_subject"]) == {"anatomy", "virology"}
    assert len(r["scores"]) == 4
    assert r["predictions"] == ["ABCD"[int(np.argmax(s))] for s in r["scores"]]
    with pytest.raises(ValueError, match="at most 5"):
        E.evaluate_mmlu(model, tok, shots=6, limit=1, subjects=["anatomy"], progress=False)
    with pytest.raises(ValueError, match="method"):
        E.evaluate_mmlu(model, tok, method="vibes")


@needs_data
def test_evaluate_harness_and_cli(ours, tmp_path, capsys):
    from dataclasses import asdict
    from cs336_nb.training import TrainConfig, build_model, save_checkpoint
    model, tok = ours
    res = E.evaluate(model, tok, "mmlu,gsm8k,perplexity", shots=0, limit=1, max_new_tokens=4, perplexity_text=TEXT,
                     subjects=["anatomy"], progress=False)
    assert list(res) == ["mmlu", "gsm8k", "perplexity"]
    assert "| gsm8k | exact_match |" in res.table()
    with pytest.raises(ValueError, match="known: mmlu"):
        E.evaluate(model, tok, ["mmlu", "hellaswag"])
    cfg = TrainConfig(vocab_size=257, context_length=48, d_model=32, num_layers=1, num_heads=2, out_dir=str(tmp_path / "run"),
                      device="cpu")
    (tmp_path / "run" / "data").mkdir(parents=True)
    tok.save(tmp_path / "run" / "data" / "vocab.json", tmp_path / "run" / "data" / "merges.txt")
    m = build_model(cfg, len(tok.vocab))
    save_checkpoint(m, None, 0, tmp_path / "run" / "ckpt.pt", extra=dict(config=asdict(cfg)))
    out = tmp_path / "res.json"
    rc = E.eval_cli(["--checkpoint", str(tmp_path / "run" / "ckpt.pt"), "--tasks", "gsm8k", "--shots", "0", "--limit", "2",
                     "--max-new-tokens", "4", "--out", str(out)])
    assert rc == 0
    assert json.loads(out.read_text())["gsm8k"]["n"] == 2
    assert E.eval_cli(["--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err


# ---------------------------------------------------------------- pass@k, IFEval, judge, ratings, contamination
@pytest.mark.parametrize("n", [1, 2, 5, 9])
def test_pass_at_k_equals_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert E.pass_at_k(n, c, k) == pytest.approx(E.pass_at_k_brute_force([1] * c + [0] * (n - c), k), abs=1e-12)


def test_pass_at_k_large_n_is_finite_and_bad_input():
    assert 0 < E.pass_at_k(10_000, 3, 50) < 1
    with pytest.raises(ValueError):
        E.pass_at_k(3, 1, 4)
    with pytest.raises(TypeError):
        E.pass_at_k(3.0, 1, 1)


@pytest.mark.parametrize("resp,kind,kw,want", [
    ("a b c", "min_words", dict(n=3), True), ("a b", "min_words", dict(n=3), False),
    ("HELLO", "uppercase", {}, True), ("Hello", "uppercase", {}, False),
    ("no dogs here", "forbidden_words", dict(words=["cat"]), True), ("a cat", "forbidden_words", dict(words=["cat"]), False),
    ("done. Is there anything else I can help with?", "ends_with", dict(phrase="Is there anything else I can help with?"), True),
    ("[1, 2]", "json", {}, True), ("- one\n- two", "bullets", dict(n=3), False),
])
def test_ifeval_rules(resp, kind, kw, want):
    assert E.check_instruction(resp, kind, **kw) is want


def test_length_controlled_win_rate_removes_a_length_bias():
    rng = np.random.default_rng(0)
    n = 4000
    base = rng.integers(200, 2000, n); extra = rng.integers(0, 2000, n)
    p = 1 / (1 + np.exp(-(0.4 + 2.0 * np.tanh(extra / (extra).std()))))     # true LC preference: sigmoid(0.4)
    y = (rng.random(n) < p).astype(float)
    r = E.length_controlled_win_rate(y, base + extra, base)
    assert r["lc_win_rate"] == pytest.approx(1 / (1 + math.exp(-0.4)), abs=0.04)
    assert r["win_rate"] > r["lc_win_rate"] + 0.1
    assert r["length_coef"] == pytest.approx(2.0, abs=0.35)


def test_bradley_terry_recovers_strengths_within_bootstrap_intervals():
    true = np.array([1200.0, 1100, 1050, 1000, 950, 900, 800]); true += 1000 - true.mean()
    covered = total = 0
    for seed in range(4):
        v = E.simulate_votes(true, 3000, tie_rate=0.05, seed=seed)
        bt = E.bradley_terry(v, len(true), bootstrap=100, seed=seed)
        assert np.abs(bt["ratings"] - true).max() < 60
        covered += ((bt["lower"] <= true) & (true <= bt["upper"])).sum(); total += len(true)
    assert covered / total >= 0.85                                 # 95% intervals: about 95% coverage


def test_bradley_terry_exact_on_balanced_votes_and_bad_input():
    v = [(0, 1, 1.0)] * 3 + [(1, 0, 1.0)] * 1                      # model 0 wins 3 of 4: theta_0 - theta_1 = ln 3
    r = E.bradley_terry(v)["ratings"]
    assert r[0] - r[1] == pytest.approx(E.ELO_SCALE * math.log(3), rel=1e-6)
    with pytest.raises(ValueError):
        E.bradley_terry([(0, 1, 2.0), (1, 0, 1.0)])


def test_contamination_finds_planted_copies_only():
    bench = ["the quick brown fox jumps over the lazy dog near the river bank today again",
             "an entirely different question about apples oranges bananas and the price of tea in china",
             "short item"]
    corpus = ["blah " * 20 + "The QUICK brown fox, jumps over the lazy dog near the river bank today! " + "blah " * 20,
              "we mention a short item here"]
    r = E.contamination(bench, corpus)
    assert r["contaminated"] == [0, 2]
    assert r["fraction"] == pytest.approx(2 / 3)
    assert E.contamination(bench, corpus, n=40)["contaminated"] == [2]     # item 0 is then looked for whole: its last word differs
    with pytest.raises(ValueError):
        E.contamination("not a list", corpus)


# ---------------------------------------------------------------- agreement with lm-evaluation-harness (when installed)
@needs_data
def test_mmlu_agrees_with_lm_eval(hf):
    pytest.importorskip("lm_eval")
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_eval
    from cs336_nb.corpora import corpus_path
    llama, tok = hf
    subs = ["abstract_algebra", "astronomy"]
    ours_p, _ = bench_eval.run_ours(llama, tok, subs, shots=2, limit=3, batch_size=4, max_length=128)
    ref_p, _ = bench_eval.run_lm_eval(llama, tok, subs, corpus_path("mmlu"), shots=2, limit=3, batch_size=4,
                                      max_length=128, device="cpu")
    assert ours_p == ref_p
