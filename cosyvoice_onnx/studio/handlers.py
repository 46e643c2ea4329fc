"""What the synthesis, voice and history buttons do, as plain methods: no UI code, callable from tests."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import hashlib
import inspect
import logging
import math
import random
import threading
import time
import warnings
from collections import OrderedDict
from pathlib import Path

import gradio as gr
import numpy as np
import soundfile

from ..releases import detect_version
from ..request import MAX_SEED, SynthesisRequest, SynthesisResult, check_text
from ..errors import CosyVoiceError, InputError
from ..glossary import Glossary, glossary_path
from ..plan import ExecutionPlan
from ..prompts import preset_instruction
from ..voices import VoiceStore, validate_name
from .history import History
from .media import ffmpeg_available, prompt_length_warning, read_upload, to_output, upload_error
from .memory import release_freed_memory
from .settings import StudioSettings, check_model_folder
from .state import EngineCache, checked_spec

log = logging.getLogger(__name__)

PROMPT_CACHE_SIZE = 8
HISTORY_COLUMNS = ["id", "created", "mode", "seconds", "text", "backend", "seed", "voice"]


def user_message(exc: BaseException) -> str:
    """One line for the page: what went wrong and what to do; no traceback, no server path, never empty."""
    if isinstance(exc, CosyVoiceError):
        return str(exc) or f"the request was refused ({type(exc).__name__}); check the inputs and try again"
    if isinstance(exc, MemoryError):
        return ("the server ran out of memory for this request: try a shorter text, an ONNX fp16/int8 backend, or "
                "fewer engines at once (A/B loads two); the studio keeps serving")
    if isinstance(exc, OSError):
        # Only the file's own name: the folders it lies in are the server's business.
        name = f" {Path(exc.filename).name!r}" if exc.filename else ""
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return (f"the studio may not write{name}: the folder is read-only for the user running it; make it "
                    "writable, or ask whoever runs the studio for a writable folder")
        if exc.errno == errno.ENOSPC:
            return f"the server's disk is full while writing{name}; free some space and try again"
        return f"a file operation failed{name}: {exc.strerror or type(exc).__name__}; try again"
    return f"unexpected error ({type(exc).__name__}); the details are in the server's log"


def _to_gradio(exc: Exception) -> gr.Error:
    if isinstance(exc, gr.Error):
        return exc
    if not isinstance(exc, CosyVoiceError):
        log.error("request failed", exc_info=exc)
    return gr.Error(user_message(exc), print_exception=False)


def user_errors(fn):
    """Every failure becomes gr.Error with a one-line message (user_message); the server keeps serving."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def generator(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as exc:   # noqa: BLE001 - the page gets one line, the log the traceback
                raise _to_gradio(exc) from exc
        return generator

    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:   # noqa: BLE001 - the page gets one line, the log the traceback
            raise _to_gradio(exc) from exc
    return call


def parse_seed(value) -> int:
    """A seed from the page or an API client: a whole number in 0 .. MAX_SEED (text, int or a whole float)."""
    number = None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        number = int(value)
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        number = int(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            number = int(text)
        except ValueError:
            try:
                as_float = float(text)
                number = int(as_float) if math.isfinite(as_float) and as_float.is_integer() else None
            except ValueError:
                number = None
    if number is None or not 0 <= number <= MAX_SEED:
        raise InputError(f"the seed {value!r} is not a whole number from 0 to {MAX_SEED}; "
                         "type one, or press Random")
    return number


def backend_spec(backend: str, precision: str = "fp32", stages: str = "", device: str = "auto") -> ExecutionPlan:
    """The execution plan the three header selectors make on the studio's `--device`; a per-stage spec wins."""
    if stages and stages.strip():
        return checked_spec(stages.strip(), "the per-stage box's", device)
    backend = (backend or "torch").strip()
    return checked_spec(backend if (precision or "fp32") == "fp32" else f"{backend}:{precision}", "the backend",
                        device)


def _same_as_stored(samples: np.ndarray, wav_path: Path) -> bool:
    """Whether int16 samples equal a history WAV (which holds exactly the int16 the player got)."""
    stored, _ = soundfile.read(wav_path, dtype="int16")
    return stored.shape == samples.shape and bool(np.array_equal(stored, samples))


def random_seed() -> int:
    # Kept below 2**31: the page's number box is a JavaScript double, exact only up to 2**53.
    return random.randint(0, 2**31 - 1)


def _first_chunk(value) -> int | None:
    """The studio's number box: 0 or empty is the official schedule; anything else goes to the request's check."""
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0):
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _progress_callback(progress):
    """Renders the engine's progress events on a gr.Progress bar."""
    def report(event) -> None:
        progress((event.done, event.total), desc=event.message, unit="sentences")
    return report


