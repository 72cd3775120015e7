"Heavier checks of cs336_nb.alignment (Lecture 12): SFT, DPO and GRPO pieces against hand-computed values and direct formulas."
import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

from cs336_nb.alignment import (AdditionTask, DPOConfig, GRPOConfig, PackedSFTDataset, SFTConfig, addition_reward,
                                byte_tokenizer, compute_entropy, compute_group_normalized_rewards, compute_grpo_clip_loss,
                                compute_naive_policy_gradient_loss, compute_policy_gradient_loss, dpo, dpo_loss,
                                generate_responses, get_response_log_probs, grpo, grpo_microbatch_train_step, gsm8k_reward,
                                iterate_batches, kl_k3, masked_mean, masked_normalize, per_instance_dpo_loss,
                                sequence_log_probs, sft, sft_microbatch_train_step, simpo_loss, tokenize_prompt_and_output)
from cs336_nb.model import TransformerLM


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def tiny_lm(ctx=64, seed=0):
    torch.manual_seed(seed)
    return TransformerLM(257, ctx, 32, 1, 2, 64, 10000.0)


@pytest.fixture(scope="module")
def hf():
    "A random-init tiny Llama and a byte-level BPE tokenizer with no merges, built offline."
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {c: i for i, c in enumerate(sorted(alphabet))}
    vocab["<|endoftext|>"] = len(vocab)
    t = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    hf_tok = transformers.PreTrainedTokenizerFast(tokenizer_object=t, eos_token="<|endoftext|>")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                                   eos_token_id=hf_tok.eos_token_id, pad_token_id=hf_tok.eos_token_id)
    return transformers.LlamaForCausalLM(cfg).eval(), hf_tok


# ---------------------------------------------------------------- tokenization, log-probs, entropy
def test_tokenize_prompt_and_output_hand(tok):
    b = tokenize_prompt_and_output(["ab", "c"], ["d", "ef"], tok)
    assert b["input_ids"].tolist() == [[97, 98], [99, 101]]
    assert b["labels"].tolist() == [[98, 100], [101, 102]]
    assert b["response_mask"].tolist() == [[False, True], [True, True]]
    assert b["response_mask"].dtype == torch.bool


def test_tokenize_prompt_and_output_hf(hf):
    _, t = hf
    b = tokenize_prompt_and_output(["Hello,", "x"], [" world!", "yz"], t)
    full = t.encode("Hello, world!", add_special_tokens=False)
    assert b["input_ids"][0].tolist() == full[:-1] and b["labels"][0].tolist() == full[1:]
    assert b["response_mask"][0].sum() == len(t.encode(" world!", add_special_tokens=False))
    assert b["labels"][1, -1] == t.eos_token_id                                 # padded with EOS (no pad token)


@pytest.mark.parametrize("bad", [dict(p=["a"], o=["b", "c"]), dict(p=["a"], o=[""]), dict(p="a", o=["b"])])
def test_tokenize_bad_input(tok, bad):
    with pytest.raises((ValueError, TypeError)): tokenize_prompt_and_output(bad["p"], bad["o"], tok)


@pytest.mark.parametrize("logits,expected", [
    (torch.zeros(7), math.log(7)),
    (torch.tensor([1e4, 0.0, 0.0]), 0.0),
    (torch.tensor([math.log(1.0), math.log(3.0)]), -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))),
])
def test_compute_entropy_hand(logits, expected):
    assert compute_entropy(logits).item() == pytest.approx(expected, abs=1e-5)


def test_compute_entropy_matches_categorical():
    z = torch.randn(3, 5, 11, generator=torch.Generator().manual_seed(0)) * 5
    assert torch.allclose(compute_entropy(z), torch.distributions.Categorical(logits=z).entropy(), atol=1e-5)


@pytest.mark.parametrize("which", ["ours", "hf"])
def test_get_response_log_probs(which, hf):
    model = tiny_lm() if which == "ours" else hf[0]
    ids = torch.randint(0, 250, (2, 9), generator=torch.Generator().manual_seed(1))
    out = get_response_log_probs(model, ids[:, :-1], ids[:, 1:], return_token_entropy=True)
    logits = model(ids[:, :-1]) if which == "ours" else model(ids[:, :-1]).logits
    ref = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0]
    assert torch.allclose(out["log_probs"], ref, atol=1e-5)
    assert torch.allclose(out["token_entropy"], torch.distributions.Categorical(logits=logits).entropy(), atol=1e-4)


