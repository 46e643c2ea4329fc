"""Command-line side of the engine controls: synth options, and the `voices` and `pronounce` commands."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from .cli_args import float_range, folder
from .cli_glossary import add_synth_glossary_options, synth_glossary
from .duration import DURATION_METHODS
from .errors import InputError
from .longtext import DEFAULT_JOIN_MS, JOIN_METHODS, MAX_JOIN_MS


def add_synth_controls(s: argparse.ArgumentParser) -> None:
    s.add_argument("--duration", type=float_range(0, math.inf, above_low=True), default=None, help="exact output length in seconds (non-streaming)")
    s.add_argument("--duration-method", default="tokens", choices=DURATION_METHODS,
                   help="tokens: the LM speaks exactly round(S*25) tokens; stretch: natural pace, mel resampled")
    s.add_argument("--voice", default=None, help="a saved voice (see `voices`) instead of --prompt-wav")
    s.add_argument("--voices-dir", type=folder, default=None, help="saved voices folder (default: per-user data)")
    s.add_argument("--emotion-wav", type=Path, default=None,
                   help="clip whose delivery the LM follows; the timbre stays --timbre-wav/--prompt-wav's")
    s.add_argument("--emotion-text", default=None, help="transcript of --emotion-wav")
    s.add_argument("--emotion-voice", default=None, help="a saved voice as the emotion clip")
    s.add_argument("--mix", type=float_range(0, 1), default=1.0,
                   help="0 = LM prompt all timbre clip, 1 = all emotion clip; between: spliced (default 1)")
    s.add_argument("--join", default="none", choices=JOIN_METHODS, help="how sentences meet (default: as official)")
    s.add_argument("--join-ms", type=float_range(0, MAX_JOIN_MS), default=DEFAULT_JOIN_MS,
                   help=f"cross-fade or silence length (0 .. {MAX_JOIN_MS:g})")
    s.add_argument("--reading", action="append", default=[], metavar="INDEX=PINYIN",
                   help="read the Han character at INDEX of --text as PINYIN (e.g. 3=jǐ); repeatable")
    s.add_argument("--check-tags", action="store_true", help="refuse unknown [tags] instead of reading them aloud")
    add_synth_glossary_options(s)


def synth_controls(args, tts) -> dict:
    """synthesize() keyword arguments from the parsed options (text included, with readings applied)."""
    from .pronunciation import apply_readings

    store = tts.voice_store(args.voices_dir or _default_dir())
    if args.voice and args.prompt_wav:
        raise InputError("give either --voice or --prompt-wav/--timbre-wav, not both")
    if args.emotion_voice and args.emotion_wav:
        raise InputError("give either --emotion-voice or --emotion-wav, not both")
    emotion = None
    if args.emotion_wav:
        emotion = tts.prompt_from_audio(args.emotion_wav, args.emotion_text or "")
    elif args.emotion_voice:
        emotion = store.load(args.emotion_voice)
    return {
        "text": apply_readings(args.text, _parse_readings(args.reading)) if args.reading else args.text,
        "voice": store.load(args.voice) if args.voice else None,
        "emotion": emotion, "mix": args.mix, "duration": args.duration, "duration_method": args.duration_method,
        "join": args.join, "join_ms": args.join_ms, "check_tags": args.check_tags, "return_info": not args.stream,
        "glossary": synth_glossary(args, tts),
    }


def describe(info) -> str:
    line = f"{len(info.segments)} segment(s), {sum(info.tokens)} speech tokens, {info.seconds:.3f} s"
    if info.target_seconds is not None:
        line += f" (target {info.target_seconds:.3f} s, {info.duration_method})"
    return line


def _parse_readings(items: list[str]) -> dict[int, str]:
    readings = {}
    for item in items:
        index, sep, reading = item.partition("=")
        if not sep or not index.strip().isdigit():
            raise InputError(f"--reading {item!r}: write INDEX=PINYIN, e.g. 3=jǐ")
        readings[int(index)] = reading
    return readings


def _default_dir() -> Path:
    from .voices import default_voices_dir

    return default_voices_dir()


# ---------------------------------------------------------------- voices


def _frontend_for(model: Path):
    """The frontend and fingerprint of a model folder, without loading the LM/flow/vocoder weights."""
    from .frontend import Frontend
    from .model_files import inspect_model_dir
    from .tokenizer import TextTokenizer
    from .voices import model_fingerprint

    files = inspect_model_dir(model)
    tokenizer = TextTokenizer.from_dir(files.qwen_dir, files.config.tokenizer_version)
    frontend = Frontend(files.config, tokenizer, files.speech_tokenizer, files.campplus)
    return files, frontend, model_fingerprint(files.campplus, files.speech_tokenizer)


def _cmd_voices(args) -> int:
    from .voices import VoiceStore, model_fingerprint

    root = args.voices_dir or _default_dir()
    if args.action == "list":
        fingerprint = None
        if args.model:
            from .model_files import inspect_model_dir

            files = inspect_model_dir(args.model)
            fingerprint = model_fingerprint(files.campplus, files.speech_tokenizer)
        voices = VoiceStore(root, fingerprint).list()
        for v in voices:
            flag = {None: "", True: "", False: "  [other model]"}[v.compatible]
            seconds = f"{v.seconds:.1f} s" if v.seconds else "?"
            print(f"{v.name}\t{seconds}\t{v.transcript[:60]}{flag}")
        print(f"{len(voices)} voice(s) in {root}", file=sys.stderr)
        return 0
    if args.action == "delete":
        VoiceStore(root).delete(_required(args.name, "NAME"))
        print(f"deleted {args.name}")
        return 0
    files, frontend, fingerprint = _frontend_for(_required(args.model, "--model"))
    store = VoiceStore(root, fingerprint)
    if args.action == "save":
        voice = frontend.extract_prompt(_required(args.prompt_wav, "--prompt-wav"), args.prompt_text or "")
        store.save(_required(args.name, "NAME"), voice, overwrite=args.overwrite)
        print(f"saved {args.name} to {root}")
        return 0
    source = args.spk2info or files.spk2info
    if source is None:
        raise InputError(f"{files.root} has no spk2info.pt; give --spk2info PATH")
    for name, outcome in store.import_spk2info(source, frontend.tokenizer, overwrite=args.overwrite).items():
        print(f"{name}: {outcome}")
    return 0


def _required(value, what: str):
    if value is None:
        raise InputError(f"this action needs {what}")
    return value


def add_voices_command(sub) -> None:
    v = sub.add_parser("voices", help="list, save, delete or import saved voices")
    v.add_argument("action", choices=["list", "save", "delete", "import"])
    v.add_argument("name", nargs="?", default=None, help="voice name (save, delete)")
    v.add_argument("--voices-dir", type=folder, default=None, help="default: per-user data folder")
    v.add_argument("--model", type=Path, default=None, help="model folder (save, import; list: flag other models)")
    v.add_argument("--prompt-wav", type=Path, default=None, help="clip to save (save)")
    v.add_argument("--prompt-text", default=None, help="its transcript (save)")
    v.add_argument("--spk2info", type=Path, default=None, help="official speaker table (import; default MODEL's)")
    v.add_argument("--overwrite", action="store_true")
    v.set_defaults(func=_cmd_voices)


# ---------------------------------------------------------------- pronunciation


def _cmd_pronounce(args) -> int:
    from . import pronunciation

    if args.pinyin:
        print(pronunciation.pinyin_tokens(args.pinyin))
    if args.arpabet:
        print(pronunciation.arpabet_tokens(args.arpabet))
    if args.text:
        for p in pronunciation.polyphones(args.text):
            choices = ", ".join(f"{r} {pronunciation.pinyin_tokens(r)}" for r in p.readings)
            print(f"{p.index}\t{p.char}\t{choices}")
    if not (args.pinyin or args.arpabet or args.text):
        raise InputError("give --text, --pinyin or --arpabet")
    return 0


def add_pronounce_command(sub) -> None:
    p = sub.add_parser("pronounce", help="polyphonic characters of a text; pinyin / ARPAbet inpainting tokens")
    p.add_argument("--text", default=None, help="list its polyphonic characters: INDEX, char, readings (first = "
                                                "pypinyin's choice here); use with synth --reading INDEX=PINYIN")
    p.add_argument("--pinyin", default=None, help="one syllable, e.g. jǐ or ji3 -> [j][ǐ]")
    p.add_argument("--arpabet", default=None, help="CMU phones, e.g. 'HH AH0 L OW1' -> [HH][AH0][L][OW1]")
    p.set_defaults(func=_cmd_pronounce)
