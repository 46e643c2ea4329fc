"""`cosyvoice-onnx bench`: per-stage PyTorch vs ONNX Runtime timings against this machine's FLOP and bandwidth bounds.

One run builds (or reuses) a model folder of the chosen size with seeded random weights and its ONNX export,
measures this machine (sgemm and int8 GEMM throughput in ONNX Runtime, memory bandwidth), then times every stage
of one fixed request on each backend, each backend in its own subprocess so its peak RSS is its own.

Cost model (per call; F = FLOPs, one multiply-add = 2 FLOPs; B = bytes that must come from memory at least once:
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

import json
import logging
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from ..config import FlowConfig, HiFTConfig, LLMConfig, ModelConfig
from ..errors import CosyVoiceError

SIZES = ("tiny", "real")
# A repeat is skipped once a stage has used this much time (at least one timed run always happens), which keeps a
# real-size run on two cores within minutes while small stages still get several repeats for a stable median.
STAGE_TIME_CAP_S = 30.0
SGEMM_SHAPE = (512, 1024, 4096)       # M, K, N: the flow's linear layers at ~a quarter of a 10 s request
BANDWIDTH_BYTES = 256 << 20


@dataclass(frozen=True)
class Workload:
    """The one request every backend is timed on."""

    lm_prompt_speech_tokens: int = 150
    lm_text_tokens: int = 30
    decode_tokens: int = 100
    flow_tokens: int = 250               # 10 s at 25 tokens/s
    flow_prompt_tokens: int = 75         # 3 s
    vocoder_frames: int = 500            # 10 s at 50 frames/s
    seed: int = 0

    @property
    def prefill_len(self) -> int:
        return 1 + self.lm_text_tokens + 1 + self.lm_prompt_speech_tokens  # sos, text, task id, prompt speech

    @classmethod
    def quick(cls) -> Workload:
        """A 2 s request: checks that every stage runs on every backend in seconds, at any size."""
        return cls(lm_prompt_speech_tokens=15, lm_text_tokens=5, decode_tokens=10, flow_tokens=50,
                   flow_prompt_tokens=25, vocoder_frames=100)

    def stream_first_tokens(self, cfg: ModelConfig) -> int:
        """Speech tokens the first streaming chunk waits for: the aligned first hop plus the look-ahead
        (or the whole request when it is shorter, and the first chunk is then the last)."""
        s = cfg.streaming
        pad = -self.flow_prompt_tokens % s.token_hop_len
        return min(s.token_hop_len + pad + s.pre_lookahead_len, self.flow_tokens)

    def stream_first_frames(self, cfg: ModelConfig) -> int:
        first = self.stream_first_tokens(cfg)
        final = first == self.flow_tokens
        return (first - (0 if final else cfg.streaming.pre_lookahead_len)) * cfg.flow.token_mel_ratio


# --------------------------------------------------------------------------- cost model


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


def stage_costs(cfg: ModelConfig, work: Workload, weight_bytes: float) -> dict[str, tuple[Cost, Cost]]:
    """Per timed quantity: (the part that runs at the precision's GEMM rate with `weight_bytes` per weight: the LM
    and, for int8, the estimator's weight MatMuls; the part that is always fp32); decode is per token."""
    c, audio_tokens = cfg.llm, work.flow_tokens
    prefill = lm_prefill_cost(c, work.prefill_len, weight_bytes)
    first = work.stream_first_tokens(cfg)

    def flow(tokens: int, finalize: bool = True) -> tuple[Cost, Cost]:
        total = flow_cost(cfg.flow, tokens, finalize)
        if weight_bytes == 4:
            return Cost(), total
        matmuls = flow_weight_matmul_cost(cfg.flow, tokens, finalize)
        return Cost(matmuls.flops, matmuls.bytes * weight_bytes / 4), total - matmuls

    whole = flow(work.flow_prompt_tokens + audio_tokens)
    streamed = flow(work.flow_prompt_tokens + first, first == audio_tokens)
    return {
        "lm_prefill": (prefill, Cost()),
        "lm_decode": (lm_decode_run_cost(c, work.prefill_len, work.decode_tokens, weight_bytes)
                      * (1 / work.decode_tokens), Cost()),
        "flow": whole,
        "vocoder": (Cost(), vocoder_cost(cfg.hift, work.vocoder_frames)),
        # The first token comes from the prefill, so a request of n tokens takes n - 1 decode steps.
        "e2e": (prefill + lm_decode_run_cost(c, work.prefill_len, audio_tokens - 1, weight_bytes) + whole[0],
                whole[1] + vocoder_cost(cfg.hift, audio_tokens * cfg.flow.token_mel_ratio)),
        "ttfa": (prefill + lm_decode_run_cost(c, work.prefill_len, first - 1, weight_bytes) + streamed[0],
                 streamed[1] + vocoder_cost(cfg.hift, work.stream_first_frames(cfg))),
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


# --------------------------------------------------------------------------- this machine


def _best_time(fn: Callable[[], object], repeats: int) -> float:
    """Fastest of `repeats` runs after a warm-up: what the machine can do when nothing else gets in the way."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _matmul_model(path: Path, m: int, k: int, n: int) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(0).standard_normal((k, n), dtype=np.float32) * 0.05
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "w"], ["y"])], "gemm",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [m, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
                              [numpy_helper.from_array(weight, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


def measure_machine(threads: int, repeats: int = 7) -> dict:
    """GEMM rates (ONNX Runtime fp32 MatMul, dynamic-int8 MatMul, numpy) and memory bandwidth, best of `repeats`."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from ..onnx_backend.session import make_session

    m, k, n = SGEMM_SHAPE
    flops = 2.0 * m * k * n
    a = np.random.default_rng(1).standard_normal((m, k), dtype=np.float32)
    out = {}
    with tempfile.TemporaryDirectory() as scratch:
        fp32 = _matmul_model(Path(scratch) / "gemm.onnx", m, k, n)
        int8 = Path(scratch) / "gemm.int8.onnx"
        # The quantizer logs a pre-processing hint on the root logger; it does not apply to one MatMul.
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)
        try:
            quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, per_channel=True)
        finally:
            root.setLevel(level)
        for name, path in (("ort_sgemm_gflops", fp32), ("ort_int8_gops", int8)):
            session = make_session(path, threads=threads, device="cpu")
            out[name] = flops / _best_time(lambda s=session: s.run(None, {"a": a}), repeats) / 1e9
    w = np.random.default_rng(2).standard_normal((k, n), dtype=np.float32)
    out["numpy_sgemm_gflops"] = flops / _best_time(lambda: a @ w, repeats) / 1e9
    out.update(_bandwidth(threads, repeats))
    return out


