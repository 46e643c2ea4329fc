"""Command-line interface: `cosyvoice-onnx <command>`; errors print one clear line and exit non-zero."""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path


from .cli_args import check_output_dir, float_range, int_range, output_dir, output_file, seed
from .cli_batch import add_batch_command
from .cli_bench_batch import add_bench_batch_command
from .cli_convert import add_convert_command
from .cli_glossary import add_glossary_command
from .cli_controls import add_pronounce_command, add_synth_controls, add_voices_command, describe, synth_controls
from .errors import CosyVoiceError, InputError, one_line
from .int8 import DEFAULT_WEIGHT_BITS, WEIGHT_BITS, full_range_notice, weight_bits_of
from .plan import PRECISIONS, SYNTAX as PLAN_SYNTAX


MAX_PARITY_TOKENS = 5000  # a parity run decodes at most this many LM steps per backend

DEVICE_HELP = "auto (a GPU where the backend sees one), cpu, cuda or cuda:N"


def _cmd_make_tiny_model(args) -> int:
    from .tools.tiny import make_tiny_model

    out = make_tiny_model(args.out, version=args.version, seed=args.seed)
    print(f"wrote tiny CosyVoice{args.version} model folder: {out}")
    return 0


def _cmd_make_test_clip(args) -> int:
    from .audio import write_wav
    from .tools.tiny import synthetic_voice

    write_wav(args.out, synthetic_voice(args.seconds, 24000, seed=args.seed), 24000)
    print(f"wrote {args.out}: {args.seconds:.1f} s synthetic voice-like clip (for trying the pipeline, not a real voice)")
    return 0


def _cmd_synth(args) -> int:
    from .audio import write_wav
    from .releases import detect_version
    from .engine import CosyVoice
    from .plan import ExecutionPlan
    from .progress import ProgressEvent
    from .request import SynthesisRequest
    from .prompts import preset_instruction

    plan = ExecutionPlan.parse(args.backend, device=args.device)
    instruct = args.instruct
    if args.instruct_preset:
        # Presets differ per release; checked before the weights load so a typo fails fast.
        instruct = preset_instruction(args.instruct_preset, detect_version(args.model))
    start = time.perf_counter()
    tts = CosyVoice(args.model, backend=plan, llm_variant=args.llm, stream_overlap=args.overlap)
    loaded = time.perf_counter()
    controls = synth_controls(args, tts)
    controls.pop("return_info", None)
    request = SynthesisRequest(text=controls.pop("text"), prompt_wav=args.prompt_wav, prompt_text=args.prompt_text,
                               instruct=instruct, seed=args.seed, speed=args.speed, stream=args.stream,
                               first_chunk_tokens=args.first_chunk_tokens, **controls)

    def show(event: ProgressEvent) -> None:
        print(event.message, file=sys.stderr)

    if args.stream:
        stream = tts.stream(request, on_event=show)
        for count, chunk in enumerate(stream, 1):
            if count == 1:
                print(f"first audio after {time.perf_counter() - loaded:.2f} s", file=sys.stderr)
            print(f"chunk {count}: {len(chunk) / tts.sample_rate:.2f} s", file=sys.stderr)
        result = stream.result
    else:
        result = tts.synthesize(request, on_event=show)
    print(describe(result.info), file=sys.stderr)
    audio = result.audio
    done = time.perf_counter()
    if audio.size == 0:
        raise CosyVoiceError("the model produced no speech tokens for this text; try another seed or text")
    write_wav(args.out, audio, tts.sample_rate)
    seconds = len(audio) / tts.sample_rate
    print(f"wrote {args.out}: {seconds:.2f} s of audio at {tts.sample_rate} Hz "
          f"(load {loaded - start:.1f} s, synth {done - loaded:.1f} s, RTF {(done - loaded) / max(seconds, 1e-9):.2f})")
    return 0


def _cmd_download(args) -> int:
    from .download import download

    path = download(args.name, args.out, source=args.source)
    print(f"downloaded to {path}")
    return 0


