"""`cosyvoice-onnx bench`: per-stage PyTorch vs ONNX Runtime timings against this machine's FLOP and bandwidth bounds.

One run builds (or reuses) a model folder of the chosen size with seeded random weights and its ONNX export,
measures this machine (sgemm and int8 GEMM throughput in ONNX Runtime, memory bandwidth), then times every stage
of one fixed request on each backend, each backend in its own subprocess so its peak RSS is its own.

The package reads as the run: `workload` (the request), `cost` (FLOPs and bytes per stage, the bounds),
`machine` (this CPU's rates), `stages` (one backend timed in its worker), `run` (the whole run), `report` (the
table), `cli` (the command).
"""

from .cli import add_bench_command
from .run import GPU_TORCH_BACKENDS, backends_for, prepare, run_bench

__all__ = ["GPU_TORCH_BACKENDS", "add_bench_command", "backends_for", "prepare", "run_bench"]