def _bandwidth(threads: int, repeats: int) -> dict:
    """GB/s of reading a large array (a sum: how weights stream through a GEMV) and of copying it (read + write
    counted), split over `threads` threads; numpy releases the GIL in both."""
    src = np.ones(BANDWIDTH_BYTES // 4, dtype=np.float32)
    dst = np.zeros_like(src)
    edges = np.linspace(0, src.size, max(1, threads) + 1).astype(int)
    parts = list(zip(edges[:-1], edges[1:]))
    with ThreadPoolExecutor(len(parts)) as pool:
        read = _best_time(lambda: list(pool.map(lambda b: src[b[0]:b[1]].sum(), parts)), repeats)
        copy = _best_time(lambda: list(pool.map(lambda b: np.copyto(dst[b[0]:b[1]], src[b[0]:b[1]]), parts)),
                          repeats)
    return {"read_gbps": src.nbytes / read / 1e9, "copy_gbps": 2 * src.nbytes / copy / 1e9}


def best_rates(*measurements: dict) -> dict:
    """Per figure the best of several measurements (taken before and after the backends, so that a burst of load
    from elsewhere during one of them does not lower the bounds)."""
    return {key: max(m[key] for m in measurements) for key in measurements[0]}


def describe_machine() -> dict:
    """CPU model and instruction sets, cores, RAM, versions and the load average, for the report's header."""
    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "python": platform.python_version()}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")]
        flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
        info["cpu"] = names[0] if names else info["cpu"]
        info["isa"] = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile",
                                   "amx_int8") if f in flags]
        mem = Path("/proc/meminfo").read_text().split("\n")[0].split()
        info["ram_gb"] = round(int(mem[1]) / 1e6, 1)
    except (OSError, IndexError, ValueError):
        pass
    if hasattr(os, "sched_getaffinity"):
        info["usable_cores"] = len(os.sched_getaffinity(0))
    for package in ("numpy", "onnxruntime", "torch"):
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info[package] = None
    info["load_average"] = list(os.getloadavg())
    return info


