"""Cost model (per call; F = FLOPs, one multiply-add = 2 FLOPs; B = bytes that must come from memory at least once:
weights, and for the LM the KV cache; activations are assumed to stay in cache, so B is a lower bound too).

LM (Qwen2: hidden H, layers N, heads h (kv heads g), head dim d, MLP width I, speech vocabulary V):
    P = H*h*d + 2*H*g*d + h*d*H + 3*H*I                 matmul weights of one layer
    prefill of L positions:  F = 2*L*N*P + N*4*h*d*L*(L+1)/2 + 2*H*V  (causal attention; logits of the last one)
                             B = (N*P + H*V)*w + N*2*g*d*L*4         (w = 4 bytes fp32, 1 byte int8 weights)
    decode, context c:       F = 2*(N*P + H*V) + N*4*h*d*c
                             B = (N*P + H*V)*w + N*2*g*d*c*4          (every weight and the whole cache, per token)
Flow (DiT: width D, depth K, heads*dim_head A, FF mult m, mel M, conv-pos kernel k / groups G, time-embedding
width E, T frames); one estimator call on the CFG batch of two (the adaLN, output-norm and time MLPs run per row):
        F = 2*2*T*(K*(4*D*A + 2*m*D*D) + 4*M*D + 2*k*D*D/G + D*M) + 2*K*4*A*T*T + 2*2*(K*6*D*D + 3*D*D + E*D)
        B = 4 * (all estimator weights)
    times n_timesteps (10), plus the token encoder (two small convs).
Vocoder (HiFT, T mel frames, channels halving per upsample stage; every conv: F = 2*c_in*c_out*kernel*L_out):
    f0 predictor (5 convs at T frames, float64), STFT of the source and iSTFT (DFT convs, n_fft taps per frame),
    conv_pre, per stage i the upsampling conv, the source down-conv and source resblock, the 3 resblocks
    (2 convs per dilation) at L_i = T * prod(rates[:i+1]), conv_post. B = 4 * weights (8 for the f0 predictor).
Bound = max(F / measured GEMM rate, B / measured read bandwidth); "x bound" = measured time / bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ...config import FlowConfig, HiFTConfig, LLMConfig, ModelConfig
from .workload import Workload

@dataclass
class Cost:
    flops: float = 0.0
    bytes: float = 0.0

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.flops + other.flops, self.bytes + other.bytes)

    def __sub__(self, other: Cost) -> Cost:
        return Cost(self.flops - other.flops, self.bytes - other.bytes)

    def __mul__(self, times: float) -> Cost:
        return Cost(self.flops * times, self.bytes * times)


# A stage without a cost model here; NaN carries through the sums, and its bound is reported as unknown.
UNMODELLED = Cost(math.nan, math.nan)


def _lm_layer_params(c: LLMConfig) -> int:
    inner, kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    hidden = c.hidden_size
    return hidden * inner + 2 * hidden * kv + inner * hidden + 3 * hidden * c.intermediate_size


def lm_prefill_cost(c: LLMConfig, length: int, weight_bytes: float) -> Cost:
    params = c.num_layers * _lm_layer_params(c) + c.hidden_size * c.speech_vocab_size
    attention = c.num_layers * 4 * c.num_heads * c.head_dim * length * (length + 1) / 2
    flops = 2 * length * c.num_layers * _lm_layer_params(c) + attention + 2 * c.hidden_size * c.speech_vocab_size
    cache = c.num_layers * 2 * c.num_kv_heads * c.head_dim * length * 4
    return Cost(flops, params * weight_bytes + cache)


def lm_decode_cost(c: LLMConfig, context: int, weight_bytes: float) -> Cost:
    params = c.num_layers * _lm_layer_params(c) + c.hidden_size * c.speech_vocab_size
    flops = 2 * params + c.num_layers * 4 * c.num_heads * c.head_dim * context
    cache = c.num_layers * 2 * c.num_kv_heads * c.head_dim * context * 4
    return Cost(flops, params * weight_bytes + cache)


def lm_decode_run_cost(c: LLMConfig, first_context: int, tokens: int, weight_bytes: float) -> Cost:
    """`tokens` decode steps whose contexts grow from first_context + 1."""
    total = Cost()
    for step in range(tokens):
        total = total + lm_decode_cost(c, first_context + step + 1, weight_bytes)
    return total


def flow_cost(f: FlowConfig, tokens: int, finalize: bool = True) -> Cost:
    """Token encoder plus n_timesteps estimator calls on the CFG batch of two, for `tokens` prompt+target tokens
    (not finalized, the last pre_lookahead_len tokens make no frames). Only CV3's DiT flow is modelled; CV2's
    conformer + UNet flow gets no bound."""
    if f.kind != "dit":
        return UNMODELLED
    frames = (tokens - (0 if finalize else f.pre_lookahead_len)) * f.token_mel_ratio
    dim, inner = f.dit_dim, f.dit_heads * f.dit_dim_head
    per_frame_block = 4 * dim * inner + 2 * f.dit_ff_mult * dim * dim
    per_frame_rest = 4 * f.mel_dim * dim + 2 * f.conv_pos_kernel * dim * dim // f.conv_pos_groups + dim * f.mel_dim
    per_row = f.dit_depth * 6 * dim * dim + 2 * dim * dim + f.time_embed_dim * dim + dim * dim
    batch = 2
    flops = (2 * batch * frames * (f.dit_depth * per_frame_block + per_frame_rest)
             + batch * f.dit_depth * 4 * inner * frames * frames + 2 * batch * per_row)
    weights = f.dit_depth * per_frame_block + per_frame_rest + per_row
    encoder_params = f.mel_dim * f.pre_lookahead_channels * (f.pre_lookahead_len + 1 + 3)
    encoder_flops = 2 * (frames // f.token_mel_ratio) * encoder_params
    return Cost(flops, 4 * weights) * f.n_timesteps + Cost(encoder_flops, 4 * encoder_params)


def flow_weight_matmul_cost(f: FlowConfig, tokens: int, finalize: bool = True) -> Cost:
    """The part of flow_cost in the estimator's per-frame weight MatMuls (what the int8 estimator quantizes):
    q, k, v, out and feed-forward per block, the input projection and proj_out; fp32 weight bytes."""
    if f.kind != "dit":
        return UNMODELLED
    frames = (tokens - (0 if finalize else f.pre_lookahead_len)) * f.token_mel_ratio
    dim, inner = f.dit_dim, f.dit_heads * f.dit_dim_head
    weights = f.dit_depth * (4 * dim * inner + 2 * f.dit_ff_mult * dim * dim) + 4 * f.mel_dim * dim + dim * f.mel_dim
    return Cost(2 * 2 * frames * weights, 4 * weights) * f.n_timesteps


def vocoder_cost(h: HiFTConfig, frames: int) -> Cost:
    """CV3's causal HiFT (CV2's non-causal one, with transposed-conv upsampling, gets no bound)."""
    if not h.causal:
        return UNMODELLED
    total = Cost()

    def conv(c_in: int, c_out: int, kernel: int, length: int, weight_bytes: int = 4) -> None:
        nonlocal total
        total = total + Cost(2 * c_in * c_out * kernel * length, weight_bytes * c_in * c_out * kernel)

    cond = h.f0_cond_channels
    conv(h.in_channels, cond, 4, frames, 8)
    for _ in range(4):
        conv(cond, cond, 3, frames, 8)
    spec = h.istft_n_fft + 2
    stft_frames = frames * h.hop_samples // h.istft_hop + 1
    conv(1, spec, h.istft_n_fft, stft_frames)          # analysis
    conv(spec, 1, h.istft_n_fft, stft_frames)          # synthesis
    conv(h.in_channels, h.base_channels, h.conv_pre_look_right + 1, frames)
    length = frames
    for i, (rate, kernel) in enumerate(zip(h.upsample_rates, h.upsample_kernel_sizes)):
        length *= rate
        c_in, c_out = h.base_channels >> i, h.base_channels >> (i + 1)
        conv(c_in, c_out, kernel, length)
        down = int(np.prod(h.upsample_rates[i + 1:]))
        conv(spec, c_out, 2 * down if down > 1 else 1, length)
        blocks = [(h.source_resblock_kernel_sizes[i], h.source_resblock_dilation_sizes[i]),
                  *zip(h.resblock_kernel_sizes, h.resblock_dilation_sizes)]
        for k, dilations in blocks:
            for _ in range(2 * len(dilations)):
                conv(c_out, c_out, k, length)
    conv(h.base_channels >> len(h.upsample_rates), spec, 7, length)
    return total


def stream_vocoder_frames(cfg: ModelConfig, work: Workload) -> list[tuple[int, int]]:
    """Per flow call of the streamed request: (tokens so far, mel frames the vocoder then runs on). CV3's causal
    vocoder re-runs all the mel so far; CV2's runs the new frames with the previous call's last frames in front."""
    ratio, lookahead = cfg.flow.token_mel_ratio, cfg.streaming.pre_lookahead_len
    out, done = [], 0
    for upto, final in work.stream_calls(cfg):
        frames = (upto - (0 if final else lookahead)) * ratio
        if cfg.streaming.vocoder == "accumulate":
            out.append((upto, frames))
        else:
            out.append((upto, frames - done + (cfg.streaming.vocoder_cache_frames if done else 0)))
        done = frames
    return out


def stage_costs(cfg: ModelConfig, work: Workload, weight_bytes: float) -> dict[str, tuple[Cost, Cost]]:
    """Per timed quantity: (the part that runs at the precision's GEMM rate with `weight_bytes` per weight: the LM
    and, for int8, the estimator's weight MatMuls; the part that is always fp32); decode is per token."""
    c, audio_tokens = cfg.llm, work.flow_tokens
    prefill = lm_prefill_cost(c, work.prefill_len, weight_bytes)

    def flow(tokens: int, finalize: bool = True) -> tuple[Cost, Cost]:
        total = flow_cost(cfg.flow, tokens, finalize)
        if weight_bytes == 4:
            return Cost(), total
        matmuls = flow_weight_matmul_cost(cfg.flow, tokens, finalize)
        return Cost(matmuls.flops, matmuls.bytes * weight_bytes / 4), total - matmuls

    def decoded(tokens: int) -> Cost:
        # The first token comes from the prefill, so n tokens take n - 1 decode steps.
        return prefill + lm_decode_run_cost(c, work.prefill_len, tokens - 1, weight_bytes)

    def first_audio(first_hop: int | None) -> tuple[Cost, Cost]:
        tokens = work.stream_first_tokens(cfg, first_hop)
        streamed = flow(work.flow_prompt_tokens + tokens, tokens == audio_tokens)
        return (decoded(tokens) + streamed[0],
                streamed[1] + vocoder_cost(cfg.hift, work.stream_first_frames(cfg, first_hop)))

    def stream() -> tuple[Cost, Cost]:
        quantized, rest = decoded(audio_tokens), Cost()
        for upto, frames in stream_vocoder_frames(cfg, work):
            chunk = flow(work.flow_prompt_tokens + upto, upto == audio_tokens)
            quantized, rest = quantized + chunk[0], rest + chunk[1] + vocoder_cost(cfg.hift, frames)
        return quantized, rest

    whole = flow(work.flow_prompt_tokens + audio_tokens)
    return {
        "lm_prefill": (prefill, Cost()),
        "lm_decode": (lm_decode_run_cost(c, work.prefill_len, work.decode_tokens, weight_bytes)
                      * (1 / work.decode_tokens), Cost()),
        "flow": whole,
        "vocoder": (Cost(), vocoder_cost(cfg.hift, work.vocoder_frames)),
        "e2e": (decoded(audio_tokens) + whole[0],
                whole[1] + vocoder_cost(cfg.hift, audio_tokens * cfg.flow.token_mel_ratio)),
        # Both streamed rows get the serial bound: two cores do not add compute by overlapping the stages.
        "stream": stream(),
        "stream_serial": stream(),
        "ttfa": first_audio(None),
        "ttfa_first_chunk": first_audio(work.first_chunk_tokens),
        # The source's tokens through the flow and the vocoder; the speech tokenizer and speaker model that also
        # run in the call are left out, so this bound is lower still.
        "convert": (whole[0], whole[1] + vocoder_cost(cfg.hift, audio_tokens * cfg.flow.token_mel_ratio)),
    }


def bounds(cfg: ModelConfig, work: Workload, rates: dict) -> dict:
    """Per LM precision and stage: GFLOP, GB and the lower-bound seconds on this machine.

    At int8 the LM and the estimator's weight MatMuls are bounded at the int8 GEMM rate with 1-byte weights; the
    attention products, convolutions and the vocoder are fp32 at every CPU precision.
    """
    fp32_rate = max(rates["ort_sgemm_gflops"], rates["numpy_sgemm_gflops"]) * 1e9
    bandwidth = rates["read_gbps"] * 1e9

    def seconds(cost: Cost, rate: float) -> float:
        return max(cost.flops / rate, cost.bytes / bandwidth)

    def known(value: float) -> float | None:
        return None if math.isnan(value) else value

    out = {}
    for precision, weight_bytes, rate in (("fp32", 4.0, fp32_rate), ("int8", 1.0, rates["ort_int8_gops"] * 1e9)):
        out[precision] = {}
        for stage, (quantized, rest) in stage_costs(cfg, work, weight_bytes).items():
            total = quantized + rest
            out[precision][stage] = {"gflop": known(total.flops / 1e9), "gbytes": known(total.bytes / 1e9),
                                     "seconds": known(seconds(quantized, rate) + seconds(rest, fp32_rate))}
    return out

