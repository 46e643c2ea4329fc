"""The PyTorch speech-token LM: official state-dict layout, KV-cache decoding, and Qwen2 maths vs a naive reference."""

import dataclasses

import numpy as np
import pytest
import torch

from cosyvoice_onnx.config import LLMConfig
from cosyvoice_onnx.releases import RELEASES, release_config
from cosyvoice_onnx.torch_backend.llm import CosyVoice3LM, TorchLanguageModel

TINY = LLMConfig(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, intermediate_size=48,
                 text_vocab_size=300, speech_token_size=40, speech_vocab_size=60, sos=40, eos=41, task_id=42, fill=43,
                 stop_token_ids=tuple(range(40, 60)), min_len_mask_id=40, rope_theta=10_000.0)
TINY_CV2 = dataclasses.replace(TINY, speech_vocab_size=43, decoder_bias=True, sos=0, task_id=1, eos=40, fill=42,
                               stop_token_ids=(40, 41, 42), sos_task_in_speech_embedding=False, silent_tokens=())


def random_model(cfg: LLMConfig, seed: int = 0) -> CosyVoice3LM:
    torch.manual_seed(seed)
    model = CosyVoice3LM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            # Large enough weights that attention is far from uniform, so position errors show.
            p.normal_(1.0 if name.endswith("norm.weight") else 0.0, 0.1 if name.endswith("norm.weight") else 0.3)
    return model


def expected_shapes(cfg: LLMConfig) -> dict[str, tuple[int, ...]]:
    h, kv, ff = cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, cfg.intermediate_size
    shapes = {"llm.model.model.embed_tokens.weight": (cfg.text_vocab_size, h)}
    for i in range(cfg.num_layers):
        p = f"llm.model.model.layers.{i}."
        shapes.update({
            p + "self_attn.q_proj.weight": (h, h), p + "self_attn.q_proj.bias": (h,),
            p + "self_attn.k_proj.weight": (kv, h), p + "self_attn.k_proj.bias": (kv,),
            p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.v_proj.bias": (kv,),
            p + "self_attn.o_proj.weight": (h, h),
            p + "mlp.gate_proj.weight": (ff, h), p + "mlp.up_proj.weight": (ff, h), p + "mlp.down_proj.weight": (h, ff),
            p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
        })
    shapes["llm.model.model.norm.weight"] = (h,)
    shapes["llm.model.lm_head.weight"] = (cfg.text_vocab_size, h)
    shapes["llm_decoder.weight"] = (cfg.speech_vocab_size, h)
    if cfg.decoder_bias:
        shapes["llm_decoder.bias"] = (cfg.speech_vocab_size,)
    if not cfg.sos_task_in_speech_embedding:
        shapes["llm_embedding.weight"] = (2, h)          # sos and task_id live in a table of their own
    shapes["speech_embedding.weight"] = (cfg.speech_vocab_size, h)
    return shapes


# The official llm.pt of each release: tensor count and a few shapes; the rest follow from the release's config.
LLM_PT = {
    3: (293, {"llm.model.model.layers.23.self_attn.k_proj.weight": (128, 896),
              "speech_embedding.weight": (6761, 896)}),
    2: (295, {"llm_embedding.weight": (2, 896), "llm_decoder.bias": (6564,), "speech_embedding.weight": (6564, 896)}),
}


@pytest.mark.parametrize("version", sorted(RELEASES, reverse=True), ids=lambda v: f"CV{v}")
def test_state_dict_matches_official_llm_pt(version):
    # One module class for both releases: the layout differences are config values.
    cfg = release_config(version).llm
    with torch.device("meta"):
        model = CosyVoice3LM(cfg)
    state = model.state_dict()
    keys, some_shapes = LLM_PT[version]
    assert len(state) == keys
    assert {k: tuple(v.shape) for k, v in state.items()} == expected_shapes(cfg)
    for key, shape in some_shapes.items():
        assert state[key].shape == shape, key
    assert model.llm.model.lm_head.weight is model.llm.model.model.embed_tokens.weight