# ---------------------------------------------------------------- masked reductions, SFT step, accumulation
X = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
M = torch.tensor([[True, False, True], [False, True, True]])


@pytest.mark.parametrize("dim,mean,norm2", [
    (None, 15 / 4, 15 / 2),
    (0, [1.0, 5.0, 4.5], [0.5, 2.5, 4.5]),
    (1, [2.0, 5.5], [2.0, 5.5]),
    (-1, [2.0, 5.5], [2.0, 5.5]),
])
def test_masked_mean_and_normalize_hand(dim, mean, norm2):
    assert torch.allclose(masked_mean(X, M, dim=dim), torch.tensor(mean))
    assert torch.allclose(masked_normalize(X, M, dim=dim, normalize_constant=2.0), torch.tensor(norm2))


def test_masked_mean_nan_when_empty_and_bad_masks():
    assert masked_mean(X, torch.zeros_like(M), dim=1).isnan().all()
    with pytest.raises(TypeError, match="boolean"): masked_mean(X, M.float())
    with pytest.raises(ValueError, match="shape"): masked_normalize(X, M[:1])


@pytest.mark.parametrize("c,k", [(1.0, 1), (2.0, 2), (42.0, 4)])
def test_sft_microbatch_train_step_hand(c, k):
    lp = torch.tensor([[-1.0, -2.0, -3.0], [-4.0, -5.0, -6.0]], requires_grad=True)
    loss, _ = sft_microbatch_train_step(lp, M, k, c)
    expected = -((-1 - 3) / c + (-5 - 6) / c) / 2 / k
    assert loss.item() == pytest.approx(expected)
    assert torch.allclose(lp.grad, -M.float() / (c * 2 * k))


