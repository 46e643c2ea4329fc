"""The speech-token language model: a Qwen2 decoder with an explicit KV cache, in plain PyTorch (no transformers)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import LLMConfig
from .cuda_graph import CapturedStep
from .static_cache import Lease, Slot, SlotPool, StaticCache, capacity_for

# One (key, value) pair per layer, each [1, kv_heads, cached_len, head_dim]; keys are stored after RoPE.
KVCache = list[tuple[torch.Tensor, torch.Tensor]]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalised in float32 and cast back before the gain, as Qwen2 does, so fp16 runs match too.
        x32 = x.to(torch.float32)
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rotary_cos_sin(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [L, head_dim] for the rotate-half RoPE convention (frequencies repeated over both halves)."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device).to(torch.float32) / head_dim
    inv_freq = 1.0 / (theta ** exponents)
    angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Qwen2Attention(nn.Module):
    def __init__(self, cfg: LLMConfig):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.num_heads * cfg.head_dim, bias=True)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, bias=True)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, bias=True)
        self.o_proj = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, past_k: torch.Tensor,
                past_v: torch.Tensor, mask: torch.Tensor, write_index: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Without `write_index` the new keys/values are appended to past_k/past_v (a new tensor). With it,
        past_k/past_v are preallocated buffers: the new positions are written in place at `write_index` and
        attention reads the first mask.shape[-1] positions of the buffers."""
        out, keys, values = self.attend(*self.project(x), cos, sin, past_k, past_v, mask, write_index)
        return self.o_proj(out), keys, values

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q [B, heads, L, head_dim], k and v [B, kv_heads, L, head_dim] before RoPE."""
        batch, length, _ = x.shape
        q = self.q_proj(x).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        return q, k, v

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               past_k: torch.Tensor, past_v: torch.Tensor, mask: torch.Tensor,
               write_index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """RoPE, the cache and attention of projected q/k/v -> (attended [B, L, heads * head_dim] before o_proj,
        keys, values)."""
        batch, _, length, _ = q.shape
        # RoPE in float32 (the tables are float32), back to the weights' dtype: a no-op in fp32.
        q = (q * cos + rotate_half(q) * sin).to(v.dtype)
        k = (k * cos + rotate_half(k) * sin).to(v.dtype)
        if write_index is None:
            keys = torch.cat((past_k, k), dim=2)
            values = torch.cat((past_v, v), dim=2)
        else:
            past_k.index_copy_(2, write_index, k)
            past_v.index_copy_(2, write_index, v)
            keys, values = past_k[:, :, :mask.shape[-1]], past_v[:, :, :mask.shape[-1]]
        out = F.scaled_dot_product_attention(q, self._share_kv(keys), self._share_kv(values), attn_mask=mask,
                                             scale=self.head_dim ** -0.5)
        return out.transpose(1, 2).reshape(batch, length, self.num_heads * self.head_dim), keys, values

    def _share_kv(self, x: torch.Tensor) -> torch.Tensor:
        """GQA: query head h reads kv head h // group (expand+reshape, which every exporter understands)."""
        batch, _, seq, dim = x.shape
        group = self.num_heads // self.num_kv_heads
        return x[:, :, None].expand(batch, self.num_kv_heads, group, seq, dim).reshape(
            batch, self.num_heads, seq, dim)


class Qwen2MLP(nn.Module):
    def __init__(self, cfg: LLMConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Qwen2DecoderLayer(nn.Module):
    def __init__(self, cfg: LLMConfig):
        super().__init__()
        self.self_attn = Qwen2Attention(cfg)
        self.mlp = Qwen2MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, past_k, past_v, mask, write_index=None):
        attended, keys, values = self.self_attn(self.input_layernorm(x), cos, sin, past_k, past_v, mask, write_index)
        x = x + attended
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, keys, values

    def forward_rows(self, x: torch.Tensor, rows: list[tuple]) -> tuple[torch.Tensor, list[tuple]]:
        """x [B, 1, H], one request per row: the projections and the MLP over all rows at once, attention per row
        on its own cache (`rows[b]` = cos, sin, past_k, past_v, mask of row b). Returns x and (keys, values) per
        row."""
        attn = self.self_attn
        q, k, v = attn.project(self.input_layernorm(x))
        outs, caches = [], []
        for b, (cos, sin, past_k, past_v, mask) in enumerate(rows):
            out, keys, values = attn.attend(q[b:b + 1], k[b:b + 1], v[b:b + 1], cos, sin, past_k, past_v, mask)
            outs.append(out)
            caches.append((keys, values))
        x = x + attn.o_proj(torch.cat(outs))
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, caches