def test_untied_config_keeps_separate_lm_head():
    model = CosyVoice3LM(dataclasses.replace(TINY, tie_word_embeddings=False))
    assert model.llm.model.lm_head.weight is not model.llm.model.model.embed_tokens.weight


# ---------------------------------------------------------------- naive float64 reference


def naive_forward(model: CosyVoice3LM, embeds: torch.Tensor, positions: np.ndarray) -> np.ndarray:
    """Qwen2 from the paper's equations in float64 with per-head loops; RoPE as complex rotation of the
    pairs (j, j + d/2), independent of the rotate-half trick."""
    cfg = model.cfg
    w = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
    x = embeds[0].detach().double().numpy()
    d, half, group = cfg.head_dim, cfg.head_dim // 2, cfg.num_heads // cfg.num_kv_heads
    freqs = cfg.rope_theta ** (-np.arange(half) * 2.0 / d)
    rotation = np.exp(1j * positions[:, None] * freqs[None, :])

    def rms(v, g):
        return g * v / np.sqrt((v ** 2).mean(-1, keepdims=True) + cfg.rms_norm_eps)

    def rope(v):
        z = (v[:, :half] + 1j * v[:, half:]) * rotation
        return np.concatenate([z.real, z.imag], axis=1)

    n = x.shape[0]
    causal = np.tril(np.ones((n, n), dtype=bool))
    for i in range(cfg.num_layers):
        p = f"llm.model.model.layers.{i}."
        y = rms(x, w[p + "input_layernorm.weight"])
        q = y @ w[p + "self_attn.q_proj.weight"].T + w[p + "self_attn.q_proj.bias"]
        k = y @ w[p + "self_attn.k_proj.weight"].T + w[p + "self_attn.k_proj.bias"]
        v = y @ w[p + "self_attn.v_proj.weight"].T + w[p + "self_attn.v_proj.bias"]
        heads = []
        for hq in range(cfg.num_heads):
            hk = hq // group
            qh = rope(q[:, hq * d:(hq + 1) * d])
            kh = rope(k[:, hk * d:(hk + 1) * d])
            scores = np.where(causal, qh @ kh.T / np.sqrt(d), -np.inf)
            att = np.exp(scores - scores.max(-1, keepdims=True))
            heads.append((att / att.sum(-1, keepdims=True)) @ v[:, hk * d:(hk + 1) * d])
        x = x + np.concatenate(heads, axis=1) @ w[p + "self_attn.o_proj.weight"].T
        y = rms(x, w[p + "post_attention_layernorm.weight"])
        gate = y @ w[p + "mlp.gate_proj.weight"].T
        x = x + ((gate / (1 + np.exp(-gate))) * (y @ w[p + "mlp.up_proj.weight"].T)) @ w[p + "mlp.down_proj.weight"].T
    return rms(x, w["llm.model.model.norm.weight"])