def _grads(model):
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("k", [2, 4])
def test_sft_gradient_accumulation_equivalence(k):
    model = tiny_lm()
    g = torch.Generator().manual_seed(0)
    ids, lab = torch.randint(0, 257, (8, 10), generator=g), torch.randint(0, 257, (8, 10), generator=g)
    mask = torch.rand(8, 10, generator=g) > 0.4
    sft_microbatch_train_step(get_response_log_probs(model, ids, lab)["log_probs"], mask, 1, 3.0)
    full = _grads(model); model.zero_grad()
    for s in range(0, 8, 8 // k):
        sl = slice(s, s + 8 // k)
        sft_microbatch_train_step(get_response_log_probs(model, ids[sl], lab[sl])["log_probs"], mask[sl], k, 3.0)
    for a, b in zip(full, _grads(model)): assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("k", [2, 4])
def test_grpo_gradient_accumulation_equivalence(k):
    model = tiny_lm()
    g = torch.Generator().manual_seed(1)
    ids, lab = torch.randint(0, 257, (8, 10), generator=g), torch.randint(0, 257, (8, 10), generator=g)
    mask = torch.rand(8, 10, generator=g) > 0.4
    mask[:, 0] = True
    adv = torch.randn(8, 1, generator=g)
    with torch.no_grad(): old = get_response_log_probs(model, ids, lab)["log_probs"] + 0.1 * torch.randn(8, 10, generator=g)
    kw = dict(loss_type="grpo_clip", cliprange=0.2)
    grpo_microbatch_train_step(get_response_log_probs(model, ids, lab)["log_probs"], mask, 1, advantages=adv, old_log_probs=old, **kw)
    full = _grads(model); model.zero_grad()
    for s in range(0, 8, 8 // k):
        sl = slice(s, s + 8 // k)
        grpo_microbatch_train_step(get_response_log_probs(model, ids[sl], lab[sl])["log_probs"], mask[sl], k,
                                   advantages=adv[sl], old_log_probs=old[sl], **kw)
    for a, b in zip(full, _grads(model)): assert torch.allclose(a, b, atol=1e-6)


# ---------------------------------------------------------------- group normalization and policy-gradient losses
def _const_reward(resp, truth):
    return dict(reward=float(resp), format_reward=1.0, answer_reward=float(resp == truth))


@pytest.mark.parametrize("group_size", [2, 4, 8])
@pytest.mark.parametrize("normalize_by_std", [True, False])
def test_group_normalization_matches_formula(group_size, normalize_by_std):
    g = torch.Generator().manual_seed(group_size)
    r = torch.randint(0, 5, (16,), generator=g).float() / 4
    adv, raw, meta = compute_group_normalized_rewards(_const_reward, [str(x.item()) for x in r], ["1.0"] * 16, group_size, 1e-6, normalize_by_std)
    grp = r.view(-1, group_size)
    ref = grp - grp.mean(1, keepdim=True)
    if normalize_by_std: ref = ref / (torch.std(grp, dim=1, unbiased=True, keepdim=True) + 1e-6)
    assert torch.allclose(raw, r) and torch.allclose(adv, ref.reshape(-1), atol=1e-5)
    assert meta["reward_mean"] == pytest.approx(r.mean().item())


def test_group_normalization_hand_and_errors():
    adv, _, _ = compute_group_normalized_rewards(_const_reward, ["0", "1", "2"], ["x"] * 3, 3, 0.0, True)
    assert torch.allclose(adv, torch.tensor([-1.0, 0.0, 1.0]))               # mean 1, sample std 1
    with pytest.raises(ValueError, match="divide"): compute_group_normalized_rewards(_const_reward, ["0"] * 6, ["x"] * 6, 4, 1e-6, True)
    with pytest.raises(ValueError, match="repeated_ground_truths"): compute_group_normalized_rewards(_const_reward, ["0"] * 4, ["x"] * 3, 2, 1e-6, True)
    with pytest.raises(ValueError, match="reward"): compute_group_normalized_rewards(lambda r, t: {"reward": 1.0}, ["0"] * 2, ["x"] * 2, 2, 1e-6, True)


@pytest.mark.parametrize("ratio,A,eps,loss,clipped", [
    (1.5, 1.0, 0.2, -1.2, True), (1.1, 1.0, 0.2, -1.1, False), (0.5, 1.0, 0.2, -0.5, False),
    (0.5, -1.0, 0.2, 0.8, True), (1.5, -1.0, 0.2, 1.5, False), (1.0, 2.0, 0.1, -2.0, False),
])
def test_grpo_clip_loss_hand(ratio, A, eps, loss, clipped):
    old = torch.tensor([[-1.0]])
    lp = old + math.log(ratio)
    out, meta = compute_grpo_clip_loss(torch.tensor([[A]]), lp, old, eps)
    assert out.item() == pytest.approx(loss, abs=1e-6) and bool(meta["clipped"]) == clipped


def test_policy_gradient_losses_dispatch():
    lp, old = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.0, -2.0]])
    r, a = torch.tensor([[3.0]]), torch.tensor([[0.5]])
    assert torch.equal(compute_policy_gradient_loss(lp, "no_baseline", r, a, old, 0.2)[0], -3.0 * lp)
    assert torch.equal(compute_policy_gradient_loss(lp, "reinforce_with_baseline", r, a, old, 0.2)[0], -0.5 * lp)
    assert torch.allclose(compute_policy_gradient_loss(lp, "grpo_clip", r, a, old, 0.2)[0], -0.5 * torch.ones_like(lp))
    assert torch.equal(compute_naive_policy_gradient_loss(a, lp), -0.5 * lp)
    with pytest.raises(ValueError, match="advantages"): compute_policy_gradient_loss(lp, "grpo_clip", r, None, old, 0.2)
    with pytest.raises(ValueError, match="loss_type"): compute_policy_gradient_loss(lp, "ppo", r, a, old, 0.2)
    with pytest.raises(ValueError, match=r"\(batch, 1\)"): compute_naive_policy_gradient_loss(torch.tensor([0.5]), lp)


def test_grpo_microbatch_train_step_hand_and_dr_grpo():
    lp = torch.tensor([[-1.0, -2.0, -4.0], [-1.0, -3.0, -1.0]], requires_grad=True)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    r = torch.tensor([[1.0], [2.0]])
    loss, _ = grpo_microbatch_train_step(lp, mask, 2, "no_baseline", raw_rewards=r)
    assert loss.item() == pytest.approx(((1 * 7 / 3) + (2 * 4 / 2)) / 2 / 2)
    lp.grad = None
    loss, _ = grpo_microbatch_train_step(lp, mask, 1, "no_baseline", raw_rewards=r, normalize_constant=4.0)
    assert loss.item() == pytest.approx(((1 * 7 / 4) + (2 * 4 / 4)) / 2)
    assert torch.allclose(lp.grad, torch.tensor([[-1.0, -1.0, -1.0], [-2.0, -2.0, 0.0]]) / (4 * 2))


def test_kl_k3_hand_and_kl_term():
    lp, ref = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.0, -1.0]])
    assert torch.allclose(kl_k3(lp, ref), torch.tensor([[0.0, math.e - 1 - 1]]))
    lpg = lp.clone().requires_grad_()
    loss, meta = grpo_microbatch_train_step(lpg, torch.ones(1, 2, dtype=torch.bool), 1, "no_baseline", raw_rewards=torch.zeros(1, 1),
                                            ref_log_probs=ref, kl_coef=0.5)
    assert loss.item() == pytest.approx(0.5 * (math.e - 2) / 2) and meta["kl"].item() == pytest.approx((math.e - 2) / 2)


