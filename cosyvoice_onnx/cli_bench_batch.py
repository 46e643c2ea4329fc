"""`cosyvoice-onnx bench-batch`: throughput of concurrent requests with and without batched LM decode."""

from __future__ import annotations

from pathlib import Path

from .cli_args import folder, int_range


def _levels(text: str) -> tuple[int, ...]:
    import argparse

    try:
        levels = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        levels = ()
    if not levels or not all(1 <= c <= 64 for c in levels):
        raise argparse.ArgumentTypeError(f"expected concurrency levels in 1 .. 64 like 1,4,8, got {text!r}")
    return levels


def _cmd_bench_batch(args) -> int:
    from .tools.bench_batch import ratios, run

    print(f"bench-batch: {args.model} on {args.backend}, {args.tokens} tokens per request, concurrency "
          f"{','.join(map(str, args.levels))}", flush=True)
    figures = run(args.model, args.backend, args.export_dir, args.levels, args.tokens, e2e=not args.lm_only,
                  progress=lambda line: print(line, flush=True))
    print("ratios (audio seconds per wall second):")
    for line in ratios(figures):
        print("  " + line)
    return 0


def add_bench_batch_command(sub, backend_help: str) -> None:
    b = sub.add_parser("bench-batch", help="throughput of 1/4/8 concurrent requests, batched LM decode vs not")
    b.add_argument("--model", required=True, type=Path, help="official model folder")
    b.add_argument("--backend", default="onnx:int8", help=backend_help)
    b.add_argument("--export-dir", type=folder, default=None,
                   help="ONNX export with the batched decode graph (default MODEL/onnx; `export --batch-decode`)")
    b.add_argument("--levels", type=_levels, default=(1, 4, 8), help="concurrency levels (default 1,4,8)")
    b.add_argument("--tokens", type=int_range(1, 5000), default=100, help="speech tokens per request (default 100 = 4 s)")
    b.add_argument("--lm-only", action="store_true", help="measure the LM stage only, not end to end")
    b.set_defaults(func=_cmd_bench_batch)
