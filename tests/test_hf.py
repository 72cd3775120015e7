"Hugging Face checkpoints (Lecture 8a): our TransformerLM against randomly initialised `transformers` models built here."
import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

from cs336_nb.hf import SUPPORTED_ARCHITECTURES, config_from_hf, config_to_hf, from_hf, rope_permutation, to_hf
from cs336_nb.model import ModelConfig, RotaryPositionalEmbedding, TransformerLM

BASE = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, bos_token_id=None, eos_token_id=None, pad_token_id=None)
KINDS = {  # name -> (config class, extra fields)
    "llama": ("LlamaConfig", dict()),
    "llama_mqa_tied": ("LlamaConfig", dict(num_key_value_heads=1, tie_word_embeddings=True, rms_norm_eps=1e-5, rope_theta=500.0)),
    "mistral": ("MistralConfig", dict(sliding_window=48)),
    "mistral_window4": ("MistralConfig", dict(sliding_window=4)),  # shorter than every sequence tested: the window acts
    "llama31_scaled_rope": ("LlamaConfig", dict(rope_parameters=dict(rope_type="llama3", rope_theta=1e4, factor=8.0, low_freq_factor=1.0,
                                                                    high_freq_factor=4.0, original_max_position_embeddings=16))),
    "qwen3": ("Qwen3Config", dict(head_dim=16, tie_word_embeddings=True)),
    "mixtral": ("MixtralConfig", dict(num_local_experts=4, num_experts_per_tok=2)),
    "qwen3_moe": ("Qwen3MoeConfig", dict(head_dim=16, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=24,
                                         norm_topk_prob=True)),
    "qwen3_moe_sparse2": ("Qwen3MoeConfig", dict(head_dim=16, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=24,
                                                 norm_topk_prob=False, decoder_sparse_step=2, num_hidden_layers=4)),
}
MOE = {"mixtral", "qwen3_moe", "qwen3_moe_sparse2"}


def _hf(kind, **kw):
    cls, extra = KINDS[kind]
    if kind in MOE: pytest.importorskip("cs336_nb.moe")
    cfg = getattr(transformers, cls)(**{**BASE, **extra, **kw})
    if "rope_theta" in extra and hasattr(cfg, "rope_parameters"): cfg.rope_parameters = dict(rope_type="default", rope_theta=extra["rope_theta"])
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(cfg).float().eval()


def _ids(B=2, T=20, V=96):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("kind", list(KINDS))
def test_logits_equal(kind):
    ref = _hf(kind)
    ours = from_hf(ref)
    ids = _ids()
    with torch.no_grad(): diff = (ours(ids) - ref(ids).logits).abs().max().item()
    assert diff < 1e-4


@pytest.mark.parametrize("kind", list(KINDS))
def test_greedy_generations_equal(kind):
    ref, ids = _hf(kind), _ids(T=6)
    ours = from_hf(ref)
    with torch.no_grad():
        theirs = ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False)
    assert torch.equal(ours.generate(ids, 12, temperature=0), theirs)


@pytest.mark.parametrize("kind,shard", [("llama", True), ("qwen3", False), ("mixtral", True), ("qwen3_moe_sparse2", False)])
def test_save_pretrained_then_from_dir(kind, shard, tmp_path):
    ref = _hf(kind)
    ref.save_pretrained(tmp_path, **(dict(max_shard_size="40KB") if shard else {}))
    assert (tmp_path / "model.safetensors.index.json").is_file() == shard
    ours = TransformerLM.from_hf(tmp_path)
    ids = _ids()
    with torch.no_grad(): torch.testing.assert_close(ours(ids), ref(ids).logits, atol=1e-4, rtol=0)
    if ref.config.tie_word_embeddings: assert ours.token_embeddings.weight is ours.lm_head.weight


@pytest.mark.parametrize("kind", list(KINDS))
def test_to_hf_round_trip_is_exact(kind):
    ref = _hf(kind)
    back = from_hf(ref).to_hf(architecture=type(ref).__name__)
    assert type(back) is type(ref)
    sd = back.state_dict()
    assert set(sd) == set(ref.state_dict())
    for k, v in ref.state_dict().items(): assert torch.equal(sd[k], v), k


@pytest.mark.parametrize("cfg", [ModelConfig.tiny(num_layers=2, num_kv_heads=2), ModelConfig.tiny(num_layers=2, qk_norm=True, head_dim=48, norm_eps=1e-6),
                                 ModelConfig.tiny(num_layers=2, tie_embeddings=True, rope_theta=1e6)])