# ---------------------------------------------------------------- DPO
@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_dpo_loss_matches_direct_formula(beta):
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(6, generator=g) * 3 - 5 for _ in range(4))
    loss, m = dpo_loss(pc, pr, rc, rr, beta)
    direct = torch.stack([-torch.log(1 / (1 + torch.exp(-beta * ((pc[i] - rc[i]) - (pr[i] - rr[i]))))) for i in range(6)]).mean()
    assert loss.item() == pytest.approx(direct.item(), rel=1e-5)
    assert m["reward_margin"].item() == pytest.approx((beta * ((pc - rc) - (pr - rr))).mean().item(), rel=1e-5)
    lc, lr = torch.tensor([1, 2, 3, 4, 5, 6]), torch.tensor([6, 5, 4, 3, 2, 1])
    ln, _ = dpo_loss(pc, pr, rc, rr, beta, chosen_lengths=lc, rejected_lengths=lr)
    assert ln.item() == pytest.approx((-F.logsigmoid(beta * ((pc - rc) / lc - (pr - rr) / lr))).mean().item(), rel=1e-5)


def test_simpo_and_dpo_bad_input():
    s, _ = simpo_loss(torch.tensor([-4.0]), torch.tensor([-3.0]), torch.tensor([4]), torch.tensor([1]), beta=2.0, gamma=1.0)
    assert s.item() == pytest.approx(-math.log(1 / (1 + math.exp(-(2 * -1 - 2 * -3 - 1)))))
    with pytest.raises(ValueError): dpo_loss(torch.zeros(2), torch.zeros(3), torch.zeros(2), torch.zeros(2), 0.1)
    with pytest.raises(ValueError): dpo_loss(torch.zeros(2), torch.zeros(2), torch.zeros(2), torch.zeros(2), 0.0)
    with pytest.raises(ValueError, match="empty"): simpo_loss(torch.zeros(1), torch.zeros(1), torch.tensor([0]), torch.tensor([1]))


@pytest.mark.parametrize("which", ["ours", "hf"])
def test_per_instance_dpo_loss(which, tok, hf):
    lm, t = (tiny_lm(ctx=256), tok) if which == "ours" else hf
    ref = copy.deepcopy(lm)
    assert per_instance_dpo_loss(lm, ref, t, 0.1, "What is 2+2?", "4", "5").item() == pytest.approx(math.log(2), abs=1e-6)
    with torch.no_grad():
        for p in lm.parameters(): p.add_(0.05 * torch.randn_like(p))
    loss = per_instance_dpo_loss(lm, ref, t, 0.3, "What is 2+2?", "4", "five")
    from cs336_nb.alignment import alpaca_prompt, encode_text, special_ids
    eos = special_ids(t)["eos"]
    prompt = [encode_text(t, alpaca_prompt("What is 2+2?"))] * 2
    resp = [encode_text(t, "4") + [eos], encode_text(t, "five") + [eos]]
    pol, _ = sequence_log_probs(lm, prompt, resp, eos)
    with torch.no_grad(): rl, _ = sequence_log_probs(ref, prompt, resp, eos)
    assert loss.item() == pytest.approx(-F.logsigmoid(0.3 * ((pol[0] - rl[0]) - (pol[1] - rl[1]))).item(), rel=1e-5)