def _cmd_info(args) -> int:
    from .config import flow_summary
    from .manifest import export_status
    from .model_files import inspect_model_dir
    from .onnx_backend.loader import default_export_dir

    files = inspect_model_dir(args.model)
    cfg = files.config
    print(f"model folder: {files.root}")
    print(f"version: CosyVoice{cfg.version} ({cfg.yaml_name})")
    print(f"LM: hidden {cfg.llm.hidden_size}, {cfg.llm.num_layers} layers, {cfg.llm.num_heads} heads "
          f"({cfg.llm.num_kv_heads} KV), speech vocab {cfg.llm.speech_vocab_size}")
    print(f"flow: {flow_summary(cfg.flow)}")
    print(f"vocoder: HiFT base {cfg.hift.base_channels}, upsample {cfg.hift.upsample_rates}")
    for name, path in {**files.checkpoints(), "campplus": files.campplus,
                       "speech tokenizer": files.speech_tokenizer}.items():
        print(f"  {name:16s} {path.name} ({path.stat().st_size / 1e6:.1f} MB)")
    export_dir = default_export_dir(files)
    manifest, states = export_status(export_dir, files)
    if manifest is None:
        print(f"ONNX export: none ({states['-']})")
        return 0
    print(f"ONNX export: {export_dir} (created {manifest.get('created', '?')})")
    for precision, state in states.items():
        stages = ", ".join(s for s in ("lm", "flow", "vocoder") if s in manifest["precisions"][precision])
        if state != "current":
            state = ("stale: " if "stale export" in state else "not usable: ") + state
        weights = f" ({weight_bits_of(manifest)}-bit weights)" if precision == "int8" else ""
        print(f"  {precision:5s} {stages}{weights}: {state}")
    notice = full_range_notice(manifest, export_dir) if "int8" in states else None
    if notice:
        print(f"  warning: {notice}")
    return 0


def _cmd_export(args) -> int:
    from .export.exporter import export_model

    check_output_dir(args.out or args.model / "onnx")  # before the export's minutes of work
    out = export_model(args.model, args.out, precisions=args.precision, llm_variant=args.llm,
                       parity=not args.no_parity, progress=lambda msg: print(msg, flush=True),
                       int8_weight_bits=args.int8_weight_bits)
    if args.batch_decode:
        from .export.lm import export_batch_decode

        export_batch_decode(args.model, out, args.precision, llm_variant=args.llm,
                            progress=lambda msg: print(msg, flush=True))
    return 0


def _cmd_parity(args) -> int:
    import json

    from .tools.parity import format_report, run_parity

    report = run_parity(args.model, args.export_dir, precision=args.precision, prompt_wav=args.prompt_wav,
                        prompt_text=args.prompt_text, text=args.text, seed=args.seed, max_tokens=args.max_tokens,
                        llm_variant=args.llm, device=args.device, test_backend=args.test_backend)
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


def _cmd_studio(args) -> int:
    from .studio.serve import serve  # Gradio loads only for this command

    return serve(args)


