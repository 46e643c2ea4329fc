"""Times every stage of the Workload on one backend, in a worker subprocess of its own."""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ...config import ModelConfig
from ...errors import CosyVoiceError
from .workload import Workload

# A repeat is skipped once a stage has used this much time (at least one timed run always happens), which keeps a
# real-size run on two cores within minutes while small stages still get several repeats for a stable median.
STAGE_TIME_CAP_S = 30.0

# stream / stream_serial: the whole request streamed, with the LM decoding ahead in a thread (the engine's default)
# and without; ttfa_first_chunk: first audio with the smaller-first-chunk option, and how much its audio differs;
# convert: voice conversion through the engine (source tokens -> flow -> vocoder, no LM; issue #17's RTF).
STAGES = ("lm_prefill", "lm_decode", "flow", "vocoder", "e2e", "stream", "stream_serial", "ttfa", "ttfa_first_chunk",
          "convert")
# int8 quantizes the LM and the flow estimator; its vocoder is the fp32 graph, timed once under onnx.
INT8_LM_ONLY = "lm=onnx:int8,flow=onnx,vocoder=onnx"
STAGES_TIMED = {"onnx:int8": [s for s in STAGES if s != "vocoder"],
                # The int8 LM with the exact fp32 flow: only the whole request differs from the other columns.
                INT8_LM_ONLY: ["e2e", "stream", "stream_serial", "ttfa", "ttfa_first_chunk"]}


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


def _stage_runs(cfg: ModelConfig, stages, token2wav, work: Workload,
                streamed: dict) -> dict[str, tuple[Callable, Callable | None]]:
    """Per stage: (one timed run, its warm-up); inputs are seeded random ids and features of the Workload's sizes.
    `streamed` gets the audio of the streamed runs ("stream", "stream_serial", "first_chunk")."""
    from ...lm_decode import iter_speech_tokens
    from ...sampling import make_sampler
    from ...token_prefetch import prefetched

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

    def stream(overlap: bool, first_hop: int | None = None):
        schedule = token2wav.schedule(first_hop)
        tokens = prefetched(sampled_tokens(), schedule.longest_chunk) if overlap else sampled_tokens()
        return token2wav.stream(tokens, flow_prompt, prompt_mel, embedding, schedule,
                                noise=token2wav.request_noise(work.seed))

    def whole_stream(name: str, overlap: bool, first_hop: int | None = None) -> None:
        streamed[name] = np.concatenate(list(stream(overlap, first_hop)))

    def first_chunk(first_hop: int | None = None, overlap: bool = False) -> None:
        chunks = stream(overlap, first_hop)
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
        "stream": (lambda: whole_stream("stream", True), already_warm),
        "stream_serial": (lambda: whole_stream("stream_serial", False), already_warm),
        "ttfa": (first_chunk, already_warm),
        "ttfa_first_chunk": (lambda: first_chunk(work.first_chunk_tokens), already_warm),
        # Not timed: the option's whole stream once, to compare with the official one (stream_difference).
        "first_chunk_audio": (lambda: whole_stream("first_chunk", False, work.first_chunk_tokens), None),
    }


def _conversion_run(engine, cfg: ModelConfig, work: Workload) -> tuple[Callable[[], float], dict]:
    """One `engine.convert` call as the CLI makes it (`convert --source-wav --prompt-wav`): a synthetic voice-like
    source of the Workload's flow_tokens (10 s) and a prompt clip of its flow_prompt_tokens (3 s), so the flow and
    vocoder see the sizes of the other stages; the speech tokenizer and the speaker model run inside the call.
    Returns the run and a dict that gets the seconds of audio the last call made."""
    from ..tiny import synthetic_voice

    rate, token_rate = cfg.hift.sampling_rate, cfg.features.token_frame_rate
    source = (rate, synthetic_voice(work.flow_tokens / token_rate, rate, seed=work.seed + 2))
    prompt = (rate, synthetic_voice(work.flow_prompt_tokens / token_rate, rate, seed=work.seed + 1))
    made = {}

    def run() -> None:
        result = engine.convert(source, prompt_wav=prompt, seed=work.seed)
        made["audio_s"] = len(result.audio) / result.sample_rate

    return run, made