# ---------------------------------------------------------------- data, rewards, generation
def test_packed_dataset_and_batches(tok, tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(json.dumps(dict(prompt=f"q{i}", response=f"a{i}")) for i in range(10)))
    ds = PackedSFTDataset(tok, p, seq_length=32, shuffle=False)
    from cs336_nb.alignment import alpaca_prompt
    first = [256] + [b for b in alpaca_prompt("q0").encode()] + list(b"a0") + [256]
    assert ds.tokens[:len(first)].tolist() == first
    assert len(ds) == (len(ds.tokens) - 1) // 32
    for i in range(len(ds)): assert torch.equal(ds[i]["labels"][:-1], ds[i]["input_ids"][1:])
    batches = list(iterate_batches(ds, 4, shuffle=True))
    assert len(iterate_batches(ds, 4, shuffle=True)) == math.ceil(len(ds) / 4) == len(batches)
    with pytest.raises(ValueError): PackedSFTDataset(tok, p, seq_length=10 ** 6, shuffle=False)


@pytest.mark.parametrize("resp,truth,expected", [
    ("2340", "2340", (1.0, 1.0, 1.0)), (" 2340\n", "2340", (1.0, 1.0, 1.0)), ("2341", "2340", (0.0, 1.0, 0.0)),
    ("", "2340", (0.0, 0.0, 0.0)), ("2,340", "2340", (0.0, 0.0, 0.0)),
])
def test_addition_reward(resp, truth, expected):
    r = addition_reward(resp, truth)
    assert (r["reward"], r["format_reward"], r["answer_reward"]) == expected


@pytest.mark.parametrize("resp,truth,expected", [
    ("3 + 4 = 7\n#### 7", "7", (1.0, 1.0, 1.0)), ("so 1,250", "1250", (1.0, 0.0, 1.0)), ("#### 8", "7", (0.0, 1.0, 0.0)),
    ("no idea", "7", (0.0, 0.0, 0.0)),
])
def test_gsm8k_reward(resp, truth, expected):
    r = gsm8k_reward(resp, truth)
    assert (r["reward"], r["format_reward"], r["answer_reward"]) == expected


class _NoGenerate(torch.nn.Module):
    "A module with no `generate`: the reference sampling loop is used."
    def __init__(self, lm): super().__init__(); self.lm = lm
    def forward(self, ids): return self.lm(ids)


@pytest.mark.parametrize("which", ["ours", "loop", "hf"])
def test_generate_responses_greedy_agree(which, tok, hf):
    lm, t = (hf if which == "hf" else (tiny_lm(), tok))
    model = _NoGenerate(lm) if which == "loop" else lm
    prompts = ["12+34=", "1+1=", "99+99="]
    g = generate_responses(model, t, prompts, max_new_tokens=5, temperature=0.0)
    eos = t.eos_token_id if which == "hf" else 256
    for p, r in zip(prompts, g["response_ids"]):                 # greedy: each token is the argmax given the prefix
        ids = list(t.encode(p, add_special_tokens=False) if which == "hf" else t.encode(p))
        for x in r:
            logits = lm(torch.tensor([ids])); logits = getattr(logits, "logits", logits)
            assert int(logits[0, -1].argmax()) == x
            ids.append(x)
        assert len(r) == 5 or r[-1] == eos


# ---------------------------------------------------------------- the loops
SMALL = dict(d_model=32, num_layers=1, num_heads=2, context_length=16, digits=2, max_new_tokens=4, n_train=200, n_eval=8, progress=False)


def test_sft_loop_checkpoint_and_resume(tmp_path):
    r = sft(SFTConfig(**SMALL, max_steps=4, batch_size=8, gradient_accumulation_steps=2, eval_interval=2, out_dir=str(tmp_path)))
    assert len(r["history"]["loss"]) == 4
    assert r["history"]["eval_step"] == [0.0, 2.0, 4.0]                     # step 0: the accuracy before training
    r2 = sft(SFTConfig(**SMALL, max_steps=6, batch_size=8, eval_interval=2, out_dir=str(tmp_path), resume=True))
    assert r2["history"]["step"] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]           # continued from step 4
    g = grpo(GRPOConfig(**{**SMALL, "n_eval": 4}, init_from=r2["checkpoint"], rollout_batch_size=8, group_size=4, max_steps=1,
                        eval_interval=1, out_dir=str(tmp_path / "grpo")))
    assert set(g["history"]) >= {"reward", "length", "entropy", "kl", "clip_fraction", "rollout_s", "scoring_s", "train_s"}


