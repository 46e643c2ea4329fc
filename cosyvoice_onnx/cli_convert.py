"""The `convert` command: voice conversion of a recording into a prompt clip's or a saved voice's voice."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from .cli_args import float_range, folder, output_file, seed
from .errors import CosyVoiceError, InputError


def _cmd_convert(args) -> int:
    from .audio import write_wav
    from .cli_controls import _default_dir
    from .engine import CosyVoice
    from .plan import ExecutionPlan
    from .progress import ProgressEvent

    if bool(args.voice) == bool(args.prompt_wav):
        raise InputError("give the target voice as either --prompt-wav or --voice (one of them)")
    if not args.source_wav.is_file():
        raise InputError(f"source audio file '{args.source_wav}' not found")
    plan = ExecutionPlan.parse(args.backend, device=args.device)
    start = time.perf_counter()
    tts = CosyVoice(args.model, backend=plan)
    loaded = time.perf_counter()
    voice = tts.voice_store(args.voices_dir or _default_dir()).load(args.voice) if args.voice else None

    def show(event: ProgressEvent) -> None:
        print(event.message, file=sys.stderr)

    result = tts.convert(args.source_wav, voice=voice, prompt_wav=args.prompt_wav, stream=args.stream,
                         seed=args.seed, speed=args.speed, on_event=show)
    if args.stream:
        for count, chunk in enumerate(result, 1):
            print(f"chunk {count}: {len(chunk) / tts.sample_rate:.2f} s", file=sys.stderr)
        result = result.result
    done = time.perf_counter()
    if result.audio.size == 0:
        raise CosyVoiceError("the conversion produced no audio")
    write_wav(args.out, result.audio, tts.sample_rate)
    seconds = result.seconds
    print(f"wrote {args.out}: {seconds:.2f} s of audio at {tts.sample_rate} Hz from {len(result.info.segments)} "
          f"segment(s), {sum(result.info.tokens)} speech tokens (load {loaded - start:.1f} s, convert "
          f"{done - loaded:.1f} s, RTF {(done - loaded) / max(seconds, 1e-9):.2f})")
    return 0


def add_convert_command(sub, backend_help: str, device_help: str) -> None:
    from .conversion import MAX_SEGMENT_SECONDS, MAX_SOURCE_SECONDS, MIN_SOURCE_SECONDS

    c = sub.add_parser("convert", help="voice conversion: re-speak a recording in another voice (no LM)",
                       description=f"The source is {MIN_SOURCE_SECONDS:g} .. {MAX_SOURCE_SECONDS:g} s long (any rate "
                                   f">= 16 kHz, resampled); longer than {MAX_SEGMENT_SECONDS:g} s it is cut at "
                                   "pauses and converted in segments.")
    c.add_argument("--model", required=True, type=Path, help="official model folder")
    c.add_argument("--source-wav", required=True, type=Path, help="the recording to re-speak")
    c.add_argument("--prompt-wav", type=Path, default=None, help="3-10 s clip of the target voice, or use --voice")
    c.add_argument("--voice", default=None, help="a saved voice (see `voices`) as the target voice")
    c.add_argument("--voices-dir", type=folder, default=None, help="saved voices folder (default: per-user data)")
    c.add_argument("--out", required=True, type=output_file)
    c.add_argument("--backend", default="torch", help=backend_help)
    c.add_argument("--device", default="auto", help=device_help)
    c.add_argument("--seed", type=seed, default=0, help="CosyVoice2's vocoder noise (CosyVoice3's is fixed)")
    c.add_argument("--speed", type=float_range(0.5, 2.0), default=1.0, help="0.5 .. 2 (non-streaming)")
    c.add_argument("--stream", action="store_true", help="convert in streaming chunks (the synthesis schedule)")
    c.set_defaults(func=_cmd_convert)
