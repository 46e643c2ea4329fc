"""Command-line side of the pronunciation glossary: `glossary list|add|remove|import|export|apply` and the
glossary `synth` uses (--glossary FILE; by default the voices folder's glossary.json when it exists)."""

from __future__ import annotations

import sys
from pathlib import Path

from .cli_args import folder, output_file_problem
from .errors import InputError

MAX_CSV_BYTES = 2_000_000


def _default_file(voices_dir: Path | None) -> Path:
    from .glossary import glossary_path
    from .voices import default_voices_dir

    return glossary_path(voices_dir or default_voices_dir())


def synth_glossary(args, tts):
    """The Glossary for `synth`: --glossary FILE (must exist), none with --no-glossary, else the voices folder's
    glossary.json if there is one; checked against the model's tokens before any work starts."""
    from .glossary import Glossary

    if args.no_glossary:
        return None
    path = args.glossary
    if path is not None and not path.is_file():
        raise InputError(f"--glossary {path}: no such file (create one with `cosyvoice-onnx glossary add` or "
                         "`glossary import`)")
    path = path or _default_file(args.voices_dir)
    glossary = Glossary.load(path)
    try:
        glossary.check_tokenizer(tts.tokenizer.added_tokens)
    except InputError as exc:
        raise InputError(f"{exc} (glossary {path}; --no-glossary skips it)") from None
    return glossary if len(glossary) else None


def add_synth_glossary_options(s) -> None:
    s.add_argument("--glossary", type=Path, default=None,
                   help="pronunciation glossary (JSON; default: glossary.json in the voices folder, if present)")
    s.add_argument("--no-glossary", action="store_true", help="use no glossary, not even the default one")


def _cmd_glossary(args) -> int:
    from .glossary import Glossary, GlossaryEntry

    path = args.file or _default_file(args.voices_dir)
    glossary = Glossary.load(path)
    if args.action == "list":
        for e in glossary.entries:
            flags = ",".join(f for f, on in (("case", e.case_sensitive), ("word", e.whole_word)) if on)
            print(f"{e.term}\t{e.kind}\t{e.reading}\t{e.tokens}" + (f"\t{flags}" if flags else ""))
        print(f"{len(glossary)} entr{'y' if len(glossary) == 1 else 'ies'} in {path}", file=sys.stderr)
        return 0
    if args.action == "apply":
        print(glossary.apply(_required(args.term, "the text to apply the glossary to")))
        return 0
    if args.action == "export":
        if args.csv is None:
            sys.stdout.write(glossary.to_csv())
        else:
            problem = output_file_problem(args.csv)
            if problem:
                raise InputError(f"--csv: {problem}")
            args.csv.write_text(glossary.to_csv(), encoding="utf-8")
            print(f"wrote {len(glossary)} entries to {args.csv}", file=sys.stderr)
        return 0
    if args.action == "add":
        entry = GlossaryEntry(_required(args.term, "the term"), _required(args.reading, "--reading"), args.kind,
                              case_sensitive=args.case_sensitive, whole_word=args.whole_word)
        glossary = glossary.with_entry(entry)
        message = f"{entry.term} -> {entry.tokens}"
    elif args.action == "remove":
        glossary = glossary.without(_required(args.term, "the term"))
        message = f"removed {args.term}"
    else:  # import: the whole CSV is checked before the stored file is replaced
        source = _required(args.csv, "--csv FILE")
        if not source.is_file():
            raise InputError(f"--csv {source}: no such file")
        if source.stat().st_size > MAX_CSV_BYTES:
            raise InputError(f"--csv {source}: larger than {MAX_CSV_BYTES // 1_000_000} MB; not a glossary")
        imported = Glossary.from_csv(source.read_text(encoding="utf-8-sig"), str(source))
        glossary = imported if args.replace else glossary.merged(imported)
        message = f"imported {len(imported)} entries"
    glossary.save(path)
    print(f"{message}; {len(glossary)} entries in {path}")
    return 0


def _required(value, what: str):
    if not value:
        raise InputError(f"give {what}")
    return value


def add_glossary_command(sub) -> None:
    from .glossary import KINDS

    g = sub.add_parser("glossary", help="pronunciation glossary: term -> reading fixes applied to every synthesis")
    g.add_argument("action", choices=["list", "add", "remove", "import", "export", "apply"])
    g.add_argument("term", nargs="?", default=None, help="the term (add, remove) or a text (apply)")
    g.add_argument("--reading", default=None, help="pinyin per character (chóng qìng / chong2 qing4), ARPAbet "
                                                  "(HH AH0 L OW1) or a respelling (add)")
    g.add_argument("--kind", default="respell", choices=KINDS, help="what the reading is (add; default respell)")
    g.add_argument("--case-sensitive", action="store_true", help="match the term's exact case (add)")
    g.add_argument("--whole-word", action="store_true", help="match only as a whole word (add)")
    g.add_argument("--csv", type=Path, default=None, help="CSV file (import; export: default stdout); columns "
                                                           "term, reading, kind, case_sensitive, whole_word")
    g.add_argument("--replace", action="store_true", help="import: replace the glossary instead of merging")
    g.add_argument("--file", type=Path, default=None,
                   help="glossary JSON (default: glossary.json in the voices folder)")
    g.add_argument("--voices-dir", type=folder, default=None, help="default: per-user data folder")
    g.set_defaults(func=_cmd_glossary)


__all__ = ["add_glossary_command", "add_synth_glossary_options", "synth_glossary"]
