"""`cosyvoice-onnx bench` on the command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from .report import format_report, format_scaling
from .run import default_work_dir, run_bench
from .stages import STAGES
from .workload import SIZES, Workload


def add_bench_command(sub) -> None:
    """Registers `cosyvoice-onnx bench` on the CLI's subparsers."""
    from ...cli_args import int_range, output_dir, output_file

    b = sub.add_parser("bench", help="time every stage on PyTorch and ONNX Runtime against this machine's bounds")
    b.add_argument("--size", default="tiny", choices=SIZES, help="random-weight model size (ignored with --model)")
    b.add_argument("--version", type=int, default=3, choices=[3, 2], help="CosyVoice release of the random model")
    b.add_argument("--model", type=Path, default=None, help="benchmark this model folder instead (export reused)")
    b.add_argument("--work", type=output_dir, default=None,
                   help=f"folder for the generated model and its export, reused by later runs "
                        f"(default {default_work_dir()})")
    b.add_argument("--precisions", default="fp32,int8",
                   help="ONNX precisions: fp32, int8 (LM and flow estimator), fp16 (CUDA only)")
    b.add_argument("--device", default="cpu",
                   help="cpu, or cuda / cuda:N: PyTorch fp32, bf16 and fp16 on the GPU (and ONNX fp16 where "
                        "onnxruntime has the CUDA provider) in one run; the cost-model bounds describe the CPU only")
    b.add_argument("--backends", default=None,
                   help="the columns to time instead of the default set, e.g. torch,torch:bf16,onnx:int8 (a "
                        "per-stage plan keeps its commas; separate two of them with ';')")
    b.add_argument("--backend-timeout", type=float, default=None,
                   help="seconds per column; a column that fails or runs out is reported and the others still run")
    b.add_argument("--threads", type=thread_counts, default=None,
                   help="threads per backend, or a sweep in one run: e.g. 1,2,all (all: one per physical core "
                        "this process may use, the default); a sweep prints each count's table and the scaling")
    b.add_argument("--stages", type=stage_list, default=None,
                   help=f"time only these stages (comma list of {', '.join(STAGES)}; default all)")
    b.add_argument("--repeats", type=int_range(1, 1000), default=3, help="timed runs per stage, after a warm-up")
    b.add_argument("--first-chunk-tokens", type=int_range(1, 100), default=Workload.first_chunk_tokens,
                   help="the first_chunk_tokens option the ttfa_first_chunk row times (default %(default)s)")
    b.add_argument("--quick", action="store_true", help="a 2 s request and one repeat: a check that it all runs")
    b.add_argument("--json", type=output_file, default=None, help="write the full report as JSON")
    b.set_defaults(func=_cmd_bench)


MAX_THREADS = 1024


def thread_counts(text: str) -> list[int]:
    """`--threads`: "4" or a comma list such as "1,2,all"; all = default_threads() (one per physical core this
    process may use). Duplicates are dropped, the order kept."""
    from ...onnx_backend.session import default_threads

    counts: list[int] = []
    for part in (p.strip().lower() for p in text.split(",")):
        if part == "all":
            value = default_threads()
        elif part.isdigit() and 1 <= int(part) <= MAX_THREADS:
            value = int(part)
        else:
            raise argparse.ArgumentTypeError(f"each thread count must be a whole number from 1 to {MAX_THREADS} "
                                             f"or 'all', got {part!r} in {text!r}")
        if value not in counts:
            counts.append(value)
    return counts


def backend_columns(text: str) -> list[str]:
    """`--backends`: a comma list of plans, where a per-stage plan keeps its own commas:
    "onnx:int8,lm=onnx:int8,flow=onnx,vocoder=onnx" is two columns, "onnx:int8" and the per-stage one. Two
    per-stage plans in a row are told apart by a ';' between them."""
    if ";" in text:
        return [part.strip() for part in text.split(";") if part.strip()]
    columns: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if "=" in part and columns and "=" in columns[-1]:
            columns[-1] += "," + part
        else:
            columns.append(part)
    return columns


def stage_list(text: str) -> list[str]:
    """`--stages`: a comma list of STAGES names."""
    names = [part.strip() for part in text.split(",")]
    unknown = [name for name in names if name not in STAGES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown stage {', '.join(map(repr, unknown))}; choose from "
                                         f"{', '.join(STAGES)}")
    return names


def _cmd_bench(args) -> int:
    counts = args.threads or [None]
    reports = [run_bench(args.size, args.work, args.model, args.precisions, threads,
                         1 if args.quick else args.repeats,
                         dataclasses.replace(Workload.quick() if args.quick else Workload(),
                                             first_chunk_tokens=args.first_chunk_tokens),
                         progress=lambda message: print(message, file=sys.stderr, flush=True), version=args.version,
                         device=args.device, backends=backend_columns(args.backends) if args.backends else None,
                         backend_timeout_s=args.backend_timeout, stages=args.stages)
               for threads in counts]
    for report in reports:
        print(format_report(report) + "\n")
    if len(reports) > 1:
        print(format_scaling(reports))
    if args.json:
        # One thread count writes its report as before; a sweep writes {"sweep": [report per count]}.
        payload = reports[0] if len(reports) == 1 else {"sweep": reports}
        Path(args.json).write_text(json.dumps(payload, indent=2), encoding="utf-8")
        print(f"wrote {args.json}")
    return 0
