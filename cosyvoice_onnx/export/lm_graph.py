"""The speech-token LM as hand-built ONNX graphs on onnxruntime's fused contrib ops, with an in-place KV cache.

Hand-written with onnx.helper because neither torch exporter emits the com.microsoft fused ops used here
(GroupQueryAttention, SkipSimplifiedLayerNormalization, QuickGelu); traced graphs ran ~1880 small nodes per
token, expanded the 2 KV heads to 14 and copied the whole cache every step.

Per layer: [Skip]SimplifiedLayerNormalization (RMSNorm + residual add), one packed QKV MatMul + bias,
GroupQueryAttention (RoPE from cos/sin tables, causal, GQA head sharing, new K/V written into the cache buffer),
o_proj, SkipSimplifiedLayerNormalization, one gate+up MatMul, QuickGelu(alpha=1) = SiLU on the gate half, Mul,
down_proj.

Both graphs read and write the cache as one buffer per layer and kind, past_key.<i> / past_value.<i> ->
present_key.<i> / present_value.<i>, [1, kv_heads, capacity, head_dim] (keys after RoPE). Binding the same
buffer as past and present makes GroupQueryAttention write the new positions in place; only the first
`total_sequence_length` positions are read.

prefill: text_ids int64 [n], prompt_speech_ids int64 [p] (p may be 0), cache buffers -> logits float32 [V];
         fills positions 0 .. 1 + n + 1 + p - 1.
decode:  token_id int64 [1], seqlens_k int32 [1] (= the new token's position, the cached length),
         total_sequence_length int32 [] (= seqlens_k + 1), cache buffers -> logits float32 [V].
decode_batch (optional, for batching concurrent requests, lm_batching.py): token_ids int64 [B], seqlens_k int32
         [B] (each row's own cached length), total_sequence_length int32 [] (= max(seqlens_k) + 1), cache buffers
         [B, kv_heads, capacity, head_dim] (row b is one request's slot) -> logits float32 [B, V].
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from ..onnx_backend.lm import CACHE_KINDS, LAYOUT, LAYOUT_KEY, MAX_POSITIONS_KEY, cache_name
from ..torch_backend.llm import CosyVoice3LM, rotary_cos_sin

OPSET = 17
MS_DOMAIN = "com.microsoft"
# Rows of the RoPE tables, hence the longest prefix + decode one request can reach (Qwen2's own limit).
MAX_POSITIONS = 32768


@dataclass
class _GraphBuilder:
    """Collects nodes and initializers; every node output gets a unique name from its node's name."""

    nodes: list = field(default_factory=list)
    initializers: list = field(default_factory=list)

    def weight(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], name: str, outputs: int | list[str] = 1, domain: str = "",
             **attrs) -> list[str]:
        names = [f"{name}/out{i}" for i in range(outputs)] if isinstance(outputs, int) else outputs
        self.nodes.append(helper.make_node(op, inputs, names, name=name, domain=domain or None, **attrs))
        return names

    def one(self, op: str, inputs: list[str], name: str, domain: str = "", **attrs) -> str:
        return self.node(op, inputs, name, domain=domain, **attrs)[0]


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).cpu().numpy()


def _linear(g: _GraphBuilder, x: str, weight: np.ndarray, bias: np.ndarray | None, name: str) -> str:
    """x @ W^T (+ b) with W stored transposed [in, out], the layout MatMul and the weight quantizers expect."""
    y = g.one("MatMul", [x, g.weight(f"{name}.weight_t", weight.T)], f"{name}/MatMul")
    if bias is None:
        return y
    return g.one("Add", [y, g.weight(f"{name}.bias", bias)], f"{name}/Add")