# --------------------------------------------------------------------------- model folder and export


def prepare(size: str, work: Path, precisions: list[str], model_dir: Path | None = None,
            progress: Callable[[str], None] = print, version: int = 3) -> tuple[Path, Path]:
    """(model folder, export folder): reuses what `work` (or `model_dir`) already holds, builds the rest."""
    from ..manifest import check_export
    from ..model_files import inspect_model_dir

    if model_dir is None:
        model_dir = Path(work) / (f"model-{size}" if version == 3 else f"model-{size}-cv{version}")
        # make_tiny_model writes spk2info.pt last, so its presence means a complete folder.
        if not (model_dir / "spk2info.pt").exists():
            from .tiny import make_tiny_model

            progress(f"building a {size}-size CosyVoice{version} model folder with random weights in {model_dir}")
            make_tiny_model(model_dir, version=version, seed=0, size=size)
    files = inspect_model_dir(model_dir)
    export_dir = files.root / "onnx"
    try:
        for precision in precisions:
            check_export(export_dir, files, precision, ["lm", "flow", "vocoder"])
        progress(f"reusing the export in {export_dir}")
    except CosyVoiceError:
        from ..export.exporter import export_model

        progress(f"exporting {model_dir} to ONNX ({', '.join(precisions)}); at real size this takes minutes")
        export_model(model_dir, export_dir, precisions=precisions, parity=False, progress=progress)
    return files.root, export_dir


# --------------------------------------------------------------------------- one backend (runs in a subprocess)


STAGES = ("lm_prefill", "lm_decode", "flow", "vocoder", "e2e", "ttfa")
# int8 quantizes the LM and the flow estimator; its vocoder is the fp32 graph, timed once under onnx.
INT8_LM_ONLY = "lm=onnx:int8,flow=onnx,vocoder=onnx"
STAGES_TIMED = {"onnx:int8": [s for s in STAGES if s != "vocoder"],
                # The int8 LM with the exact fp32 flow: only the whole request differs from the other columns.
                INT8_LM_ONLY: ["e2e", "ttfa"]}
COLUMN_NAMES = {"torch": "PyTorch", "onnx": "ONNX fp32", "onnx:int8": "ONNX int8", INT8_LM_ONLY: "ONNX int8 LM",
                "onnx:fp16": "ONNX fp16", "torch:bf16": "PyTorch bf16", "torch:fp16": "PyTorch fp16"}
# Which bound applies to a column: the int8-LM column's flow is fp32, so its bound is neither row; none is shown.
COLUMN_BOUNDS = {"torch": "fp32", "onnx": "fp32", "onnx:int8": "int8"}


def _timed(fn: Callable[[], float | None], repeats: int, warmup: Callable[[], object] | None = None) -> dict:
    """Median of up to `repeats` runs after `warmup` (default: one run of fn); repeats stop once the stage has
    used STAGE_TIME_CAP_S. fn may return the seconds to count itself (to leave its setup out)."""
    (warmup or fn)()
    times: list[float] = []
    while len(times) < repeats and (not times or sum(times) < STAGE_TIME_CAP_S):
        start = time.perf_counter()
        counted = fn()
        times.append(counted if isinstance(counted, float) else time.perf_counter() - start)
    return {"median_s": statistics.median(times), "runs_s": times}


