"""Command-line interface: `cosyvoice-onnx <command>`; errors print one clear line and exit non-zero."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


from .cli_controls import add_pronounce_command, add_synth_controls, add_voices_command, describe, synth_controls
from .errors import CosyVoiceError

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
    import numpy as np

    from .audio import write_wav
    from .config import detect_version
    from .engine import CosyVoice
    from .prompts import preset_instruction

    instruct = args.instruct
    if args.instruct_preset:
        # Presets differ per release; checked before the weights load so a typo fails fast.
        instruct = preset_instruction(args.instruct_preset, detect_version(args.model))
    start = time.perf_counter()
    tts = CosyVoice(args.model, backend=args.backend, llm_variant=args.llm, device=args.device)
    loaded = time.perf_counter()
    controls = synth_controls(args, tts)
    result = tts.synthesize(controls.pop("text"), prompt_wav=args.prompt_wav, prompt_text=args.prompt_text,
                            instruct=instruct, seed=args.seed, speed=args.speed, stream=args.stream,
                            on_progress=lambda i, n: print(f"segment {i}/{n}", file=sys.stderr), **controls)
    if args.stream:
        chunks = []
        for chunk in result:
            if not chunks:
                print(f"first audio after {time.perf_counter() - loaded:.2f} s", file=sys.stderr)
            chunks.append(chunk)
            print(f"chunk {len(chunks)}: {len(chunk) / tts.sample_rate:.2f} s", file=sys.stderr)
        audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    else:
        audio, info = result
        print(describe(info), file=sys.stderr)
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
    from .model_files import inspect_model_dir

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
    return 0


def _cmd_export(args) -> int:
    from .export.exporter import export_model

    export_model(args.model, args.out, precisions=args.precision, llm_variant=args.llm, parity=not args.no_parity,
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cosyvoice-onnx", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("make-tiny-model", help="write a tiny synthetic model folder (official layout, random weights)")
    t.add_argument("out", type=Path)
    t.add_argument("--version", type=int, default=3, choices=[2, 3])
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=_cmd_make_tiny_model)

    c = sub.add_parser("make-test-clip", help="write a synthetic voice-like prompt clip (WAV) for trying things out")
    c.add_argument("out", type=Path)
    c.add_argument("--seconds", type=float, default=4.0)
    c.add_argument("--seed", type=int, default=0)
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
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--speed", type=float, default=1.0)
    s.add_argument("--stream", action="store_true", help="generate in streaming chunks")
    s.add_argument("--backend", default="torch",
                   help="torch[:bf16|:fp16] | onnx[:fp16|:int8] | lm=onnx:int8,flow=torch,...")
    s.add_argument("--llm", default="base", choices=["base", "rl"], help="llm.pt or llm.rl.pt")
    s.add_argument("--device", default="auto", help=DEVICE_HELP)
    s.add_argument("--out", required=True, type=Path)
    add_synth_controls(s)
    s.set_defaults(func=_cmd_synth)
    add_voices_command(sub)
    add_pronounce_command(sub)

    d = sub.add_parser("download", help="download an official model folder (HuggingFace or ModelScope)")
    d.add_argument("--name", default="Fun-CosyVoice3-0.5B-2512")
    d.add_argument("--source", default="huggingface", choices=["huggingface", "modelscope"])
    d.add_argument("--out", default=Path("models"), type=Path)
    d.set_defaults(func=_cmd_download)

    e = sub.add_parser("export", help="export every neural stage to ONNX, with a manifest and parity figures")
    e.add_argument("--model", required=True, type=Path)
    e.add_argument("--precision", default="fp32", help="fp32, fp16, int8 or a comma list (fp32 always included)")
    e.add_argument("--out", type=Path, default=None, help="export folder (default: MODEL/onnx)")
    e.add_argument("--llm", default="base", choices=["base", "rl"])
    e.add_argument("--no-parity", action="store_true", help="skip the parity check after export")
    e.set_defaults(func=_cmd_export)

    q = sub.add_parser("parity", help="compare PyTorch and ONNX stage by stage from the same seed")
    q.add_argument("--model", required=True, type=Path)
    q.add_argument("--export-dir", type=Path, default=None, help="default: MODEL/onnx")
    q.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16", "int8"],
                   help="of the engine under test (bf16: PyTorch only; int8: ONNX only)")
    q.add_argument("--device", default="auto",
                   help="where the engine under test runs (the fp32 reference always runs on the CPU): auto, cpu, "
                        "cuda or cuda:N; with cuda the engine under test defaults to PyTorch")
    q.add_argument("--test-backend", default=None, choices=["torch", "onnx"],
                   help="engine under test (default: onnx on the CPU, torch on a GPU)")
    q.add_argument("--prompt-wav", type=Path, default=None, help="default: a synthetic voice-like clip")
    q.add_argument("--prompt-text", default="This is the prompt clip.")
    q.add_argument("--text", default="Hello! This sentence checks that both backends say exactly the same thing.")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--max-tokens", type=int, default=200)
    q.add_argument("--llm", default="base", choices=["base", "rl"])
    q.add_argument("--json", type=Path, default=None, help="write the full report as JSON")
    q.set_defaults(func=_cmd_parity)

    i = sub.add_parser("info", help="check a model folder and print what it holds")
    i.add_argument("--model", required=True, type=Path)
    i.set_defaults(func=_cmd_info)
    from .tools.bench import add_bench_command

    add_bench_command(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CosyVoiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