class Qwen2Model(nn.Module):
    """Token embedding, decoder layers and final norm: `Qwen2ForCausalLM.model` in the checkpoint."""

    def __init__(self, cfg: LLMConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.text_vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Qwen2DecoderLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class Qwen2CausalLM(nn.Module):
    """Holds `lm_head` only so the official checkpoint loads strictly; the text head is never evaluated."""

    def __init__(self, cfg: LLMConfig):
        super().__init__()
        self.model = Qwen2Model(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.text_vocab_size, bias=False)


class Qwen2Encoder(nn.Module):
    """The official wrapper level (`llm.model` in key names)."""

    def __init__(self, cfg: LLMConfig):
        super().__init__()
        self.model = Qwen2CausalLM(cfg)


class CosyVoice3LM(nn.Module):
    """Speech-token LM with the official state-dict layout (CosyVoice3, or CosyVoice2 through the config)."""

    def __init__(self, cfg: LLMConfig):
        super().__init__()
        self.cfg = cfg
        if not cfg.sos_task_in_speech_embedding:
            # CosyVoice2 keeps sos (row 0) and task_id (row 1) in a separate two-row table.
            self.llm_embedding = nn.Embedding(2, cfg.hidden_size)
        self.llm = Qwen2Encoder(cfg)
        self.llm_decoder = nn.Linear(cfg.hidden_size, cfg.speech_vocab_size, bias=cfg.decoder_bias)
        self.speech_embedding = nn.Embedding(cfg.speech_vocab_size, cfg.hidden_size)
        self.tie_weights()

    @property
    def backbone(self) -> Qwen2Model:
        return self.llm.model.model

    def tie_weights(self) -> None:
        """Shares lm_head with embed_tokens when the Qwen config ties them (again after `assign=True` loads)."""
        if self.cfg.tie_word_embeddings:
            self.llm.model.lm_head.weight = self.backbone.embed_tokens.weight

    def empty_cache(self) -> KVCache:
        weight = self.speech_embedding.weight
        shape = (1, self.cfg.num_kv_heads, 0, self.cfg.head_dim)
        return [(weight.new_zeros(shape), weight.new_zeros(shape)) for _ in range(self.cfg.num_layers)]

    def build_prefix(self, text_ids: torch.Tensor, prompt_speech_ids: torch.Tensor) -> torch.Tensor:
        """[sos] ++ embed_tokens(text) ++ [task_id] ++ speech_embedding(prompt) -> [1, L, H]."""
        specials = self.speech_embedding.weight if self.cfg.sos_task_in_speech_embedding else self.llm_embedding.weight
        sos = specials[self.cfg.sos].reshape(1, 1, -1)
        task_id = specials[self.cfg.task_id].reshape(1, 1, -1)
        text = self.backbone.embed_tokens(text_ids.reshape(1, -1))
        prompt = self.speech_embedding(prompt_speech_ids.reshape(1, -1))
        return torch.cat((sos, text, task_id, prompt), dim=1)

    def embed_speech(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Speech token ids [n] -> [1, n, H], the input of every step after the prefix."""
        return self.speech_embedding(token_ids.reshape(1, -1))

    def forward_hidden(self, embeds: torch.Tensor, past_kv: KVCache | None = None,
                       start_pos: int | torch.Tensor | None = None) -> tuple[torch.Tensor, KVCache]:
        """Causal decoder over `embeds` [1, L, H] after the cached positions.

        Returns the final-norm hidden states [1, L, H] and the cache extended by L positions. Positions of the
        new inputs are start_pos .. start_pos+L-1 (default: the cached length).
        """
        if past_kv is None:
            past_kv = self.empty_cache()
        past_len = past_kv[0][0].shape[2]
        length = embeds.shape[1]
        device = embeds.device
        offsets = torch.arange(length, device=device)
        positions = offsets + (past_len if start_pos is None else start_pos)
        cos, sin = rotary_cos_sin(positions, self.cfg.head_dim, self.cfg.rope_theta)
        key_index = torch.arange(past_len + length, device=device)
        mask = key_index[None, :] <= (offsets + past_len)[:, None]
        hidden = embeds
        new_kv: KVCache = []
        for layer, (past_k, past_v) in zip(self.backbone.layers, past_kv):
            hidden, keys, values = layer(hidden, cos, sin, past_k, past_v, mask)
            new_kv.append((keys, values))
        return self.backbone.norm(hidden), new_kv

    def forward_rows(self, embeds: torch.Tensor, caches: list[KVCache]) -> tuple[torch.Tensor, list[KVCache]]:
        """One new position for each of B requests: embeds [B, 1, H], caches[b] row b's own layer KV list (any
        lengths). Returns hidden [B, 1, H] and each row's extended cache; row b's attention is the one
        forward_hidden computes for it alone, the shared matrix products see B rows (see lm_batching.py)."""
        device = embeds.device
        tables = []
        for cache in caches:
            length = cache[0][0].shape[2]
            cos, sin = rotary_cos_sin(torch.arange(1, device=device) + length, self.cfg.head_dim, self.cfg.rope_theta)
            tables.append((cos, sin, torch.arange(length + 1, device=device)[None, :] <= length))
        hidden = embeds
        new_caches: list[KVCache] = [[] for _ in caches]
        for index, layer in enumerate(self.backbone.layers):
            rows = [(cos, sin, *cache[index], mask) for (cos, sin, mask), cache in zip(tables, caches)]
            hidden, layer_kv = layer.forward_rows(hidden, rows)
            for new, kv in zip(new_caches, layer_kv):
                new.append(kv)
        return self.backbone.norm(hidden), new_caches

    def forward_static(self, embeds: torch.Tensor, buffers: KVCache, position: torch.Tensor,
                       visible: int | None = None) -> torch.Tensor:
        """Like forward_hidden, but the cache is preallocated buffers [1, kv_heads, capacity, head_dim] per layer
        that the new positions (position[0] onwards, a tensor) are written into in place.

        visible=n attends over the first n buffer positions: the same tensors forward_hidden computes on, so the
        same numbers. visible=None attends over the whole buffer with a mask hiding the positions not yet written:
        every shape is fixed, which is what a captured CUDA graph needs (the sum then runs over masked zeros too,
        so the result may differ from forward_hidden in the last bits).
        """
        device = embeds.device
        positions = position.reshape(-1)[:1] + torch.arange(embeds.shape[1], device=device)
        cos, sin = rotary_cos_sin(positions, self.cfg.head_dim, self.cfg.rope_theta)
        keys = buffers[0][0].shape[2] if visible is None else visible
        mask = torch.arange(keys, device=device)[None, :] <= positions[:, None]
        hidden = embeds
        for layer, (cache_k, cache_v) in zip(self.backbone.layers, buffers):
            hidden, _, _ = layer(hidden, cos, sin, cache_k, cache_v, mask, write_index=positions)
        return self.backbone.norm(hidden)

    def logits(self, h_last: torch.Tensor) -> torch.Tensor:
        """Speech-vocabulary logits [V] from one final hidden state [1, H]."""
        return self.llm_decoder(h_last).reshape(-1)


class TorchLanguageModel:
    """`LanguageModelStage` on PyTorch: numpy ids in, float32 logits out.

    The cache is the layer KV list (`forward_hidden`, the exact CPU path) or, with `static_cache`, a
    `StaticCache` handle on preallocated buffers whose decode step is captured as a CUDA graph when `cuda_graph`
    (both default on for a CUDA model). static_cache without cuda_graph attends over exactly the cached positions
    (the same numbers as the list path); with cuda_graph it attends over the whole buffer with a mask, and on a
    CPU that fixed-shape step runs eagerly (see cuda_graph.CapturedStep).
    """

    backend = "torch"

    def __init__(self, model: CosyVoice3LM, static_cache: bool | None = None, cuda_graph: bool | None = None):
        self.model = model.eval()
        on_cuda = model.speech_embedding.weight.is_cuda
        self.static_cache = on_cuda if static_cache is None else static_cache
        self.cuda_graph = self.static_cache and (on_cuda if cuda_graph is None else cuda_graph)
        self.slots = SlotPool(self._new_slot)

    @classmethod
    def from_state_dict(cls, cfg: LLMConfig, state_dict: dict[str, torch.Tensor]) -> TorchLanguageModel:
        """Strict load of an official `llm.pt` without first allocating random weights."""
        with torch.device("meta"):
            model = CosyVoice3LM(cfg)
        model.load_state_dict(state_dict, strict=True, assign=True)
        model.tie_weights()
        return cls(model.float())

    def _ids(self, ids: Sequence[int] | np.ndarray) -> torch.Tensor:
        device = self.model.speech_embedding.weight.device
        return torch.as_tensor(np.asarray(ids, dtype=np.int64).reshape(-1), device=device)

    def _logits(self, hidden: torch.Tensor) -> np.ndarray:
        return self.model.logits(hidden[:, -1]).to(torch.float32).cpu().numpy()

    def _run(self, embeds: torch.Tensor, cache: KVCache | None) -> tuple[np.ndarray, KVCache]:
        hidden, cache = self.model.forward_hidden(embeds, cache)
        return self._logits(hidden), cache

    def prefill(self, text_ids: np.ndarray, prompt_speech_ids: np.ndarray) -> tuple[np.ndarray, KVCache | StaticCache]:
        with torch.inference_mode():
            embeds = self.model.build_prefix(self._ids(text_ids), self._ids(prompt_speech_ids))
            logits, cache = self._run(embeds, None)
            if not self.static_cache:
                return logits, cache
            length = embeds.shape[1]
            # Room for the longest decode the sampler allows by default (max_token_text_ratio * text length).
            headroom = int(self.model.cfg.max_token_text_ratio * len(np.asarray(text_ids).reshape(-1))) + 1
            lease = self.slots.lease(capacity_for(length + 1, length + headroom))
            for (cache_k, cache_v), (keys, values) in zip(lease.slot.buffers, cache):
                cache_k[:, :, :length].copy_(keys)
                cache_v[:, :, :length].copy_(values)
            return logits, StaticCache(lease, length)

    def step(self, token_id: int, cache: KVCache | StaticCache) -> tuple[np.ndarray, KVCache | StaticCache]:
        with torch.inference_mode():
            if not isinstance(cache, StaticCache):
                return self._run(self.model.embed_speech(self._ids([int(token_id)])), cache)
            cache.take()
            lease = cache.lease if cache.length < cache.slot.capacity else self._grown(cache)
            slot = lease.slot
            slot.token.fill_(int(token_id))
            slot.position.fill_(cache.length)
            if self.cuda_graph:
                logits = slot.step.run()
            else:
                hidden = self.model.forward_static(self.model.embed_speech(slot.token), slot.buffers, slot.position,
                                                   visible=cache.length + 1)
                logits = self.model.logits(hidden[:, -1])
            return logits.to(torch.float32).cpu().numpy(), StaticCache(lease, cache.length + 1)

    def step_batch(self, token_ids: list[int], caches: list) -> list:
        """(logits, new cache) per row for one token of each of several requests, or the exception a row raised.

        Rows on the list cache (the CPU default) run as one batch (`forward_rows`); static-cache rows step one by
        one (their slots and CUDA graphs are per request). Every given cache is consumed.
        """
        listed = [i for i, cache in enumerate(caches) if isinstance(cache, list)]
        results: list = [None] * len(caches)
        for i in (i for i in range(len(caches)) if i not in listed):
            try:
                results[i] = self.step(token_ids[i], caches[i])
            except Exception as exc:  # one request's bad cache fails that request only
                results[i] = exc.with_traceback(None)   # its traceback would keep this batch's caches alive
        if listed:
            with torch.inference_mode():
                embeds = self.model.embed_speech(self._ids([int(token_ids[i]) for i in listed])).transpose(0, 1)
                hidden, new_caches = self.model.forward_rows(embeds, [caches[i] for i in listed])
                logits = self.model.llm_decoder(hidden[:, -1]).to(torch.float32).cpu().numpy()
            for row, (i, cache) in enumerate(zip(listed, new_caches)):
                results[i] = (logits[row], cache)
        return results

    def _grown(self, cache: StaticCache) -> Lease:
        """A slot twice as large holding the same positions, for a request that outlived its capacity."""
        lease = self.slots.lease(capacity_for(cache.length + 1, 2 * cache.slot.capacity))
        for (new_k, new_v), (old_k, old_v) in zip(lease.slot.buffers, cache.slot.buffers):
            new_k[:, :, :cache.length].copy_(old_k[:, :, :cache.length])
            new_v[:, :, :cache.length].copy_(old_v[:, :, :cache.length])
        return lease

    def _new_slot(self, capacity: int) -> Slot:
        cfg, weight = self.model.cfg, self.model.speech_embedding.weight
        shape = (1, cfg.num_kv_heads, capacity, cfg.head_dim)
        buffers = [(weight.new_zeros(shape), weight.new_zeros(shape)) for _ in range(cfg.num_layers)]
        index = torch.zeros(1, dtype=torch.long, device=weight.device)
        slot = Slot(capacity, buffers, index, index.clone())

        def fixed_step(token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
            hidden = self.model.forward_static(self.model.embed_speech(token), buffers, position)
            return self.model.logits(hidden[:, -1])

        slot.step = CapturedStep(fixed_step, (slot.token, slot.position), use_graph=self.cuda_graph)
        return slot