def test_our_model_to_hf_and_back(cfg):
    torch.manual_seed(0)
    ours = TransformerLM.from_config(cfg).eval()
    hf = ours.to_hf()
    assert type(hf).__name__ == ("Qwen3ForCausalLM" if cfg.qk_norm else "LlamaForCausalLM")
    ids = _ids(V=cfg.vocab_size)
    with torch.no_grad(): torch.testing.assert_close(hf(ids).logits, ours(ids), atol=1e-4, rtol=0)
    again = from_hf(hf)
    assert again.config == cfg
    for k, v in ours.state_dict().items(): assert torch.equal(again.state_dict()[k], v), k


def test_our_moe_model_to_hf():
    pytest.importorskip("cs336_nb.moe")
    from cs336_nb.model import MoEConfig
    for qk in (False, True):
        cfg = ModelConfig.tiny(num_layers=2, qk_norm=qk, moe=MoEConfig(num_experts=4, top_k=2, z_loss_coef=0.0))
        torch.manual_seed(0)
        ours = TransformerLM.from_config(cfg).eval()
        hf = ours.to_hf()
        assert type(hf).__name__ == ("Qwen3MoeForCausalLM" if qk else "MixtralForCausalLM")
        ids = _ids(V=cfg.vocab_size)
        with torch.no_grad(): torch.testing.assert_close(hf(ids).logits, ours(ids), atol=1e-4, rtol=0)


def test_rope_permutation_matches_transformers_rotation():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
    d, T = 32, 17
    q = torch.randn(2, 3, T, d, generator=torch.Generator().manual_seed(0))
    inv = 500.0 ** (-torch.arange(0, d, 2).double() / d)
    emb = torch.cat([torch.outer(torch.arange(T).double(), inv)] * 2, dim=-1).float()
    theirs, _ = apply_rotary_pos_emb(q, q, emb.cos()[None], emb.sin()[None])
    perm = rope_permutation(d)
    ours = RotaryPositionalEmbedding(500.0, d, T)(q[..., perm], torch.arange(T))
    torch.testing.assert_close(ours, theirs[..., perm], atol=1e-5, rtol=0)
    assert sorted(perm.tolist()) == list(range(d))


def test_config_mapping_fields():
    cfg = config_from_hf(dict(architectures=["Qwen3ForCausalLM"], hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                              num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                              rms_norm_eps=1e-6, rope_parameters=dict(rope_type="default", rope_theta=1e6),
                              tie_word_embeddings=True, vocab_size=151936))
    assert (cfg.d_head, cfg.head_dim, cfg.kv_heads, cfg.norm_eps, cfg.rope_theta, cfg.tie_embeddings, cfg.qk_norm) == \
        (128, 128, 8, 1e-6, 1e6, True, True)
    assert abs(cfg.num_params() - 596e6) / 596e6 < 0.01  # Qwen3-0.6B
    llama = config_from_hf(dict(architectures=["LlamaForCausalLM"], hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192, rms_norm_eps=1e-5,
                                rope_theta=100000.0, tie_word_embeddings=True, vocab_size=49152), context_length=2048)
    assert (llama.head_dim, llama.d_head, llama.context_length, llama.rope_theta) == (None, 64, 2048, 1e5)
    assert config_to_hf(llama)["architectures"] == ["LlamaForCausalLM"]


def test_head_dim_explicit_counts_and_runs():
    cfg = ModelConfig.tiny(num_layers=2, num_heads=4, head_dim=40, num_kv_heads=2, qk_norm=True)
    m = TransformerLM.from_config(cfg)
    assert m.num_params() == cfg.num_params()
    assert m.layers[0].attn.q_proj.weight.shape == (160, 128)
    assert m(torch.zeros(1, 5, dtype=torch.long)).shape == (1, 5, cfg.vocab_size)


def test_sliding_window_kept_with_the_whole_context_and_override():
    ours = from_hf(_hf("mistral_window4"))
    assert ours.context_length == 64
    assert [layer.attn.sliding_window for layer in ours.layers] == [4, 4]
    assert config_from_hf(config_to_hf(ours.config)).sliding_window == 4
    assert config_to_hf(ours.config)["architectures"] == ["MistralForCausalLM"]
    assert config_from_hf(_hf("mistral", sliding_window=64).config.to_dict()).sliding_window is None  # as long as the context
    qwen = _hf("qwen3", use_sliding_window=True, sliding_window=8, max_window_layers=1).config.to_dict()
    assert config_from_hf(qwen).context_length == 8  # Qwen3 slides from layer max_window_layers on: capped instead
    with pytest.raises(ValueError, match="cannot hold this model's sliding windows"): config_to_hf(ours.config, "LlamaForCausalLM")
    assert from_hf(_hf("llama"), context_length=16).context_length == 16
    with pytest.raises(ValueError, match="context_length must be an int in \\[1, 64\\]"): from_hf(_hf("llama"), context_length=65)