def _stage_runs(cfg: ModelConfig, stages, token2wav, work: Workload) -> dict[str, tuple[Callable, Callable | None]]:
    """Per stage: (one timed run, its warm-up); inputs are seeded random ids and features of the Workload's sizes."""
    from ..lm_decode import iter_speech_tokens
    from ..sampling import make_sampler

    rng = np.random.default_rng(work.seed)
    c, lm = cfg.llm, stages.lm
    text = rng.integers(0, min(c.text_vocab_size, 151643), work.lm_text_tokens)
    lm_prompt = rng.integers(0, c.speech_token_size, work.lm_prompt_speech_tokens)
    fed = rng.integers(0, c.speech_token_size, work.decode_tokens)
    flow_prompt = rng.integers(0, c.speech_token_size, (1, work.flow_prompt_tokens))
    prompt_mel = rng.standard_normal((1, work.flow_prompt_tokens * cfg.flow.token_mel_ratio, cfg.flow.mel_dim),
                                     dtype=np.float32)
    embedding = rng.standard_normal((1, cfg.flow.spk_embed_dim), dtype=np.float32)
    targets = rng.integers(0, c.speech_token_size, work.flow_tokens)
    mel = rng.standard_normal((1, cfg.flow.mel_dim, work.vocoder_frames), dtype=np.float32) - 5.0
    noise = token2wav.request_noise(work.seed).sine_noise(work.vocoder_frames * cfg.hift.hop_samples)

    def decode_per_token(count: int) -> float:
        """Feeds fixed tokens after a prefill (no sampling, no stop), and returns seconds per step."""
        _, cache = lm.prefill(text, lm_prompt)
        start = time.perf_counter()
        for token in fed[:count]:
            _, cache = lm.step(int(token), cache)
        return (time.perf_counter() - start) / count

    def sampled_tokens():
        """The real decoding loop (numpy sampler on both backends), stop ids masked: exactly flow_tokens tokens."""
        sampler = make_sampler("numpy", work.seed, c)
        return iter_speech_tokens(lm, text, np.zeros(0, np.int64), lm_prompt, c, sampler, exact_len=work.flow_tokens)

    def flow(count: int):
        token2wav.mel(targets[:count], flow_prompt, prompt_mel, embedding, streaming=False, finalize=True)

    def request():
        audio = token2wav.whole(list(sampled_tokens()), flow_prompt, prompt_mel, embedding,
                                noise=token2wav.request_noise(work.seed))
        if len(audio) != work.flow_tokens * cfg.flow.token_mel_ratio * cfg.hift.hop_samples:
            raise RuntimeError(f"the request made {len(audio)} samples, not the {work.flow_tokens} tokens' worth")

    def first_chunk():
        chunks = token2wav.stream(sampled_tokens(), flow_prompt, prompt_mel, embedding,
                                  noise=token2wav.request_noise(work.seed))
        next(chunks)
        chunks.close()

    def warm_request():
        """One call of every flow and vocoder session at the request's sizes: a backend that skips those stages
        (int8) would otherwise time their first-run allocations inside the request."""
        frames = (work.flow_prompt_tokens + work.flow_tokens) * cfg.flow.token_mel_ratio
        x = np.zeros((2, cfg.flow.mel_dim, frames), dtype=np.float32)
        stages.flow.estimate(x, np.ones((2, 1, frames), np.float32), x, np.zeros(2, np.float32),
                             np.zeros((2, cfg.flow.mel_dim), np.float32), x, False)
        stages.vocoder.vocode(mel, True, noise)
        if cfg.hift.causal:
            stages.vocoder.vocode(mel, False, noise)

    def already_warm():
        """Streaming runs after the request, which warmed every session."""

    return {
        "lm_prefill": (lambda: lm.prefill(text, lm_prompt), None),
        "lm_decode": (lambda: decode_per_token(work.decode_tokens),
                      lambda: decode_per_token(min(10, work.decode_tokens))),
        "flow": (lambda: flow(work.flow_tokens), lambda: flow(1)),
        "vocoder": (lambda: stages.vocoder.vocode(mel, True, noise), None),
        "e2e": (request, warm_request),
        "ttfa": (first_chunk, already_warm),
    }