@pytest.mark.parametrize("start_pos", [0, 37])
def test_forward_matches_naive_reference(start_pos):
    model = random_model(TINY)
    embeds = torch.randn(1, 12, TINY.hidden_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        hidden, cache = model.forward_hidden(embeds, None, start_pos)
    reference = naive_forward(model, embeds, np.arange(12) + start_pos)
    np.testing.assert_allclose(hidden[0].numpy(), reference, atol=2e-5, rtol=0)
    assert len(cache) == TINY.num_layers and cache[0][0].shape == (1, TINY.num_kv_heads, 12, TINY.head_dim)


def test_positions_matter():
    # Guards the reference test: without RoPE (or with wrong positions) the shifted run would coincide.
    model = random_model(TINY)
    embeds = torch.randn(1, 6, TINY.hidden_size, generator=torch.Generator().manual_seed(2))
    reference = naive_forward(model, embeds, np.arange(6))
    shifted = naive_forward(model, embeds, np.arange(6) * 2)
    assert np.abs(reference - shifted).max() > 1e-2


def test_kv_cache_decoding_equals_full_forward():
    model = random_model(TINY, seed=3)
    gen = torch.Generator().manual_seed(4)
    text = torch.randint(0, TINY.text_vocab_size, (7,), generator=gen)
    prompt = torch.randint(0, TINY.speech_token_size, (5,), generator=gen)
    steps = torch.randint(0, TINY.speech_token_size, (20,), generator=gen)
    with torch.no_grad():
        prefix = model.build_prefix(text, prompt)
        hidden, cache = model.forward_hidden(prefix)
        cached = [hidden[:, -1]]
        for token in steps:
            hidden, cache = model.forward_hidden(model.embed_speech(token.reshape(1)), cache)
            cached.append(hidden[:, -1])
        full, _ = model.forward_hidden(torch.cat([prefix, model.embed_speech(steps)], dim=1))
    expected = full[0, prefix.shape[1] - 1:]
    assert torch.stack([h[0] for h in cached]).sub(expected).abs().max().item() < 1e-5
    assert cache[0][0].shape[2] == prefix.shape[1] + len(steps)


@pytest.mark.parametrize("cfg", [TINY, TINY_CV2], ids=["cv3", "cv2"])
def test_prefix_layout(cfg):
    model = random_model(cfg)
    text, prompt = torch.tensor([3, 250, 7]), torch.tensor([9, 0])
    prefix = model.build_prefix(text, prompt)[0].detach()
    specials = model.speech_embedding.weight if cfg.sos_task_in_speech_embedding else model.llm_embedding.weight
    expected = torch.cat([specials[cfg.sos][None], model.llm.model.model.embed_tokens.weight[text],
                          specials[cfg.task_id][None], model.speech_embedding.weight[prompt]]).detach()
    assert torch.equal(prefix, expected)
    assert model.build_prefix(text, torch.zeros(0, dtype=torch.long)).shape == (1, 5, cfg.hidden_size)


@pytest.mark.parametrize("cfg", [TINY, TINY_CV2], ids=["cv3", "cv2"])
def test_stage_logits_match_module(cfg):
    model = random_model(cfg, seed=5)
    stage = TorchLanguageModel.from_state_dict(cfg, model.state_dict())
    assert stage.backend == "torch"
    text, prompt, steps = np.array([1, 2, 3, 4]), np.array([5, 6]), [7, 8, 9]
    logits, cache = stage.prefill(text, prompt)
    produced = [logits]
    for token in steps:
        logits, cache = stage.step(token, cache)
        produced.append(logits)
    with torch.no_grad():
        seq = torch.cat([model.build_prefix(torch.from_numpy(text), torch.from_numpy(prompt)),
                         model.embed_speech(torch.tensor(steps))], dim=1)
        hidden, _ = model.forward_hidden(seq)
        expected = (hidden[0, -len(produced):] @ model.llm_decoder.weight.T).numpy()
        if cfg.decoder_bias:
            expected += model.llm_decoder.bias.numpy()
    assert all(p.dtype == np.float32 and p.shape == (cfg.speech_vocab_size,) for p in produced)
    # Step-by-step and whole-sequence products round differently; how much depends on the CPU's kernels (AVX2
    # machines reach 1.5e-5 on logits of magnitude ~2), so the bound scales with the logits.
    np.testing.assert_allclose(np.stack(produced), expected, atol=1e-5, rtol=1e-5)


def test_from_state_dict_is_strict_and_ties():
    state = random_model(TINY).state_dict()
    stage = TorchLanguageModel.from_state_dict(TINY, state)
    inner = stage.model.llm.model
    assert inner.lm_head.weight is inner.model.embed_tokens.weight
    assert not inner.model.embed_tokens.weight.is_meta
    state.pop("llm_decoder.weight")
    with pytest.raises(RuntimeError, match="llm_decoder.weight"):
        TorchLanguageModel.from_state_dict(TINY, state)