def _cmd_serve(args) -> int:
    from .server.command import serve  # FastAPI, uvicorn and Gradio load only for this command

    return serve(args)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="cosyvoice-onnx", description=__doc__,
                epilog="exit status: " + "; ".join(f"{code} {meaning}" for code, meaning in EXIT_CODES.items()))
    p.add_argument("--debug", action="store_true", help="show the traceback of an error (or set COSYVOICE_DEBUG=1)")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("make-tiny-model", help="write a tiny synthetic model folder (official layout, random weights)")
    t.add_argument("out", type=output_dir)
    t.add_argument("--version", type=int, default=3, choices=[2, 3])
    t.add_argument("--seed", type=seed, default=0)
    t.set_defaults(func=_cmd_make_tiny_model)

    c = sub.add_parser("make-test-clip", help="write a synthetic voice-like prompt clip (WAV) for trying things out")
    c.add_argument("out", type=output_file)
    c.add_argument("--seconds", type=float_range(0, 600, above_low=True), default=4.0)
    c.add_argument("--seed", type=seed, default=0)
    c.set_defaults(func=_cmd_make_test_clip)

    s = sub.add_parser("synth", help="synthesize speech in the voice of a prompt clip")
    s.add_argument("--model", required=True, type=Path, help="official model folder (e.g. Fun-CosyVoice3-0.5B-2512)")
    s.add_argument("--text", required=True)
    s.add_argument("--prompt-wav", "--timbre-wav", type=Path, default=None,
                   help="3-10 s clip of the voice (>= 16 kHz), or use --voice")
    s.add_argument("--prompt-text", "--timbre-text", default=None,
                   help="transcript of the clip; omit for cross-lingual mode")
    s.add_argument("--instruct", default=None, help="natural-language instruction (instruct mode)")
    s.add_argument("--instruct-preset", default=None, help="e.g. dialect:四川, emotion:happy, speed:fast")
    s.add_argument("--seed", type=seed, default=0)
    s.add_argument("--speed", type=float_range(0.5, 2.0), default=1.0, help="0.5 .. 2 (non-streaming)")
    s.add_argument("--stream", action="store_true", help="generate in streaming chunks")
    s.add_argument("--first-chunk-tokens", type=int, default=None, metavar="N",
                   help="with --stream: the first chunk after N speech tokens (1..100) instead of the official "
                        "aligned first hop; sooner first audio, slightly different audio near that cut")
    s.add_argument("--overlap", action=argparse.BooleanOptionalAction, default=None,
                   help="with --stream: let the LM decode the next chunk's tokens in a thread while this chunk's "
                        "audio is made (the audio is the same); default: only where the LM runs on a GPU, since "
                        "on a few CPU cores it slows the stream")
    s.add_argument("--backend", default="torch", help=PLAN_SYNTAX)
    s.add_argument("--llm", default="base", choices=["base", "rl"], help="llm.pt or llm.rl.pt")
    s.add_argument("--device", default="auto", help=DEVICE_HELP)
    s.add_argument("--out", required=True, type=output_file)
    add_synth_controls(s)
    s.set_defaults(func=_cmd_synth)
    add_voices_command(sub)
    add_pronounce_command(sub)
    add_convert_command(sub, PLAN_SYNTAX, DEVICE_HELP)
    add_glossary_command(sub)
    add_batch_command(sub, PLAN_SYNTAX, DEVICE_HELP)
    add_bench_batch_command(sub, PLAN_SYNTAX)

    from .download import MODELS

    d = sub.add_parser("download", help="download an official model folder (HuggingFace or ModelScope)")
    d.add_argument("--name", default="Fun-CosyVoice3-0.5B-2512", choices=list(MODELS))
    d.add_argument("--source", default="huggingface", choices=["huggingface", "modelscope"])
    d.add_argument("--out", default=Path("models"), type=output_dir)
    d.set_defaults(func=_cmd_download)

    e = sub.add_parser("export", help="export every neural stage to ONNX, with a manifest and parity figures")
    e.add_argument("--model", required=True, type=Path)
    e.add_argument("--precision", default="fp32", help="fp32, fp16, int8 or a comma list (fp32 always included)")
    e.add_argument("--out", type=output_dir, default=None, help="export folder (default: MODEL/onnx)")
    e.add_argument("--llm", default="base", choices=["base", "rl"])
    e.add_argument("--no-parity", action="store_true", help="skip the parity check after export")
    e.add_argument("--int8-weight-bits", type=int, choices=WEIGHT_BITS, default=DEFAULT_WEIGHT_BITS,
                   help="int8 weight width: 7 (default) computes exactly on every CPU; 8 is slightly closer to fp32 "
                        "but saturates on x86 CPUs without AVX-VNNI/AVX512-VNNI/AMX (most AVX2-only CPUs)")
    e.add_argument("--batch-decode", action="store_true",
                   help="also write the batched LM decode graph that `serve --batch N` runs on ONNX")
    e.set_defaults(func=_cmd_export)

    q = sub.add_parser("parity", help="compare PyTorch and ONNX stage by stage from the same seed")
    q.add_argument("--model", required=True, type=Path)
    q.add_argument("--export-dir", type=Path, default=None, help="default: MODEL/onnx")
    q.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="of the engine under test (bf16: PyTorch only; int8: ONNX only)")
    q.add_argument("--device", default="auto",
                   help="where the engine under test runs (the fp32 reference always runs on the CPU): auto, cpu, "
                        "cuda or cuda:N; with cuda the engine under test defaults to PyTorch")
    q.add_argument("--test-backend", default=None, choices=["torch", "onnx"],
                   help="engine under test (default: onnx on the CPU, torch on a GPU)")
    q.add_argument("--prompt-wav", type=Path, default=None, help="default: a synthetic voice-like clip")
    q.add_argument("--prompt-text", default="This is the prompt clip.")
    q.add_argument("--text", default="Hello! This sentence checks that both backends say exactly the same thing.")
    q.add_argument("--seed", type=seed, default=0)
    q.add_argument("--max-tokens", type=int_range(1, MAX_PARITY_TOKENS), default=200)
    q.add_argument("--llm", default="base", choices=["base", "rl"])
    q.add_argument("--json", type=output_file, default=None, help="write the full report as JSON")
    q.set_defaults(func=_cmd_parity)

    i = sub.add_parser("info", help="check a model folder and print what it holds")
    i.add_argument("--model", required=True, type=Path)
    i.set_defaults(func=_cmd_info)
    from .studio.options import add_studio_arguments

    g = add_studio_arguments(sub.add_parser("studio", help="serve the Gradio studio (same options as app.py)"))
    g.set_defaults(func=_cmd_studio)
    from .server.command import add_serve_arguments

    v = add_serve_arguments(sub.add_parser("serve", help="serve the OpenAI-compatible speech API (and the studio "
                                                         "at /studio)"))
    v.set_defaults(func=_cmd_serve)
    from .tools.bench import add_bench_command

    add_bench_command(sub)
    for command in sub.choices.values():  # `--debug` is accepted after the command name too
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    """Runs one command; returns the exit status (see EXIT_CODES). Every failure a user can cause is one line."""
    args = None
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except (UsageError, InputError) as exc:
        return _fail(exc, EXIT_USAGE, args)
    except CosyVoiceError as exc:
        return _fail(exc, EXIT_RUNTIME, args)
    except KeyboardInterrupt as exc:
        return _fail(exc, EXIT_INTERRUPTED, args, "interrupted")
    except MemoryError as exc:
        return _fail(exc, EXIT_RUNTIME, args, "out of memory; try a shorter text, the int8 precision "
                                              "(--backend onnx:int8) or close other programs")
    except OSError as exc:
        # Disk full, permission denied, a file vanished: the system's reason and the file it concerns.
        where = f": {exc.filename}" if exc.filename else ""
        return _fail(exc, EXIT_RUNTIME, args, f"{exc.strerror or exc}{where}")
    except Exception as exc:  # a bug: say so in one line, and how to get the traceback for a report
        return _fail(exc, EXIT_RUNTIME, args, f"internal error ({type(exc).__name__}: {one_line(exc)}); "
                                              "rerun with --debug for the traceback")


EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_CODES = {EXIT_OK: "success", EXIT_RUNTIME: "runtime error (model folder, export, synthesis, files, a bug)",
              EXIT_USAGE: "usage error (unknown option, bad option value, bad input text/audio/name)",
              EXIT_INTERRUPTED: "interrupted (Ctrl-C)"}


class UsageError(Exception):
    """The command line itself is wrong (argparse's complaint), reported without argparse's usage block."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _debug(args) -> bool:
    return bool(getattr(args, "debug", False)) or os.environ.get("COSYVOICE_DEBUG", "") not in ("", "0")


def _fail(exc: BaseException, code: int, args, message: str | None = None) -> int:
    if _debug(args):
        traceback.print_exception(exc)
    print(f"error: {message or one_line(exc)}", file=sys.stderr)
    return code