def test_grpo_with_hf_model(hf, tmp_path):
    model, t = hf
    model = copy.deepcopy(model)
    ex = AdditionTask(2).examples(8, seed=0)
    parity = lambda resp, truth: dict(reward=float(len(resp) % 2), format_reward=0.0, answer_reward=0.0)
    cfg = GRPOConfig(**SMALL, rollout_batch_size=8, group_size=4, max_steps=1, eval_interval=1, out_dir=str(tmp_path), kl_coef=0.1,
                     length_normalization="constant", normalize_by_std=False)
    r = grpo(cfg, model=model, tokenizer=t, train_examples=ex, eval_examples=ex[:2], reward_fn=parity)
    assert len(r["history"]["step"]) == 1 and math.isfinite(r["history"]["loss"][0])


def test_dpo_loop_margin_grows(tmp_path):
    ex = AdditionTask(2).examples(16, seed=0)
    pairs = [dict(prompt=e["prompt"], chosen=e["answer"], rejected=e["answer"][::-1] + "1") for e in ex]
    r = dpo(DPOConfig(**SMALL, batch_size=8, max_steps=8, eval_interval=8, learning_rate=3e-3, beta=0.5, out_dir=str(tmp_path)), pairs=pairs)
    h = r["history"]
    assert h["reward_margin"][0] == pytest.approx(0.0, abs=1e-5) and h["reward_margin"][-1] > h["reward_margin"][0]


ALWAYS_RIGHT = lambda resp, truth: dict(reward=1.0, format_reward=1.0, answer_reward=1.0)


@pytest.mark.parametrize("loop,cls,kw", [
    (sft, SFTConfig, dict(batch_size=8)),
    (dpo, DPOConfig, dict(batch_size=4)),
    (grpo, GRPOConfig, dict(rollout_batch_size=8, group_size=4)),
])
def test_stop_at_accuracy_reached_before_training(loop, cls, kw, tmp_path):
    "A policy already at `stop_at_accuracy` is not trained, by any of the three loops (their shared bookkeeping)."
    extra = dict(pairs=[dict(prompt="1+1=", chosen="2", rejected="3")]) if loop is dpo else {}
    cfg = cls(**SMALL, **kw, max_steps=5, eval_interval=1, stop_at_accuracy=0.5, out_dir=str(tmp_path))
    r = loop(cfg, reward_fn=ALWAYS_RIGHT, **extra)
    assert r["history"].get("step", []) == []
    assert r["eval"]["accuracy"] == 1.0
    assert r["eval"]["n_eval"] == SMALL["n_eval"]
    assert (tmp_path / "checkpoint.pt").exists()


def test_preference_pairs_none_possible(tok):
    from cs336_nb.alignment import sample_preference_pairs
    ex = AdditionTask(2).examples(3, seed=0)
    with pytest.raises(ValueError, match="no preference pairs"):
        sample_preference_pairs(tiny_lm(), tok, ex, ALWAYS_RIGHT, samples_per_prompt=2, max_new_tokens=4)


@pytest.mark.parametrize("cls,kw,match", [
    (GRPOConfig, dict(rollout_batch_size=10, group_size=4), "divide"),
    (GRPOConfig, dict(loss_type="ppo"), "loss_type"),
    (SFTConfig, dict(batch_size=10, gradient_accumulation_steps=4), "divisible"),
    (DPOConfig, dict(loss_type="ipo"), "loss_type"),
    (SFTConfig, dict(task="sorting"), "task"),
    (SFTConfig, dict(stop_at_accuracy=0.0), "stop_at_accuracy"),
])
def test_config_bad_input(cls, kw, match):
    with pytest.raises(ValueError, match=match): cls(**kw)


@pytest.mark.parametrize("cmd", ["sft", "dpo", "grpo"])
def test_cli_dispatch_bad_config(cmd, tmp_path, capsys):
    from cs336_nb.cli import main
    p = tmp_path / "c.json"; p.write_text(json.dumps({"bogus": 1}))
    assert main([cmd, "--config", str(p)]) == 2
    assert "bogus" in capsys.readouterr().err
