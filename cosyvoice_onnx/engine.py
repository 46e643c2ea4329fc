"""The pipeline: frontend -> language model -> flow -> vocoder, with the high-level and stage-level APIs."""

from __future__ import annotations

import gc

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any
from pathlib import Path

import numpy as np

from .backends import Stages, load_stages
from .conversion import Conversion, ConversionRequest
from .devices import Device
from .duration import DurationTarget, estimate_tokens, render_frames
from .errors import CosyVoiceError, InputError
from .frontend import Frontend, PromptFeatures
from .lm_decode import iter_speech_tokens
from .longtext import Joiner, SynthesisInfo, synthesize_segments
from .mixing import PromptPlan, mix_prompts, single_prompt
from .model_files import inspect_model_dir
from .noise import hift_noise_source
from .plan import ExecutionPlan
from .prompts import END_OF_PROMPT, MODES, Mode, choose_mode
from .pronunciation import validate_tags
from .progress import OnEvent, ProgressEvent
from .request import (DEFAULT_MAX_SECONDS, MAX_TEXT_CHARS, Randomness, RequestClock, SynthesisRequest,
                      SynthesisResult, SynthesisStream)
from .token2wav import Token2Wav
from .token_prefetch import prefetched
from .tokenizer import TextTokenizer
from .voices import VoiceStore, model_fingerprint

Progress = Callable[[int, int], None]
# SynthesisRequest fields the keyword shorthand takes by name; every other keyword is a decode option.
REQUEST_KEYWORDS = ("seed", "speed", "stream", "sampler", "duration", "duration_method", "emotion", "mix", "join",
                    "join_ms", "check_tags", "max_seconds", "glossary", "first_chunk_tokens")


