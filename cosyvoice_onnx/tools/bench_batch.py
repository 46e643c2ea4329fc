"""Throughput of concurrent requests with and without batched LM decode (`cosyvoice-onnx bench-batch`).

One engine, one run: for each concurrency c, c requests are started at once on c threads, first on the plain LM
(today's path: each request steps alone), then through the batching scheduler; and the same c requests one after
another as the sequential reference. Every request decodes exactly `tokens` speech tokens (stop ids masked, so
random-weight models make the same amount of work for every seed). Two stages are measured: the LM alone
(`generate_tokens`) and end to end (`synthesize`: LM, flow, vocoder). Figures: requests/s, audio seconds per wall
second, audio seconds per CPU second of this process, p50/p95 latency, and the ratios batched/unbatched and
batched/sequential. Speed is machine- and
load-dependent: the ratios of one run are what to compare.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TEXT = ("The quick brown fox jumps over the lazy dog, and then it runs back home across the wide green field "
        "before the evening rain begins to fall.")
TRANSCRIPT = "this is a short sample of my voice for the test"


@dataclass
class Figures:
    stage: str          # "lm" or "e2e"
    mode: str           # "sequential", "unbatched" or "batched"
    concurrency: int
    wall_s: float
    latencies: list[float]
    audio_s: float
    cpu_s: float        # CPU seconds this process used (all threads): robust to what else the machine runs

    @property
    def requests_per_s(self) -> float:
        return len(self.latencies) / self.wall_s

    @property
    def audio_per_wall(self) -> float:
        return self.audio_s / self.wall_s

    @property
    def audio_per_cpu(self) -> float:
        return self.audio_s / self.cpu_s

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q))


def _together(fn, count: int) -> tuple[float, list[float], list[float]]:
    """fn(i) for i < count on count threads started at once -> (wall seconds, latencies, audio seconds)."""
    latencies, audio = [0.0] * count, [0.0] * count
    errors: list[BaseException] = []
    start = threading.Barrier(count + 1)

    def worker(i: int) -> None:
        start.wait()
        t0 = time.perf_counter()
        try:
            audio[i] = fn(i)
        except BaseException as exc:  # re-raised on the caller's thread
            errors.append(exc)
        latencies[i] = time.perf_counter() - t0

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    start.wait()
    t0 = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return wall, latencies, audio


def _one_by_one(fn, count: int) -> tuple[float, list[float], list[float]]:
    latencies, audio = [], []
    t0 = time.perf_counter()
    for i in range(count):
        t1 = time.perf_counter()
        audio.append(fn(i))
        latencies.append(time.perf_counter() - t1)
    return time.perf_counter() - t0, latencies, audio


def run(model: Path, backend: str = "onnx:int8", export_dir: Path | None = None, levels=(1, 4, 8),
        tokens: int = 100, e2e: bool = True, progress=print) -> list[Figures]:
    from ..engine import CosyVoice
    from ..lm_batching import batching_lm
    from ..mixing import single_prompt
    from ..onnx_backend.loader import default_export_dir
    from ..prompts import choose_mode
    from ..sampling import make_sampler
    from .tiny import synthetic_voice

    engine = CosyVoice(model, backend=backend, export_dir=export_dir)
    plain = engine.stages.lm
    batched = batching_lm(plain, max(levels), export_dir or default_export_dir(engine.files))
    voice = engine.prompt_from_audio((engine.sample_rate, synthetic_voice(4.0, engine.sample_rate, seed=1)), TRANSCRIPT)
    prompt = single_prompt(voice)
    text_ids, prompt_text_ids = engine.frontend.lm_inputs(choose_mode(prompt.transcript, None), TEXT,
                                                          prompt.transcript, None)
    seconds_per_token = 1.0 / engine.cfg.features.token_frame_rate

    def lm_request(i: int) -> float:
        out = engine.generate_tokens(text_ids, prompt_text_ids, prompt.lm_tokens,
                                     make_sampler("torch", 100 + i, engine.cfg.llm), exact_len=tokens)
        return len(out) * seconds_per_token

    def e2e_request(i: int) -> float:
        result = engine.synthesize(TEXT, voice=voice, seed=100 + i, min_len=tokens, max_len=tokens,
                                   eos_mask_mode="correct", return_info=True)
        return len(result[0]) / engine.sample_rate

    stages = [("lm", lm_request)] + ([("e2e", e2e_request)] if e2e else [])
    figures = []
    for _, fn in stages:
        fn(0)  # warm-up: first-run allocations and lazy initialisation stay out of the figures
    for stage, fn in stages:
        for c in levels:
            for mode in ("sequential", "unbatched", "batched"):
                if mode == "sequential" and c == 1:
                    continue  # the same as unbatched at 1
                engine.stages.lm = batched if mode == "batched" else plain
                cpu = time.process_time()
                wall, latencies, audio = (_one_by_one if mode == "sequential" else _together)(fn, c)
                figures.append(Figures(stage, mode, c, wall, latencies, float(sum(audio)),
                                       time.process_time() - cpu))
                progress(format_row(figures[-1]))
    engine.stages.lm = plain
    progress(f"batch sizes run: {dict(sorted(batched.batch_sizes.items()))}")
    return figures


def format_row(f: Figures) -> str:
    return (f"{f.stage:4} c={f.concurrency} {f.mode:10} {f.requests_per_s:6.3f} req/s  {f.audio_per_wall:6.3f} "
            f"audio s/s  p50 {f.percentile(50):6.2f} s  p95 {f.percentile(95):6.2f} s  {f.audio_per_cpu:6.3f} audio s "
            f"per CPU s  (wall {f.wall_s:.1f} s)")


def ratios(figures: list[Figures]) -> list[str]:
    """Per stage and concurrency: batched throughput over unbatched, and over the sequential reference."""
    by = {(f.stage, f.mode, f.concurrency): f for f in figures}
    lines = []
    for (stage, mode, c), f in by.items():
        if mode != "batched":
            continue
        unbatched = by[(stage, "unbatched", c)]
        sequential = by.get((stage, "sequential", c), unbatched if c == 1 else None)
        line = (f"{stage:4} c={c}: batched / unbatched {f.audio_per_wall / unbatched.audio_per_wall:5.2f}x "
                f"(per CPU s {f.audio_per_cpu / unbatched.audio_per_cpu:5.2f}x)")
        if sequential is not None:
            line += (f", batched / sequential {f.audio_per_wall / sequential.audio_per_wall:5.2f}x "
                     f"(per CPU s {f.audio_per_cpu / sequential.audio_per_cpu:5.2f}x)")
        lines.append(line)
    return lines