def test_dtype_follows_the_source_or_the_argument():
    ref = _hf("llama")
    assert next(from_hf(ref, dtype=torch.bfloat16).parameters()).dtype == torch.bfloat16
    assert next(from_hf(ref.to(torch.bfloat16)).parameters()).dtype == torch.bfloat16


BAD = [
    (dict(architectures=["GPT2LMHeadModel"]), "unsupported Hugging Face architecture"),
    (dict(model_type="gemma"), "supported: " + ", ".join(SUPPORTED_ARCHITECTURES)),
    (dict(rope_scaling=dict(rope_type="llama3", factor=8.0)), "RoPE scaling 'llama3' needs low_freq_factor"),
    (dict(rope_parameters=dict(rope_type="yarn", rope_theta=1e4, factor=4.0)), "RoPE scaling 'yarn' is not supported"),
    (dict(attention_bias=True), "attention_bias=True is not supported"),
    (dict(mlp_bias=True), "mlp_bias=True is not supported"),
    (dict(hidden_act="gelu"), "hidden_act must be 'silu'"),
    (dict(partial_rotary_factor=0.5), "partial_rotary_factor"),
]


@pytest.mark.parametrize("change,msg", BAD)
def test_unsupported_configs_are_refused(change, msg):
    hf = dict(architectures=["LlamaForCausalLM"], hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              max_position_embeddings=64, vocab_size=96, rope_theta=1e4)
    if "model_type" in change: hf.pop("architectures")
    with pytest.raises(ValueError, match=msg.replace("(", "\\(").replace("[", "\\[")): config_from_hf({**hf, **change})


def test_mlp_only_layers_refused():
    pytest.importorskip("cs336_nb.moe")
    hf = config_to_hf(from_hf(_hf("qwen3_moe")).config)
    with pytest.raises(ValueError, match="mlp_only_layers"): config_from_hf({**hf, "mlp_only_layers": [0]})


def test_bad_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"): from_hf(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no config.json"): from_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(dict(architectures=["LlamaForCausalLM"])))
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors"): from_hf(tmp_path)
    with pytest.raises(TypeError, match="model_or_dir must be"): from_hf(123)
    with pytest.raises(TypeError, match="model must be a TransformerLM"): to_hf(_hf("llama"))


def test_to_hf_refuses_what_transformers_cannot_hold():
    for cfg, msg in [(ModelConfig.tiny(norm="layer"), "norm='rms'"), (ModelConfig.tiny(ffn="gelu"), "ffn='swiglu'"),
                     (ModelConfig.tiny(logit_soft_cap=30.0), "logit_soft_cap"), (ModelConfig.tiny(rope_theta=None), "RoPE")]:
        with pytest.raises(ValueError, match=msg): to_hf(TransformerLM.from_config(cfg))
    with pytest.raises(ValueError, match="needs QK-norm"): to_hf(TransformerLM.from_config(ModelConfig.tiny()), architecture="Qwen3ForCausalLM")
    with pytest.raises(ValueError, match="architecture must be one of"): to_hf(TransformerLM.from_config(ModelConfig.tiny()), architecture="GPT2")


def test_missing_weights_are_an_error():
    ref = _hf("llama")
    sd = {k: v for k, v in ref.state_dict().items() if "layers.1.mlp.up_proj" not in k}
    from cs336_nb.hf import state_dict_from_hf
    cfg = config_from_hf({**ref.config.to_dict(), "architectures": ["LlamaForCausalLM"]})
    with pytest.raises(RuntimeError, match="Missing key"):
        TransformerLM.from_config(cfg).load_state_dict(state_dict_from_hf(sd, cfg))


def test_llama31_rope_scaling_changes_the_model_and_round_trips():
    ref = _hf("llama31_scaled_rope")
    ours = from_hf(ref)
    assert ours.config.rope_scaling == dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                            original_max_position_embeddings=16)
    plain = from_hf(_hf("llama"))                     # same weights (same seed), plain RoPE
    ids = _ids()
    with torch.no_grad(): assert (ours(ids) - plain(ids)).abs().max().item() > 1e-3
    back = to_hf(ours)
    with torch.no_grad(): assert (back(ids).logits - ref(ids).logits).abs().max().item() < 1e-4
    assert TransformerLM.from_config(ours.config).layers[0].attn.rope.cos.equal(ours.layers[0].attn.rope.cos)