def run_backend(job: dict, partial: Path | None = None) -> dict:
    """Times the job's stages on one backend; `job` is what `_backend_job` builds. `partial`: a file rewritten
    after every stage, so a worker stopped by its time limit still reports the stages it finished."""
    from ..plan import ExecutionPlan

    # The canonical string the parent process wrote, on the job's device.
    plan = ExecutionPlan.parse(job["backend"], device=job.get("device", "cpu")).resolved()
    torch = None
    if plan.uses("torch"):
        import torch

        torch.set_num_threads(int(job["threads"]))
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
    from ..backends import load_stages
    from ..model_files import inspect_model_dir
    from ..noise import hift_noise_source
    from ..token2wav import Token2Wav

    work = Workload(**job["workload"])
    start = time.perf_counter()
    files = inspect_model_dir(job["model_dir"])
    cfg = files.config
    stages = load_stages(files, plan, job["export_dir"])
    token2wav = Token2Wav(cfg, stages.flow, stages.vocoder, stages.flow_noise, hift_noise_source(cfg))
    result = {"backend": job["backend"], "load_s": time.perf_counter() - start}
    runs = _stage_runs(cfg, stages, token2wav, work)
    for stage in (s for s in STAGES if s in job["stages"]):
        fn, warmup = runs[stage]
        result[stage] = _timed(fn, int(job["repeats"]), warmup)
        print(f"  {job['backend']}: {stage} {result[stage]['median_s']:.4f} s (median of "
              f"{len(result[stage]['runs_s'])})", file=sys.stderr, flush=True)
        if partial is not None:
            partial.write_text(json.dumps({**result, "error": f"stopped after {stage}"}))
    if "e2e" in result:
        result["e2e"]["audio_s"] = work.flow_tokens / cfg.features.token_frame_rate
    result["peak_rss_bytes"] = peak_rss_bytes()
    if torch is not None and torch.cuda.is_available():
        result["peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
    return result


def peak_rss_bytes() -> int:
    """This process's peak resident set size.

    Linux's ru_maxrss survives fork + exec, so a worker would report its parent's peak when that was higher;
    /proc/self/status VmHWM belongs to the current address space only. ru_maxrss is the fallback elsewhere.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def _backend_job(backend: str, model_dir: Path, export_dir: Path, threads: int, repeats: int, work: Workload,
                 stages: list[str], device: str = "cpu") -> dict:
    return {"backend": backend, "model_dir": str(model_dir), "export_dir": str(export_dir), "threads": threads,
            "repeats": repeats, "workload": asdict(work), "stages": stages, "device": device}


def run_backend_subprocess(job: dict) -> dict:
    """One backend in a fresh interpreter (its own peak RSS, no state shared with the other backends)."""
    env = {**os.environ, "COSYVOICE_ORT_THREADS": str(job["threads"]), "OMP_NUM_THREADS": str(job["threads"])}
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "result.json"
        # The worker's progress and any traceback go to our stderr; stdout stays for the table.
        command = [sys.executable, "-m", "cosyvoice_onnx.tools.bench", json.dumps(job), str(out)]
        try:
            proc = subprocess.run(command, env=env, stdout=sys.stderr, timeout=job.get("timeout_s"))
        except subprocess.TimeoutExpired:
            if out.exists():  # the stages finished before the limit
                return {**json.loads(out.read_text()), "error": f"stopped at its {job['timeout_s']} s limit"}
            raise CosyVoiceError(f"the {job['backend']} benchmark ran past its {job['timeout_s']} s limit") from None
        failed = f"the {job['backend']} benchmark failed (exit code {proc.returncode}); its output is above"
        if proc.returncode != 0 and out.exists() and job.get("timeout_s"):
            return {**json.loads(out.read_text()), "error": failed}  # with the stages that finished
        if proc.returncode != 0 or not out.exists():
            raise CosyVoiceError(failed)
        result = json.loads(out.read_text())
        result.pop("error", None)
        return result


# --------------------------------------------------------------------------- the whole run


# On a GPU: PyTorch in every precision it has there, then ONNX fp16 where onnxruntime has the CUDA provider.
GPU_TORCH_BACKENDS = ["torch", "torch:bf16", "torch:fp16"]


def backends_for(precisions: list[str], cuda: bool, device=None) -> list[str]:
    """The columns of one run, as canonical plan strings. `device` cuda: GPU_TORCH_BACKENDS (+ onnx:fp16 with
    onnxruntime's CUDA provider); otherwise PyTorch and ONNX on the CPU (fp16 only where the CUDA provider exists)."""
    from ..devices import parse_device
    from ..plan import ExecutionPlan, stage_plan

    if device is not None and parse_device(device).is_cuda:
        return GPU_TORCH_BACKENDS + (["onnx:fp16"] if cuda else [])
    plans = [ExecutionPlan.everywhere("torch"), ExecutionPlan.everywhere("onnx")]
    plans += [ExecutionPlan.everywhere("onnx", p) for p in precisions if p == "int8" or (p == "fp16" and cuda)]
    if "int8" in precisions:
        plans.append(ExecutionPlan(stage_plan("lm", "onnx", "int8"), stage_plan("flow", "onnx"),
                                   stage_plan("vocoder", "onnx")))
    return [str(plan) for plan in plans]


def run_bench(size: str = "tiny", work: str | Path | None = None, model_dir: str | Path | None = None,
              precisions: str = "fp32,int8", threads: int | None = None, repeats: int = 3,
              workload: Workload | None = None, progress: Callable[[str], None] = print, version: int = 3,
              device: str = "cpu", backends: list[str] | None = None, backend_timeout_s: float | None = None) -> dict:
    """Everything `cosyvoice-onnx bench` prints, as a dict (also what --json writes). `device` cuda times the
    stages on the GPU (GPU_TORCH_BACKENDS, and ONNX fp16 where onnxruntime has the CUDA provider). `backends`
    names the columns instead (e.g. ["torch", "torch:bf16"]); only the ONNX precisions among them are exported.
    backend_timeout_s bounds each column's worker: one that fails or runs out of time is reported with what it
    finished, and the other columns still run."""
    import onnxruntime as ort

    from ..devices import parse_device, resolve_torch
    from ..plan import parse_precisions
    from ..onnx_backend.session import default_threads

    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose {' or '.join(SIZES)}")
    workload = workload or Workload()
    threads = threads or default_threads()
    wanted = parse_precisions(precisions)
    cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    on_gpu = parse_device(device).is_cuda
    if on_gpu:
        resolve_torch(parse_device(device))  # a missing GPU fails here, before minutes of model building
        # Only the GPU's precisions are exported: fp16 where ONNX Runtime can run it there, nothing otherwise.
        wanted = ["fp16"] if cuda else []
    names = backends_for(wanted, cuda, device)
    if backends:
        from ..plan import ExecutionPlan

        names = [name.strip() for name in backends]
        for name in names:
            ExecutionPlan.parse(name)  # a typo fails here, not in a worker after the model is built
        wanted = sorted({b.partition(":")[2] or "fp32" for b in names if b.startswith("onnx")})
    work = Path(work) if work else default_work_dir()
    model, export_dir = prepare(size, work, wanted, Path(model_dir) if model_dir else None, progress, version)
    described = str(model) if model_dir else f"CosyVoice{version} dimensions ({size}), seeded random weights"
    report = {"model": described, "machine": describe_machine(),
              "workload": asdict(workload), "threads": threads, "device": str(device)}
    progress("measuring this machine (GEMM rates, memory bandwidth)")
    before = measure_machine(threads)
    report["backends"] = {}
    for backend in names:
        stages = STAGES_TIMED.get(backend, list(STAGES))
        progress(f"timing {backend} on {device} ({', '.join(stages)})")
        job = _backend_job(backend, model, export_dir, threads, repeats, workload, stages, str(device))
        if backend_timeout_s is None:
            report["backends"][backend] = run_backend_subprocess(job)
            continue
        try:
            report["backends"][backend] = run_backend_subprocess({**job, "timeout_s": backend_timeout_s})
        except CosyVoiceError as exc:
            report["backends"][backend] = {"backend": backend, "error": str(exc)}
        if "error" in report["backends"][backend]:
            progress(f"{backend}: {report['backends'][backend]['error']}")
    report["machine"]["load_average_after"] = list(os.getloadavg())
    report["rates"] = {**best_rates(before, measure_machine(threads)), "gemm_shape": list(SGEMM_SHAPE)}
    from ..model_files import inspect_model_dir

    cfg = inspect_model_dir(model).config
    report["bounds"] = bounds(cfg, workload, report["rates"])
    report["labels"] = stage_labels(cfg, workload)
    return report


def default_work_dir() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "cosyvoice-onnx" / "bench"


# --------------------------------------------------------------------------- report


def _seconds(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value * 1e3:.1f} ms" if value < 1 else f"{value:.2f} s"


def _number(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def stage_labels(cfg: ModelConfig, work: Workload) -> dict[str, str]:
    first = work.stream_first_tokens(cfg)
    audio = work.flow_tokens / cfg.features.token_frame_rate
    frames = (work.flow_prompt_tokens + work.flow_tokens) * cfg.flow.token_mel_ratio
    return {
        "lm_prefill": f"LM prefill, {work.prefill_len} positions",
        "lm_decode": f"LM decode, per token (x{work.decode_tokens})",
        "flow": f"flow {audio:g} s ({frames} frames x{cfg.flow.n_timesteps} x2)",
        "vocoder": f"vocoder {work.vocoder_frames / 50:g} s ({work.vocoder_frames} frames)",
        "e2e": f"end to end, {audio:g} s of audio",
        "ttfa": f"streaming first audio ({first} tokens)",
    }


def format_report(report: dict) -> str:
    """The table: per stage and backend the median time and its multiple of the bound, then PyTorch/ONNX ratios."""
    machine, rates = report["machine"], report["rates"]
    backends = report["backends"]
    onnx_names = [name for name in backends if name != "torch"]
    lines = [
        f"model: {report['model']}; {report['threads']} threads; {machine.get('cpu')} "
        f"({machine.get('usable_cores', machine.get('cores'))} usable cores, {machine.get('ram_gb')} GB RAM, "
        f"{' '.join(machine.get('isa', []))})",
        f"python {machine['python']}, numpy {machine['numpy']}, onnxruntime {machine['onnxruntime']}, "
        f"torch {machine['torch']}; load average {'/'.join(f'{x:.1f}' for x in machine['load_average'])} before, "
        f"{'/'.join(f'{x:.1f}' for x in machine.get('load_average_after', []))} after",
        f"this machine: ORT sgemm {rates['ort_sgemm_gflops']:.0f} GFLOP/s, numpy sgemm "
        f"{rates['numpy_sgemm_gflops']:.0f} GFLOP/s, ORT dynamic int8 GEMM {rates['ort_int8_gops']:.0f} GOP/s "
        f"({'x'.join(map(str, rates['gemm_shape']))}); read {rates['read_gbps']:.1f} GB/s, copy "
        f"{rates['copy_gbps']:.1f} GB/s (best of runs before and after the backends)",
        "cells: median time (its multiple of the lower bound); bound = max(FLOPs / GEMM rate, bytes / read bandwidth)",
        "",
    ]
    header = ["stage", "GFLOP", "GB fp32", "bound fp32", "bound int8"] + [
        COLUMN_NAMES.get(name, name) for name in backends] + [
        f"PyTorch/{COLUMN_NAMES.get(name, name)}" for name in onnx_names]
    rows = [header]
    labels = report["labels"]
    for stage in STAGES:
        fp32 = report["bounds"]["fp32"][stage]
        row = [labels[stage], _number(fp32["gflop"], 1), _number(fp32["gbytes"], 2)]
        row += [_seconds(report["bounds"][p][stage]["seconds"]) for p in ("fp32", "int8")]
        for name in backends:
            measured = backends[name].get(stage)
            if measured is None:
                row.append("-")
                continue
            cell = _seconds(measured["median_s"])
            # The bounds describe this CPU; a run on the GPU, which the bench does not measure, gets none.
            on_gpu = str(report.get("device", "cpu")).startswith("cuda")
            bound = None if on_gpu else report["bounds"].get(COLUMN_BOUNDS.get(name), {}).get(stage, {}).get("seconds")
            if bound:
                cell += f" ({measured['median_s'] / bound:.1f}x)"
            if stage == "e2e":
                cell += f" RTF {measured['median_s'] / measured['audio_s']:.2f}"
            row.append(cell)
        torch_result = backends.get("torch", {}).get(stage)
        for name in onnx_names:
            other = backends[name].get(stage)
            row.append("-" if torch_result is None or other is None
                       else f"{torch_result['median_s'] / other['median_s']:.2f}x")
        rows.append(row)
    rows.append(["peak RSS", "", "", "", ""] + [f"{r['peak_rss_bytes'] / 2**30:.2f} GiB" if "peak_rss_bytes" in r
                                                 else "-" for r in backends.values()] + [""] * len(onnx_names))
    rows.append(["load time", "", "", "", ""] + [_seconds(r["load_s"]) if "load_s" in r else "-"
                                                  for r in backends.values()] + [""] * len(onnx_names))
    if any("peak_gpu_bytes" in r for r in backends.values()):
        rows.append(["peak GPU memory", "", "", "", ""] + [
            f"{r['peak_gpu_bytes'] / 2**30:.2f} GiB" if "peak_gpu_bytes" in r else "-" for r in backends.values()]
            + [""] * len(onnx_names))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines += [f"{COLUMN_NAMES.get(name, name)}: {r['error']}" for name, r in backends.items() if "error" in r]
    lines.append("(ONNX int8: int8 LM and flow estimator, fp32 vocoder (timed under ONNX fp32); ONNX int8 LM: the "
                 "int8 LM with the fp32 flow and vocoder, timed end to end only)")
    return "\n".join(lines)


def add_bench_command(sub) -> None:
    """Registers `cosyvoice-onnx bench` on the CLI's subparsers."""
    from ..cli_args import int_range, output_dir, output_file

    b = sub.add_parser("bench", help="time every stage on PyTorch and ONNX Runtime against this machine's bounds")
    b.add_argument("--size", default="tiny", choices=SIZES, help="random-weight model size (ignored with --model)")
    b.add_argument("--version", type=int, default=3, choices=[3, 2], help="CosyVoice release of the random model")
    b.add_argument("--model", type=Path, default=None, help="benchmark this model folder instead (export reused)")
    b.add_argument("--work", type=output_dir, default=None,
                   help=f"folder for the generated model and its export, reused by later runs "
                        f"(default {default_work_dir()})")
    b.add_argument("--precisions", default="fp32,int8",
                   help="ONNX precisions: fp32, int8 (LM and flow estimator), fp16 (CUDA only)")
    b.add_argument("--device", default="cpu",
                   help="cpu, or cuda / cuda:N: PyTorch fp32, bf16 and fp16 on the GPU (and ONNX fp16 where "
                        "onnxruntime has the CUDA provider) in one run; the cost-model bounds describe the CPU only")
    b.add_argument("--backends", default=None,
                   help="the columns to time instead of the default set, e.g. torch,torch:bf16,onnx:int8")
    b.add_argument("--backend-timeout", type=float, default=None,
                   help="seconds per column; a column that fails or runs out is reported and the others still run")
    b.add_argument("--threads", type=int_range(1, 1024), default=None,
                   help="threads per backend (default: the ONNX backend's, one per physical core)")
    b.add_argument("--repeats", type=int_range(1, 1000), default=3, help="timed runs per stage, after a warm-up")
    b.add_argument("--quick", action="store_true", help="a 2 s request and one repeat: a check that it all runs")
    b.add_argument("--json", type=output_file, default=None, help="write the full report as JSON")
    b.set_defaults(func=_cmd_bench)


def _cmd_bench(args) -> int:
    report = run_bench(args.size, args.work, args.model, args.precisions, args.threads,
                       1 if args.quick else args.repeats, Workload.quick() if args.quick else Workload(),
                       progress=lambda message: print(message, file=sys.stderr, flush=True), version=args.version,
                       device=args.device, backends=args.backends.split(",") if args.backends else None,
                       backend_timeout_s=args.backend_timeout)
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2), encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    # Worker mode, started by run_backend_subprocess: `python -m cosyvoice_onnx.tools.bench JOB_JSON OUT_JSON`.
    Path(sys.argv[2]).write_text(json.dumps(run_backend(json.loads(sys.argv[1]), Path(sys.argv[2]))))
