"""The `batch` command: a JSONL, SRT, WebVTT, text or Markdown file spoken item by item into an output folder,
resumable, with a manifest and (subtitles, text) one assembled track. Exit status 1 when any item failed."""

from __future__ import annotations

import sys
from pathlib import Path

from .cli_args import float_range, folder, output_dir, seed
from .cli_glossary import add_synth_glossary_options, synth_glossary
from .duration import DURATION_METHODS
from .errors import InputError
from .longtext import DEFAULT_JOIN_MS, JOIN_METHODS, MAX_JOIN_MS

EXIT_ITEMS_FAILED = 1


def make_executor(args, job):
    """The executor of this run: sequential on one engine loaded here. (A cluster executor, `batch --ray`, is
    chosen here too: anything with `run(items) -> Iterator[ItemOutcome]`, see dubbing/runner.py.)"""
    from .dubbing import LocalExecutor
    from .scale.batch_ray import ray_executor

    return ray_executor(args, job) or LocalExecutor(job.engine.load())


def _cmd_batch(args) -> int:
    from .cli_controls import _default_dir
    from .dubbing import EngineSpec, JobSettings, plan_job, read_input_file, run_job
    from .dubbing.job import parse_voice_map
    from .dubbing.progress_bar import ProgressBar

    from .scale.batch_ray import check_batch_ray_args

    check_batch_ray_args(args)
    if args.prompt_wav is not None and not args.prompt_wav.is_file():
        raise InputError(f"--prompt-wav {args.prompt_wav}: no such file")
    parsed = read_input_file(args.input)       # a binary or unreadable input fails before any model loads
    engine_spec = EngineSpec(args.model, args.backend, args.device, args.llm)
    voices_dir = args.voices_dir or _default_dir()
    glossary = None
    if not args.no_glossary:
        # The glossary is checked against the model's tokenizer; only the tokenizer is needed for that.
        glossary = synth_glossary(args, _TokenizerView(args.model))
    settings = JobSettings(engine_spec, voices_dir=str(voices_dir), voice=args.voice,
                           prompt_wav=str(args.prompt_wav) if args.prompt_wav else None, prompt_text=args.prompt_text,
                           voice_map=parse_voice_map(args.voice_map), seed=args.seed, join=args.join,
                           join_ms=args.join_ms, duration_method=args.duration_method, glossary=glossary,
                           base_dir=str(args.input.parent))
    job = plan_job(parsed, settings)
    print(f"{args.input.name}: {parsed.kind}, {len(job.items)} item(s) to speak, {len(job.problems)} problem(s)",
          file=sys.stderr)
    report = run_job(job, args.out, make_executor(args, job), resume=not args.no_resume,
                     on_result=ProgressBar().update)
    for line in report.lines():
        print(line, file=sys.stderr)
    print(f"wrote {args.out}: manifest.jsonl, manifest.csv, report.txt, items/"
          + (f", {report.track.name}" if report.track else ""))
    return EXIT_ITEMS_FAILED if report.failed else 0


class _TokenizerView:
    """What synth_glossary needs of an engine (its tokenizer), without loading the weights."""

    def __init__(self, model: Path):
        from .model_files import inspect_model_dir
        from .tokenizer import TextTokenizer

        files = inspect_model_dir(model)
        self.tokenizer = TextTokenizer.from_dir(files.qwen_dir, files.config.tokenizer_version)


def add_batch_command(sub, backend_help: str, device_help: str) -> None:
    from .dubbing.fitting import NOTICEABLE, PACE_RANGE
    from .dubbing.source import MAX_INPUT_BYTES, MAX_ITEMS

    b = sub.add_parser(
        "batch", help="speak a JSONL, SRT/VTT, text or Markdown file item by item (resumable, with a manifest)",
        description=f"INPUT: .jsonl (one request per line), .srt/.vtt (one item per cue, fitted to it), .txt/.md "
                    f"(one item per chapter); at most {MAX_INPUT_BYTES >> 20} MB and {MAX_ITEMS} items. A subtitle "
                    f"cue is spoken in exactly its slot when that is {PACE_RANGE[0]}..{PACE_RANGE[1]}x its natural "
                    f"pace (beyond 1 +- {NOTICEABLE:g} it is reported as squeezed/slowed), else at the nearest of "
                    "those paces (reported as overran/short). A rerun skips finished items. Exit status 1 when any "
                    "item failed; the rest are still made.")
    b.add_argument("input", type=Path, help="the file to speak")
    b.add_argument("--out", required=True, type=output_dir, help="output folder (items/, manifest, track)")
    b.add_argument("--model", required=True, type=Path, help="official model folder")
    b.add_argument("--backend", default="torch", help=backend_help)
    b.add_argument("--device", default="auto", help=device_help)
    b.add_argument("--llm", default="base", choices=["base", "rl"])
    b.add_argument("--voice", default=None, help="a saved voice (see `voices`) speaking every item by default")
    b.add_argument("--prompt-wav", type=Path, default=None, help="or a 3-10 s clip of the default voice")
    b.add_argument("--prompt-text", default=None, help="its transcript (omit for cross-lingual)")
    b.add_argument("--voice-map", action="append", default=[], metavar="SPEAKER=VOICE",
                   help="cues naming SPEAKER (`SPEAKER:` or <v SPEAKER>) spoken by saved voice VOICE; repeatable "
                        "or comma-separated")
    b.add_argument("--voices-dir", type=folder, default=None, help="saved voices folder (default: per-user data)")
    b.add_argument("--seed", type=seed, default=0, help="every item's seed unless its line sets one")
    b.add_argument("--join", default="none", choices=JOIN_METHODS, help="how sentences (and parts of a long "
                                                                       "chapter) meet")
    b.add_argument("--join-ms", type=float_range(0, MAX_JOIN_MS), default=DEFAULT_JOIN_MS, help=f"0 .. {MAX_JOIN_MS:g}")
    b.add_argument("--duration-method", default="tokens", choices=DURATION_METHODS,
                   help="how cues and `duration` lines get their exact length")
    b.add_argument("--no-resume", action="store_true", help="synthesize every item again")
    from .scale.batch_ray import add_batch_ray_arguments

    add_batch_ray_arguments(b)
    add_synth_glossary_options(b)
    b.set_defaults(func=_cmd_batch)


__all__ = ["add_batch_command"]
