"""The pipeline: frontend -> language model -> flow -> vocoder, with the high-level and stage-level APIs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from .backends import Stages, load_stages, parse_backend
from .duration import DurationTarget, estimate_tokens, render_frames
from .errors import InputError
from .frontend import Frontend, PromptFeatures
from .lm_decode import iter_speech_tokens
from .longtext import DEFAULT_JOIN_MS, Joiner, SynthesisInfo, synthesize_segments
from .mixing import PromptPlan, mix_prompts, single_prompt
from .model_files import inspect_model_dir
from .noise import hift_noise_source
from .prompts import END_OF_PROMPT, MODES, Mode, choose_mode
from .pronunciation import validate_tags
from .sampling import make_sampler
from .token2wav import Token2Wav
from .tokenizer import TextTokenizer
from .voices import VoiceStore, model_fingerprint

MAX_TEXT_CHARS = 5000
Progress = Callable[[int, int], None]


class CosyVoice:
    """A loaded model: `synthesize()` for applications, `generate_tokens/tokens_to_mel/mel_to_audio` for harnesses."""

    def __init__(self, model_dir: str | Path, backend: str | dict | None = "torch", llm_variant: str = "base",
                 export_dir: str | Path | None = None, device: str | None = "auto"):
        self.files = inspect_model_dir(model_dir, llm_variant)
        self.cfg = self.files.config
        self.sample_rate = self.cfg.hift.sampling_rate
        self.tokenizer = TextTokenizer.from_dir(self.files.qwen_dir, self.cfg.tokenizer_version)
        self.frontend = Frontend(self.cfg, self.tokenizer, self.files.speech_tokenizer, self.files.campplus)
        self.stages: Stages = load_stages(self.files, parse_backend(backend), export_dir, device)
        self.token2wav = Token2Wav(self.cfg, self.stages.flow, self.stages.vocoder, self.stages.flow_noise,
                                   hift_noise_source(self.cfg))
        self.end_of_prompt_id = self.tokenizer.token_to_id(END_OF_PROMPT)

    # ------------------------------------------------------------------ high level

    def prompt_from_audio(self, audio, transcript: str = "", trim: bool = True) -> PromptFeatures:
        return self.frontend.extract_prompt(audio, transcript, trim=trim)

    def voice_store(self, root: str | Path) -> VoiceStore:
        """Saved voices under `root`, flagged when saved with another model's speaker/speech-tokenizer files."""
        return VoiceStore(root, model_fingerprint(self.files.campplus, self.files.speech_tokenizer))

    def synthesize(self, text: str, prompt_wav=None, prompt_text: str | None = None, instruct: str | None = None, *,
                   voice: PromptFeatures | None = None, seed: int = 0, speed: float = 1.0, stream: bool = False,
                   sampler: str = "auto", on_progress: Progress | None = None, duration: float | None = None,
                   duration_method: str = "tokens", timbre: PromptFeatures | None = None,
                   emotion: PromptFeatures | None = None, mix: float = 1.0, join: str = "none",
                   join_ms: float = DEFAULT_JOIN_MS, check_tags: bool = False, return_info: bool = False,
                   **decode_options):
        """Text in the prompt's voice as 24 kHz float32 audio, or a generator of chunks when `stream`.

        Mode: `instruct` given -> instruct; a transcript (prompt_text or the voice's) -> zero-shot;
        neither -> cross-lingual. `decode_options` go to the LM loop (e.g. eos_mask_mode).
        duration: exact length in seconds (see duration.py; `duration_method` "tokens" or "stretch").
        timbre/emotion/mix: the flow prompt from `timbre` (alias of `voice`), the LM prompt spliced from
        timbre and `emotion` clips by `mix` (see mixing.py). join/join_ms: how sentences meet (longtext.py).
        check_tags: refuse unknown [tags]. return_info: return (audio, SynthesisInfo).
        """
        if len(text or "") > MAX_TEXT_CHARS:
            raise InputError(f"text is {len(text)} characters; the limit is {MAX_TEXT_CHARS}. Split it into parts.")
        if stream and speed != 1.0:
            raise InputError("speed change works only without streaming (as in the official model)")
        if not 0.5 <= speed <= 2.0:
            raise InputError(f"speed {speed} is outside 0.5 .. 2.0")
        if stream and (duration is not None or return_info):
            raise InputError("duration control and return_info work only without streaming")
        if duration is not None and speed != 1.0:
            raise InputError("give either a duration or a speed, not both")
        if check_tags:
            validate_tags(text, self.tokenizer)
        prompts = self._prompt_plan(prompt_wav, prompt_text, voice, timbre, emotion, mix, instruct)
        mode = choose_mode(prompts.transcript, instruct)
        segments = self.frontend.text_segments(text)
        joiner = Joiner.create(join, join_ms, self.sample_rate)
        token_sampler = make_sampler(sampler, seed, self.cfg.llm)
        if stream:
            return joiner.stream(self._stream(segments, mode, prompts, instruct, token_sampler, on_progress,
                                              decode_options, seed))
        self.token2wav.reseed(seed)
        text_tokens = [len(self.frontend.encode(s)) for s in segments]
        target = None if duration is None else DurationTarget.plan(
            duration, duration_method, text_tokens, joiner.overhead(len(segments)), self.cfg)
        info = SynthesisInfo(mode.name, segments,
                             estimated_seconds=estimate_tokens(text_tokens) / self.cfg.features.token_frame_rate,
                             target_seconds=duration, duration_method=duration_method if target else None,
                             join=join, join_samples=joiner.samples, emotion_mix=None if emotion is None else mix)

        def decode(segment: str, exact_len: int | None) -> list[int]:
            options = decode_options if exact_len is None else {**decode_options, "exact_len": exact_len}
            return list(self._tokens(segment, mode, prompts, instruct, token_sampler, options))

        def render(tokens: list[int], frames: int | None) -> np.ndarray:
            return self._whole(tokens, prompts.flow, speed, frames)

        audio = synthesize_segments(segments, decode, render, joiner, info, target,
                                    lambda counts: target.frames(counts, self.cfg), on_progress)
        info.seconds = len(audio) / self.sample_rate
        return (audio, info) if return_info else audio

    def _prompt_plan(self, prompt_wav, prompt_text, voice, timbre, emotion, mix, instruct) -> PromptPlan:
        if voice is not None and timbre is not None:
            raise InputError("give the voice either as voice= or as timbre=, not both")
        voice = voice if timbre is None else timbre
        if voice is None:
            if prompt_wav is None:
                raise InputError("a prompt clip (3–10 s of the voice to clone) or a saved voice is required")
            voice = self.prompt_from_audio(prompt_wav, prompt_text or "")
        if emotion is None:
            return single_prompt(voice, prompt_text)
        if instruct:
            raise InputError("instruct mode has no LM speech prompt to carry an emotion clip; use either an "
                             "instruction or an emotion clip")
        return mix_prompts(voice, emotion, mix, prompt_text)

    def _stream(self, segments, mode, prompts: PromptPlan, instruct, token_sampler, on_progress, decode_options,
                seed: int):
        """One chunk generator per segment, for the joiner."""
        self.token2wav.reseed(seed)
        for i, segment in enumerate(segments):
            yield self._stream_segment(segment, mode, prompts, instruct, token_sampler, decode_options,
                                       on_progress, (i + 1, len(segments)))

    def _stream_segment(self, segment, mode, prompts: PromptPlan, instruct, token_sampler, decode_options,
                        on_progress, position: tuple[int, int]):
        token_iter = self._tokens(segment, mode, prompts, instruct, token_sampler, decode_options)
        flow = prompts.flow
        yield from self.token2wav.stream(token_iter, flow.speech_tokens, flow.mel, flow.embedding)
        if on_progress:
            on_progress(*position)

    def _tokens(self, segment: str, mode: Mode, prompts: PromptPlan, instruct, token_sampler,
                decode_options) -> Iterator[int]:
        text_ids, prompt_text_ids = self.frontend.lm_inputs(mode, segment, prompts.transcript, instruct)
        prompt_speech = prompts.lm_tokens if mode.lm_prompt_speech else np.zeros(0, dtype=np.int64)
        return self.iter_tokens(text_ids, prompt_text_ids, prompt_speech, token_sampler, **decode_options)

    def _whole(self, tokens: list[int], flow: PromptFeatures, speed: float, frames: int | None = None) -> np.ndarray:
        if not tokens:
            return np.zeros(0, dtype=np.float32)
        if frames is not None:
            return render_frames(self.token2wav, tokens, flow.speech_tokens, flow.mel, flow.embedding, frames)
        return self.token2wav.whole(tokens, flow.speech_tokens, flow.mel, flow.embedding, speed=speed)

    # ------------------------------------------------------------------ stage level

    def iter_tokens(self, text_ids, prompt_text_ids, prompt_speech_ids, sampler, **options) -> Iterator[int]:
        """LM decoding from token ids with any sampler (see `sampling.make_sampler`)."""
        if self.cfg.requires_endofprompt:
            options.setdefault("require_token", self.end_of_prompt_id)
        return iter_speech_tokens(self.stages.lm, np.asarray(text_ids, dtype=np.int64),
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
        per-call normal draw. `seed` restarts CV2's draws (the same seed gives the same noise on any backend)."""
        if seed is not None:
            self.token2wav.reseed(seed)
        if noise is None:
            return self.token2wav.vocode(mel, finalize)
        return self.stages.vocoder.vocode(mel, finalize, noise)


__all__ = ["CosyVoice", "MODES"]