def run_backend(job: dict, partial: Path | None = None) -> dict:
    """Times the job's stages on one backend; `job` is what `_backend_job` builds. `partial`: a file rewritten
    after every stage, so a worker stopped by its time limit still reports the stages it finished."""
    from ...plan import ExecutionPlan

    # The canonical string the parent process wrote, on the job's device.
    plan = ExecutionPlan.parse(job["backend"], device=job.get("device", "cpu")).resolved()
    torch = None
    if plan.uses("torch"):
        import torch

        torch.set_num_threads(int(job["threads"]))
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
    from ...backends import load_stages
    from ...model_files import inspect_model_dir
    from ...noise import hift_noise_source
    from ...token2wav import Token2Wav

    work = Workload(**job["workload"])
    start = time.perf_counter()
    files = inspect_model_dir(job["model_dir"])
    cfg = files.config
    engine, converted = None, {}
    if "convert" in job["stages"]:
        from ...engine import CosyVoice

        # The engine (its frontend included) owns the stages then, so they are loaded once.
        engine = CosyVoice(files.root, plan, export_dir=job["export_dir"])
        stages, token2wav = engine.stages, engine.token2wav
    else:
        stages = load_stages(files, plan, job["export_dir"])
        token2wav = Token2Wav(cfg, stages.flow, stages.vocoder, stages.flow_noise, hift_noise_source(cfg))
    result = {"backend": job["backend"], "load_s": time.perf_counter() - start}
    streamed: dict[str, np.ndarray] = {}
    runs = _stage_runs(cfg, stages, token2wav, work, streamed)
    if engine is not None:
        convert, converted = _conversion_run(engine, cfg, work)
        runs["convert"] = (convert, None)
    for stage in (s for s in STAGES if s in job["stages"]):
        fn, warmup = runs[stage]
        result[stage] = _timed(fn, int(job["repeats"]), warmup)
        print(f"  {job['backend']}: {stage} {result[stage]['median_s']:.4f} s (median of "
              f"{len(result[stage]['runs_s'])})", file=sys.stderr, flush=True)
        if partial is not None:
            partial.write_text(json.dumps({**result, "error": f"stopped after {stage}"}))
    _compare_streams(result, runs, streamed)
    if "e2e" in result:
        result["e2e"]["audio_s"] = work.flow_tokens / cfg.features.token_frame_rate
    if "convert" in result:
        result["convert"]["audio_s"] = converted["audio_s"]
    result["peak_rss_bytes"] = peak_rss_bytes()
    if torch is not None and torch.cuda.is_available():
        result["peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
    return result


def _compare_streams(result: dict, runs: dict, streamed: dict) -> None:
    """The streamed rows' audio checks: the overlapped stream must equal the serial one; the first-chunk option's
    whole stream is compared with the official one (SNR and largest sample difference; run once, not timed)."""
    from ..parity import snr_db

    if "stream" in streamed and "stream_serial" in streamed:
        result["stream_serial"]["same_audio"] = bool(np.array_equal(streamed["stream"], streamed["stream_serial"]))
    if "ttfa_first_chunk" not in result:
        return
    if "stream" not in streamed:
        runs["stream"][0]()
    runs["first_chunk_audio"][0]()
    official, option = streamed["stream"], streamed["first_chunk"]
    size = min(len(official), len(option))
    result["ttfa_first_chunk"].update(
        snr_db=snr_db(official[:size], option[:size]), max_abs_diff=float(np.max(np.abs(official[:size] - option[:size]))),
        samples=[len(official), len(option)])


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