class Studio:
    """The loaded-engine cache, the saved voices and the history, behind one object per running app."""

    def __init__(self, settings: StudioSettings, cache: EngineCache | None = None):
        self.settings = settings
        self.cache = cache or EngineCache(lock=settings.engine_lock)
        self.history = History(settings.history_dir)
        settings.voices_dir.mkdir(parents=True, exist_ok=True)
        self.stream_player = ffmpeg_available() if settings.stream_player is None else settings.stream_player
        self._prompts: OrderedDict[tuple[str, str], object] = OrderedDict()
        self._prompts_lock = threading.Lock()

    # ------------------------------------------------------------------ shared steps

    def model_folder(self, model_dir: str | None) -> Path:
        text = model_dir if model_dir and model_dir.strip() else (str(self.settings.model_dir or ""))
        return check_model_folder(text, self.settings)

    @user_errors
    def preset_text(self, preset: str | None, model_dir: str = ""):
        """The instruction of a preset (`group:key`) in the wording of the chosen model's release."""
        if not preset:
            return gr.skip()
        return preset_instruction(preset, detect_version(self.model_folder(model_dir)))

    def glossary(self) -> Glossary | None:
        """The studio's pronunciation glossary (glossary.json in the data folder), applied to every synthesis."""
        glossary = Glossary.load(glossary_path(self.settings.data_dir))
        return glossary if len(glossary) else None

    def _checked(self, model_dir: str, text: str, seed) -> tuple[Path, str, int]:
        """The request's model folder, text and seed, checked (by the engine's own rules) before a model loads."""
        return self.model_folder(model_dir), check_text(text), parse_seed(seed)

    def _voice(self, engine, audio_path, saved_voice: str, transcript: str, what: str = "prompt audio"):
        """(PromptFeatures with `transcript`, label): a saved voice when one is named, else the uploaded clip."""
        transcript = transcript or ""
        if saved_voice:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                voice = engine.voice_store(self.settings.voices_dir).load(saved_voice)
            for warning in caught:
                gr.Warning(str(warning.message))
            return dataclasses.replace(voice, transcript=transcript), saved_voice
        data = read_upload(audio_path, what)
        if data is None:
            raise InputError(f"no {what}: upload or record a 3–10 s clip of the voice, or pick a saved voice")
        key = (str(engine.files.root), hashlib.sha256(data).hexdigest())
        with self._prompts_lock:
            voice = self._prompts.get(key)
        if voice is None:
            try:
                voice = engine.prompt_from_audio(data, transcript)
            except InputError as exc:
                raise upload_error(exc, what, audio_path) from exc
            with self._prompts_lock:
                self._prompts[key] = voice
                while len(self._prompts) > PROMPT_CACHE_SIZE:
                    self._prompts.popitem(last=False)
        warning = prompt_length_warning(voice.meta.get("seconds"))
        if warning:
            gr.Warning(warning)
        label = f"uploaded clip ({voice.meta.get('seconds', 0):.1f} s)"
        return dataclasses.replace(voice, transcript=transcript), label

    def _synthesize(self, engine, text: str, progress, **options):
        """(result, request, elapsed) of one request, run by the engine's own checks."""
        start = time.perf_counter()
        request = SynthesisRequest(text=text, check_tags=True, glossary=self.glossary(), **options)
        result = engine.synthesize(request, on_event=_progress_callback(progress))
        if result.audio.size == 0:
            raise InputError("the model produced no speech for this text; try another seed or text")
        return result, request, time.perf_counter() - start

    def _keep(self, audio, rate, mode: str, text: str, plan: ExecutionPlan, seed: int, voice: str, extra: str = "",
              result: SynthesisResult | None = None, request: SynthesisRequest | None = None, saved_voice: str = "",
              model: Path | None = None):
        """A history entry; with the result and request it also stores what replays the clip exactly: the
        prompt features, the controls, the resolved sampler, the model folder and the glossary in force."""
        replay = {}
        if result is not None and request is not None:
            replay = {"sampler": result.sampler, "voice_name": saved_voice, "controls": request.controls(),
                      "prompt": request.voice, "model": str(model) if model else None,
                      "glossary": request.glossary.to_json() if request.glossary else ""}
        clip = self.history.add(audio, rate, mode=mode, text=text, backend=str(plan), seed=seed, voice=voice,
                                extra=extra, **replay)
        release_freed_memory()   # the request's temporaries are gone by now
        return clip

    @staticmethod
    def _summary(mode: str, seconds: float, elapsed: float, spec: str, seed: int, voice: str, info=None,
                 extra: str = "") -> str:
        lines = [f"**{mode}** · {seconds:.2f} s of audio in {elapsed:.2f} s (RTF {elapsed / max(seconds, 1e-9):.2f})",
                 f"backend `{spec}` · seed {seed} · voice: {voice}"]
        if info is not None and len(info.segments) > 1:
            lines.append(f"{len(info.segments)} sentences, {sum(info.tokens)} speech tokens, joins: {info.join}")
        if extra:
            lines.append(extra)
        return "  \n".join(lines)

    # ------------------------------------------------------------------ synthesis endpoints

    @user_errors
    def zero_shot(self, text: str, prompt_audio: str | None = None, transcript: str = "", saved_voice: str = "",
                  seed: int = 0, speed: float = 1.0, stream: bool = False, join: str = "none", join_ms: float = 40,
                  backend: str = "torch", precision: str = "fp32", stages: str = "", model_dir: str = "",
                  first_chunk_tokens: float | None = 0, progress=gr.Progress()):
        """Yields (live chunk or None, finished clip or None, summary); streaming fills the live player first.
        `first_chunk_tokens` (streaming only; 0 or empty: the official schedule) is the request's option."""
        model, text, seed = self._checked(model_dir, text, seed)
        spec = backend_spec(backend, precision, stages, self.settings.device)
        progress(0, desc="loading the model")
        with self.cache.use(model, spec) as engine:
            voice, label = self._voice(engine, prompt_audio, saved_voice, transcript)
            if not stream:
                result, request, elapsed = self._synthesize(engine, text, progress, voice=voice,
                                                            prompt_text=transcript, seed=seed, speed=float(speed),
                                                            join=join, join_ms=float(join_ms))
                audio, mode = result.audio, result.mode.replace("_", "-")
                self._keep(audio, engine.sample_rate, mode, text, spec, seed, label, result=result, request=request,
                           saved_voice=saved_voice, model=model)
                yield None, to_output(audio, engine.sample_rate), self._summary(
                    mode, len(audio) / engine.sample_rate, elapsed, spec, seed, label, result.info)
                return
            start, first, chunks = time.perf_counter(), None, []
            # speed goes along so that the engine refuses a speed change while streaming, as the official model does.
            request = SynthesisRequest(text=text, voice=voice, prompt_text=transcript, seed=seed, stream=True,
                                       speed=float(speed), join=join, join_ms=float(join_ms), check_tags=True,
                                       glossary=self.glossary(),
                                       first_chunk_tokens=_first_chunk(first_chunk_tokens))
            stream_chunks = engine.stream(request, on_event=_progress_callback(progress))
            for chunk in stream_chunks:
                first = first if first is not None else time.perf_counter() - start
                chunks.append(chunk)
                # Without ffmpeg the live player cannot take chunks, so it gets the clip so far instead.
                live = chunk if self.stream_player else np.concatenate(chunks)
                status = f"streaming: chunk {len(chunks)}, first audio after {first:.2f} s"
                yield to_output(live, engine.sample_rate), None, status
            if not chunks:
                raise InputError("the model produced no speech for this text; try another seed or text")
            audio, mode = np.concatenate(chunks), stream_chunks.result.mode.replace("_", "-")
            self._keep(audio, engine.sample_rate, mode + " (stream)", text, spec, seed, label,
                       result=stream_chunks.result, request=request, saved_voice=saved_voice, model=model)
            yield None, to_output(audio, engine.sample_rate), self._summary(
                mode + " (streamed)", len(audio) / engine.sample_rate, time.perf_counter() - start, spec, seed,
                label, extra=f"{len(chunks)} chunks, first audio after {first:.2f} s")

    @user_errors
    def instruct(self, text: str, instruction: str, prompt_audio: str | None = None, saved_voice: str = "",
                 seed: int = 0, join: str = "none", join_ms: float = 40, backend: str = "torch",
                 precision: str = "fp32", stages: str = "", model_dir: str = "", progress=gr.Progress()):
        model, text, seed = self._checked(model_dir, text, seed)
        spec = backend_spec(backend, precision, stages, self.settings.device)
        if not (instruction or "").strip():
            raise InputError("the instruction is empty: describe how to speak, or pick a preset")
        progress(0, desc="loading the model")
        with self.cache.use(model, spec) as engine:
            voice, label = self._voice(engine, prompt_audio, saved_voice, "")
            result, request, elapsed = self._synthesize(engine, text, progress, voice=voice, instruct=instruction,
                                                        seed=seed, join=join, join_ms=float(join_ms))
            audio, info = result.audio, result.info
            self._keep(audio, engine.sample_rate, "instruct", text, spec, seed, label, extra=instruction,
                       result=result, request=request, saved_voice=saved_voice, model=model)
            return to_output(audio, engine.sample_rate), self._summary(
                "instruct", len(audio) / engine.sample_rate, elapsed, spec, seed, label, info,
                extra=f"instruction: {instruction}")

    @user_errors
    def mix(self, text: str, prompt_audio: str | None = None, transcript: str = "", saved_voice: str = "",
            emotion_audio: str | None = None, emotion_transcript: str = "", emotion_voice: str = "",
            weight: float = 0.5, seed: int = 0, backend: str = "torch", precision: str = "fp32", stages: str = "",
            model_dir: str = "", progress=gr.Progress()):
        model, text, seed = self._checked(model_dir, text, seed)
        spec = backend_spec(backend, precision, stages, self.settings.device)
        weight = float(weight)
        if not 0.0 <= weight <= 1.0:
            raise InputError(f"the emotion weight {weight} is outside 0 .. 1")
        progress(0, desc="loading the model")
        with self.cache.use(model, spec) as engine:
            timbre, timbre_label = self._voice(engine, prompt_audio, saved_voice, transcript,
                                               what="timbre clip (the voice panel)")
            emotion, emotion_label = self._voice(engine, emotion_audio, emotion_voice, emotion_transcript,
                                                 what="emotion clip")
            result, _, elapsed = self._synthesize(engine, text, progress, voice=timbre, emotion=emotion, mix=weight,
                                                  prompt_text=transcript, seed=seed)
            audio, info = result.audio, result.info
            label = f"timbre: {timbre_label}; emotion: {emotion_label}"
            self._keep(audio, engine.sample_rate, "mix", text, spec, seed, label, extra=f"weight {weight:.2f}")
            return to_output(audio, engine.sample_rate), self._summary(
                "emotion/timbre mix", len(audio) / engine.sample_rate, elapsed, spec, seed, label, info,
                extra=f"emotion weight {weight:.2f}")

    @user_errors
    def duration(self, text: str, prompt_audio: str | None = None, transcript: str = "", saved_voice: str = "",
                 target: str = "seconds", seconds: float = 5.0, speed: float = 1.0, method: str = "tokens",
                 seed: int = 0, backend: str = "torch", precision: str = "fp32", stages: str = "",
                 model_dir: str = "", progress=gr.Progress()):
        model, text, seed = self._checked(model_dir, text, seed)
        spec = backend_spec(backend, precision, stages, self.settings.device)
        if target not in ("seconds", "speed"):
            raise InputError("target must be 'seconds' (exact length) or 'speed' (a speed ratio)")
        control = ({"duration": float(seconds), "duration_method": method} if target == "seconds"
                   else {"speed": float(speed)})
        progress(0, desc="loading the model")
        with self.cache.use(model, spec) as engine:
            voice, label = self._voice(engine, prompt_audio, saved_voice, transcript)
            result, request, elapsed = self._synthesize(engine, text, progress, voice=voice, prompt_text=transcript,
                                                        seed=seed, **control)
            audio, info = result.audio, result.info
            achieved = len(audio) / engine.sample_rate
            asked = (f"target {float(seconds):.2f} s ({method})" if target == "seconds"
                     else f"speed ×{float(speed):.2f}")
            outcome = f"{asked} → achieved **{achieved:.3f} s** (natural length ≈ {info.estimated_seconds:.2f} s)"
            self._keep(audio, engine.sample_rate, "duration", text, spec, seed, label, extra=asked, result=result,
                       request=request, saved_voice=saved_voice, model=model)
            return to_output(audio, engine.sample_rate), achieved, self._summary(
                "duration", achieved, elapsed, spec, seed, label, info, extra=outcome)

    @user_errors
    def ab(self, text: str, prompt_audio: str | None = None, transcript: str = "", saved_voice: str = "",
           seed: int = 0, backend_a: str = "torch", backend_b: str = "onnx", parity: bool = True,
           model_dir: str = "", progress=gr.Progress()):
        """The same request on two backends from the same seed, plus stage-by-stage parity figures."""
        model, text, seed = self._checked(model_dir, text, seed)
        specs = [checked_spec((spec or "torch").strip(), f"backend {side}", self.settings.device)
                 for side, spec in (("A", backend_a), ("B", backend_b))]
        progress(0, desc=f"loading {specs[0]} and {specs[1]}")
        entries = [self.cache.get(model, spec) for spec in specs]
        locks = list({id(lock): lock for _, lock in entries}.values())
        with contextlib.ExitStack() as held:
            for lock in sorted(locks, key=id):  # one global order, so two A/B requests cannot deadlock
                held.enter_context(lock)
            engine_a, engine_b = entries[0][0], entries[1][0]
            voice, label = self._voice(engine_a, prompt_audio, saved_voice, transcript)
            outputs, rows = [], []
            for side, spec, engine in (("A", specs[0], engine_a), ("B", specs[1], engine_b)):
                progress((0, 2 if parity else 1), desc=f"{side}: {spec}")
                result, _, elapsed = self._synthesize(engine, text, lambda *a, **k: None, voice=voice,
                                                      prompt_text=transcript, seed=seed)
                audio = result.audio
                seconds = len(audio) / engine.sample_rate
                self._keep(audio, engine.sample_rate, f"A/B {side}", text, spec, seed, label)
                outputs.append(to_output(audio, engine.sample_rate))
                rows.append(f"| {side} | `{spec}` | {seconds:.2f} s | {elapsed:.2f} s | {elapsed / seconds:.2f} |")
            report = "\n".join(["| | backend | audio | synth time | RTF |", "|---|---|---|---|---|", *rows])
            if parity:
                progress((1, 2), desc="parity, stage by stage")
                report += "\n\n" + self._parity(engine_a, engine_b, voice, text, seed)
        return outputs[0], outputs[1], report

    @staticmethod
    def _parity(engine_a, engine_b, voice, text: str, seed: int) -> str:
        from ..tools.parity import compare_engines, format_report

        report = compare_engines(engine_a, engine_b, voice, text=text, seed=seed)
        return ("Parity, A as reference (same seed, tokens, noise and prompt; per-stage times in seconds):\n\n"
                f"```\n{format_report(report)}\n```")

    @user_errors
    def convert(self, source_audio: str | None = None, prompt_audio: str | None = None, saved_voice: str = "",
                seed: int = 0, backend: str = "torch", precision: str = "fp32", stages: str = "", model_dir: str = "",
                backend_b: str = "", progress=gr.Progress()):
        """Voice conversion: the source clip re-spoken in the voice panel's voice; with backend_b also on B.
        Returns (A's clip, B's clip or None, summary). An uploaded target clip goes to the engine as is (untrimmed,
        as the official conversion uses it), a saved voice as saved."""
        model, seed = self.model_folder(model_dir), parse_seed(seed)
        specs = [backend_spec(backend, precision, stages, self.settings.device)]
        if backend_b and backend_b.strip():
            specs.append(checked_spec(backend_b.strip(), "backend B", self.settings.device))
        source = read_upload(source_audio, "source audio")
        if source is None:
            raise InputError("no source audio: upload or record the speech to convert")
        target = None if saved_voice else read_upload(prompt_audio, "target voice clip")
        if not saved_voice and target is None:
            raise InputError("no target voice: upload or record a clip in the voice panel, or pick a saved voice")
        name = Path(source_audio).name
        label = saved_voice or "uploaded clip"
        outputs, rows = [], []
        for side, spec in zip("AB", specs):
            progress(0, desc=f"{side}: loading {spec}")
            with self.cache.use(model, spec) as engine:
                voice = engine.voice_store(self.settings.voices_dir).load(saved_voice) if saved_voice else None
                start = time.perf_counter()
                result = engine.convert(source, voice=voice, prompt_wav=target, seed=seed,
                                        on_event=_progress_callback(progress))
                elapsed = time.perf_counter() - start
                self._keep(result.audio, engine.sample_rate, "vc", f"voice conversion of {name}", spec, seed, label)
                outputs.append(to_output(result.audio, engine.sample_rate))
                rtf = elapsed / max(result.seconds, 1e-9)
                rows.append(f"| {side} | `{spec}` | {result.seconds:.2f} s | {len(result.info.segments)} | "
                            f"{sum(result.info.tokens)} | {elapsed:.2f} s | {rtf:.2f} |")
        report = "\n".join([f"**voice conversion** · seed {seed} · voice: {label}", "",
                            "| | backend | audio | segments | speech tokens | time | RTF |",
                            "|---|---|---|---|---|---|---|", *rows])
        return outputs[0], outputs[1] if len(outputs) > 1 else None, report

    # ------------------------------------------------------------------ saved voices

    def voice_names(self) -> list[str]:
        return VoiceStore(self.settings.voices_dir).names()

    @user_errors
    def save_voice(self, name: str, prompt_audio: str | None = None, transcript: str = "", backend: str = "torch",
                   precision: str = "fp32", stages: str = "", model_dir: str = "", overwrite: bool = False) -> str:
        name = validate_name((name or "").strip())
        model, spec = self.model_folder(model_dir), backend_spec(backend, precision, stages, self.settings.device)
        if not prompt_audio:
            raise InputError("no prompt audio to save: upload or record a clip first")
        with self.cache.use(model, spec) as engine:
            voice, _ = self._voice(engine, prompt_audio, "", transcript)
            engine.voice_store(self.settings.voices_dir).save(name, voice, overwrite=bool(overwrite))
        kind = "with transcript" if transcript.strip() else "no transcript: cross-lingual"
        return f"saved voice **{name}** ({voice.meta.get('seconds', 0):.1f} s, {kind})"

    @user_errors
    def voice_transcript(self, name: str) -> str:
        if not name:
            return ""
        return VoiceStore(self.settings.voices_dir).load(name).transcript

    @user_errors
    def delete_voice(self, name: str) -> str:
        if not name:
            raise InputError("pick a saved voice to delete")
        VoiceStore(self.settings.voices_dir).delete(name)
        return f"deleted voice **{name}**"

    # ------------------------------------------------------------------ history

    def history_rows(self) -> list[list]:
        return [[c.id, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(c.created)), c.mode, c.seconds, c.text,
                 c.backend, c.seed, c.voice] for c in self.history.clips()]

    @user_errors
    def history_clip(self, clip_id: str) -> tuple[str | None, str | None]:
        """(player path, download path) of one clip; only ids listed in the history are served."""
        if not (clip_id or "").strip():
            return None, None
        clip = self.history.get(clip_id.strip())
        if clip is None:
            raise InputError(f"no clip {clip_id!r} in the history")
        path = str(self.history.wav_path(clip.id))
        return path, path

    def replay_request(self, clip_id: str) -> tuple[ExecutionPlan, SynthesisRequest]:
        """The plan and request that make a history clip again, bit for bit."""
        return self._replay(clip_id)[1:]

    def _replay(self, clip_id: str):
        """(clip, plan, request) of a history clip that can be made again."""
        clip = self.history.get((clip_id or "").strip())
        if clip is None:
            raise InputError(f"no clip {clip_id!r} in the history")
        if not clip.sampler:
            raise InputError(f"clip {clip.id} ({clip.mode}) cannot be made again: only zero-shot, instruct and "
                             "duration clips keep what a replay needs")
        voice = self.history.prompt(clip)
        if voice is None:
            if not clip.voice_name:
                raise InputError(f"clip {clip.id} was made from an uploaded clip before the history kept prompts; "
                                 "it cannot be made again")
            # Entries written before prompts were kept name the saved voice instead.
            voice = VoiceStore(self.settings.voices_dir).load(clip.voice_name)
        controls = dict(clip.controls)
        decode_options = controls.pop("decode_options", {})
        glossary = self.glossary() if clip.glossary is None else (
            Glossary.from_json(clip.glossary, f"clip {clip.id}'s glossary") if clip.glossary else None)
        return clip, checked_spec(clip.backend, f"clip {clip.id}'s backend"), SynthesisRequest(
            text=clip.text, voice=voice, seed=clip.seed, decode_options=decode_options, glossary=glossary,
            **{**controls, "sampler": clip.sampler})

    @user_errors
    def replay_clip(self, clip_id: str, progress=gr.Progress()) -> tuple[str, str]:
        """Makes a history clip again from what it stored; the summary says whether it matched bit for bit."""
        clip, plan, request = self._replay(clip_id)
        model = self.model_folder(clip.model or "")
        progress(0, desc="loading the model")
        with self.cache.use(model, plan) as engine:
            start = time.perf_counter()
            result = engine.synthesize(request, on_event=_progress_callback(progress))
            elapsed = time.perf_counter() - start
        output = to_output(result.audio, engine.sample_rate)
        same = _same_as_stored(output[1], self.history.wav_path(clip.id))
        verdict = ("identical to the stored clip, sample for sample" if same else
                   "differs from the stored clip (another model folder, or a backend that is not deterministic "
                   "on this machine)")
        return output, self._summary(f"{clip.mode} again", len(result.audio) / engine.sample_rate, elapsed, plan,
                                     clip.seed, clip.voice, extra=f"replay of {clip.id}: {verdict}")

    @user_errors
    def delete_clip(self, clip_id: str) -> str:
        if not self.history.delete((clip_id or "").strip()):
            raise InputError(f"no clip {clip_id!r} in the history")
        return f"deleted {clip_id}"