class CosyVoice:
    """A loaded model: `synthesize()` for applications, `generate_tokens/tokens_to_mel/mel_to_audio` for harnesses."""

    def __init__(self, model_dir: str | Path, backend: str | dict | ExecutionPlan | None = "torch",
                 device: str | Device | None = "auto", llm_variant: str = "base",
                 export_dir: str | Path | None = None, batch_decode: int | None = None,
                 stream_overlap: bool | None = None):
        """`backend`: an ExecutionPlan or its spec (plan.py: `torch`, `onnx:int8`, `lm=onnx:int8,flow=torch,...`);
        `device` (auto, cpu, cuda[:N]) applies to the stages whose spec names none; `auto` becomes a GPU where the
        stage's backend sees one, else the CPU, so `self.plan` names concrete devices. `batch_decode=N` (N > 1)
        runs the LM decode steps of up to N concurrent requests as one batch (lm_batching.py); off by default.
        `stream_overlap`: a streamed sentence's LM decodes the next chunk's tokens in a thread while the flow and
        vocoder make this chunk (token_prefetch.py; the same audio either way). None: on where the LM runs on a
        GPU; on CPU cores that the flow needs too it slows the first audio, so there it is off unless asked for.

        A failed load raises a fresh error of the same type that holds no traceback into the half-built engine, so a
        caller that keeps the error (a server showing its last errors) does not keep the stages it loaded."""
        try:
            self._load(model_dir, backend, device, llm_variant, export_dir, batch_decode)
            self.stream_overlap = self.plan.lm.device.is_cuda if stream_overlap is None else bool(stream_overlap)
            return
        except CosyVoiceError as exc:
            failure = (type(exc), str(exc))
        self.__dict__.clear()
        gc.collect()
        raise failure[0](failure[1])

    def _load(self, model_dir, backend, device, llm_variant: str, export_dir, batch_decode: int | None) -> None:
        self.plan = ExecutionPlan.parse(backend, device=device).resolved()
        self.files = inspect_model_dir(model_dir, llm_variant)
        self.cfg = self.files.config
        self.sample_rate = self.cfg.hift.sampling_rate
        self.tokenizer = TextTokenizer.from_dir(self.files.qwen_dir, self.cfg.tokenizer_version)
        self.frontend = Frontend(self.cfg, self.tokenizer, self.files.speech_tokenizer, self.files.campplus)
        self.stages: Stages = load_stages(self.files, self.plan, export_dir)
        if batch_decode is not None and int(batch_decode) != 1:
            from .lm_batching import batching_lm
            from .onnx_backend.loader import default_export_dir

            self.stages.lm = batching_lm(self.stages.lm, int(batch_decode), export_dir or default_export_dir(self.files))
        self.token2wav = Token2Wav(self.cfg, self.stages.flow, self.stages.vocoder, self.stages.flow_noise,
                                   hift_noise_source(self.cfg))
        self.end_of_prompt_id = self.tokenizer.token_to_id(END_OF_PROMPT)
        self.max_seconds = DEFAULT_MAX_SECONDS  # a request's time limit unless it sets max_seconds

    # ------------------------------------------------------------------ high level

    def prompt_from_audio(self, audio, transcript: str = "", trim: bool = True) -> PromptFeatures:
        return self.frontend.extract_prompt(audio, transcript, trim=trim)

    def voice_store(self, root: str | Path) -> VoiceStore:
        """Saved voices under `root`, flagged when saved with another model's speaker/speech-tokenizer files."""
        return VoiceStore(root, model_fingerprint(self.files.campplus, self.files.speech_tokenizer))

    def synthesize(self, text: SynthesisRequest | str | None = None, prompt_wav=None,
                   prompt_text: str | None = None, instruct: str | None = None, *,
                   voice: PromptFeatures | None = None, timbre: PromptFeatures | None = None,
                   on_event: OnEvent | None = None, on_progress: Progress | None = None, return_info: bool = False,
                   **controls):
        """A SynthesisRequest -> SynthesisResult (use `stream(request)` for a streaming one).

        Shorthand: `synthesize(text, prompt_wav=..., prompt_text=..., instruct=..., voice=..., seed=..., ...)`
        with every SynthesisRequest field as a keyword (`timbre` is an alias of `voice`; any other keyword is a
        decode option such as eos_mask_mode) returns the audio, `(audio, SynthesisInfo)` with return_info, or
        the chunks when stream=True. `on_progress(done, total)` is called per sentence.
        """
        on_event = _with_progress(on_event, on_progress)
        if isinstance(text, SynthesisRequest):
            request = text
            if prompt_wav is not None or prompt_text is not None or instruct is not None or voice is not None \
                    or timbre is not None or return_info or controls:
                raise InputError("give either a SynthesisRequest or the text with keyword arguments, not both")
            if request.stream:
                raise InputError("this request streams: call tts.stream(request)")
            return self._run_whole(request, on_event)
        if voice is not None and timbre is not None:
            raise InputError("give the voice either as voice= or as timbre=, not both")
        fields = {name: controls.pop(name) for name in REQUEST_KEYWORDS if name in controls}
        request = SynthesisRequest(text=text, prompt_wav=prompt_wav, prompt_text=prompt_text, instruct=instruct,
                                   voice=voice if timbre is None else timbre, decode_options=controls, **fields)
        if request.stream:
            if return_info:
                raise InputError("return_info works only without streaming")
            return self.stream(request, on_event=on_event)
        result = self._run_whole(request, on_event)
        return (result.audio, result.info) if return_info else result.audio

    def stream(self, request: SynthesisRequest, on_event: OnEvent | None = None) -> SynthesisStream:
        """Audio chunks as they are made; the stream's `result` is there after the last chunk."""
        if not request.stream:
            request = dataclasses.replace(request, stream=True)  # re-validated: no speed or duration in a stream
        shortest = self.token2wav.min_first_hop()
        if request.first_chunk_tokens is not None and request.first_chunk_tokens < shortest:
            raise InputError(f"first_chunk_tokens must be at least {shortest} for this model: a shorter first chunk "
                             "gives the vocoder too few mel frames to make any audio")
        job = self._start(request, on_event)
        segment_chunks = (self._stream_segment(job, i, segment) for i, segment in enumerate(job.segments))

        def finish(chunks: list[np.ndarray]) -> SynthesisResult:
            audio = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, dtype=np.float32)
            return job.result(audio)

        return SynthesisStream(job.joiner.stream(segment_chunks), finish)

    def _start(self, request: SynthesisRequest, on_event: OnEvent | None) -> _Job:
        """What every request does first: its clock, randomness, prompt, mode, sentences and stage views."""
        clock = RequestClock(request.max_seconds or self.max_seconds, on_event)
        if request.check_tags:
            validate_tags(request.text, self.tokenizer)
        segments = self.frontend.text_segments(request.text, glossary=request.glossary)
        joiner = Joiner.create(request.join, request.join_ms, self.sample_rate)
        rng = Randomness.create(request.seed, request.sampler, self.cfg.llm, self.token2wav)
        prompts = clock.timed("prompt", self)._prompt_plan(request)
        mode = choose_mode(prompts.transcript, request.instruct)
        text_tokens = [len(self.frontend.encode(s)) for s in segments]
        info = SynthesisInfo(mode.name, segments,
                             estimated_seconds=estimate_tokens(text_tokens) / self.cfg.features.token_frame_rate,
                             target_seconds=request.duration,
                             duration_method=request.duration_method if request.duration is not None else None,
                             join=request.join, join_samples=joiner.samples,
                             emotion_mix=None if request.emotion is None else request.mix)
        token2wav = self.token2wav.with_stages(clock.timed("flow", self.stages.flow),
                                               clock.timed("vocoder", self.stages.vocoder))
        return _Job(self, request, clock, rng, prompts, mode, segments, text_tokens, joiner, info,
                    clock.timed("lm", self.stages.lm), token2wav)

    def _run_whole(self, request: SynthesisRequest, on_event: OnEvent | None) -> SynthesisResult:
        job = self._start(request, on_event)
        target = None if request.duration is None else DurationTarget.plan(
            request.duration, request.duration_method, job.text_tokens, job.joiner.overhead(len(job.segments)),
            self.cfg)

        def decode(segment: str, exact_len: int | None) -> list[int]:
            return list(job.tokens(segment, exact_len))

        def render(tokens: list[int], frames: int | None) -> np.ndarray:
            return job.whole(tokens, frames)

        audio = synthesize_segments(job.segments, decode, render, job.joiner, job.info, target,
                                    lambda counts: target.frames(counts, self.cfg), job.segment_done)
        return job.result(audio)

    def _prompt_plan(self, request: SynthesisRequest) -> PromptPlan:
        voice = request.voice
        if voice is None:
            voice = self.prompt_from_audio(request.prompt_wav, request.prompt_text or "")
        if request.emotion is None:
            return single_prompt(voice, request.prompt_text)
        return mix_prompts(voice, request.emotion, request.mix, request.prompt_text)

    def _stream_segment(self, job: _Job, index: int, segment: str) -> Iterator[np.ndarray]:
        """One sentence's chunks; its token and sample counts go into the request's info as in the whole path."""
        tokens = 0
        samples = 0

        def counted(token_iter):
            nonlocal tokens
            for token in token_iter:
                tokens += 1
                yield token

        flow = job.prompts.flow
        speech_tokens = job.tokens(segment, None)
        # The request's first chunk only: later sentences follow while earlier ones play.
        schedule = job.token2wav.schedule(job.request.first_chunk_tokens if index == 0 else None)
        if self.stream_overlap:
            speech_tokens = prefetched(speech_tokens, ahead=schedule.longest_chunk)
        for chunk in job.token2wav.stream(counted(speech_tokens), flow.speech_tokens, flow.mel, flow.embedding,
                                          schedule=schedule, noise=job.rng.vocoder_noise):
            samples += len(chunk)
            yield chunk
        job.info.tokens.append(tokens)
        job.info.segment_samples.append(samples)
        job.segment_done(index + 1, len(job.segments))

    def convert(self, source_wav: ConversionRequest | Any = None, *, voice: PromptFeatures | None = None,
                prompt_wav=None, stream: bool = False, seed: int = 0, speed: float = 1.0,
                max_seconds: float | None = None, on_event: OnEvent | None = None) -> SynthesisResult | SynthesisStream:
        """Voice conversion: `source_wav` re-spoken in the target voice (`voice` or `prompt_wav`), no LM involved
        (conversion.py). Returns a SynthesisResult of mode "vc", or with stream=True a SynthesisStream of its
        chunks. A ConversionRequest may be given instead of the keywords."""
        if isinstance(source_wav, ConversionRequest):
            request = source_wav
            if voice is not None or prompt_wav is not None:
                raise InputError("give either a ConversionRequest or the source with keyword arguments, not both")
        else:
            request = ConversionRequest(source_wav, voice, prompt_wav, seed, stream, max_seconds, speed)
        clock = RequestClock(request.max_seconds or self.max_seconds, on_event)
        token2wav = self.token2wav.with_stages(clock.timed("flow", self.stages.flow),
                                               clock.timed("vocoder", self.stages.vocoder))
        job = Conversion(self.frontend, token2wav, request, clock)

        def finish(chunks: list[np.ndarray]) -> SynthesisResult:
            audio = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, dtype=np.float32)
            job.info.samples, job.info.seconds = len(audio), len(audio) / self.sample_rate
            # No LM, so no sampler: "none".
            return SynthesisResult(audio, self.sample_rate, job.info.mode, "none", str(self.plan), request.seed,
                                   job.info, {**clock.timings, "total": clock.elapsed()}, list(clock.events))

        if request.stream:
            return SynthesisStream(job.chunks(), finish)
        return finish(list(job.chunks()))

    # ------------------------------------------------------------------ stage level

    def iter_tokens(self, text_ids, prompt_text_ids, prompt_speech_ids, sampler, *, lm=None,
                    **options) -> Iterator[int]:
        """LM decoding from token ids with any sampler (see `sampling.make_sampler`); `lm`: the stage to run
        (default the engine's)."""
        if self.cfg.requires_endofprompt:
            options.setdefault("require_token", self.end_of_prompt_id)
        return iter_speech_tokens(lm or self.stages.lm, np.asarray(text_ids, dtype=np.int64),
                                  np.asarray(prompt_text_ids, dtype=np.int64),
                                  np.asarray(prompt_speech_ids, dtype=np.int64), self.cfg.llm, sampler, **options)

    def generate_tokens(self, text_ids, prompt_text_ids, prompt_speech_ids, sampler, **options) -> list[int]:
        return list(self.iter_tokens(text_ids, prompt_text_ids, prompt_speech_ids, sampler, **options))

    def tokens_to_mel(self, tokens, prompt_tokens, prompt_mel, embedding, *, noise: np.ndarray | None = None,
                      streaming: bool = False, finalize: bool = True) -> np.ndarray:
        """Flow: [1,80,T] mel for `tokens` after the prompt. `noise` [1,80,>=T_total] replaces the fixed buffer."""
        from .flow_solver import token_to_mel

        return token_to_mel(self.stages.flow, np.asarray(tokens, dtype=np.int64).reshape(1, -1),
                            np.asarray(prompt_tokens, dtype=np.int64).reshape(1, -1), prompt_mel, embedding,
                            self.stages.flow_noise if noise is None else noise, streaming=streaming,
                            finalize=finalize, cfg=self.cfg.flow)

    def mel_to_audio(self, mel: np.ndarray, *, finalize: bool = True, noise: np.ndarray | None = None,
                     seed: int | None = None) -> np.ndarray:
        """Vocoder: [1,S] audio. `noise` [1,L,harmonics+1] replaces CV3's fixed uniform buffer's prefix or CV2's
        per-call normal draw. CV2 draws from `seed` (default 0): the same seed gives the same noise on any
        backend."""
        if noise is None:
            return self.token2wav.vocode(mel, finalize, self.token2wav.request_noise(seed or 0))
        return self.stages.vocoder.vocode(mel, finalize, noise)