def _decoder(g: _GraphBuilder, lm: CosyVoice3LM, embeds: str, seqlens_k: str, total_len: str,
             max_positions: int) -> str:
    """The Qwen2 layers and final norm over embeds [1, L, H] -> normed hidden states [1, L, H]."""
    c = lm.cfg
    eps = float(c.rms_norm_eps)
    cos, sin = rotary_cos_sin(torch.arange(max_positions), c.head_dim, c.rope_theta)
    # The tables hold the first half of the rotate-half angles (both halves repeat the same frequencies).
    cos_cache = g.weight("rotary.cos", _np(cos[:, : c.head_dim // 2]))
    sin_cache = g.weight("rotary.sin", _np(sin[:, : c.head_dim // 2]))
    layers = lm.backbone.layers
    normed = g.one("SimplifiedLayerNormalization",
                   [embeds, g.weight("layers.0.input_norm", _np(layers[0].input_layernorm.weight))],
                   "layers.0/input_norm", axis=-1, epsilon=eps, stash_type=1)
    residual = embeds
    halves = g.weight("gate_up_split", np.array([c.intermediate_size] * 2, dtype=np.int64))
    for i, layer in enumerate(layers):
        p = f"layers.{i}"
        attn = layer.self_attn
        qkv_w = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
        qkv_b = torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias])
        qkv = _linear(g, normed, _np(qkv_w), _np(qkv_b), f"{p}.qkv")
        past = [cache_name("past", kind, i) for kind in CACHE_KINDS]
        present = [cache_name("present", kind, i) for kind in CACHE_KINDS]
        # Packed QKV (no separate key/value inputs); positions come from seqlens_k, RoPE from the tables.
        attended = g.node("GroupQueryAttention", [qkv, "", "", *past, seqlens_k, total_len, cos_cache, sin_cache],
                          f"{p}/attention", [f"{p}/attention/out", *present], domain=MS_DOMAIN,
                          num_heads=c.num_heads, kv_num_heads=c.num_kv_heads, do_rotary=1, rotary_interleaved=0,
                          scale=float(c.head_dim ** -0.5))[0]
        projected = _linear(g, attended, _np(attn.o_proj.weight), None, f"{p}.o_proj")
        normed, _, _, residual = g.node(
            "SkipSimplifiedLayerNormalization",
            [projected, residual, g.weight(f"{p}.post_attention_norm", _np(layer.post_attention_layernorm.weight))],
            f"{p}/post_attention_norm", [f"{p}/post_attention_norm/out", "", "", f"{p}/post_attention_norm/sum"],
            domain=MS_DOMAIN, epsilon=eps)
        mlp = layer.mlp
        gate_up = _linear(g, normed, _np(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])), None,
                          f"{p}.gate_up")
        gate, up = g.node("Split", [gate_up, halves], f"{p}/split", 2, axis=-1)
        # QuickGelu computes x * sigmoid(alpha * x): SiLU at alpha = 1, one fused node instead of two.
        activated = g.one("Mul", [g.one("QuickGelu", [gate], f"{p}/silu", domain=MS_DOMAIN, alpha=1.0), up],
                          f"{p}/gate_mul")
        down = _linear(g, activated, _np(mlp.down_proj.weight), None, f"{p}.down_proj")
        last = i + 1 == len(layers)
        norm_weight = lm.backbone.norm.weight if last else layers[i + 1].input_layernorm.weight
        norm_name = "final_norm" if last else f"layers.{i + 1}.input_norm"
        # The final norm's residual sum is not needed, so that output is left unnamed and never written.
        normed, _, _, residual = g.node(
            "SkipSimplifiedLayerNormalization", [down, residual, g.weight(norm_name, _np(norm_weight))],
            f"{norm_name}/skip_norm", [f"{norm_name}/out", "", "", "" if last else f"{norm_name}/sum"],
            domain=MS_DOMAIN, epsilon=eps)
    return normed


def _logits(g: _GraphBuilder, lm: CosyVoice3LM, last_hidden: str, shape: tuple[int, ...] = (-1,)) -> str:
    """llm_decoder over one hidden state [1, H] or [1, 1, H] -> the `logits` output [V] (or rows [B, 1, H] ->
    [B, V] with shape (-1, V))."""
    decoder = lm.llm_decoder
    bias = None if decoder.bias is None else _np(decoder.bias)
    scores = _linear(g, last_hidden, _np(decoder.weight), bias, "llm_decoder")
    # The single-request graphs keep their initializer name, so their files stay byte-identical.
    name = "flat_shape" if shape == (-1,) else "logits_shape"
    g.node("Reshape", [scores, g.weight(name, np.array(shape, dtype=np.int64))], "logits/flatten", ["logits"])
    return "logits"


def _cache_io(lm: CosyVoice3LM, way: str, batch: int | str = 1) -> list:
    """The cache buffers of every layer as graph inputs (way "past") or outputs ("present")."""
    c = lm.cfg
    dims = [batch, c.num_kv_heads, "capacity", c.head_dim]
    return [helper.make_tensor_value_info(cache_name(way, kind, i), TensorProto.FLOAT, dims)
            for i in range(c.num_layers) for kind in CACHE_KINDS]


def _model(g: _GraphBuilder, name: str, inputs: list, outputs: list, max_positions: int) -> onnx.ModelProto:
    graph = helper.make_graph(g.nodes, name, inputs, outputs, g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)],
                              ir_version=9, producer_name="cosyvoice_onnx")
    helper.set_model_props(model, {LAYOUT_KEY: LAYOUT, MAX_POSITIONS_KEY: str(max_positions)})
    return model