class _Job:
    """One request in flight: its inputs, clock, randomness, prompt and the timed stage views it runs on."""

    def __init__(self, engine: CosyVoice, request: SynthesisRequest, clock: RequestClock, rng: Randomness,
                 prompts: PromptPlan, mode: Mode, segments: list[str], text_tokens: list[int], joiner: Joiner,
                 info: SynthesisInfo, lm, token2wav: Token2Wav):
        self.engine, self.request, self.clock, self.rng = engine, request, clock, rng
        self.prompts, self.mode, self.segments, self.text_tokens = prompts, mode, segments, text_tokens
        self.joiner, self.info, self.lm, self.token2wav = joiner, info, lm, token2wav

    def tokens(self, segment: str, exact_len: int | None) -> Iterator[int]:
        options = dict(self.request.decode_options)
        if exact_len is not None:
            options["exact_len"] = exact_len
        text_ids, prompt_text_ids = self.engine.frontend.lm_inputs(self.mode, segment, self.prompts.transcript,
                                                                   self.request.instruct)
        prompt_speech = self.prompts.lm_tokens if self.mode.lm_prompt_speech else np.zeros(0, dtype=np.int64)
        return self.engine.iter_tokens(text_ids, prompt_text_ids, prompt_speech, self.rng.sampler, lm=self.lm,
                                       **options)

    def whole(self, tokens: list[int], frames: int | None) -> np.ndarray:
        """A sentence's audio without streaming; no tokens (the LM stopped at once) make no audio."""
        if not tokens:
            return np.zeros(0, dtype=np.float32)
        flow, noise = self.prompts.flow, self.rng.vocoder_noise
        if frames is not None:
            return render_frames(self.token2wav, tokens, flow.speech_tokens, flow.mel, flow.embedding, frames, noise)
        return self.token2wav.whole(tokens, flow.speech_tokens, flow.mel, flow.embedding, speed=self.request.speed,
                                    noise=noise)

    def segment_done(self, done: int, total: int) -> None:
        self.clock.emit(ProgressEvent("segment", done, total, f"sentence {done} of {total}"))

    def result(self, audio: np.ndarray) -> SynthesisResult:
        self.info.samples = len(audio)
        self.info.seconds = len(audio) / self.engine.sample_rate
        timings = {**self.clock.timings, "total": self.clock.elapsed()}
        return SynthesisResult(audio, self.engine.sample_rate, self.mode.name, self.rng.sampler_kind,
                               str(self.engine.plan), self.rng.seed, self.info, timings, list(self.clock.events))


def _with_progress(on_event: OnEvent | None, on_progress: Progress | None) -> OnEvent | None:
    """An on_event that also calls the older on_progress(done, total) per sentence."""
    if on_progress is None:
        return on_event

    def both(event: ProgressEvent) -> None:
        if event.stage == "segment":
            on_progress(event.done, event.total)
        if on_event is not None:
            on_event(event)
    return both


__all__ = ["CosyVoice", "MODES", "MAX_TEXT_CHARS", "SynthesisRequest", "SynthesisResult"]