def build_prefill(lm: CosyVoice3LM, max_positions: int = MAX_POSITIONS) -> onnx.ModelProto:
    """[sos] ++ text ++ [task_id] ++ prompt speech through the decoder from an empty cache."""
    c = lm.cfg
    g = _GraphBuilder()
    specials = lm.speech_embedding.weight if c.sos_task_in_speech_embedding else lm.llm_embedding.weight
    text = g.one("Gather", [g.weight("embed_tokens", _np(lm.backbone.embed_tokens.weight)), "text_ids"],
                 "embed/text")
    speech_table = g.weight("speech_embedding", _np(lm.speech_embedding.weight))
    prompt = g.one("Gather", [speech_table, "prompt_speech_ids"], "embed/prompt")
    rows = g.one("Concat", [g.weight("sos", _np(specials[c.sos : c.sos + 1])), text,
                            g.weight("task_id", _np(specials[c.task_id : c.task_id + 1])), prompt],
                 "embed/concat", axis=0)
    embeds = g.one("Unsqueeze", [rows, g.weight("axis0", np.array([0], dtype=np.int64))], "embed/batch")
    # A first call: the total length is the prefix length and the last cached position is one less.
    length = g.one("Cast", [g.one("Shape", [rows], "prefix/shape", start=0, end=1)], "prefix/int32",
                   to=TensorProto.INT32)
    seqlens_k = g.one("Sub", [length, g.weight("one_int32", np.array([1], dtype=np.int32))], "prefix/seqlens_k")
    total = g.one("Squeeze", [length, "axis0"], "prefix/total")
    hidden = _decoder(g, lm, embeds, seqlens_k, total, max_positions)
    last = g.one("Gather", [hidden, g.weight("last_index", np.array(-1, dtype=np.int64))], "last_position", axis=1)
    _logits(g, lm, last)
    inputs = [helper.make_tensor_value_info("text_ids", TensorProto.INT64, ["n"]),
              helper.make_tensor_value_info("prompt_speech_ids", TensorProto.INT64, ["p"])] + _cache_io(lm, "past")
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [c.speech_vocab_size])]
    return _model(g, "lm_prefill", inputs, outputs + _cache_io(lm, "present"), max_positions)


def build_decode(lm: CosyVoice3LM, max_positions: int = MAX_POSITIONS) -> onnx.ModelProto:
    """One speech token at position seqlens_k after the cached ones."""
    c = lm.cfg
    g = _GraphBuilder()
    row = g.one("Gather", [g.weight("speech_embedding", _np(lm.speech_embedding.weight)), "token_id"], "embed/token")
    embeds = g.one("Unsqueeze", [row, g.weight("axis0", np.array([0], dtype=np.int64))], "embed/batch")
    hidden = _decoder(g, lm, embeds, "seqlens_k", "total_sequence_length", max_positions)
    _logits(g, lm, hidden)
    inputs = [helper.make_tensor_value_info("token_id", TensorProto.INT64, [1]),
              helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, [1]),
              helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, [])] + _cache_io(lm, "past")
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [c.speech_vocab_size])]
    return _model(g, "lm_decode", inputs, outputs + _cache_io(lm, "present"), max_positions)


def build_decode_batch(lm: CosyVoice3LM, max_positions: int = MAX_POSITIONS) -> onnx.ModelProto:
    """One speech token for each of B requests, row b at its own position seqlens_k[b] in its own cache row.

    GroupQueryAttention reads each row's length from seqlens_k, so rows of different lengths share one call and
    every row's attention is the one it would get alone; only the MatMuls see B rows at once (the gain).
    """
    c = lm.cfg
    g = _GraphBuilder()
    rows = g.one("Gather", [g.weight("speech_embedding", _np(lm.speech_embedding.weight)), "token_ids"],
                 "embed/tokens")
    embeds = g.one("Unsqueeze", [rows, g.weight("axis1", np.array([1], dtype=np.int64))], "embed/sequence")
    hidden = _decoder(g, lm, embeds, "seqlens_k", "total_sequence_length", max_positions)
    _logits(g, lm, hidden, (-1, c.speech_vocab_size))
    inputs = [helper.make_tensor_value_info("token_ids", TensorProto.INT64, ["batch"]),
              helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, ["batch"]),
              helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, [])]
    inputs += _cache_io(lm, "past", "batch")
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", c.speech_vocab_size])]
    return _model(g, "lm_decode_batch", inputs, outputs + _cache_io(lm, "present", "batch"), max_positions)
